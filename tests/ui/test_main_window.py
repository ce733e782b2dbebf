"""The main window against a real embedded station on loopback, with simulated devices."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMessageBox

from station.backend.models import Liveness, SessionStatus
from station.devices.simulator import SimDevice, SimDeviceConfig, SimFleet
from station.ui.application import StationApp
from station.ui.devices import DeviceTableModel
from station.ui.launch import _run
from station.ui.main_window import MainWindow
from station.ui.sessions import SessionsView, SessionTableModel
from tests.ui.conftest import eventually, test_settings


@pytest.fixture
async def fleet(station_app: StationApp, tmp_path: Path) -> AsyncIterator[SimFleet]:
    assert station_app.station is not None
    fleet = SimFleet.build(
        2,
        station_app.station.url,
        code_prefix="UI",
        first_host=20,
        sd_dir=tmp_path / "sd",
        heartbeat_interval=0.2,
        register_retry_backoff=(0.05, 0.5),
    )
    await fleet.start()
    await asyncio.wait_for(fleet.wait_registered(), 5)
    yield fleet
    await fleet.stop()


def command_states(sessions: SessionsView) -> list[str]:
    table = sessions.commands_table
    return [table.item(row, 2).text() for row in range(table.rowCount())]


def table_text(model: DeviceTableModel | SessionTableModel, row: int, column: int) -> str:
    return model.data(model.index(row, column)) or ""


async def test_window_shows_where_devices_must_point_and_that_the_server_is_up(
    window: MainWindow, station_app: StationApp
) -> None:
    port = station_app.port
    assert window.header.urls == [f"http://127.0.0.1:{port}/wxapp/"]
    assert "up" in window.header.state.text()
    assert [window.tabs.tabText(i).replace("&", "") for i in range(window.tabs.count())] == [
        "Devices",
        "Sessions",
        "Live data",
        "Fleet health",
    ]

    window.header.copy()

    assert QGuiApplication.clipboard().text() == f"http://127.0.0.1:{port}/wxapp/"


async def test_device_registering_over_http_appears_in_the_table(
    window: MainWindow, station_app: StationApp, tmp_path: Path
) -> None:
    assert station_app.station is not None
    config = SimDeviceConfig(
        device_code="HTTP01",
        host="127.0.0.30",
        station_url=station_app.station.url,
        sd_dir=tmp_path / "sd",
        heartbeat_interval=0.2,
    )
    model = window.devices.model

    async with SimDevice(config) as device:
        row = await eventually(lambda: model.row_of("HTTP01") is not None, what="row appears")
        row = model.row_of("HTTP01")
        assert row is not None
        assert table_text(model, row, DeviceTableModel.ADDRESS) == f"127.0.0.30:{device.address[1]}"
        await eventually(
            lambda: model.device_at(row).liveness == Liveness.ONLINE, what="device online"
        )
        assert table_text(model, row, DeviceTableModel.LIVENESS) == "online"
        assert table_text(model, row, DeviceTableModel.LAST_SEEN).endswith("s ago")


async def test_filter_box_narrows_the_table(window: MainWindow, fleet: SimFleet) -> None:
    await eventually(lambda: window.devices.model.rowCount() == 2)

    window.devices.filter_box.setText("UI002")

    assert window.devices.proxy.rowCount() == 1


async def test_session_actions_in_the_window_reach_the_devices(
    window: MainWindow, station_app: StationApp, fleet: SimFleet
) -> None:
    service = station_app.service
    assert service is not None
    for device in fleet:
        await service.set_group_membership("lab", device.device_code, True)
    sessions = window.sessions

    sessions.start_session("lab", [])
    session = await eventually(sessions.selected_session, what="new session selected")
    assert session.status == SessionStatus.CALIBRATING

    sessions.collect_action.trigger()
    await eventually(lambda: all(d.collecting for d in fleet), what="devices collecting")
    await eventually(
        lambda: table_text(sessions.model, 0, SessionTableModel.READY) == "2/2",
        what="both devices ready",
    )
    await eventually(
        lambda: command_states(sessions) == ["acked", "acked"], what="acked starts shown"
    )

    sessions.end_action.trigger()
    await eventually(lambda: not any(d.collecting for d in fleet), what="devices stopped")
    await eventually(
        lambda: (
            sessions.selected_session().status in (SessionStatus.STOPPING, SessionStatus.COMPLETED)
        ),
        what="session stopping",
    )
    if sessions.selected_session().status == SessionStatus.STOPPING:
        # Devices that do not report their upload: staff close the session themselves.
        await eventually(sessions.finish_action.isEnabled, what="finish offered")
        sessions.finish_action.trigger()
    await eventually(
        lambda: sessions.selected_session().status == SessionStatus.COMPLETED,
        what="session completed",
    )
    await eventually(lambda: command_states(sessions) == ["acked"] * 4, what="acked stops shown")
    log = [sessions.events_table.item(r, 3).text() for r in range(sessions.events_table.rowCount())]
    assert any("collecting" in line for line in log)
    assert any("completed" in line for line in log)


async def test_device_actions_start_stop_and_check_one_device(
    window: MainWindow, station_app: StationApp, fleet: SimFleet
) -> None:
    service = station_app.service
    assert service is not None
    session = await service.start_session("solo", "staff", device_codes=["UI001"])
    await eventually(lambda: window.sessions.model.row_of(session.session_id) is not None)
    window.sessions.select(session.session_id)
    await eventually(lambda: window.devices.model.row_of("UI001") is not None)
    window.devices.select(["UI001"])

    window.devices.start_action.trigger()
    await eventually(lambda: fleet["UI001"].collecting, what="UI001 collecting")
    assert not fleet["UI002"].collecting

    window.devices.stop_action.trigger()
    await eventually(lambda: not fleet["UI001"].collecting, what="UI001 stopped")

    window.devices.check_action.trigger()
    await eventually(
        lambda: "UI001 answered in" in window.statusBar().currentMessage(), what="check reply"
    )


async def test_checking_a_device_that_is_gone_says_so_in_plain_words(
    window: MainWindow, station_app: StationApp, fleet: SimFleet
) -> None:
    await eventually(lambda: window.devices.model.row_of("UI002") is not None)
    await fleet["UI002"].set_faults(refuse=True)
    window.devices.select(["UI002"])

    window.devices.check_action.trigger()

    message = await eventually(
        lambda: "Could not check UI002" in (m := window.statusBar().currentMessage()) and m
    )
    assert "UI002" in message


async def test_session_started_over_http_appears_without_refresh(
    window: MainWindow, station_app: StationApp, fleet: SimFleet
) -> None:
    assert station_app.station is not None
    model = window.sessions.model
    async with httpx.AsyncClient(base_url=station_app.station.url) as client:
        response = await client.post(
            "/wxapp/start_session/",
            data={"openid": "o-test", "device_group_code": "UI001"},
        )
    assert response.status_code < 400, response.text
    loop = asyncio.get_running_loop()
    sent = loop.time()

    await eventually(lambda: model.rowCount() == 1, within=2, what="session row")

    assert loop.time() - sent < 0.2
    assert table_text(model, 0, SessionTableModel.STATUS) == "calibrating"


async def test_fleet_health_plots_receive_points(
    window: MainWindow, station_app: StationApp, fleet: SimFleet
) -> None:
    service = station_app.service
    assert service is not None
    window.tabs.setCurrentWidget(window.plots)
    session = await service.start_session("plots", "staff", device_codes=["UI001", "UI002"])
    await service.start_collection(session.session_id, "staff")

    await eventually(lambda: len(window.plots._latency) == 2, what="round trips buffered")
    window.plots.sample()
    await eventually(lambda: window.plots.points_drawn > 0, what="points drawn")
    assert window.plots._lane_of.keys() == {"UI001", "UI002"}


async def test_log_dock_shows_the_station_log(window: MainWindow, station_app: StationApp) -> None:
    import logging

    logging.getLogger().addHandler(window.log_dock.handler)
    try:
        logging.getLogger("station.test").warning("a line for the dock")
        window.log_dock.drain()
        assert "a line for the dock" in window.log_dock.text()

        window.log_dock.level.setCurrentIndex(3)  # ERROR and above
        assert "a line for the dock" not in window.log_dock.text()
    finally:
        logging.getLogger().removeHandler(window.log_dock.handler)


async def test_closing_the_window_stops_the_station_and_releases_the_port(
    qapp, qtbot, qsettings, tmp_path: Path
) -> None:
    app = StationApp(tmp_path / "data", test_settings())
    window = MainWindow(app, qsettings=qsettings)
    qtbot.addWidget(window)
    window.show()
    run = asyncio.ensure_future(_run(app, window))
    await eventually(lambda: app.running, what="station up")
    port = app.port
    store = app.station.store

    window.close()

    assert await asyncio.wait_for(run, 5) == 0
    assert app.station is None
    assert store is not None and store._closed  # noqa: SLF001
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
    assert "down" in window.header.state.text()
    assert qsettings.value("main_window/geometry") is not None


async def test_port_in_use_offers_another_port(qapp, qtbot, qsettings, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        app = StationApp(tmp_path / "data", test_settings(port=busy))
        window = MainWindow(app, qsettings=qsettings)
        qtbot.addWidget(window)
        window.show()
        run = asyncio.ensure_future(_run(app, window))

        box = await eventually(lambda: window.findChild(QMessageBox), what="port dialog")
        assert str(busy) in box.text()
        box.button(QMessageBox.StandardButton.Yes).click()

        await eventually(lambda: app.running, what="station up on another port")
        assert app.port != busy
        app.request_quit()
        assert await asyncio.wait_for(run, 5) == 0
