"""The Live data tab: acceleration and rotation of one device's sensors as the uploads arrive,
three axes and the magnitude, over a chosen window (10 s to the whole session).

The SamplesStored handler only appends to `LiveBuffers` (station.ui.live_data); the window's
one frame timer calls `redraw`, which hands each visible curve the slice of its window, already
reduced to about one minimum/maximum pair per two pixels. That is what clip-to-view and peak
downsampling would do, so the curves are plain PlotCurveItems, which cost a third of what a
PlotDataItem costs per setData. Ranges are set explicitly and change rarely (a fixed x window in
seconds before the newest sample, a y range with hysteresis), because every range change makes
pyqtgraph lay out the axes again and paint twice. Pens are 1 px, antialiasing off and the grid
has major lines only: measured offscreen, minor grid lines doubled the paint time (stack notes
§5)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QPaintEvent
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from station.backend.events import SamplesStored
from station.backend.models import Device
from station.ui.live_data import (
    ACC_MAG,
    ACC_X,
    GYRO_MAG,
    GYRO_X,
    LiveBuffers,
    Stream,
    break_gaps,
    peak_decimate,
)

WINDOWS: tuple[tuple[str, float | None], ...] = (
    ("10 s", 10.0),
    ("30 s", 30.0),
    ("1 min", 60.0),
    ("5 min", 300.0),
    ("Whole session", None),
)
DEFAULT_WINDOW = 1  # 30 s
MAX_SENSORS_SHOWN = 6
FRAME_HISTORY = 4096
AXIS_COLOURS = ("#d62728", "#2ca02c", "#1f77b4", "#303030")  # x, y, z, magnitude
# Whole-session x ranges grow in these steps, so the axis is laid out again only now and then.
SPANS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)


def whole_span(seconds: float) -> float:
    for span in SPANS:
        if seconds <= span * 0.95:
            return float(span)
    return float(math.ceil(seconds / 86400) * 86400)


def steady_range(current: tuple[float, float] | None, lo: float, hi: float) -> tuple[float, float]:
    """A y range for data in [lo, hi] that changes only when the data leaves it or uses less
    than a third of it; new ranges are padded by a tenth and rounded outwards."""
    if current is not None:
        a, b = current
        if a <= lo and hi <= b and (hi - lo) >= (b - a) / 3:
            return current
    if hi - lo < 1e-6:
        lo, hi = lo - 1.0, hi + 1.0
    pad = (hi - lo) * 0.1
    step = 10 ** math.floor(math.log10(hi - lo + 2 * pad)) / 2
    return math.floor((lo - pad) / step) * step, math.ceil((hi + pad) / step) * step


def clock(moment: float, *, millis: bool = False) -> str:
    text = time.strftime("%H:%M:%S", time.localtime(moment))
    return f"{text}.{int(moment * 1000) % 1000:03d}" if millis else text


class TimedPlot(pg.PlotWidget):
    """A PlotWidget that reports how long each paint took (the part of a frame Qt does later)."""

    def __init__(self, on_paint: Callable[[float], None], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._on_paint = on_paint

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt override)
        started = time.perf_counter()
        super().paintEvent(event)
        self._on_paint(time.perf_counter() - started)


class SensorPlots:
    """The acc and gyro plots of one sensor: x, y, z and magnitude curves each."""

    def __init__(self, on_paint: Callable[[float], None], parent: QWidget) -> None:
        self.sensor_type = ""
        self.drawn: tuple[object, ...] | None = None
        self.plots: list[TimedPlot] = []
        self.curves: list[list[pg.PlotCurveItem]] = []
        self._y_ranges: list[tuple[float, float] | None] = [None, None]
        self._x_range: tuple[float, float] | None = None
        self._titles = ["", ""]
        for _kind in ("acc", "gyro"):
            plot = TimedPlot(on_paint, parent=parent)
            item = plot.getPlotItem()
            item.disableAutoRange()
            item.hideButtons()
            item.setMenuEnabled(False)
            item.setMouseEnabled(x=False, y=False)
            item.showGrid(x=True, y=True, alpha=0.25)
            for side in ("left", "bottom"):
                item.getAxis(side).setStyle(maxTickLevel=0)
            item.getAxis("left").setWidth(48)
            curves = []
            for colour in AXIS_COLOURS:
                curve = pg.PlotCurveItem(pen=pg.mkPen(colour, width=1), connect="finite")
                item.addItem(curve)
                curves.append(curve)
            self.plots.append(plot)
            self.curves.append(curves)

    def set_visible(self, visible: bool) -> None:
        for plot in self.plots:
            plot.setVisible(visible)

    def clear(self) -> None:
        for curves in self.curves:
            for curve in curves:
                curve.setData([], [])
        self.drawn = None

    def draw(self, stream: Stream, seconds: float | None) -> int:
        """Hand the window's slice to the curves; returns the points given."""
        window = stream.window(seconds)
        if window is None:
            return 0
        x = window.x - window.newest
        x, y, gaps = break_gaps(x, window.y)
        width = max(200, int(self.plots[0].getPlotItem().vb.width()))
        x, y = peak_decimate(x, y, width)
        channels = np.ascontiguousarray(y.T)
        # Without breaks every value is finite: the straight path is cheaper to build.
        connect = "finite" if gaps else "all"

        if seconds is None:
            x_range = (-whole_span(window.newest - window.oldest), 0.0)
        else:
            x_range = (-seconds, 0.0)
        source = "" if window.source == "samples" else f" (min/max per {window.source})"
        points = 0
        for index, first in enumerate((ACC_X, GYRO_X)):
            magnitude = ACC_MAG if first == ACC_X else GYRO_MAG
            item = self.plots[index].getPlotItem()
            title = f"{stream.sensor_type} · {('acc', 'gyro')[index]}{source}"
            if title != self._titles[index]:
                item.setTitle(title, size="9pt")
                self._titles[index] = title
            if x_range != self._x_range:
                item.setXRange(*x_range, padding=0)
            for curve, channel in zip(
                self.curves[index], (first, first + 1, first + 2, magnitude), strict=True
            ):
                curve.setData(x, channels[channel], connect=connect, skipFiniteCheck=not gaps)
                points += len(x)
            shown = channels[[first, first + 1, first + 2, magnitude]]
            if len(x) and (not gaps or np.isfinite(shown).any()):
                lo, hi = float(np.nanmin(shown)), float(np.nanmax(shown))
                wanted = steady_range(self._y_ranges[index], lo, hi)
                if wanted != self._y_ranges[index]:
                    item.setYRange(*wanted, padding=0)
                    self._y_ranges[index] = wanted
        self._x_range = x_range
        return points


class LiveView(QWidget):
    """Device, sensor and window choosers, then acc and gyro plots per sensor shown."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        pg.setConfigOptions(antialias=False, background="w", foreground="k")
        self.buffers = LiveBuffers()
        self._names: dict[str, str] = {}
        self._layout_seen = -1
        self._slots: list[SensorPlots] = []
        self._shown: list[str] = []  # sensor types in the slots in use
        self._force = True
        self._pending_update: float | None = None  # seconds spent in the last redraw
        self._paint = 0.0
        self._last_info = 0.0
        self.last_frame_ms = 0.0  # the last frame: updating the curves plus painting them
        self.frame_ms: deque[float] = deque(maxlen=FRAME_HISTORY)
        self.points_drawn = 0  # for tests and benchmarks: points handed to setData so far

        self.device_box = QComboBox(self)
        self.device_box.setObjectName("live_device")
        self.device_box.setMinimumContentsLength(18)
        self.sensor_box = QComboBox(self)
        self.sensor_box.setObjectName("live_sensor")
        self.sensor_box.setMinimumContentsLength(10)
        self.window_box = QComboBox(self)
        self.window_box.setObjectName("live_window")
        for text, seconds in WINDOWS:
            self.window_box.addItem(self.tr(text), seconds)
        self.window_box.setCurrentIndex(DEFAULT_WINDOW)
        key = "  ".join(
            f"<span style='color:{colour}'>■</span> {name}"
            for colour, name in zip(AXIS_COLOURS, ("x", "y", "z", "magnitude"), strict=True)
        )
        self.key = QLabel(key, self)
        self.frame_label = QLabel(self)
        self.frame_label.setToolTip(self.tr("Time to update and paint the live plots, last frame"))
        self.info = QLabel(self)
        self.info.setWordWrap(True)

        bar = QHBoxLayout()
        for label, box in (
            (self.tr("&Device:"), self.device_box),
            (self.tr("Se&nsor:"), self.sensor_box),
            (self.tr("&Window:"), self.window_box),
        ):
            text = QLabel(label, self)
            text.setBuddy(box)
            bar.addWidget(text)
            bar.addWidget(box)
        bar.addStretch(1)
        bar.addWidget(self.key)
        bar.addSpacing(12)
        bar.addWidget(self.frame_label)

        self.empty = QLabel(
            self.tr(
                "No samples yet. Uploads from the devices show here as they arrive: start a "
                "session and its collection in the Sessions tab."
            ),
            self,
        )
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.grid_host = QWidget(self)
        self.grid = QGridLayout(self.grid_host)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(2)
        self.stack = QStackedWidget(self)
        self.stack.addWidget(self.empty)
        self.stack.addWidget(self.grid_host)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.info)
        layout.addWidget(self.stack, 1)

        self.device_box.currentIndexChanged.connect(self._device_chosen)
        self.sensor_box.currentIndexChanged.connect(self._sensors_chosen)
        self.window_box.currentIndexChanged.connect(self._window_chosen)

    # ---- feeding (cheap: buffers only) --------------------------------------------------------

    def samples_stored(self, change: SamplesStored) -> None:
        self.buffers.add(change)

    def reset(self, devices: list[Device]) -> None:
        self._names = {d.device_code: d.name or "" for d in devices}
        self._layout_seen = -1

    def device_changed(self, device: Device) -> None:
        if self._names.get(device.device_code) != (device.name or ""):
            self._names[device.device_code] = device.name or ""
            self._layout_seen = -1

    def device_forgotten(self, device_code: str) -> None:
        self._names.pop(device_code, None)
        self.buffers.forget_device(device_code)

    # ---- choosing -------------------------------------------------------------------------------

    @property
    def shown(self) -> list[SensorPlots]:
        """The plots in use, one SensorPlots per sensor shown, in order."""
        return self._slots[: len(self._shown)]

    @property
    def device_code(self) -> str | None:
        return self.device_box.currentData()

    @property
    def window_seconds(self) -> float | None:
        return self.window_box.currentData()

    def choose(
        self, device_code: str, sensor_type: str | None = None, window: str | None = None
    ) -> None:
        """Show a device (and one sensor, or all), e.g. from a test or a benchmark."""
        self._refresh_choices()
        index = self.device_box.findData(device_code)
        if index >= 0:
            self.device_box.setCurrentIndex(index)
        found = self.sensor_box.findData(sensor_type) if sensor_type is not None else 0
        self.sensor_box.setCurrentIndex(max(0, found))
        if window is not None:
            self.window_box.setCurrentIndex(self.window_box.findText(window))

    def _refresh_choices(self) -> None:
        """New streams appeared or went: refill the device and sensor lists, keeping the choice."""
        if self._layout_seen == self.buffers.layout_version:
            return
        self._layout_seen = self.buffers.layout_version
        current = self.device_code
        codes = self.buffers.devices()
        self.device_box.blockSignals(True)
        self.device_box.clear()
        for code in codes:
            name = self._names.get(code)
            self.device_box.addItem(f"{code} — {name}" if name else code, code)
        if current in codes:
            self.device_box.setCurrentIndex(codes.index(current))
        self.device_box.blockSignals(False)
        self._refill_sensors()
        self.stack.setCurrentWidget(self.grid_host if codes else self.empty)

    def _refill_sensors(self) -> None:
        current = self.sensor_box.currentData()
        self.sensor_box.blockSignals(True)
        self.sensor_box.clear()
        self.sensor_box.addItem(self.tr("All sensors"), None)
        code = self.device_code
        sensors = self.buffers.sensors(code) if code else []
        for sensor in sensors:
            self.sensor_box.addItem(sensor, sensor)
        if current in sensors:
            self.sensor_box.setCurrentIndex(self.sensor_box.findData(current))
        self.sensor_box.blockSignals(False)
        self._place_slots()

    def _device_chosen(self, _index: int) -> None:
        self._refill_sensors()

    def _sensors_chosen(self, _index: int) -> None:
        self._place_slots()

    def _window_chosen(self, _index: int) -> None:
        self._force = True

    def _place_slots(self) -> None:
        """One row of acc and gyro plots per sensor shown."""
        code = self.device_code
        chosen = self.sensor_box.currentData()
        if code is None:
            sensors: list[str] = []
        elif chosen is not None:
            sensors = [chosen]
        else:
            sensors = self.buffers.sensors(code)[:MAX_SENSORS_SHOWN]
        while len(self._slots) < len(sensors):
            slot = SensorPlots(self._painted, self.grid_host)
            row = len(self._slots)
            for column, plot in enumerate(slot.plots):
                self.grid.addWidget(plot, row, column)
            self._slots.append(slot)
        for number, slot in enumerate(self._slots):
            in_use = number < len(sensors)
            slot.set_visible(in_use)
            if in_use and slot.sensor_type != sensors[number]:
                slot.clear()
                slot.sensor_type = sensors[number]
        for row in range(len(self._slots)):
            self.grid.setRowStretch(row, 1 if row < len(sensors) else 0)
        self._shown = sensors
        self._force = True

    # ---- drawing (called by the window's one frame timer) -------------------------------------

    def _painted(self, seconds: float) -> None:
        if self._pending_update is not None:
            self._paint += seconds

    def _finish_frame(self) -> None:
        if self._pending_update is None:
            return
        self.last_frame_ms = (self._pending_update + self._paint) * 1000.0
        self.frame_ms.append(self.last_frame_ms)
        self._pending_update = None

    def redraw(self) -> None:
        self._finish_frame()
        if not self.isVisible():
            return
        self._refresh_choices()
        code = self.device_code
        if code is None and self.buffers.streams:
            self.device_box.setCurrentIndex(0)
            code = self.device_code
        if code is None:
            return

        started = time.perf_counter()
        seconds = self.window_seconds
        drew = False
        for slot, sensor in zip(self._slots, self._shown, strict=False):
            stream = self.buffers.get(code, sensor)
            if stream is None:
                continue
            width = int(slot.plots[0].width())
            key = (id(stream), stream.version, seconds, width)
            if key == slot.drawn and not self._force:
                continue
            self.points_drawn += slot.draw(stream, seconds)
            slot.drawn = key
            drew = True
        self._force = False
        if drew:
            self._pending_update = time.perf_counter() - started
            self._paint = 0.0
        if started - self._last_info >= 1.0 or (drew and not self.info.text()):
            self._last_info = started
            self._show_info(code)

    def _show_info(self, code: str) -> None:
        streams = [s for s in (self.buffers.get(code, n) for n in self._shown) if s is not None]
        if not streams:
            self.info.setText("")
            return
        newest = max(s.last_time for s in streams)
        samples = sum(s.received for s in streams)
        late = sum(s.late for s in streams)
        session = streams[0].session_id
        first = min(s.first_time or newest for s in streams)
        parts = [
            self.tr("%s samples in %s since %s")
            % (f"{samples:,}", self._session_words(session), clock(first)),
            self.tr("time: %s") % streams[0].time_base,
            self.tr("newest sample %s") % clock(newest, millis=True),
            self.tr("x axis: seconds before it"),
        ]
        if late:
            parts.append(self.tr("%s arrived out of order and are not shown") % f"{late:,}")
        self.info.setText("; ".join(parts))
        if self.last_frame_ms:
            self.frame_label.setText(self.tr("frame %.1f ms") % self.last_frame_ms)

    def _session_words(self, session_id: int | None) -> str:
        if session_id is None:
            return self.tr("no session")
        return self.tr("session %s") % session_id
