"""A table model over records kept in arrival order and found by key: the devices table and the
sessions list both show one domain record a row, updated in place as the core's events arrive."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt

Record = TypeVar("Record")
Index = QModelIndex | QPersistentModelIndex


class RecordTableModel(QAbstractTableModel, Generic[Record]):
    """Subclasses give the headers, the key of a record, and what each cell shows: display()
    for the text, sort_key() for sorting (UserRole), decoration() for any other role."""

    def __init__(
        self, headers: list[str], key: Callable[[Record], Hashable], parent: QObject | None
    ) -> None:
        super().__init__(parent)
        self._headers = headers
        self._key = key
        self._records: list[Record] = []
        self._rows: dict[Hashable, int] = {}

    # ---- feeding ---------------------------------------------------------------------------

    def reset_records(self, records: list[Record]) -> None:
        self.beginResetModel()
        self._records = list(records)
        self._rows = {self._key(r): i for i, r in enumerate(self._records)}
        self.endResetModel()

    def upsert_record(self, record: Record) -> None:
        key = self._key(record)
        row = self._rows.get(key)
        if row is None:
            row = len(self._records)
            self.beginInsertRows(QModelIndex(), row, row)
            self._records.append(record)
            self._rows[key] = row
            self.endInsertRows()
            return
        self._records[row] = record
        self.row_changed(row)

    def remove_record(self, key: Hashable) -> bool:
        row = self._rows.get(key)
        if row is None:
            return False
        self.beginRemoveRows(QModelIndex(), row, row)
        del self._records[row]
        self._rows = {self._key(r): i for i, r in enumerate(self._records)}
        self.endRemoveRows()
        return True

    def row_changed(self, row: int) -> None:
        self.dataChanged.emit(self.index(row, 0), self.index(row, self.columnCount() - 1))

    def column_changed(self, column: int) -> None:
        if self._records:
            last = len(self._records) - 1
            self.dataChanged.emit(self.index(0, column), self.index(last, column))

    # ---- reading ---------------------------------------------------------------------------

    def record_at(self, row: int) -> Record:
        return self._records[row]

    def row_of(self, key: Hashable) -> int | None:
        return self._rows.get(key)

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._records)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._headers)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = 0) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self._headers[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        record = self._records[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self.display(record, column)
        if role == Qt.ItemDataRole.UserRole:
            return self.sort_key(record, column)
        return self.decoration(record, column, role)

    def display(self, record: Record, column: int) -> str | None:
        raise NotImplementedError

    def sort_key(self, record: Record, column: int) -> Any:
        return self.display(record, column) or ""

    def decoration(self, record: Record, column: int, role: int) -> Any:
        return None
