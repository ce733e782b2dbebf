"""GUI tests: an offscreen QApplication, and async tests on the qasync loop (only in this
folder; the hook below is conftest-scoped, so other folders keep the plain asyncio loop)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import asyncio  # noqa: E402
from collections.abc import AsyncIterator, Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import qasync  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from station.config import Settings  # noqa: E402
from station.ui.application import StationApp  # noqa: E402
from station.ui.log_view import BufferHandler  # noqa: E402
from station.ui.main_window import MainWindow  # noqa: E402


def _qasync_loop() -> asyncio.AbstractEventLoop:
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    app.setQuitOnLastWindowClosed(False)  # as in station.ui.launch: shutdown ends the loop
    return qasync.QEventLoop(app)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    return {"qasync": _qasync_loop}


def test_settings(**changes: Any) -> Settings:
    """Loopback only, a free port, fast liveness so tests see changes quickly."""
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "poll_interval": 0.5,
        "connect_timeout": 1.0,
        "read_timeout": 1.0,
        "command_retries": 0,
    }
    return Settings(**(base | changes))


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def qsettings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "window.ini"), QSettings.Format.IniFormat)


@pytest.fixture
async def station_app(qapp: QApplication, tmp_path: Path) -> AsyncIterator[StationApp]:
    app = StationApp(tmp_path / "data", test_settings())
    await app.start()
    yield app
    await app.stop()


@pytest.fixture
def window(station_app: StationApp, qtbot: Any, qsettings: QSettings) -> MainWindow:
    window = MainWindow(station_app, BufferHandler(), qsettings)
    qtbot.addWidget(window)
    window.show()
    return window


async def eventually(check: Callable[[], Any], within: float = 5.0, what: str = "") -> Any:
    """Await until check() is truthy, re-checking whenever the loop has run a little.

    Never qtbot.wait*: a nested Qt loop inside a coroutine breaks qasync's task scheduling.
    """

    async def poll() -> Any:
        # What is checked is widget and device state with no awaitable of its own; polling on
        # the running loop lets the service's events and Qt's timers do their work meanwhile.
        while not (result := check()):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return result

    try:
        return await asyncio.wait_for(poll(), within)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {what or check}") from None
