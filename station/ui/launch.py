"""`station` with no subcommand: one QApplication, one qasync loop, the station started on it,
the window shown; closing the window or Ctrl-C shuts everything down in order."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import qasync
from PySide6.QtCore import QCoreApplication
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from station.config import Settings
from station.ui.application import StationApp, free_port
from station.ui.log_view import install_logging
from station.ui.main_window import MainWindow

log = logging.getLogger(__name__)

DEMO_DEVICES = 8


def run_window(
    data_dir: Path,
    settings: Settings,
    *,
    demo: bool = False,
    verbose: bool = False,
) -> int:
    """Run the desktop station until the window closes; returns the process exit code."""
    QCoreApplication.setOrganizationName("station")
    QCoreApplication.setApplicationName("station")
    qt_app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(qt_app, QApplication)
    qt_app.setQuitOnLastWindowClosed(False)  # the loop ends when shutdown has finished

    buffer = install_logging(data_dir, verbose)
    app = StationApp(data_dir, settings, demo_devices=DEMO_DEVICES if demo else 0)
    window = MainWindow(app, buffer)
    window.show()

    loop = qasync.QEventLoop(qt_app)
    asyncio.set_event_loop(loop)
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, app.request_quit)
        except (NotImplementedError, RuntimeError):
            pass  # Windows: no loop signal handlers
    try:
        code = loop.run_until_complete(_run(app, window))
    finally:
        _cancel_leftovers(loop)
        loop.close()
        asyncio.set_event_loop(None)
    return code


async def _run(app: StationApp, window: MainWindow) -> int:
    while True:
        try:
            await app.start()
            break
        except OSError as exc:
            log.error(
                "cannot listen on %s:%s: %s", app.settings.host, app.settings.port, exc.strerror
            )
            asking = asyncio.ensure_future(
                ask_for_another_port(window, app.settings.port, str(exc.strerror or exc))
            )
            quitting = asyncio.ensure_future(app.wait_for_quit())
            await asyncio.wait({asking, quitting}, return_when=asyncio.FIRST_COMPLETED)
            quitting.cancel()
            port = asking.result() if asking.done() else None
            asking.cancel()  # Ctrl-C while the question was open
            if port is None:
                window.close()
                return 1
            app.settings.port = port
    try:
        await app.wait_for_quit()
        log.info("stopping")
    finally:
        window.hide()
        await app.stop()
        window.close()
    return 0


async def ask_for_another_port(parent: QWidget, port: int, reason: str) -> int | None:
    """A non-modal question (open(), never exec() inside a coroutine); None means quit."""
    offer = free_port()
    box = QMessageBox(
        QMessageBox.Icon.Warning,
        QCoreApplication.translate("launch", "Port in use"),
        QCoreApplication.translate(
            "launch",
            "The station cannot listen on port %s (%s). Another station, or the old server, "
            "may be running.\n\nUse port %s instead?",
        )
        % (port, reason, offer),
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Close,
        parent,
    )
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def finished(_result: int) -> None:
        if not answer.done():
            answer.set_result(box.clickedButton() is box.button(QMessageBox.StandardButton.Yes))

    box.finished.connect(finished)
    box.open()
    try:
        accepted = await answer
    finally:
        box.close()
        box.deleteLater()
    return offer if accepted else None


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
