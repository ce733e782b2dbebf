"""Sessions end to end: the mini-program's calls over HTTP, a real station, and a fleet of twenty
simulated ESP32s that register themselves, record to their SD cards and misbehave on purpose."""

from __future__ import annotations

import asyncio
import csv
import time
from typing import Any

import aiohttp
import pytest

from station.backend.events import Change, DeviceChanged, DeviceSeen
from station.backend.models import Device
from station.backend.runtime import Station
from station.devices.sim_samples import CSV_HEADER
from station.devices.simulator import SimDevice, SimFaults, SimFleet
from tests.e2e.conftest import (
    FLEET_SIZE,
    STATION_SETTINGS,
    Encoding,
    MiniProgram,
    StartFleet,
    StartStation,
    commands_received,
    eventually,
    wait_fleet_listed,
)

GROUP = "court_1"
READ_TIMEOUT = STATION_SETTINGS["read_timeout"]


async def fleet_in_group(
    start_station: StartStation,
    start_fleet: StartFleet,
    http: aiohttp.ClientSession,
    *,
    encoding: Encoding = "form",
    monitor: bool = False,
    **fleet_options: Any,
) -> tuple[Station, SimFleet, MiniProgram]:
    """A station, a fleet that has registered itself, and every device in GROUP."""
    station = await start_station(monitor=monitor)
    fleet = await start_fleet(station.url, **fleet_options)
    mini = MiniProgram(http, station.url, encoding)
    await wait_fleet_listed(mini, fleet.devices)
    await mini.join_group(GROUP, [d.device_code for d in fleet])
    return station, fleet, mini


def sd_rows(device: SimDevice, session_id: int) -> list[list[str]]:
    """The data rows of a device's SD file for one session, header checked."""
    path = device.config.sd_dir / device.device_code / f"session_{session_id}.csv"
    assert device.sd_files == [path]
    with path.open(newline="", encoding="ascii") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(CSV_HEADER)
    return rows[1:]


def device_ms(device: SimDevice, monotonic: float) -> float:
    """A time.monotonic() instant on the device's millis() clock."""
    boot = time.monotonic() - device.uptime_ms / 1000
    return (monotonic - boot) * 1000


def assert_recorded_between_start_and_stop(device: SimDevice, session_id: int) -> int:
    """The file holds a contiguous run of samples covering exactly the start-to-stop span."""
    (start,) = commands_received(device, "/start_collection")
    (stop,) = commands_received(device, "/stop_collection")
    rows = sd_rows(device, session_id)
    rate = device.config.sample_rate_hz

    expected = rate * (stop.time - start.time)
    assert abs(len(rows) - expected) <= 0.1 * expected + 5, (device, len(rows), expected)
    assert [int(r[0]) for r in rows] == list(range(len(rows)))

    stamps = [int(r[1]) for r in rows]
    assert stamps == sorted(stamps)
    assert stamps[0] >= device_ms(device, start.time) - 5
    assert stamps[-1] <= device_ms(device, stop.time) + 5
    return len(rows)


# ---- 1. the happy path -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_fleet_records_from_start_to_end_of_a_session(
    start_station: StartStation,
    start_fleet: StartFleet,
    http: aiohttp.ClientSession,
    encoding: Encoding,
) -> None:
    _station, fleet, mini = await fleet_in_group(
        start_station, start_fleet, http, encoding=encoding
    )
    codes = [d.device_code for d in fleet]

    started = await mini.start_session(GROUP)
    assert started["status"] == "calibrating"
    assert sorted(started["device_codes"]) == sorted(codes)
    session_id = started["session_id"]

    collecting = await mini.start_data_collection(session_id)
    assert collecting["status"] == "collecting"
    assert (collecting["devices_acked"], collecting["devices_failed"]) == (FLEET_SIZE, 0)

    # The mini-program then notifies every device itself: already started, so nothing is resent.
    for device in fleet:
        notified = await mini.notify_device_start(session_id, device.device_code)
        assert notified["command"]["state"] == "acked"
        assert notified["esp32_ip"] == device.ip_address
    for device in fleet:
        (start,) = commands_received(device, "/start_collection")
        assert start.fields["session_id"] == str(session_id)
        assert start.fields["device_code"] == device.device_code
        assert device.session_id == session_id

    await asyncio.sleep(1.0)  # let them record
    ended = await mini.end_session(session_id)

    assert ended["status"] == "stopping"  # until every device reports its upload complete
    assert (ended["devices_acked"], ended["devices_failed"]) == (FLEET_SIZE, 0)
    for device in fleet:
        await mini.ok(
            "POST",
            "/wxapp/esp32/mark_upload_complete/",
            {"session_id": session_id, "device_code": device.device_code},
        )
    assert (await mini.session(session_id))["session"]["status"] == "completed"
    assert not any(d.collecting for d in fleet)
    counts = {d.device_code: assert_recorded_between_start_and_stop(d, session_id) for d in fleet}

    await asyncio.sleep(0.3)  # several SD write ticks
    assert {d.device_code: len(sd_rows(d, session_id)) for d in fleet} == counts


# ---- 2. faults ---------------------------------------------------------------------------------

HEALTHY = range(0, 12)
SLOW = (12, 13)
REFUSING = (14, 15)
BLACKHOLED = (16, 17)
FAILING = (18, 19)
FAULTS = {
    **{i: SimFaults(slow=True) for i in SLOW},
    **{i: SimFaults(refuse=True) for i in REFUSING},
    **{i: SimFaults(blackhole=True) for i in BLACKHOLED},
    **{i: SimFaults(error_500=True) for i in FAILING},
}
SLOW_DELAY = 0.3


async def test_faulty_devices_fail_one_by_one_while_the_rest_start_at_once(
    start_station: StartStation, start_fleet: StartFleet, http: aiohttp.ClientSession
) -> None:
    _station, fleet, mini = await fleet_in_group(
        start_station,
        start_fleet,
        http,
        faults=FAULTS,
        request_delay={i: SLOW_DELAY for i in SLOW},
    )
    devices = fleet.devices
    session_id = (await mini.start_session(GROUP))["session_id"]

    began = time.monotonic()
    reply = await mini.start_data_collection(session_id)
    took = time.monotonic() - began

    # It waits for the blackholed devices' read timeout, and not much longer.
    assert READ_TIMEOUT * 0.9 <= took < 5.0
    assert reply["status"] == "collecting"
    assert (reply["devices_total"], reply["devices_acked"], reply["devices_failed"]) == (20, 14, 6)

    # Healthy and slow devices got their start concurrently, long before any blackholed
    # device's timeout ran out.
    blackhole_deadline = (
        min(commands_received(devices[i], "/start_collection")[0].time for i in BLACKHOLED)
        + READ_TIMEOUT
    )
    for i in [*HEALTHY, *SLOW]:
        (start,) = commands_received(devices[i], "/start_collection")
        assert start.time - began < 3.0
        assert start.time < blackhole_deadline, devices[i]
        assert devices[i].session_id == session_id
    assert not any(devices[i].requests for i in REFUSING)

    by_code = {d["device_code"]: d for d in reply["devices"]}
    for i in [*HEALTHY, *SLOW]:
        assert by_code[devices[i].device_code]["state"] == "acked"
    for i in SLOW:
        assert by_code[devices[i].device_code]["round_trip_ms"] >= SLOW_DELAY * 1000 * 0.9

    expected_failures = {
        **{i: ("unreachable", "connection refused") for i in REFUSING},
        **{i: ("timeout", f"no answer from {devices[i].ip_address} within") for i in BLACKHOLED},
        **{i: ("rejected", "answered 500") for i in FAILING},
    }
    detail = await mini.session(session_id)
    rows = {row["device_code"]: row for row in detail["devices"]}
    assert detail["session"]["status"] == "collecting"
    for i, (failure, reason) in expected_failures.items():
        code = devices[i].device_code
        for summary in (by_code[code], rows[code]["start"]):
            assert summary["state"] == "failed"
            assert summary["failure"] == failure
            assert devices[i].ip_address in summary["error"]
            assert reason in summary["error"], summary["error"]
        logged = [
            e
            for e in detail["events"]
            if e["action"] == "command.start" and e["device_code"] == code
        ]
        assert [e["result"] for e in logged] == ["failed"]
        assert reason in logged[0]["message"]
        assert logged[0]["data"]["failure"] == failure

    # end_session stops every device that may be recording: those that acknowledged, and those
    # whose start timed out (they may have acted on it). Refused and rejected starts are left
    # alone. The blackholed devices cannot acknowledge, so the session stays stopping.
    ended = await mini.end_session(session_id)

    may_record = [*HEALTHY, *SLOW, *BLACKHOLED]
    assert ended["status"] == "stopping"
    assert sorted(d["device_code"] for d in ended["devices"]) == sorted(
        devices[i].device_code for i in may_record
    )
    assert ended["devices_acked"] == 14
    assert ended["devices_failed"] == len(BLACKHOLED)
    for i in [*HEALTHY, *SLOW]:
        assert len(commands_received(devices[i], "/stop_collection")) == 1
        assert not devices[i].collecting
    for i in [*REFUSING, *FAILING]:
        assert commands_received(devices[i], "/stop_collection") == []
    status, aborted = await mini.abort(session_id)
    assert status == 200
    assert aborted["session"]["status"] == "stopped"


async def test_a_stop_that_fails_keeps_the_session_stopping_until_it_is_aborted(
    start_station: StartStation, start_fleet: StartFleet, http: aiohttp.ClientSession
) -> None:
    _station, fleet, mini = await fleet_in_group(
        start_station,
        start_fleet,
        http,
        faults=FAULTS,
        request_delay={i: SLOW_DELAY for i in SLOW},
    )
    devices = fleet.devices
    session_id = (await mini.start_session(GROUP))["session_id"]
    await mini.start_data_collection(session_id)
    stubborn = devices[0]
    await stubborn.set_faults(error_500=True)  # started fine; now fails its stop

    ended = await mini.end_session(session_id)

    assert ended["status"] == "stopping"
    stops = {d["device_code"]: d for d in ended["devices"]}
    assert stops[stubborn.device_code]["state"] == "failed"
    assert stops[stubborn.device_code]["failure"] == "rejected"
    assert ended["devices_acked"] == 13
    assert (await mini.session(session_id))["session"]["status"] == "stopping"

    await stubborn.set_faults(error_500=False)
    status, aborted = await mini.abort(session_id)

    assert status == 200
    assert aborted["session"]["status"] == "stopped"
    # Abort tells the devices that had not stopped to stop (the stubborn one, and the
    # blackholed ones whose start timed out), and nobody else again.
    assert sorted(d["device_code"] for d in aborted["devices"]) == sorted(
        devices[i].device_code for i in [0, *BLACKHOLED]
    )
    assert aborted["devices_acked"] == 1
    assert not stubborn.collecting
    assert (await mini.session(session_id))["session"]["status"] == "stopped"


async def test_a_device_whose_start_timed_out_is_still_told_to_stop(
    start_station: StartStation, start_fleet: StartFleet, http: aiohttp.ClientSession
) -> None:
    late = FLEET_SIZE - 1
    _station, fleet, mini = await fleet_in_group(
        start_station, start_fleet, http, request_delay={late: READ_TIMEOUT + 0.4}
    )
    device = fleet.devices[late]
    session_id = (await mini.start_session(GROUP))["session_id"]

    reply = await mini.start_data_collection(session_id)
    summary = next(d for d in reply["devices"] if d["device_code"] == device.device_code)
    assert (summary["state"], summary["failure"]) == ("failed", "timeout")
    await eventually(lambda: device.session_id == session_id)  # the firmware did start

    await mini.end_session(session_id)

    await eventually(lambda: len(commands_received(device, "/stop_collection")) == 1)
    await eventually(lambda: not device.collecting)


# ---- 3. liveness -------------------------------------------------------------------------------


async def test_liveness_follows_a_dropout_and_tolerates_a_slow_device(
    start_station: StartStation, start_fleet: StartFleet, http: aiohttp.ClientSession
) -> None:
    slow = FLEET_SIZE - 1
    station, fleet, mini = await fleet_in_group(
        start_station,
        start_fleet,
        http,
        monitor=True,
        heartbeat_interval=0,  # liveness from the monitor's polls alone
        faults={slow: SimFaults(slow=True)},
        request_delay={slow: STATION_SETTINGS["poll_interval"]},
    )
    slow_code = fleet.devices[slow].device_code
    assert station.service is not None
    slow_offline: list[Device] = []

    def watch(change: Change) -> None:
        if isinstance(change, DeviceChanged) and change.device.device_code == slow_code:
            if change.device.liveness == "offline":
                slow_offline.append(change.device)

    unsubscribe = station.service.events.subscribe(watch)
    watching_since = time.monotonic()

    async def all_online() -> bool:
        return all(d["liveness"] == "online" for d in (await mini.devices()).values())

    await eventually(all_online)

    leaving = fleet.devices[0]
    old_address = leaving.ip_address
    await leaving.dropout(2.0)

    async def entry() -> dict[str, Any]:
        return (await mini.devices())[leaving.device_code]

    async def offline() -> dict[str, Any] | None:
        found = await entry()
        return found if found["liveness"] == "offline" else None

    gone = await eventually(offline)
    assert gone["last_seen"] is not None
    assert gone["address"] == old_address

    async def back() -> dict[str, Any] | None:
        found = await entry()
        moved = found["address"] == leaving.ip_address != old_address
        return found if moved and found["liveness"] == "online" else None

    returned = await eventually(back)
    assert returned["last_seen"] > gone["last_seen"]

    await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - watching_since)))
    unsubscribe()
    assert slow_offline == []
    assert (await mini.devices())[slow_code]["liveness"] != "offline"


# ---- 4. heartbeats -----------------------------------------------------------------------------


async def test_heartbeats_are_signs_of_life_and_report_what_devices_do(
    start_station: StartStation, start_fleet: StartFleet, http: aiohttp.ClientSession
) -> None:
    station = await start_station(monitor=False)  # no polls: only the devices speak
    assert station.service is not None
    heard: set[str] = set()

    def watch(change: Change) -> None:
        if isinstance(change, DeviceSeen) and change.via == "heartbeat":
            heard.add(change.device_code)

    station.service.events.subscribe(watch)
    fleet = await start_fleet(station.url, heartbeat_interval=0.2)
    mini = MiniProgram(http, station.url)
    await wait_fleet_listed(mini, fleet.devices)
    codes = {d.device_code for d in fleet}

    await eventually(lambda: heard >= codes)

    async def reporting(status: str, session_id: int | None) -> bool:
        devices = await mini.devices()
        return all(
            devices[c]["last_seen_via"] == "heartbeat"
            and devices[c]["liveness"] == "online"
            and devices[c]["reported_status"] == status
            and devices[c]["reported_session_id"] == session_id
            for c in codes
        )

    await eventually(lambda: reporting("idle", None))

    await mini.join_group(GROUP, sorted(codes))
    session_id = (await mini.start_session(GROUP))["session_id"]
    await mini.start_data_collection(session_id)

    await eventually(lambda: reporting("collecting", session_id))


# ---- 5. restart ----------------------------------------------------------------------------------


async def test_a_restarted_station_carries_on_the_session_it_was_running(
    start_station: StartStation, start_fleet: StartFleet, http: aiohttp.ClientSession
) -> None:
    first, fleet, mini = await fleet_in_group(start_station, start_fleet, http, monitor=True)
    session_id = (await mini.start_session(GROUP))["session_id"]
    await mini.start_data_collection(session_id)
    before = await mini.session(session_id)
    port = first.port

    await first.stop()

    assert all(d.session_id == session_id for d in fleet)  # the devices never noticed
    second = await start_station(monitor=True, port=port)
    after = await mini.session(session_id)

    assert after["session"] == before["session"]
    assert after["session"]["status"] == "collecting"
    assert after["commands"] == before["commands"]
    assert {c["state"] for c in after["commands"]} == {"acked"}
    assert after["events"][: len(before["events"])] == before["events"]
    await wait_fleet_listed(MiniProgram(http, second.url), fleet.devices)

    ended = await mini.end_session(session_id)

    assert ended["status"] == "stopping"
    assert ended["devices_acked"] == FLEET_SIZE
    finished = await mini.ok("POST", f"/api/v1/sessions/{session_id}/finish", {})
    assert finished["session"]["status"] == "completed"
    for device in fleet:
        assert len(commands_received(device, "/start_collection")) == 1
        assert len(commands_received(device, "/stop_collection")) == 1
        assert not device.collecting


# ---- 6. two devices with one code --------------------------------------------------------------


async def test_twins_sharing_a_device_code_share_one_record_that_follows_the_last_to_register(
    start_station: StartStation, start_fleet: StartFleet, http: aiohttp.ClientSession
) -> None:
    """The station keys devices by device_code alone, so it cannot tell twins apart: one
    record, whose address is wherever the last registration came from. Commands go there;
    the other twin hears nothing and records nothing. No device is marked moved."""
    station = await start_station()
    twins = await start_fleet(station.url, 2, codes=["TWIN", "TWIN"], first_host=40)
    one, two = twins.devices
    assert one.config.sd_dir != two.config.sd_dir
    mini = MiniProgram(http, station.url)
    await eventually(lambda: one.registrations and two.registrations)

    async def address_is(device: SimDevice) -> bool:
        devices = await mini.devices()
        return list(devices) == ["TWIN"] and devices["TWIN"]["address"] == device.ip_address

    for device in (one, two, one):
        registered = device.registrations
        await device.reconnect_wifi()
        await eventually(lambda d=device, n=registered: d.registrations > n)
        assert await address_is(device)

    detail = await mini.ok("GET", "/api/v1/devices/TWIN")
    assert detail["device"]["moved_to"] is None
    moves = [e["message"] for e in detail["events"] if e["action"] == "device.register"]
    assert f"device TWIN moved from {two.ip_address} to {one.ip_address}" in moves

    await mini.join_group(GROUP, ["TWIN"])
    session_id = (await mini.start_session(GROUP))["session_id"]
    await mini.start_data_collection(session_id)
    ended = await mini.end_session(session_id)

    assert ended["status"] == "stopping"
    uploaded = await mini.ok(
        "POST",
        "/wxapp/esp32/mark_upload_complete/",
        {"session_id": session_id, "device_code": "TWIN"},
    )
    assert uploaded["session_status"] == "completed"
    assert len(commands_received(one, "/start_collection")) == 1
    assert commands_received(two, "/start_collection") == []
    assert len(one.sd_files) == 1
    assert two.sd_files == []
