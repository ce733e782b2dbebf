"""The settings dialog (non-modal): edits Settings, saves them to the data dir, and says which
changes only take effect after a restart."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from station.config import Settings

# Read by the running station on every use; everything else is read once at start-up.
LIVE_FIELDS = ("allowed_networks", "poll_interval", "missed_polls_offline", "reply_wait")


class SettingsDialog(QDialog):
    saved = Signal(list)  # names of the changed fields that need a restart

    def __init__(self, settings: Settings, data_dir: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("Station settings"))
        self.settings = settings
        self.data_dir = data_dir

        self.host = QLineEdit(settings.host, self)
        self.port = QSpinBox(self)
        self.port.setRange(0, 65535)
        self.port.setValue(settings.port)
        self.networks = QLineEdit(", ".join(settings.allowed_networks), self)
        self.networks.setToolTip(
            self.tr("Comma-separated: private, link-local, loopback or ranges like 10.0.0.0/8")
        )
        self.connect_timeout = self._seconds(settings.connect_timeout)
        self.read_timeout = self._seconds(settings.read_timeout)
        self.reply_wait = self._seconds(settings.reply_wait)
        self.poll_interval = self._seconds(settings.poll_interval)
        self.retries = QSpinBox(self)
        self.retries.setRange(0, 10)
        self.retries.setValue(settings.command_retries)
        data_dir_label = QLabel(str(data_dir), self)
        data_dir_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        data_dir_label.setToolTip(self.tr("Choose another with: station --data-dir PATH"))
        self.status = QLabel(self)
        self.status.setWordWrap(True)

        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Close, self
        )
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.close)

        form = QFormLayout(self)
        form.addRow(self.tr("Bind address (restart):"), self.host)
        form.addRow(self.tr("Port (restart):"), self.port)
        form.addRow(self.tr("Allowed device networks:"), self.networks)
        form.addRow(self.tr("Connect timeout (restart):"), self.connect_timeout)
        form.addRow(self.tr("Read timeout (restart):"), self.read_timeout)
        form.addRow(self.tr("Command retries (restart):"), self.retries)
        form.addRow(self.tr("Reply wait:"), self.reply_wait)
        form.addRow(self.tr("Poll interval:"), self.poll_interval)
        form.addRow(self.tr("Data dir (--data-dir):"), data_dir_label)
        form.addRow(self.status)
        form.addRow(buttons)

    def _seconds(self, value: float) -> QDoubleSpinBox:
        box = QDoubleSpinBox(self)
        box.setRange(0.1, 60.0)
        box.setDecimals(1)
        box.setSuffix(" s")
        box.setValue(value)
        return box

    def edited(self) -> Settings:
        """The settings as edited; raises ValidationError when a value is refused."""
        networks = [n.strip() for n in self.networks.text().split(",") if n.strip()]
        return Settings.model_validate(
            self.settings.model_dump()
            | {
                "host": self.host.text().strip(),
                "port": self.port.value(),
                "allowed_networks": networks,
                "connect_timeout": self.connect_timeout.value(),
                "read_timeout": self.read_timeout.value(),
                "command_retries": self.retries.value(),
                "reply_wait": self.reply_wait.value(),
                "poll_interval": self.poll_interval.value(),
            }
        )

    def save(self) -> None:
        try:
            edited = self.edited()
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            self.status.setText(self.tr("Not saved: %s") % problems)
            return
        edited.save(self.data_dir)

        before = self.settings.model_dump()
        after = edited.model_dump()
        changed = [name for name in after if after[name] != before[name]]
        need_restart = [name for name in changed if name not in LIVE_FIELDS]
        for name in changed:
            if name in LIVE_FIELDS:
                setattr(self.settings, name, after[name])  # the running station reads these
        if need_restart:
            self.status.setText(
                self.tr("Saved. Restart the station for: %s.") % ", ".join(need_restart)
            )
        else:
            self.status.setText(self.tr("Saved; in effect now."))
        self.saved.emit(need_restart)
