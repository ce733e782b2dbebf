"""Renders the main window in demo mode to artifacts/screenshot.png (and, with
STATION_UPDATE_SCREENSHOT=1, to docs/screenshot.png, which the README shows), and its Live data
tab to artifacts/screenshot_live.png."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from station.backend.models import Liveness
from station.ui.application import DEMO_GROUP, StationApp
from station.ui.log_view import BufferHandler, quiet_wire_loggers
from station.ui.main_window import MainWindow
from tests.ui.conftest import eventually, test_settings

ROOT = Path(__file__).resolve().parents[2]
DEMO_DEVICES = 8


async def test_demo_window_renders_to_a_screenshot(qapp, qtbot, qsettings, tmp_path: Path) -> None:
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    quiet_wire_loggers()
    buffer = BufferHandler()
    root.addHandler(buffer)
    app = StationApp(tmp_path / "demo", test_settings(), demo_devices=DEMO_DEVICES)
    window = MainWindow(app, buffer, qsettings)
    qtbot.addWidget(window)
    window.resize(1280, 820)
    window.show()
    try:
        await app.start()
        model = window.devices.model
        await eventually(
            lambda: (
                model.rowCount() == DEMO_DEVICES
                and all(
                    model.device_at(r).liveness == Liveness.ONLINE
                    and DEMO_GROUP in model.device_at(r).groups
                    for r in range(DEMO_DEVICES)
                )
            ),
            within=10,
            what="demo fleet online in its group",
        )
        await eventually(
            lambda: sum(model.device_at(r).reported_status == "collecting" for r in range(8)) == 8,
            within=10,
            what="the demo session collecting",
        )
        sessions = window.sessions.model
        await eventually(lambda: sessions.rowCount() == 1, what="the demo session listed")
        window.sessions.select(sessions.session_at(0).session_id)

        # The Live data tab, with the uploads the demo devices send while collecting.
        window.tabs.setCurrentWidget(window.live)
        await eventually(lambda: window.live.points_drawn, within=10, what="live curves")
        await asyncio.sleep(1.5)  # a few batches more, so the curves are worth looking at
        artifacts = ROOT / "artifacts"
        artifacts.mkdir(exist_ok=True)
        assert window.grab().save(str(artifacts / "screenshot_live.png"))

        window.tabs.setCurrentWidget(window.devices)
        window.devices.model.repaint_last_seen()
        window.log_dock.drain()
        await asyncio.sleep(0.1)  # let the loop lay out; never processEvents() in a coroutine

        image = window.grab()
        out = artifacts / "screenshot.png"
        assert image.save(str(out))
        assert out.stat().st_size > 10_000
        if os.environ.get("STATION_UPDATE_SCREENSHOT") == "1":
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copyfile(out, ROOT / "docs" / "screenshot.png")
    finally:
        root.removeHandler(buffer)
        root.setLevel(level)
        quiet_wire_loggers(logging.NOTSET)
        await app.stop()
