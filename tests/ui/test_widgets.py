"""Widgets that need no running station: the settings dialog, the log buffer, the plot rings."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from station.config import Settings
from station.ui.log_view import BufferHandler, LogDock
from station.ui.plots import Ring
from station.ui.settings_dialog import SettingsDialog


def test_settings_dialog_saves_and_says_which_changes_need_a_restart(qtbot, tmp_path: Path):
    settings = Settings()
    dialog = SettingsDialog(settings, tmp_path)
    qtbot.addWidget(dialog)
    dialog.port.setValue(8123)
    dialog.poll_interval.setValue(2.5)

    with qtbot.waitSignal(dialog.saved) as saved:
        dialog.save()

    assert saved.args == [["port"]]
    assert Settings.load(tmp_path).port == 8123
    assert settings.poll_interval == 2.5  # applied to the running station now
    assert settings.port == 8000  # only after a restart
    assert "port" in dialog.status.text()


def test_settings_dialog_refuses_a_bad_network_and_saves_nothing(qtbot, tmp_path: Path):
    dialog = SettingsDialog(Settings(), tmp_path)
    qtbot.addWidget(dialog)
    dialog.networks.setText("private, not-a-network")

    dialog.save()

    assert dialog.status.text().startswith("Not saved")
    assert not (tmp_path / "settings.json").exists()


def test_log_buffer_is_bounded_and_the_dock_filters_by_level(qtbot):
    handler = BufferHandler(size=3)
    logger = logging.getLogger("station.test.dock")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        for n in range(5):
            logger.info("line %d", n)
        logger.error("broken")
    finally:
        logger.removeHandler(handler)
    dock = LogDock(handler)
    qtbot.addWidget(dock)

    dock.drain()

    assert len(handler.records) == 3
    assert "line 0" not in dock.text() and "broken" in dock.text()
    dock.level.setCurrentIndex(3)
    assert dock.text().strip().endswith("broken") and "line 4" not in dock.text()


def test_ring_keeps_the_newest_points_in_order():
    ring = Ring(4)
    for n in range(6):
        ring.append(float(n), float(n * 10))

    t, v = ring.ordered()

    assert np.array_equal(t, [2, 3, 4, 5]) and np.array_equal(v, [20, 30, 40, 50])
