"""The main window: the address header, the Devices, Sessions, Live data and Fleet health tabs
and the log dock, all fed by the running station's service events. One frame timer redraws
whichever plots are visible."""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from station.backend.events import (
    CommandChanged,
    DeviceChanged,
    DeviceForgotten,
    DeviceSeen,
    EventLogged,
    SamplesStored,
    SessionChanged,
)
from station.backend.runtime import lan_addresses
from station.ui.application import StationApp
from station.ui.devices import DevicesView
from station.ui.live import LiveView
from station.ui.log_view import BufferHandler, LogDock
from station.ui.plots import PlotsView
from station.ui.sessions import SessionsView
from station.ui.settings_dialog import SettingsDialog

log = logging.getLogger(__name__)

FRAME_MS = 40  # the one redraw timer: 25 frames a second


class AddressHeader(QWidget):
    """Where the mini-program and the firmware must point, a copy button, and server state."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = QLabel(self)
        self.addresses = QLabel(self)
        self.addresses.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.copy_button = QPushButton(self.tr("Copy address"), self)
        self.copy_button.setToolTip(self.tr("Copy the first address to the clipboard"))
        self.copy_button.clicked.connect(self.copy)
        self.urls: list[str] = []
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addWidget(self.state)
        layout.addWidget(self.addresses, 1)
        layout.addWidget(self.copy_button)
        self.set_down()

    def set_up(self, host: str, port: int) -> None:
        if host in ("0.0.0.0", "::", ""):
            hosts = lan_addresses() or ["127.0.0.1"]
        else:
            hosts = [host]
        self.urls = [f"http://{h}:{port}/wxapp/" for h in hosts]
        self.state.setText(self.tr("● Server up"))
        self.state.setStyleSheet("color: #2e9d44; font-weight: bold;")
        self.addresses.setText(
            self.tr("Mini-program and firmware address: %s") % "   ".join(self.urls)
        )
        self.copy_button.setEnabled(True)

    def set_down(self) -> None:
        self.urls = []
        self.state.setText(self.tr("● Server down"))
        self.state.setStyleSheet("color: #c8352b; font-weight: bold;")
        self.addresses.setText(self.tr("Not serving"))
        self.copy_button.setEnabled(False)

    def copy(self) -> None:
        if self.urls:
            QGuiApplication.clipboard().setText(self.urls[0])


class MainWindow(QMainWindow):
    closing = Signal()  # the user closed the window: the application should shut down

    def __init__(
        self,
        app: StationApp,
        log_handler: BufferHandler | None = None,
        qsettings: QSettings | None = None,
    ) -> None:
        super().__init__()
        self.app = app
        self._qsettings = qsettings or QSettings()
        self.setObjectName("main_window")
        self.setWindowTitle(self.tr("Collection station"))
        self._unsubscribe: Any = None
        self._settings_dialog: SettingsDialog | None = None

        self.header = AddressHeader(self)
        self.sessions = SessionsView(app, lambda: self.devices.selected_codes(), self)
        self.devices = DevicesView(app, self.sessions.selected_session_id, self)
        self.live = LiveView(self)
        self.plots = PlotsView(self)
        self.tabs = QTabWidget(self)
        self.tabs.addTab(self.devices, self.tr("&Devices"))
        self.tabs.addTab(self.sessions, self.tr("&Sessions"))
        self.tabs.addTab(self.live, self.tr("&Live data"))
        self.tabs.addTab(self.plots, self.tr("Fleet &health"))

        central = QWidget(self)
        layout = QVBoxLayout(central)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.header)
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)

        self.log_dock = LogDock(log_handler or BufferHandler(), self)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.log_dock)

        self._build_menus()
        self.devices.message.connect(self.show_message)
        self.sessions.message.connect(self.show_message)
        app.failed.connect(self.show_failure)
        app.started.connect(self.attach)
        app.stopped.connect(self.detach)
        self.resize(1200, 800)
        self.resizeDocks([self.log_dock], [170], Qt.Orientation.Vertical)
        self.restore_state()
        if app.running:
            self.attach()

        self._frame = QTimer(self)
        self._frame.setInterval(FRAME_MS)
        self._frame.timeout.connect(self.redraw_plots)
        self._frame.start()

    def _build_menus(self) -> None:
        station_menu = self.menuBar().addMenu(self.tr("&Station"))
        settings = QAction(self.tr("&Settings…"), self)
        settings.setShortcut(QKeySequence(QKeySequence.StandardKey.Preferences))
        settings.triggered.connect(self.open_settings)
        copy = QAction(self.tr("&Copy address"), self)
        copy.setShortcut(QKeySequence("Ctrl+Shift+C"))
        copy.triggered.connect(self.header.copy)
        quit_action = QAction(self.tr("&Quit"), self)
        quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        quit_action.triggered.connect(self.close)
        for action in (settings, copy, quit_action):
            station_menu.addAction(action)
        devices_menu = self.menuBar().addMenu(self.tr("D&evices"))
        for action in self.devices.actions_list:
            devices_menu.addAction(action)
            self.addAction(action)
        sessions_menu = self.menuBar().addMenu(self.tr("Sess&ions"))
        for action in self.sessions.actions_list:
            sessions_menu.addAction(action)
            self.addAction(action)
        view_menu = self.menuBar().addMenu(self.tr("&View"))
        view_menu.addAction(self.log_dock.toggleViewAction())
        self.log_dock.toggleViewAction().setShortcut(QKeySequence("Ctrl+L"))
        self.filter_action = QAction(self.tr("&Filter devices"), self)
        self.filter_action.setShortcut(QKeySequence.StandardKey.Find)
        self.filter_action.triggered.connect(self._focus_filter)
        view_menu.addAction(self.filter_action)
        for number in range(self.tabs.count()):
            tab = QAction(self.tabs.tabText(number).replace("&", ""), self)
            tab.setShortcut(QKeySequence(f"Alt+{number + 1}"))
            tab.triggered.connect(lambda _checked=False, n=number: self.tabs.setCurrentIndex(n))
            view_menu.addAction(tab)

    def _focus_filter(self) -> None:
        self.tabs.setCurrentWidget(self.devices)
        self.devices.filter_box.setFocus()
        self.devices.filter_box.selectAll()

    # ---- the station's events ------------------------------------------------------------------

    def attach(self) -> None:
        """The station is up: show its addresses, load the current state, follow its events."""
        service = self.app.service
        station = self.app.station
        if service is None or station is None:
            return
        self.header.set_up(station.settings.host, station.port)
        devices = service.devices()
        self.devices.model.reset(devices)
        self.plots.reset(devices)
        self.live.reset(devices)
        if self._unsubscribe is None:
            self._unsubscribe = service.events.subscribe(self.on_change)
        self.app.spawn(self.sessions.load(), self.tr("load the sessions"))
        self.setWindowTitle(self.tr("Collection station — port %s") % station.port)

    def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.header.set_down()

    def on_change(self, change: Any) -> None:
        """Called by the service after each commit; only updates models and buffers."""
        if isinstance(change, SamplesStored):
            self.live.samples_stored(change)
            self.sessions.samples_stored(change.session_id)
        elif isinstance(change, DeviceSeen):
            self.devices.model.seen(change.device_code, change.at)
            self.plots.device_seen(change.device_code)
        elif isinstance(change, DeviceChanged):
            self.devices.model.upsert(change.device)
            self.plots.device_changed(change.device)
            self.live.device_changed(change.device)
        elif isinstance(change, DeviceForgotten):
            self.devices.model.remove(change.device_code)
            self.plots.device_forgotten(change.device_code)
            self.live.device_forgotten(change.device_code)
        elif isinstance(change, SessionChanged):
            self.sessions.session_changed(change.session)
        elif isinstance(change, CommandChanged):
            self.sessions.command_changed(change.command)
            self.plots.command_changed(change.command)
        elif isinstance(change, EventLogged):
            self.sessions.event_logged(change.event)

    def redraw_plots(self) -> None:
        """The one frame timer: each view redraws only if it is visible and has news."""
        self.live.redraw()
        self.plots.redraw()

    # ---- messages ------------------------------------------------------------------------------

    def show_message(self, text: str) -> None:
        self.statusBar().showMessage(text, 10_000)

    def show_failure(self, what: str, message: str) -> None:
        text = self.tr("Could not %s: %s") % (what, message)
        self.statusBar().showMessage(text, 15_000)

    def open_settings(self) -> None:
        if self._settings_dialog is None:
            dialog = SettingsDialog(self.app.settings, self.app.data_dir, self)
            dialog.saved.connect(self._settings_saved)
            self._settings_dialog = dialog
        self._settings_dialog.show()
        self._settings_dialog.raise_()

    def _settings_saved(self, need_restart: list[str]) -> None:
        if need_restart:
            self.show_message(
                self.tr("Settings saved; restart the station for: %s") % ", ".join(need_restart)
            )
        else:
            self.show_message(self.tr("Settings saved and in effect."))

    def warn(self, title: str, text: str) -> QMessageBox:
        """A non-modal warning (never exec(): this runs beside the qasync loop)."""
        box = QMessageBox(
            QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, self
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        return box

    # ---- geometry and closing ------------------------------------------------------------------

    def restore_state(self) -> None:
        stored = self._qsettings
        geometry = stored.value("main_window/geometry")
        state = stored.value("main_window/state")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        if isinstance(state, QByteArray):
            self.restoreState(state)

    def save_state(self) -> None:
        stored = self._qsettings
        stored.setValue("main_window/geometry", self.saveGeometry())
        stored.setValue("main_window/state", self.saveState())

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt override)
        self.save_state()
        self.detach()
        self.closing.emit()
        self.app.request_quit()
        event.accept()
