"""What survives a restart of the station on the same data dir, and how a shutdown in the middle
of a command is recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.backend.conftest import DEVICE_CODE, Api, StartDevice, StartSilent, StartStation


async def test_devices_sessions_commands_and_events_survive_a_restart(
    start_station: StartStation,
    start_device: StartDevice,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "lab"
    first = await start_station(data_dir=data_dir)
    api = Api(http, first.url)
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    await api.join("test_group", DEVICE_CODE)
    session_id = await api.start_session("test_group")
    await api.start_collection(session_id)
    devices_before = await api.devices()
    detail_before = await api.session(session_id)
    await first.stop()

    second = await start_station(data_dir=data_dir)
    api = Api(http, second.url)

    devices = await api.devices()
    assert devices[DEVICE_CODE]["address"] == device.address
    assert devices[DEVICE_CODE]["groups"] == ["test_group"]
    assert devices[DEVICE_CODE]["last_seen"] == devices_before[DEVICE_CODE]["last_seen"]
    detail = await api.session(session_id)
    assert detail["session"] == detail_before["session"]
    assert detail["session"]["status"] == "collecting"
    assert detail["commands"] == detail_before["commands"]
    [start] = detail["commands"]
    assert (start["kind"], start["state"], start["attempts"]) == ("start", "acked", 1)
    assert detail["events"] == detail_before["events"]
    groups = await api.ok("GET", "/api/v1/groups")
    assert [g["device_codes"] for g in groups["groups"]] == [[DEVICE_CODE]]

    ended = await api.end_session(session_id)
    assert ended["status"] == "stopping"
    assert device.paths("POST") == ["/start_collection", "/stop_collection"]
    assert (await api.upload_complete(session_id))["session_status"] == "completed"


async def stop_while_start_is_unanswered(
    start_station: StartStation,
    start_silent: StartSilent,
    http: aiohttp.ClientSession,
    data_dir: Path,
) -> tuple[int, tuple[int, dict]]:
    """A station stopped while a silent device holds its notify_device_start; returns the
    session id and what the waiting client got."""
    first = await start_station(data_dir=data_dir, read_timeout=30, reply_wait=30)
    api = Api(http, first.url)
    silent = await start_silent()
    await api.register(DEVICE_CODE, silent.address)
    session_id = await api.start_session()
    notify = asyncio.ensure_future(
        api.post(
            "/wxapp/notify_device_start/",
            data={"session_id": str(session_id), "device_code": DEVICE_CODE},
        )
    )
    await asyncio.wait_for(silent.arrived.wait(), 5)
    await first.stop()
    return session_id, await notify


async def test_command_unanswered_at_shutdown_is_failed_after_restart(
    start_station: StartStation,
    start_silent: StartSilent,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "lab"
    session_id, (status, body) = await stop_while_start_is_unanswered(
        start_station, start_silent, http, data_dir
    )

    assert status == 504, body
    assert body["command"]["state"] == "sent"
    second = await start_station(data_dir=data_dir)
    api = Api(http, second.url)
    detail = await api.session(session_id)
    [command] = detail["commands"]
    assert command["state"] == "failed"
    assert command["failure"] == "timeout"  # it reached the device, which may have acted on it
    assert "station stopped before the device answered" in command["last_error"]
    interrupted = [e for e in detail["events"] if e["action"] == "command.start"]
    assert interrupted[-1]["result"] == "failed"
    assert "interrupted by a station shutdown" in interrupted[-1]["message"]
    [summary] = detail["devices"]
    assert summary["start"]["state"] == "failed"


async def test_command_failed_by_a_shutdown_can_be_sent_again(
    start_station: StartStation,
    start_silent: StartSilent,
    start_device: StartDevice,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "lab"
    session_id, _answer = await stop_while_start_is_unanswered(
        start_station, start_silent, http, data_dir
    )

    second = await start_station(data_dir=data_dir)
    api = Api(http, second.url)
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    notified = await api.ok(
        "POST",
        "/wxapp/notify_device_start/",
        data={"session_id": str(session_id), "device_code": DEVICE_CODE},
    )

    assert notified["command"]["state"] == "acked"
    assert device.paths("POST") == ["/start_collection"]


async def test_device_whose_start_was_cut_off_by_a_shutdown_is_told_to_stop(
    start_station: StartStation,
    start_silent: StartSilent,
    start_device: StartDevice,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "lab"
    first = await start_station(data_dir=data_dir, read_timeout=30, reply_wait=30)
    api = Api(http, first.url)
    silent = await start_silent()
    await api.register(DEVICE_CODE, silent.address)
    await api.join("test_group", DEVICE_CODE)
    session_id = await api.start_session("test_group")
    collecting = asyncio.ensure_future(api.start_collection(session_id))
    await asyncio.wait_for(silent.arrived.wait(), 5)
    await first.stop()
    await asyncio.gather(collecting, return_exceptions=True)

    second = await start_station(data_dir=data_dir)
    api = Api(http, second.url)
    device = await start_device()  # the same device, back at a new address
    await api.register(DEVICE_CODE, device.address)
    ended = await api.end_session(session_id)

    assert [(d["kind"], d["state"]) for d in ended["devices"]] == [("stop", "acked")]
    assert device.paths("POST") == ["/stop_collection"]
    assert ended["status"] == "stopping"  # its start timed out: it may have recorded
    assert (await api.upload_complete(session_id))["session_status"] == "completed"
