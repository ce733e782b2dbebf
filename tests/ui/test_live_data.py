"""The Live data tab against a real embedded station: samples published on the service's event
bus and a real batch upload over HTTP reach the curves; gaps break them; the window selector
sets what is shown."""

from __future__ import annotations

import json
import math
import time

import httpx
import numpy as np
import pyqtgraph as pg

from station.backend.events import SamplesStored
from station.ui.application import StationApp
from station.ui.live import LiveView, SensorPlots
from station.ui.main_window import MainWindow
from tests.ui.conftest import eventually

Row = tuple[float | None, float, float, float, float, float, float, float]


def rows(start_ms: float, count: int, step_ms: float = 10.0, acc_x: float = 1.0) -> tuple[Row, ...]:
    """Samples every step_ms from start_ms, device-timed, received a little later."""
    return tuple(
        (
            start_ms + i * step_ms,
            (start_ms + i * step_ms) / 1000 + 0.2,
            acc_x,
            0.0,
            9.8,
            0.1,
            0.2,
            0.3,
        )
        for i in range(count)
    )


def publish(app: StationApp, device: str, sensor: str, samples: tuple[Row, ...]) -> None:
    assert app.service is not None
    app.service.events.publish(SamplesStored(None, device, sensor, samples))


def acc_x_curve(live: LiveView, slot: int = 0) -> tuple[np.ndarray, np.ndarray]:
    curve = live.shown[slot].curves[0][0]
    return curve.xData, curve.yData


def points(curve: pg.PlotDataItem) -> int:
    return 0 if curve.xData is None else len(curve.xData)


def x_range(slot: SensorPlots) -> list[float]:
    return [round(v, 3) for v in slot.plots[0].getPlotItem().vb.viewRange()[0]]


async def test_samples_published_by_the_service_are_drawn_and_the_frame_cost_is_measured(
    window: MainWindow, station_app: StationApp
) -> None:
    live = window.live
    window.tabs.setCurrentWidget(live)
    start = time.time() * 1000 - 3000

    publish(station_app, "LIVE01", "waist", rows(start, 300))

    await eventually(lambda: live.points_drawn > 0, what="curves drawn")
    assert live.device_code == "LIVE01"
    assert [slot.sensor_type for slot in live.shown] == ["waist"]
    x, y = acc_x_curve(live)
    assert len(x) == 300 and x[-1] == 0.0 and math.isclose(x[0], -2.99, abs_tol=1e-4)
    assert np.all(y == 1.0)
    magnitude = live.shown[0].curves[0][3].yData
    assert np.allclose(magnitude, math.hypot(1.0, 0.0, 9.8), atol=0.02)  # float16 storage

    publish(station_app, "LIVE01", "waist", rows(start + 3000, 100))
    await eventually(lambda: len(acc_x_curve(live)[0]) == 400, what="new samples drawn")
    await eventually(lambda: live.last_frame_ms > 0, what="a frame measured")
    assert "frame" in live.frame_label.text() or live.frame_ms


async def test_a_batch_uploaded_over_http_reaches_the_live_plot(
    window: MainWindow, station_app: StationApp
) -> None:
    assert station_app.station is not None
    live = window.live
    window.tabs.setCurrentWidget(live)
    first = int(time.time() * 1000) - 2000
    batch = [
        {
            "acc": [1.5, 2.0, 3.0],
            "gyro": [0.1, 0.2, 0.3],
            "angle": [0, 0, 0],
            "timestamp": first + 10 * i,
        }
        for i in range(100)
    ]

    async with httpx.AsyncClient(base_url=station_app.station.url) as client:
        response = await client.post(
            "/wxapp/esp32/batch_upload/",
            data={"device_code": "HTTP09", "sensor_type": "wrist", "batch_data": json.dumps(batch)},
        )
    assert response.status_code == 200, response.text

    await eventually(lambda: live.device_code == "HTTP09" and live.points_drawn, what="drawn")
    x, y = acc_x_curve(live)
    assert len(x) == 100 and np.all(y == 1.5)
    assert math.isclose(x[0], -0.99, abs_tol=1e-4)  # device time, 10 ms apart
    assert "device clock" in live.info.text()


async def test_a_gap_in_the_samples_is_drawn_as_a_break(
    window: MainWindow, station_app: StationApp
) -> None:
    live = window.live
    window.tabs.setCurrentWidget(live)
    start = time.time() * 1000 - 10_000

    publish(station_app, "GAP01", "racket", rows(start, 150))  # 1.5 s
    publish(station_app, "GAP01", "racket", rows(start + 3500, 150))  # 2 s later

    await eventually(lambda: live.points_drawn and len(acc_x_curve(live)[0]) == 301, what="drawn")
    x, y = acc_x_curve(live)
    assert np.isnan(y).sum() == 1
    gap = int(np.flatnonzero(np.isnan(y))[0])
    assert x[gap - 1] < x[gap] < x[gap + 1] and x[gap + 1] - x[gap - 1] > 2.0
    assert live.shown[0].curves[0][0].opts["connect"] == "finite"


async def test_the_window_selector_changes_the_visible_range(
    window: MainWindow, station_app: StationApp
) -> None:
    live = window.live
    window.tabs.setCurrentWidget(live)
    start = time.time() * 1000 - 360_000
    for batch in range(36):  # 6 minutes at 100 Hz
        publish(station_app, "WIN01", "waist", rows(start + batch * 10_000, 1000, acc_x=batch))
    publish(station_app, "WIN02", "waist", rows(start, 10))

    live.choose("WIN01", window="10 s")
    await eventually(lambda: x_range(live.shown[0]) == [-10.0, 0.0], what="10 s window")
    await eventually(lambda: acc_x_curve(live)[0][0] >= -10.0, what="10 s of data")
    assert "min/max" not in live.shown[0].plots[0].getPlotItem().titleLabel.text

    live.choose("WIN01", window="5 min")
    await eventually(lambda: x_range(live.shown[0]) == [-300.0, 0.0], what="5 min window")
    x, y = await eventually(
        lambda: (d := acc_x_curve(live))[0][0] < -250 and d, what="5 min of data"
    )
    assert x[0] >= -300.5
    assert "min/max per 0.5 s" in live.shown[0].plots[0].getPlotItem().titleLabel.text

    live.choose("WIN01", window="Whole session")
    await eventually(lambda: x_range(live.shown[0]) == [-600.0, 0.0], what="whole session")
    x, y = await eventually(lambda: (d := acc_x_curve(live))[0][0] < -350 and d, what="all data")
    assert np.nanmin(y) == 0.0 and np.nanmax(y) == 35.0  # the first and the last batch


async def test_all_sensors_of_a_device_show_as_a_grid(
    window: MainWindow, station_app: StationApp
) -> None:
    live = window.live
    window.tabs.setCurrentWidget(live)
    start = time.time() * 1000 - 3000
    for sensor in ("waist", "wrist", "racket"):
        publish(station_app, "GRID01", sensor, rows(start, 200))

    live.choose("GRID01")
    await eventually(lambda: len(live.shown) == 3, what="three rows")
    assert [slot.sensor_type for slot in live.shown] == ["racket", "waist", "wrist"]
    await eventually(
        lambda: all(points(slot.curves[1][0]) == 200 for slot in live.shown),
        what="gyro curves of every row drawn",
    )

    live.choose("GRID01", "wrist")
    assert [slot.sensor_type for slot in live.shown] == ["wrist"]
