"""The Fleet health tab: liveness lanes per device, command round trips and heartbeat traffic over
the last minutes. Event handlers only append to numpy ring buffers; the window's one frame timer
calls `redraw` (stack notes §5: 1-px pens, no antialiasing, clip to view, explicit ranges)."""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QVBoxLayout, QWidget

from station.backend.models import Command, Device, Liveness

WINDOW_S = 120  # seconds of history shown
LATENCY_POINTS = 512  # per device
MAX_LANES = 64

# Lane codes, and their colours in the lanes image (RGBA).
NONE, OFFLINE, STALE, ONLINE, COLLECTING = range(5)
LANE_COLOURS = np.array(
    [
        (255, 255, 255, 0),
        (200, 53, 43, 255),
        (216, 154, 22, 255),
        (46, 157, 68, 255),
        (40, 110, 210, 255),
    ],
    dtype=np.ubyte,
)
CURVE_COLOURS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
]  # fmt: skip


class Ring:
    """A fixed-size buffer of (time, value) pairs; old points fall off the front."""

    def __init__(self, size: int) -> None:
        self.t = np.zeros(size)
        self.v = np.zeros(size)
        self.size = size
        self.count = 0

    def append(self, t: float, v: float) -> None:
        index = self.count % self.size
        self.t[index] = t
        self.v[index] = v
        self.count += 1

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count <= self.size:
            return self.t[: self.count], self.v[: self.count]
        start = self.count % self.size
        return np.roll(self.t, -start), np.roll(self.v, -start)


def lane_code(device: Device) -> int:
    if device.liveness == Liveness.ONLINE:
        return COLLECTING if device.reported_status == "collecting" else ONLINE
    if device.liveness == Liveness.STALE:
        return STALE
    return OFFLINE


class PlotsView(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        pg.setConfigOptions(antialias=False, background="w", foreground="k")
        self._devices: dict[str, Device] = {}
        self._lane_of: dict[str, int] = {}
        self._lanes = np.zeros((WINDOW_S, MAX_LANES), dtype=np.ubyte)  # column per second
        self._latency: dict[str, Ring] = {}
        self._latency_curves: dict[str, pg.PlotDataItem] = {}
        self._online = Ring(WINDOW_S * 2)
        self._beats = Ring(WINDOW_S * 2)
        self._beats_this_second = 0
        self.points_drawn = 0  # for tests: points handed to setData so far
        self._dirty = False

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.lanes_plot = pg.PlotWidget(
            title=self.tr("Liveness (green online, amber stale, red offline, blue collecting)")
        )
        self.latency_plot = pg.PlotWidget(title=self.tr("Command round trip (ms)"))
        self.traffic_plot = pg.PlotWidget(title=self.tr("Online devices and heartbeats/s"))
        for plot in (self.lanes_plot, self.latency_plot, self.traffic_plot):
            item = plot.getPlotItem()
            item.setClipToView(True)
            item.setDownsampling(auto=True, mode="peak")
            item.disableAutoRange()
            item.setXRange(-WINDOW_S, 0, padding=0)
            item.setLabel("bottom", self.tr("seconds ago"))
            item.showGrid(x=True, y=True, alpha=0.2)
            item.setMouseEnabled(x=False, y=False)
            layout.addWidget(plot, 1)
        self.latency_plot.getPlotItem().addLegend(offset=(5, 5), labelTextSize="7pt")
        self.latency_plot.setYRange(0, 100)

        self._lanes_image = pg.ImageItem(axisOrder="row-major")
        self.lanes_plot.addItem(self._lanes_image)
        self.lanes_plot.setYRange(0, 1)
        self.lanes_plot.getPlotItem().getAxis("left").setWidth(60)

        self._online_curve = self.traffic_plot.plot(
            pen=pg.mkPen("#2e9d44", width=1), name=self.tr("online")
        )
        self._beats_curve = self.traffic_plot.plot(
            pen=pg.mkPen("#1f77b4", width=1), name=self.tr("heartbeats/s")
        )
        self.traffic_plot.setYRange(0, 10)

        self._second = QTimer(self)
        self._second.setInterval(1000)
        self._second.timeout.connect(self.sample)
        self._second.start()

    # ---- feeding (cheap: buffers only) --------------------------------------------------------

    def reset(self, devices: list[Device]) -> None:
        self._devices = {d.device_code: d for d in devices}
        for device in devices:
            self._lane(device.device_code)

    def device_changed(self, device: Device) -> None:
        self._devices[device.device_code] = device
        self._lane(device.device_code)

    def device_forgotten(self, device_code: str) -> None:
        self._devices.pop(device_code, None)

    def device_seen(self, device_code: str) -> None:
        self._beats_this_second += 1

    def command_changed(self, command: Command) -> None:
        if command.round_trip_ms is None or not command.state.settled:
            return
        ring = self._latency.get(command.device_code)
        if ring is None:
            ring = self._latency[command.device_code] = Ring(LATENCY_POINTS)
        ring.append(time.time(), command.round_trip_ms)
        self._dirty = True

    def _lane(self, device_code: str) -> int | None:
        lane = self._lane_of.get(device_code)
        if lane is None and len(self._lane_of) < MAX_LANES:
            lane = self._lane_of[device_code] = len(self._lane_of)
            self._dirty = True
        return lane

    def sample(self) -> None:
        """Once a second: shift the lanes and take the online and heartbeat counts."""
        now = time.time()
        self._lanes = np.roll(self._lanes, -1, axis=0)
        self._lanes[-1, :] = NONE
        for code, device in self._devices.items():
            lane = self._lane_of.get(code)
            if lane is not None:
                self._lanes[-1, lane] = lane_code(device)
        online = sum(1 for d in self._devices.values() if d.liveness == Liveness.ONLINE)
        self._online.append(now, online)
        self._beats.append(now, self._beats_this_second)
        self._beats_this_second = 0
        self._dirty = True

    # ---- drawing (called by the window's one frame timer) -------------------------------------

    def redraw(self) -> None:
        if not self._dirty or not self.isVisible():
            return
        self._dirty = False
        now = time.time()

        lanes = max(1, len(self._lane_of))
        rgba = LANE_COLOURS[self._lanes[:, :lanes].T]
        self._lanes_image.setImage(rgba, autoLevels=False)
        self._lanes_image.setRect(-WINDOW_S, 0, WINDOW_S, lanes)
        self.lanes_plot.setYRange(0, lanes, padding=0)
        by_lane = sorted(self._lane_of.items(), key=lambda kv: kv[1])
        self.lanes_plot.getPlotItem().getAxis("left").setTicks(
            [[(lane + 0.5, code) for code, lane in by_lane]]
        )

        top = 10.0
        for code, ring in self._latency.items():
            t, v = ring.ordered()
            curve = self._latency_curves.get(code)
            if curve is None:
                colour = CURVE_COLOURS[len(self._latency_curves) % len(CURVE_COLOURS)]
                curve = self.latency_plot.plot(pen=pg.mkPen(colour, width=1), name=code)
                self._latency_curves[code] = curve
            curve.setData(t - now, v)
            self.points_drawn += len(t)
            if len(v):
                top = max(top, float(v.max()))
        self.latency_plot.setYRange(0, top * 1.1, padding=0)

        t, v = self._online.ordered()
        self._online_curve.setData(t - now, v)
        tb, vb = self._beats.ordered()
        self._beats_curve.setData(tb - now, vb)
        self.points_drawn += len(t) + len(tb)
        peak = max(10.0, float(v.max()) if len(v) else 0, float(vb.max()) if len(vb) else 0)
        self.traffic_plot.setYRange(0, peak * 1.1, padding=0)
