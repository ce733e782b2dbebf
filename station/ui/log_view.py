"""The log dock: the station's log records in the window, newest last, filterable by level.
A logging.Handler appends to a bounded buffer (from any thread); a timer moves new records
into the view, so a burst of logging never stalls the event loop."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from station.logs import FORMAT, setup_logging

BUFFER_RECORDS = 5000
LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)


class BufferHandler(logging.Handler):
    """Keeps the last records, formatted; `sequence` counts every record ever received."""

    def __init__(self, size: int = BUFFER_RECORDS) -> None:
        super().__init__(logging.DEBUG)
        self.records: deque[tuple[int, int, str]] = deque(maxlen=size)
        self.sequence = 0
        self.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.sequence += 1
        self.records.append((self.sequence, record.levelno, text))


WIRE_LOGGERS = ("httpx", "aiohttp.access", "station.devices.simulator")


def quiet_wire_loggers(level: int = logging.WARNING) -> None:
    """Every request at INFO is wire detail (the simulator logs each one it serves): -v only."""
    for name in WIRE_LOGGERS:
        logging.getLogger(name).setLevel(level)


def install_logging(data_dir: Path | None, verbose: bool) -> BufferHandler:
    """Root logging to stderr, the window's buffer and (with a data dir) a rotating file."""
    setup_logging(verbose, data_dir)
    if not verbose:
        quiet_wire_loggers()
    buffer = BufferHandler()
    logging.getLogger().addHandler(buffer)
    return buffer


class LogDock(QDockWidget):
    def __init__(self, handler: BufferHandler, parent: QWidget | None = None) -> None:
        super().__init__(self.tr("Log"), parent)
        self.setObjectName("log_dock")
        self.handler = handler
        self._shown = 0  # sequence number of the last record put in the view

        self.level = QComboBox(self)
        for level in LEVELS:
            self.level.addItem(logging.getLevelName(level), level)
        self.level.setCurrentIndex(1)
        self.level.currentIndexChanged.connect(self.rebuild)
        self.view = QPlainTextEdit(self)
        self.view.setReadOnly(True)
        self.view.setMaximumBlockCount(BUFFER_RECORDS)
        self.view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        font = QFont("monospace")
        font.setStyleHint(QFont.StyleHint.Monospace)
        self.view.setFont(font)

        bar = QHBoxLayout()
        bar.addWidget(QLabel(self.tr("Show from level:"), self))
        bar.addWidget(self.level)
        bar.addStretch(1)
        body = QWidget(self)
        layout = QVBoxLayout(body)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addLayout(bar)
        layout.addWidget(self.view, 1)
        self.setWidget(body)
        self.setAllowedAreas(
            Qt.DockWidgetArea.BottomDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea
        )

        self._timer = QTimer(self)
        self._timer.setInterval(200)
        self._timer.timeout.connect(self.drain)
        self._timer.start()

    def minimum_level(self) -> int:
        return int(self.level.currentData())

    def rebuild(self) -> None:
        self.view.clear()
        self._shown = 0
        self.drain()

    def drain(self) -> None:
        if self.handler.sequence == self._shown:
            return
        fresh = [r for r in list(self.handler.records) if r[0] > self._shown]
        if not fresh:
            return
        self._shown = fresh[-1][0]
        floor = self.minimum_level()
        lines = [text for _sequence, level, text in fresh if level >= floor]
        if lines:
            self.view.appendPlainText("\n".join(lines))

    def text(self) -> str:
        return self.view.toPlainText()
