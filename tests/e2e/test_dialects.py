"""Every device dialect end to end: a real station, simulated ESP32s that upload the way each
sketch does, a whole session from the mini-program's calls to the station's export.

1. batch uploaders driven by HTTP commands (the multi-sensor sketch's uploads on the wifi
   sketch's control API), one of them a board carrying all four sensors;
2. single-sample uploaders (the wifi-notification sketch), started with notify_device_start too;
3. polling devices (the deleted esp32_http_polling sketch), first each in the session of the
   group named after its own device code, then all of them in one group.

Each ends with every device's upload complete, the session `completed`, and an export holding
exactly the samples the station acknowledged, all recorded between start and stop.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest

from station.backend.runtime import Station
from station.devices.sim_samples import SENSOR_TYPES
from station.devices.simulator import SimDevice, SimDeviceConfig, SimFleet
from station.export import ExportResult, export_session
from tests.e2e.conftest import (
    MiniProgram,
    StartStation,
    commands_received,
    eventually,
    wait_fleet_listed,
)

COLLECT = 1.5  # seconds of recording per session
POLL = 0.1  # polling devices' poll and heartbeat interval
SLACK = dt.timedelta(milliseconds=50)  # the device's and the station's clocks, read apart

Clock = Literal["unix", "millis"]
StartDevices = Callable[..., Awaitable[SimFleet]]


@pytest.fixture
async def start_devices(tmp_path: Path) -> AsyncIterator[StartDevices]:
    """Start simulated devices with the given codes and settings (per-device sensor boards in
    `boards`), one loopback address each from `first_host` on."""
    fleets: list[SimFleet] = []

    async def start(
        station_url: str,
        codes: Sequence[str],
        *,
        first_host: int = 2,
        boards: dict[str, tuple[str, ...]] | None = None,
        **settings: Any,
    ) -> SimFleet:
        fleet = SimFleet(
            [
                SimDevice(
                    SimDeviceConfig(
                        device_code=code,
                        host=f"127.0.0.{first_host + i}",
                        station_url=station_url,
                        sd_dir=tmp_path / "sd",
                        register_retry_backoff=(0.05, 0.5),
                        sensor_types=(boards or {}).get(code, ()),
                        **settings,
                    )
                )
                for i, code in enumerate(codes)
            ]
        )
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield start

    for fleet in fleets:
        await fleet.stop()


# ---- checks ------------------------------------------------------------------------------------


def sd_device_ms(device: SimDevice, session_id: int, sensor: str) -> dict[int, int]:
    """seq -> device millis() of every sample in the device's SD file for the session."""
    one = len(device.config.sensor_types) == 1
    name = f"session_{session_id}.csv" if one else f"session_{session_id}_{sensor}.csv"
    (path,) = [p for p in device.sd_files if p.name == name]
    with path.open(newline="", encoding="ascii") as f:
        return {int(row[0]): int(row[1]) for row in list(csv.reader(f))[1:]}


def read_export(result: ExportResult, name: str) -> list[dict[str, str]]:
    with (result.folder / name).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def millis_at(device: SimDevice, monotonic: float) -> float:
    """A time.monotonic() instant on the device's millis() clock."""
    return (monotonic - (time.monotonic() - device.uptime_ms / 1000)) * 1000


async def assert_session_exported(
    station: Station,
    mini: MiniProgram,
    devices: Sequence[SimDevice],
    session_id: int,
    export_dir: Path,
    clock: Clock,
    stop_lag: dt.timedelta = dt.timedelta(seconds=1),
) -> int:
    """The export holds exactly the samples the devices saw acknowledged, the station agrees
    on the counts, and every sample was recorded between start and stop. Returns the total."""
    detail = await mini.session(session_id)
    session = detail["session"]
    assert session["status"] == "completed"
    collecting_at, stopping_at = when(session["collecting_at"]), when(session["stopping_at"])
    station_counts = {d["device_code"]: d for d in detail["devices"]}

    result = await export_session(station.store, session_id, export_dir)
    manifest = json.loads((result.folder / "manifest.json").read_text(encoding="utf-8"))
    listed = {d["device_code"]: d for d in manifest["devices"]}
    total = 0
    for device in devices:
        code = device.device_code
        uploaded = device.uploaded(session_id)
        assert device.upload_complete(session_id), device
        assert listed[code]["upload"] == "complete"
        assert listed[code]["samples"] == station_counts[code]["samples"]
        assert listed[code]["samples"] == sum(len(seqs) for seqs in uploaded.values())
        for sensor, acked in uploaded.items():
            assert acked, (device, sensor)
            recorded = sd_device_ms(device, session_id, sensor)
            rows = read_export(result, f"{code}_{sensor}.csv")
            assert len(rows) == len(acked) == station_counts[code]["sensors"][sensor]
            if clock == "unix":
                assert acked == sorted(recorded)  # batches lose nothing the SD card holds
                assert [int(r["seq"]) for r in rows] == acked
                offset = int(rows[0]["device_time"]) - recorded[acked[0]]
                expected = [offset + recorded[seq] for seq in acked]
                assert [int(r["device_time"]) for r in rows] == expected
                for row in rows:
                    moment = when(row["device_time_iso"])
                    assert collecting_at - SLACK <= moment <= stopping_at + stop_lag, row
            else:
                # The wifi sketch sends millis() and no seq: match on the device time.
                assert {r["seq"] for r in rows} == {""}
                assert sorted(int(r["device_time"]) for r in rows) == [recorded[s] for s in acked]
                (start,) = commands_received(device, "/start_collection")
                (stop,) = commands_received(device, "/stop_collection")
                low, high = millis_at(device, start.time) - 5, millis_at(device, stop.time) + 5
                assert all(low <= int(r["device_time"]) <= high for r in rows)
            total += len(rows)
    assert result.samples == total
    return total


async def wait_completed(mini: MiniProgram, session_id: int) -> None:
    async def completed() -> bool:
        return (await mini.session(session_id))["session"]["status"] == "completed"

    await eventually(completed)


# ---- 1. batch uploaders on HTTP commands -------------------------------------------------------


async def test_batch_uploaders_commanded_over_http_complete_and_export_every_sample(
    start_station: StartStation,
    start_devices: StartDevices,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    station = await start_station()
    mini = MiniProgram(http, station.url)
    fleet = await start_devices(
        station.url,
        ["B01", "B02", "B03"],
        boards={"B01": SENSOR_TYPES},
        upload="batch",
        batch_interval=0.25,
    )
    await wait_fleet_listed(mini, fleet.devices)
    await mini.join_group("court_b", [d.device_code for d in fleet])

    session_id = (await mini.start_session("court_b"))["session_id"]
    collecting = await mini.start_data_collection(session_id)
    assert (collecting["devices_acked"], collecting["devices_failed"]) == (3, 0)
    await asyncio.sleep(COLLECT)
    ended = await mini.end_session(session_id)
    assert ended["devices_acked"] == 3

    await asyncio.wait_for(asyncio.gather(*(d.wait_upload_complete(session_id) for d in fleet)), 10)
    await wait_completed(mini, session_id)
    total = await assert_session_exported(
        station, mini, fleet.devices, session_id, tmp_path / "export", "unix"
    )
    # 6 sensors at 100 Hz for COLLECT seconds, give or take the command round trips.
    assert 6 * 100 * COLLECT * 0.8 <= total <= 6 * 100 * (COLLECT + 1)


# ---- 2. single-sample uploaders ----------------------------------------------------------------


async def test_single_sample_uploaders_complete_and_export_every_acknowledged_sample(
    start_station: StartStation,
    start_devices: StartDevices,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    station = await start_station()
    mini = MiniProgram(http, station.url)
    fleet = await start_devices(
        station.url,
        ["W01", "W02"],
        boards={"W02": ("waist", "shoulder", "wrist")},  # the sketch's rotation
        upload="single",
        single_upload_interval=0.1,
        first_host=20,
    )
    await wait_fleet_listed(mini, fleet.devices)
    await mini.join_group("court_w", [d.device_code for d in fleet])

    session_id = (await mini.start_session("court_w"))["session_id"]
    await mini.start_data_collection(session_id)
    for device in fleet:  # the seed-era flow: the mini-program notifies each device too
        notified = await mini.notify_device_start(session_id, device.device_code)
        assert notified["command"]["state"] == "acked"
    await asyncio.sleep(COLLECT)
    await mini.end_session(session_id)

    await asyncio.wait_for(asyncio.gather(*(d.wait_upload_complete(session_id) for d in fleet)), 10)
    await wait_completed(mini, session_id)
    total = await assert_session_exported(
        station, mini, fleet.devices, session_id, tmp_path / "export", "millis"
    )
    assert total == sum(d.upload_count for d in fleet) >= 2 * COLLECT / 0.1 * 0.6


# ---- 3. polling devices ------------------------------------------------------------------------


async def run_polled_session(
    mini: MiniProgram, group: str, devices: Sequence[SimDevice]
) -> tuple[int, dict[str, Any]]:
    """A session for `group` whose devices learn of start and stop only by polling."""
    session_id = (await mini.start_session(group))["session_id"]
    collecting = await mini.start_data_collection(session_id)

    await eventually(lambda: all(d.session_id == session_id for d in devices))
    await asyncio.sleep(COLLECT)
    await mini.end_session(session_id)
    await eventually(lambda: not any(d.collecting for d in devices))
    await asyncio.wait_for(
        asyncio.gather(*(d.wait_upload_complete(session_id) for d in devices)), 10
    )
    await wait_completed(mini, session_id)
    return session_id, collecting


async def test_polling_devices_alone_and_in_a_group_complete_and_export_every_sample(
    start_station: StartStation,
    start_devices: StartDevices,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    station = await start_station()
    mini = MiniProgram(http, station.url)
    fleet = await start_devices(
        station.url,
        ["P01", "P02", "P03"],
        polling=True,
        poll_interval=POLL,
        polling_heartbeat_interval=POLL,
        upload="batch",
        batch_interval=0.25,
        first_host=40,
    )
    lag = dt.timedelta(seconds=POLL) + dt.timedelta(seconds=1)

    # Each device alone, in the group named after its own device code (the original's rule).
    alone = await asyncio.gather(
        *(run_polled_session(mini, d.device_code, [d]) for d in fleet.devices)
    )
    for device, (session_id, _collecting) in zip(fleet, alone, strict=True):
        await assert_session_exported(
            station, mini, [device], session_id, tmp_path / "alone", "unix", lag
        )
    assert not any(d.listening for d in fleet)
    known = await mini.devices()
    assert all(known[d.device_code]["address"] is None for d in fleet)  # never registered

    # Their polls made them known, so staff can group them; the group's session reaches each
    # of them through its polls too.
    await mini.join_group("court_p", [d.device_code for d in fleet])
    session_id, collecting = await run_polled_session(mini, "court_p", fleet.devices)
    assert collecting["devices_total"] == 3  # no address to send to: the polls deliver them
    detail = await mini.session(session_id)
    commands = {(c["device_code"], c["kind"]): c for c in detail["commands"]}
    for device in fleet:
        for kind in ("start", "stop"):
            command = commands[(device.device_code, kind)]
            assert (command["state"], command["target"]) == ("acked", "poll")
    await assert_session_exported(
        station, mini, fleet.devices, session_id, tmp_path / "group", "unix", lag
    )
