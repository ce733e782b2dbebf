"""The Devices tab: every registered device as a row, kept current from the service's events,
with the staff actions on the selected devices (start, stop, check, group, rename, forget)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import (
    QObject,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QAction, QColor, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLineEdit,
    QMenu,
    QMessageBox,
    QTableView,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from station.backend.models import Device, Liveness, parse_iso
from station.ui.application import StationApp
from station.ui.table_model import RecordTableModel

LIVENESS_COLOURS = {
    Liveness.ONLINE: QColor("#2e9d44"),
    Liveness.STALE: QColor("#d89a16"),
    Liveness.OFFLINE: QColor("#c8352b"),
    Liveness.UNKNOWN: QColor("#8a8a8a"),
}


def ago(seconds: float) -> str:
    """A short duration for "last seen N ago" and session lengths."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class DeviceTableModel(RecordTableModel[Device]):
    CODE, NAME, GROUPS, ADDRESS, LIVENESS, STATUS, SESSION, LAST_SEEN, ERROR = range(9)

    def __init__(self, parent: QObject | None = None) -> None:
        headers = [
            self.tr("Device"),
            self.tr("Name"),
            self.tr("Groups"),
            self.tr("Address"),
            self.tr("Liveness"),
            self.tr("Reported status"),
            self.tr("Session"),
            self.tr("Last seen"),
            self.tr("Last error"),
        ]
        super().__init__(headers, lambda d: d.device_code, parent)
        self._seen_at: dict[str, float] = {}

    # ---- feeding -------------------------------------------------------------------------------

    def reset(self, devices: list[Device]) -> None:
        self._seen_at = {}
        for device in devices:
            moment = parse_iso(device.last_seen)
            if moment is not None:
                self._seen_at[device.device_code] = moment.timestamp()
        self.reset_records(devices)

    def upsert(self, device: Device) -> None:
        moment = parse_iso(device.last_seen)
        if moment is not None:
            seen = moment.timestamp()
            self._seen_at[device.device_code] = max(seen, self._seen_at.get(device.device_code, 0))
        self.upsert_record(device)

    def remove(self, device_code: str) -> None:
        if self.remove_record(device_code):
            self._seen_at.pop(device_code, None)

    def seen(self, device_code: str, at: float) -> None:
        """A sign of life; shown by the next repaint of the last-seen column."""
        self._seen_at[device_code] = at

    def repaint_last_seen(self) -> None:
        self.column_changed(self.LAST_SEEN)

    # ---- reading -------------------------------------------------------------------------------

    def device_at(self, row: int) -> Device:
        return self.record_at(row)

    def codes(self) -> list[str]:
        return [d.device_code for d in self._records]

    def sort_key(self, device: Device, column: int) -> Any:
        if column == self.LAST_SEEN:
            return -self._seen_at.get(device.device_code, 0.0)
        if column == self.SESSION:
            return device.reported_session_id or 0
        return self.display(device, column) or ""

    def decoration(self, device: Device, column: int, role: int) -> Any:
        if column == self.LIVENESS:
            colour = LIVENESS_COLOURS.get(device.liveness, LIVENESS_COLOURS[Liveness.UNKNOWN])
            if role in (Qt.ItemDataRole.DecorationRole, Qt.ItemDataRole.ForegroundRole):
                return colour
        if column == self.ERROR and role == Qt.ItemDataRole.ToolTipRole:
            return device.last_error
        if column == self.ADDRESS and role == Qt.ItemDataRole.ToolTipRole and device.moved_to:
            return self.tr("%s registered at this address since") % device.moved_to
        return None

    def display(self, device: Device, column: int) -> str | None:
        if column == self.CODE:
            return device.device_code
        if column == self.NAME:
            return device.name
        if column == self.GROUPS:
            return ", ".join(device.groups)
        if column == self.ADDRESS:
            if device.moved_to:
                return self.tr("%s (moved)") % (device.address or "")
            return device.address or self.tr("unknown")
        if column == self.LIVENESS:
            return self._liveness_text(device.liveness)
        if column == self.STATUS:
            return device.reported_status or ""
        if column == self.SESSION:
            return str(device.reported_session_id) if device.reported_session_id else ""
        if column == self.LAST_SEEN:
            seen = self._seen_at.get(device.device_code)
            if seen is None:
                return self.tr("never")
            return self.tr("%s ago") % ago(time.time() - seen)
        if column == self.ERROR:
            return device.last_error or ""
        return None

    def _liveness_text(self, liveness: Liveness) -> str:
        return {
            Liveness.ONLINE: self.tr("online"),
            Liveness.STALE: self.tr("stale"),
            Liveness.OFFLINE: self.tr("offline"),
            Liveness.UNKNOWN: self.tr("unknown"),
        }.get(liveness, str(liveness))


class DevicesView(QWidget):
    """Filter box, action toolbar and the device table."""

    message = Signal(str)  # a plain-words outcome for the status bar

    def __init__(
        self,
        app: StationApp,
        selected_session: Callable[[], int | None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.app = app
        self._selected_session = selected_session
        self._dialogs: set[QWidget] = set()

        self.model = DeviceTableModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)

        self.filter_box = QLineEdit(self)
        self.filter_box.setPlaceholderText(self.tr("Filter devices (code, name, group, status…)"))
        self.filter_box.setClearButtonEnabled(True)
        self.filter_box.textChanged.connect(self.proxy.setFilterFixedString)

        self.table = QTableView(self)
        self.table.setObjectName("devices_table")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(DeviceTableModel.CODE, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._context_menu)
        for column, width in ((0, 90), (1, 110), (2, 90), (3, 130), (4, 90), (5, 120), (6, 70)):
            self.table.setColumnWidth(column, width)

        self._build_actions()
        self.toolbar = QToolBar(self.tr("Device actions"), self)
        for action in self.actions_list:
            self.toolbar.addAction(action)

        top = QHBoxLayout()
        top.addWidget(self.filter_box, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.table, 1)

        self._tick = QTimer(self)
        self._tick.setInterval(1000)
        self._tick.timeout.connect(self.model.repaint_last_seen)
        self._tick.start()

    def _build_actions(self) -> None:
        def make(text: str, shortcut: str | None, slot: Callable[[], None]) -> QAction:
            action = QAction(text, self)
            if shortcut:
                action.setShortcut(QKeySequence(shortcut))
                action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            action.triggered.connect(slot)
            return action

        self.start_action = make(self.tr("Start"), "Ctrl+Shift+S", self.start_selected)
        self.start_action.setToolTip(
            self.tr(
                "Start collecting on the selected devices, for the "
                "session selected in the Sessions tab"
            )
        )
        self.stop_action = make(self.tr("Stop"), "Ctrl+Shift+X", self.stop_selected)
        self.check_action = make(self.tr("Check now"), "Ctrl+K", self.check_selected)
        self.group_action = make(self.tr("Assign to group…"), "Ctrl+G", self.assign_selected)
        self.rename_action = make(self.tr("Rename…"), "F2", self.rename_selected)
        self.forget_action = make(self.tr("Forget…"), "Ctrl+Del", self.forget_selected)
        self.actions_list = [
            self.start_action,
            self.stop_action,
            self.check_action,
            self.group_action,
            self.rename_action,
            self.forget_action,
        ]

    def _context_menu(self, pos: Any) -> None:
        menu = QMenu(self)
        for action in self.actions_list:
            menu.addAction(action)
        menu.popup(self.table.viewport().mapToGlobal(pos))

    # ---- selection -----------------------------------------------------------------------------

    def selected_codes(self) -> list[str]:
        rows = {self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()}
        return [self.model.device_at(r).device_code for r in sorted(rows)]

    def select(self, device_codes: list[str]) -> None:
        selection = self.table.selectionModel()
        selection.clearSelection()
        for code in device_codes:
            row = self.model.row_of(code)
            if row is None:
                continue
            index = self.proxy.mapFromSource(self.model.index(row, 0))
            selection.select(
                index,
                selection.SelectionFlag.Select | selection.SelectionFlag.Rows,
            )

    def _require_selection(self) -> list[str]:
        codes = self.selected_codes()
        if not codes:
            self.message.emit(self.tr("Select one or more devices first."))
        return codes

    # ---- actions -------------------------------------------------------------------------------

    def start_selected(self) -> None:
        codes = self._require_selection()
        service = self.app.service
        if not codes or service is None:
            return
        session_id = self._selected_session()
        if session_id is None:
            self.message.emit(self.tr("Select an active session in the Sessions tab first."))
            return
        for code in codes:
            self.app.spawn(
                self._report(
                    service.notify_device_start(session_id, code, "staff"),
                    self.tr("%s started for session %s") % (code, session_id),
                ),
                self.tr("start %s") % code,
            )

    def stop_selected(self) -> None:
        codes = self._require_selection()
        service = self.app.service
        if service is None:
            return
        for code in codes:
            self.app.spawn(
                self._report(
                    service.notify_device_stop(code, "staff"), self.tr("%s stopped") % code
                ),
                self.tr("stop %s") % code,
            )

    def check_selected(self) -> None:
        service = self.app.service
        if service is None:
            return
        for code in self._require_selection():
            self.app.spawn(self._check(code), self.tr("check %s") % code)

    async def _report(self, coro: Any, done: str) -> None:
        await coro
        self.message.emit(done)

    async def _check(self, code: str) -> None:
        service = self.app.service
        assert service is not None
        reply = await service.check_device(code, "staff")
        status = reply.device_status or self.tr("no status")
        if reply.session_id:
            status = self.tr("%s in session %s") % (status, reply.session_id)
        self.message.emit(self.tr("%s answered in %.0f ms: %s") % (code, reply.elapsed_ms, status))

    def assign_selected(self) -> None:
        codes = self._require_selection()
        if not codes:
            return
        current = self.model.device_at(self.model.row_of(codes[0]) or 0).groups
        dialog = self._input_dialog(
            self.tr("Assign to group"),
            self.tr("Group code for %s (prefix with - to remove):") % ", ".join(codes),
            current[0] if current else "",
        )
        dialog.textValueSelected.connect(lambda text: self._assign(codes, text))
        dialog.open()

    def _assign(self, codes: list[str], text: str) -> None:
        service = self.app.service
        text = text.strip()
        if service is None or not text:
            return
        member = not text.startswith("-")
        group = text.lstrip("-").strip()
        for code in codes:
            self.app.spawn(
                service.set_group_membership(group, code, member, "staff"),
                self.tr("change the groups of %s") % code,
            )

    def rename_selected(self) -> None:
        codes = self._require_selection()
        if not codes:
            return
        code = codes[0]
        row = self.model.row_of(code)
        name = self.model.device_at(row).name if row is not None else ""
        dialog = self._input_dialog(
            self.tr("Rename device"), self.tr("New name for %s:") % code, name
        )
        dialog.textValueSelected.connect(lambda text: self._rename(code, text))
        dialog.open()

    def _rename(self, code: str, name: str) -> None:
        service = self.app.service
        if service is not None:
            self.app.spawn(service.rename_device(code, name, "staff"), self.tr("rename %s") % code)

    def forget_selected(self) -> None:
        codes = self._require_selection()
        if not codes:
            return
        box = QMessageBox(
            QMessageBox.Icon.Question,
            self.tr("Forget devices"),
            self.tr("Forget %s? They disappear until they register again.") % ", ".join(codes),
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            self,
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.accepted.connect(lambda: self._forget(codes))
        box.open()

    def _forget(self, codes: list[str]) -> None:
        service = self.app.service
        if service is None:
            return
        for code in codes:
            self.app.spawn(service.forget_device(code, "staff"), self.tr("forget %s") % code)

    def _input_dialog(self, title: str, label: str, value: str) -> QInputDialog:
        dialog = QInputDialog(self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.setWindowTitle(title)
        dialog.setLabelText(label)
        dialog.setTextValue(value)
        return dialog
