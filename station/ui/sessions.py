"""The Sessions tab: every session with its progress; for the selected one, what each device
uploaded (samples, sensors, first and last sample, upload pending or complete), the command
ledger and the event log; and the staff actions (new session, start collection, stop collection,
finish, abort, export). Sessions started over HTTP appear here from the service's events."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QItemSelection,
    QObject,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QAction, QColor, QFont, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QMessageBox,
    QRadioButton,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from station.backend.errors import StationError
from station.backend.models import (
    Command,
    CommandKind,
    CommandState,
    Event,
    Session,
    SessionStatus,
    parse_iso,
)
from station.backend.service import SessionDetail, StationService
from station.backend.uploads import UploadService
from station.ui.application import StationApp
from station.ui.devices import ago
from station.ui.table_model import RecordTableModel

log = logging.getLogger(__name__)

STAFF = "staff"
STATS_EVERY_MS = 1000  # while samples arrive, the upload figures are re-read at most this often
UPLOAD_COLOURS = {"complete": QColor("#2e9d44"), "pending": QColor("#d89a16")}

STATE_COLOURS = {
    CommandState.ACKED: QColor("#2e9d44"),
    CommandState.FAILED: QColor("#c8352b"),
    CommandState.SENT: QColor("#d89a16"),
    CommandState.QUEUED: QColor("#8a8a8a"),
}


def local_time(stamp: str | None) -> str:
    moment = parse_iso(stamp)
    if moment is None:
        return ""
    local = moment.astimezone()
    if local.date() == dt.date.today():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M")


def plain_words(exc: BaseException) -> str:
    """A failure as staff should read it, without a traceback."""
    if isinstance(exc, StationError):
        return exc.message
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc) or type(exc).__name__


def _epoch(stamp: str | None) -> float | None:
    moment = parse_iso(stamp)
    return moment.timestamp() if moment else None


class SessionTableModel(RecordTableModel[Session]):
    ID, GROUP, STARTED_BY, STATUS, STARTED, DURATION, READY = range(7)

    def __init__(self, parent: QObject | None = None) -> None:
        headers = [
            self.tr("Session"),
            self.tr("Group"),
            self.tr("Started by"),
            self.tr("Status"),
            self.tr("Started"),
            self.tr("Duration"),
            self.tr("Devices ready"),
        ]
        super().__init__(headers, lambda s: s.session_id, parent)
        self._commands: dict[int, dict[tuple[str, CommandKind], Command]] = {}

    def reset(self, sessions: list[Session]) -> None:
        self.reset_records(sessions)

    def upsert(self, session: Session) -> None:
        self.upsert_record(session)

    def command(self, command: Command) -> None:
        if command.session_id is None:
            return
        ledger = self._commands.setdefault(command.session_id, {})
        ledger[(command.device_code, command.kind)] = command
        row = self.row_of(command.session_id)
        if row is not None:
            self.row_changed(row)

    def commands(self, session_id: int, commands: tuple[Command, ...]) -> None:
        self._commands[session_id] = {(c.device_code, c.kind): c for c in commands}
        row = self.row_of(session_id)
        if row is not None:
            self.row_changed(row)

    def repaint_durations(self) -> None:
        self.column_changed(self.DURATION)

    def session_at(self, row: int) -> Session:
        return self.record_at(row)

    def ready(self, session: Session) -> int:
        ledger = self._commands.get(session.session_id, {})
        return sum(
            1
            for code in session.device_codes
            if (c := ledger.get((code, CommandKind.START))) and c.state == CommandState.ACKED
        )

    def sort_key(self, session: Session, column: int) -> Any:
        if column == self.ID:
            return session.session_id
        if column == self.DURATION:
            return self._duration(session)
        return self.display(session, column)

    def decoration(self, session: Session, column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.FontRole and session.status.active:
            font = QFont()
            font.setBold(True)
            return font
        return None

    def _duration(self, session: Session) -> float:
        start = _epoch(session.started_at) or time.time()
        end = _epoch(session.ended_at) or time.time()
        return end - start

    def display(self, session: Session, column: int) -> str:
        if column == self.ID:
            return str(session.session_id)
        if column == self.GROUP:
            return session.group_code
        if column == self.STARTED_BY:
            return session.started_by
        if column == self.STATUS:
            return str(session.status)
        if column == self.STARTED:
            return local_time(session.started_at)
        if column == self.DURATION:
            return ago(self._duration(session))
        if column == self.READY:
            return f"{self.ready(session)}/{len(session.device_codes)}"
        return ""


class NewSessionDialog(QDialog):
    """Choose a group, and whether to take all its devices or only those selected."""

    chosen = Signal(str, list)  # group_code, device_codes ([] = the whole group)

    def __init__(self, groups: list[str], selected: list[str], parent: QWidget | None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("New session"))
        self.group = QComboBox(self)
        self.group.setEditable(True)
        self.group.addItems(groups)
        self._selected = selected
        self.whole_group = QRadioButton(self.tr("Every device of the group"), self)
        self.only_selected = QRadioButton(
            self.tr("Only the selected devices: %s") % (", ".join(selected) or self.tr("none")),
            self,
        )
        self.whole_group.setChecked(True)
        self.only_selected.setEnabled(bool(selected))
        choice = QButtonGroup(self)
        choice.addButton(self.whole_group)
        choice.addButton(self.only_selected)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow(self.tr("Group:"), self.group)
        form.addRow(self.whole_group)
        form.addRow(self.only_selected)
        form.addRow(buttons)
        self.accepted.connect(self._emit)

    def _emit(self) -> None:
        codes = self._selected if self.only_selected.isChecked() else []
        self.chosen.emit(self.group.currentText().strip(), list(codes))


class SessionsView(QWidget):
    message = Signal(str)

    def __init__(
        self,
        app: StationApp,
        selected_devices: Callable[[], list[str]],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.app = app
        self._selected_devices = selected_devices
        self._detail_for: int | None = None
        self._uploads: tuple[StationService, UploadService] | None = None
        self._reading: dict[str, bool] = {}  # "detail"/"stats": a read in flight, and rerun?
        self.export_dialog: QFileDialog | None = None
        self._export_folder: Path | None = None  # where the last export went

        self.model = SessionTableModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.table = QTableView(self)
        self.table.setObjectName("sessions_table")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(SessionTableModel.ID, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)

        self.summary = QLabel(self.tr("Select a session to see its devices and event log."), self)
        self.summary.setWordWrap(True)
        self.uploads_table = QTableWidget(0, 6, self)
        self.uploads_table.setObjectName("session_uploads")
        self.uploads_table.setHorizontalHeaderLabels(
            [
                self.tr("Device"),
                self.tr("Samples"),
                self.tr("Sensors"),
                self.tr("First sample"),
                self.tr("Last sample"),
                self.tr("Upload"),
            ]
        )
        self.uploads_table.horizontalHeader().setStretchLastSection(True)
        self.uploads_table.verticalHeader().hide()
        self.uploads_table.verticalHeader().setDefaultSectionSize(22)
        self.uploads_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.commands_table = QTableWidget(0, 6, self)
        self.commands_table.setObjectName("session_commands")
        self.commands_table.setHorizontalHeaderLabels(
            [
                self.tr("Device"),
                self.tr("Command"),
                self.tr("State"),
                self.tr("Attempts"),
                self.tr("Round trip"),
                self.tr("Error"),
            ]
        )
        self.commands_table.horizontalHeader().setStretchLastSection(True)
        self.commands_table.verticalHeader().hide()
        self.commands_table.verticalHeader().setDefaultSectionSize(22)
        self.commands_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.events_table = QTableWidget(0, 4, self)
        self.events_table.setObjectName("session_events")
        self.events_table.setHorizontalHeaderLabels(
            [self.tr("Time"), self.tr("Actor"), self.tr("Result"), self.tr("Event")]
        )
        self.events_table.horizontalHeader().setStretchLastSection(True)
        self.events_table.verticalHeader().hide()
        self.events_table.verticalHeader().setDefaultSectionSize(22)
        self.events_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)

        self._build_actions()
        toolbar = QToolBar(self.tr("Session actions"), self)
        for action in self.actions_list:
            toolbar.addAction(action)

        detail = QWidget(self)
        detail_layout = QVBoxLayout(detail)
        detail_layout.setContentsMargins(0, 0, 0, 0)
        detail_layout.addWidget(self.summary)
        detail_layout.addWidget(self.uploads_table, 1)
        detail_layout.addWidget(self.commands_table, 1)
        detail_layout.addWidget(self.events_table, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.addWidget(self.table)
        splitter.addWidget(detail)
        splitter.setSizes([480, 520])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(toolbar)
        layout.addWidget(splitter, 1)

        # Bursts of commands and events for the shown session collapse into one re-read.
        self._detail_timer = QTimer(self)
        self._detail_timer.setSingleShot(True)
        self._detail_timer.setInterval(50)
        self._detail_timer.timeout.connect(self._reload_detail)
        # Samples arrive many times a second; their figures are re-read once a second at most.
        self._stats_timer = QTimer(self)
        self._stats_timer.setSingleShot(True)
        self._stats_timer.setInterval(STATS_EVERY_MS)
        self._stats_timer.timeout.connect(self._reload_stats)
        self._tick = QTimer(self)
        self._tick.setInterval(1000)
        self._tick.timeout.connect(self.model.repaint_durations)
        self._tick.start()
        self._update_actions()

    def _build_actions(self) -> None:
        def make(text: str, shortcut: str, slot: Callable[[], None]) -> QAction:
            action = QAction(text, self)
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            action.triggered.connect(slot)
            return action

        self.new_action = make(self.tr("New session…"), "Ctrl+N", self.new_session)
        self.collect_action = make(
            self.tr("Start collection"), "Ctrl+Return", self.start_collection
        )
        self.end_action = make(self.tr("Stop collection"), "Ctrl+E", self.end_session)
        self.finish_action = make(self.tr("Finish"), "Ctrl+Shift+F", self.finish_session)
        self.finish_action.setToolTip(
            self.tr(
                "Complete a stopping session without waiting for the devices that have not "
                "reported their upload"
            )
        )
        self.abort_action = make(self.tr("Abort"), "Ctrl+Shift+A", self.abort_session)
        self.export_action = make(self.tr("Export…"), "Ctrl+Shift+E", self.export_session)
        self.export_action.setToolTip(self.tr("Write the session's samples to a folder"))
        self.actions_list = [
            self.new_action,
            self.collect_action,
            self.end_action,
            self.finish_action,
            self.abort_action,
            self.export_action,
        ]

    # ---- feeding -------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the recent sessions and the ledgers of those still active."""
        service = self.app.service
        if service is None:
            return
        sessions = await service.sessions()
        self.model.reset(sessions)
        for session in sessions[:50]:
            detail = await service.session_detail(session.session_id)
            self.model.commands(session.session_id, detail.commands)
        self._update_actions()

    def session_changed(self, session: Session) -> None:
        self.model.upsert(session)
        if session.session_id == self._detail_for:
            self._detail_timer.start()
        self._update_actions()

    def command_changed(self, command: Command) -> None:
        self.model.command(command)
        if command.session_id is not None and command.session_id == self._detail_for:
            self._detail_timer.start()

    def event_logged(self, event: Event) -> None:
        if event.session_id is not None and event.session_id == self._detail_for:
            self._detail_timer.start()

    def samples_stored(self, session_id: int | None) -> None:
        if session_id is not None and session_id == self._detail_for:
            if not self._stats_timer.isActive():
                self._stats_timer.start()

    # ---- selection -----------------------------------------------------------------------------

    def selected_session(self) -> Session | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self.model.session_at(self.proxy.mapToSource(rows[0]).row())

    def selected_session_id(self) -> int | None:
        session = self.selected_session()
        return session.session_id if session else None

    def select(self, session_id: int) -> None:
        row = self.model.row_of(session_id)
        if row is None:
            return
        self.table.selectRow(self.proxy.mapFromSource(self.model.index(row, 0)).row())

    def _selection_changed(self, _selected: QItemSelection, _deselected: QItemSelection) -> None:
        self._detail_for = self.selected_session_id()
        self._update_actions()
        if self._detail_for is None:
            self.uploads_table.setRowCount(0)
            self.commands_table.setRowCount(0)
            self.events_table.setRowCount(0)
            return
        self._reload_detail()

    def _update_actions(self) -> None:
        session = self.selected_session()
        running = self.app.running
        status = session.status if session else None
        self.new_action.setEnabled(running)
        self.collect_action.setEnabled(running and status == "calibrating")
        self.end_action.setEnabled(running and status in ("calibrating", "collecting"))
        self.finish_action.setEnabled(running and status == SessionStatus.STOPPING)
        self.abort_action.setEnabled(running and session is not None and session.status.active)
        self.export_action.setEnabled(running and session is not None)

    def _reload_detail(self) -> None:
        self._read("detail", self._show_detail, self.tr("read the session"))

    def _reload_stats(self) -> None:
        self._read("stats", self._show_stats, self.tr("read the session's uploads"))

    def _read(self, what: str, show: Callable[[int], Any], words: str) -> None:
        """One read of each kind at a time; a request meanwhile runs once more afterwards."""
        if self.app.service is None or self._detail_for is None:
            return
        if what in self._reading:
            self._reading[what] = True
            return
        self._reading[what] = False
        self.app.spawn(self._read_then_maybe_again(what, show, words), words)

    async def _read_then_maybe_again(
        self, what: str, show: Callable[[int], Any], words: str
    ) -> None:
        try:
            if self._detail_for is not None:
                await show(self._detail_for)
        finally:
            again = self._reading.pop(what, False)
        if again:
            self._read(what, show, words)

    def upload_service(self) -> UploadService | None:
        service = self.app.service
        if service is None:
            return None
        if self._uploads is None or self._uploads[0] is not service:
            self._uploads = (service, UploadService(service))
        return self._uploads[1]

    async def _show_detail(self, session_id: int) -> None:
        service = self.app.service
        if service is None:
            return
        detail = await service.session_detail(session_id)
        if session_id == self._detail_for:
            self.show_detail(detail)
        await self._show_stats(session_id)

    async def _show_stats(self, session_id: int) -> None:
        uploads = self.upload_service()
        if uploads is None:
            return
        stats = await uploads.session_stats(session_id)
        if session_id == self._detail_for:
            self.show_stats(stats)

    def show_stats(self, stats: dict[str, Any]) -> None:
        """Per device: samples, sensors, first and last sample time, upload state."""
        devices = stats.get("devices", {})
        self.uploads_table.setRowCount(len(devices))
        for row, (code, entry) in enumerate(sorted(devices.items())):
            sensors = entry.get("sensors") or {}
            upload = str(entry.get("upload", ""))
            cells = [
                code,
                f"{entry.get('samples', 0):,}",
                ", ".join(sorted(sensors)),
                local_time(entry.get("first_sample_at")),
                local_time(entry.get("last_sample_at")),
                upload,
            ]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column == 1:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                if column == 2 and sensors:
                    item.setToolTip(
                        ", ".join(f"{name}: {count:,}" for name, count in sorted(sensors.items()))
                    )
                if column == 5:
                    item.setForeground(UPLOAD_COLOURS.get(upload, QColor("#8a8a8a")))
                    completed = entry.get("upload_completed_at")
                    if completed:
                        item.setToolTip(self.tr("reported at %s") % local_time(completed))
                self.uploads_table.setItem(row, column, item)

    def show_detail(self, detail: SessionDetail) -> None:
        session = detail.session
        self.model.commands(session.session_id, detail.commands)
        self.summary.setText(
            self.tr("Session %s, group %s: %s, started by %s at %s; devices: %s")
            % (
                session.session_id,
                session.group_code,
                session.status,
                session.started_by,
                local_time(session.started_at),
                ", ".join(session.device_codes) or self.tr("none"),
            )
        )
        commands = sorted(detail.commands, key=lambda c: (c.device_code, c.command_id))
        self.commands_table.setRowCount(len(commands))
        for row, command in enumerate(commands):
            cells = [
                command.device_code,
                str(command.kind),
                str(command.state),
                str(command.attempts),
                f"{command.round_trip_ms:.0f} ms" if command.round_trip_ms is not None else "",
                command.last_error or "",
            ]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column == 2:
                    item.setForeground(STATE_COLOURS.get(command.state, QColor("#8a8a8a")))
                if column == 5 and text:
                    item.setToolTip(text)
                self.commands_table.setItem(row, column, item)
        events = detail.events
        self.events_table.setRowCount(len(events))
        for row, event in enumerate(events):
            cells = [local_time(event.at), event.actor, event.result, event.message]
            for column, text in enumerate(cells):
                self.events_table.setItem(row, column, QTableWidgetItem(text))
        self.events_table.scrollToBottom()
        self._update_actions()

    # ---- actions -------------------------------------------------------------------------------

    def new_session(self) -> None:
        if self.app.service is None:
            return
        self.app.spawn(self._open_new_session_dialog(), self.tr("list the groups"))

    async def _open_new_session_dialog(self) -> None:
        service = self.app.service
        assert service is not None
        groups = [g["group_code"] for g in await service.groups()]
        dialog = NewSessionDialog(groups, self._selected_devices(), self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.chosen.connect(self.start_session)
        dialog.open()

    def start_session(self, group_code: str, device_codes: list[str]) -> None:
        service = self.app.service
        if service is None or not group_code:
            return
        self.app.spawn(
            self._start_session(group_code, device_codes),
            self.tr("start a session for group %s") % group_code,
        )

    async def _start_session(self, group_code: str, device_codes: list[str]) -> None:
        service = self.app.service
        assert service is not None
        session = await service.start_session(group_code, STAFF, device_codes=device_codes or None)
        self.select(session.session_id)
        self.message.emit(self.tr("Session %s started (calibrating)") % session.session_id)

    def start_collection(self) -> None:
        self._act(self.tr("start collection"), lambda s, sid: s.start_collection(sid, STAFF))

    def end_session(self) -> None:
        self._act(self.tr("stop collection"), lambda s, sid: s.end_session(sid, STAFF))

    def finish_session(self) -> None:
        service = self.app.service
        session_id = self.selected_session_id()
        if service is None or session_id is None:
            self.message.emit(self.tr("Select a stopping session first."))
            return
        self.app.spawn(self._finish(session_id), self.tr("finish session %s") % session_id)

    async def _finish(self, session_id: int) -> None:
        service = self.app.service
        uploads = self.upload_service()
        assert service is not None and uploads is not None
        session = await service.finish_session(session_id, STAFF)
        stats = await uploads.session_stats(session_id)
        pending = [
            code for code, entry in stats["devices"].items() if entry["upload"] != "complete"
        ]
        text = self.tr("Session %s finished: %s") % (session_id, session.status)
        if pending:
            text += self.tr("; no upload reported by %s") % ", ".join(pending)
        self.message.emit(text)

    def export_session(self) -> None:
        """Ask for a folder (a non-modal dialog: open(), never exec() beside the qasync loop)."""
        session_id = self.selected_session_id()
        if self.app.station is None or session_id is None:
            self.message.emit(self.tr("Select a session first."))
            return
        dialog = QFileDialog(self, self.tr("Export session %s to a folder") % session_id)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptOpen)
        dialog.setLabelText(QFileDialog.DialogLabel.Accept, self.tr("Export here"))
        dialog.setDirectory(str(self._export_folder or Path.home()))
        dialog.fileSelected.connect(lambda folder: self.export_to(session_id, Path(folder)))
        dialog.destroyed.connect(lambda: setattr(self, "export_dialog", None))
        self.export_dialog = dialog
        dialog.open()

    def export_to(self, session_id: int, folder: Path) -> None:
        self._export_folder = folder
        self.app.spawn(self._export(session_id, folder), self.tr("export session %s") % session_id)

    async def _export(self, session_id: int, folder: Path) -> Path | None:
        station = self.app.station
        if station is None or station.store is None:
            return None
        try:
            from station.export import export_session
        except ImportError:
            self.message.emit(self.tr("This station cannot export sessions yet."))
            return None
        self.message.emit(self.tr("Exporting session %s to %s…") % (session_id, folder))
        try:
            result = await export_session(station.store, session_id, folder)
        except Exception as exc:  # any failure is reported to staff, in words, not lost
            log.warning("could not export session %s to %s: %s", session_id, folder, exc)
            self.message.emit(
                self.tr("Could not export session %s: %s") % (session_id, plain_words(exc))
            )
            return None
        written = Path(getattr(result, "folder", result))
        text = self.tr("Session %s exported to %s") % (session_id, written)
        files = getattr(result, "files", None)
        if files is not None:
            text += self.tr(" (%s samples in %d files)") % (f"{result.samples:,}", len(files))
        self.message.emit(text)
        return written

    def abort_session(self) -> None:
        session_id = self.selected_session_id()
        if session_id is None:
            return
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            self.tr("Abort session"),
            self.tr("Abort session %s? Devices are told to stop, best effort.") % session_id,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            self,
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.accepted.connect(
            lambda: self._act(self.tr("abort"), lambda s, sid: s.abort_session(sid, STAFF))
        )
        box.open()

    def _act(self, what: str, call: Callable[[Any, int], Any]) -> None:
        service = self.app.service
        session_id = self.selected_session_id()
        if service is None or session_id is None:
            self.message.emit(self.tr("Select a session first."))
            return
        self.app.spawn(self._outcome(what, call(service, session_id)), what)

    async def _outcome(self, what: str, coro: Any) -> None:
        outcome = await coro
        failed = [c for c in outcome.commands if c.state == CommandState.FAILED]
        text = self.tr("%s: session %s is %s") % (
            what,
            outcome.session.session_id,
            outcome.session.status,
        )
        if failed:
            text += self.tr("; %d device(s) failed: %s") % (
                len(failed),
                "; ".join(f"{c.device_code}: {c.last_error}" for c in failed),
            )
        self.message.emit(text)
