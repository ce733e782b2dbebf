"""DeviceClient against real HTTP servers on loopback: both reply dialects, and bad networks."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from station.backend.models import Failure
from station.devices.client import (
    DeviceAddress,
    DeviceClient,
    reported_session_id,
    reported_status,
)

if TYPE_CHECKING:  # the fixtures hand these out; a conftest is not imported by tests
    from tests.devices.conftest import Firmware, StartDevice, StartSilent

FORM = "application/x-www-form-urlencoded"


def json_reply(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="application/json")


def replying(
    text: str, status: int = 200, content_type: str = "application/json"
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text, content_type=content_type)

    return handler


# --- the firmware dialect ---------------------------------------------------------------------


async def test_start_posts_session_and_device_code_and_reads_firmware_reply(
    client: DeviceClient, start_device: StartDevice, firmware: Firmware
) -> None:
    device = await start_device(firmware.routes())

    reply = await client.start_collection(device.address, 1011, "2025001")

    assert reply.ok
    assert reply.failure is None and reply.error is None
    assert reply.attempts == 1
    assert reply.http_status == 200
    assert reply.data == {
        "status": "collection_started",
        "session_id": 1011,
        "device_code": "2025001",
    }
    assert reply.session_id == 1011
    assert reply.body is not None and reply.body.startswith('{"status":"collection_started"')
    assert reply.elapsed_ms > 0
    [seen] = device.seen
    assert (seen.method, seen.path, seen.content_type) == ("POST", "/start_collection", FORM)
    assert seen.fields == [("session_id", "1011"), ("device_code", "2025001")]


async def test_stop_posts_command_and_device_code(
    client: DeviceClient, start_device: StartDevice, firmware: Firmware
) -> None:
    device = await start_device(firmware.routes())

    reply = await client.stop_collection(device.address, "2025001")

    assert reply.ok
    assert reply.data == {
        "status": "collection_stopped",
        "device_code": "2025001",
        "total_uploads": 3,
    }
    [seen] = device.seen
    assert (seen.method, seen.path, seen.content_type) == ("POST", "/stop_collection", FORM)
    assert seen.fields == [("command", "STOP_COLLECTION"), ("device_code", "2025001")]


async def test_status_follows_the_firmware_through_start_and_stop(
    client: DeviceClient, start_device: StartDevice, firmware: Firmware
) -> None:
    device = await start_device(firmware.routes())

    idle = await client.status(device.address)
    await client.start_collection(device.address, 1011, "2025001")
    collecting = await client.status(device.address)
    await client.stop_collection(device.address, "2025001")
    stopped = await client.status(device.address)

    assert (idle.ok, idle.device_status, idle.session_id) == (True, "idle", None)
    assert idle.data is not None and idle.data["session_id"] == 0
    assert (collecting.device_status, collecting.session_id) == ("collecting", 1011)
    assert collecting.data is not None and collecting.data["signal_strength"] == -61
    assert (stopped.device_status, stopped.session_id) == ("idle", None)
    assert [(seen.method, seen.path) for seen in device.seen][0] == ("GET", "/status")
    assert device.seen[0].fields == []


async def test_unquoted_session_id_gives_invalid_json_but_still_ok(
    client: DeviceClient, start_device: StartDevice
) -> None:
    raw = '{"status":"collection_started","session_id":abc,"device_code":"2025001"}'
    device = await start_device({("POST", "/start_collection"): replying(raw)})

    reply = await client.start_collection(device.address, 1011, "2025001")

    assert reply.ok
    assert reply.data is None
    assert reply.body == raw
    assert reply.session_id is None


async def test_json_is_read_whatever_the_content_type_claims(
    client: DeviceClient, start_device: StartDevice
) -> None:
    routes = {("GET", "/status"): replying('{"status":"IDLE"}', content_type="text/plain")}
    device = await start_device(routes)

    reply = await client.status(device.address)

    assert reply.data == {"status": "IDLE"}
    assert reply.device_status == "idle"


async def test_long_body_is_cut_to_two_thousand_characters(
    client: DeviceClient, start_device: StartDevice
) -> None:
    device = await start_device(
        {("GET", "/status"): replying("x" * 5000, content_type="text/plain")}
    )

    reply = await client.status(device.address)

    assert reply.ok
    assert reply.body == "x" * 2000
    assert reply.data is None


# --- the seed document's dialect --------------------------------------------------------------


async def test_seed_dialect_replies_are_understood(
    client: DeviceClient, start_device: StartDevice
) -> None:
    routes = {
        ("POST", "/start_collection"): replying(
            '{"msg": "Collection started", "session_id": 1011, "device_code": "2025001"}'
        ),
        ("POST", "/stop_collection"): replying(
            '{"msg": "Collection stopped", "status": "stopped"}'
        ),
        ("GET", "/status"): replying(
            '{"msg": "Device status", "device_code": "2025001", "status": "collecting",'
            ' "session_id": 1011}'
        ),
    }
    device = await start_device(routes)

    started = await client.start_collection(device.address, 1011, "2025001")
    status = await client.status(device.address)
    stopped = await client.stop_collection(device.address, "2025001")

    assert started.ok and started.session_id == 1011
    assert started.data is not None and started.data["msg"] == "Collection started"
    assert (status.device_status, status.session_id) == ("collecting", 1011)
    assert stopped.ok and stopped.data == {"msg": "Collection stopped", "status": "stopped"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"is_collecting": True, "status": "whatever"}, "collecting"),
        ({"is_collecting": False}, "idle"),
        ({"status": "Collecting"}, "collecting"),
        ({"status": "stopped"}, "stopped"),
        ({"status": ""}, None),
        ({"status": 3}, None),
        ({}, None),
        (None, None),
    ],
)
def test_reported_status_speaks_one_vocabulary(data: dict | None, expected: str | None) -> None:
    assert reported_status(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"session_id": 1011}, 1011),
        ({"session_id": 0}, None),
        ({"session_id": None}, None),
        ({"session_id": "1011"}, None),
        ({"session_id": True}, None),
        ({"session_id": 10.5}, None),
        ({}, None),
        (None, None),
    ],
)
def test_reported_session_id_is_a_real_int_or_none(data: dict | None, expected: int | None) -> None:
    assert reported_session_id(data) == expected


# --- replies that are refusals ----------------------------------------------------------------


async def test_missing_parameters_is_rejected_and_not_retried(
    client: DeviceClient, start_device: StartDevice
) -> None:
    routes = {
        ("POST", "/start_collection"): replying(
            "Missing parameters", status=400, content_type="text/plain"
        )
    }
    device = await start_device(routes)

    reply = await client.start_collection(device.address, 1011, "2025001")

    assert not reply.ok
    assert reply.failure is Failure.REJECTED
    assert reply.http_status == 400
    assert reply.error == f"device at {device.address.netloc} answered 400: Missing parameters"
    assert reply.body == "Missing parameters"
    assert reply.attempts == 1
    assert len(device.seen) == 1


async def test_server_error_is_rejected_and_not_retried(
    client: DeviceClient, start_device: StartDevice
) -> None:
    device = await start_device({("GET", "/status"): replying("", status=500)})

    reply = await client.status(device.address)

    assert reply.failure is Failure.REJECTED
    assert reply.http_status == 500
    assert reply.error == f"device at {device.address.netloc} answered 500"
    assert reply.attempts == 1
    assert len(device.seen) == 1


async def test_unknown_route_gives_firmware_not_found(
    client: DeviceClient, start_device: StartDevice
) -> None:
    device = await start_device({})

    reply = await client.status(device.address)

    assert reply.failure is Failure.REJECTED
    assert reply.http_status == 404
    assert reply.error is not None and reply.error.endswith("answered 404: Not found: /status")
    assert reply.device_status is None


async def test_redirect_is_not_followed(client: DeviceClient, start_device: StartDevice) -> None:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    device = await start_device({("GET", "/status"): redirect})

    reply = await client.status(device.address)

    assert reply.failure is Failure.REJECTED
    assert reply.http_status == 302
    assert [seen.path for seen in device.seen] == ["/status"]


# --- network failures -------------------------------------------------------------------------


async def test_refused_connection_is_retried_with_backoff(closed_port: int) -> None:
    client = DeviceClient(connect_timeout=1.0, retries=2, backoff=0.1)
    address = DeviceAddress("127.0.0.1", closed_port)
    try:
        reply = await client.start_collection(address, 1011, "2025001")
    finally:
        await client.aclose()

    assert not reply.ok
    assert reply.failure is Failure.UNREACHABLE
    assert reply.attempts == 3
    assert reply.error == f"connection refused by 127.0.0.1:{closed_port} after 3 attempts"
    assert reply.http_status is None and reply.body is None
    # waits of 0.1 s then 0.2 s lie between the three attempts
    assert 290 <= reply.elapsed_ms < 10_000


async def test_status_with_no_retries_tries_once(client: DeviceClient, closed_port: int) -> None:
    reply = await client.status(DeviceAddress("127.0.0.1", closed_port), retries=0)

    assert reply.failure is Failure.UNREACHABLE
    assert reply.attempts == 1
    assert reply.error is not None and reply.error.endswith("after 1 attempt")


async def test_silent_device_times_out_and_is_not_retried(
    start_silent: StartSilent,
) -> None:
    silent = await start_silent("127.0.0.5")
    client = DeviceClient(connect_timeout=1.0, read_timeout=0.3, retries=2, backoff=0.05)
    try:
        reply = await client.start_collection(silent.address, 1011, "2025001")
    finally:
        await client.aclose()

    assert reply.failure is Failure.TIMEOUT
    assert reply.attempts == 1
    assert reply.error == f"no answer from 127.0.0.5:{silent.address.port} within 0.3 s"
    assert silent.connections == 1
    assert 250 <= reply.elapsed_ms < 10_000


async def test_device_hanging_up_without_answer_is_unreachable_and_not_retried(
    client: DeviceClient, start_silent: StartSilent
) -> None:
    silent = await start_silent("127.0.0.6", hang_up=True)

    reply = await client.stop_collection(silent.address, "2025001")

    assert reply.failure is Failure.UNREACHABLE
    assert reply.attempts == 1
    assert reply.error == (f"{silent.address.netloc} closed the connection without a proper answer")
    assert silent.connections == 1


async def test_slow_device_within_timeout_is_ok(
    client: DeviceClient, start_device: StartDevice
) -> None:
    async def slow_status(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return json_reply('{"is_collecting":false,"session_id":0}')

    device = await start_device({("GET", "/status"): slow_status})

    reply = await client.status(device.address)

    assert reply.ok
    assert reply.device_status == "idle"
    assert reply.elapsed_ms >= 450


async def test_configure_applies_to_the_next_request(
    client: DeviceClient, closed_port: int, start_silent: StartSilent
) -> None:
    silent = await start_silent("127.0.0.7")
    refused = DeviceAddress("127.0.0.1", closed_port)

    client.configure(retries=0, read_timeout=0.2)
    no_retry = await client.stop_collection(refused, "2025001")
    timed_out = await client.status(silent.address)

    assert no_retry.attempts == 1
    assert timed_out.failure is Failure.TIMEOUT
    assert timed_out.error is not None and timed_out.error.endswith("within 0.2 s")
    with pytest.raises(ValueError):
        client.configure(retries=-1)


async def test_proxy_settings_in_the_environment_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
    start_device: StartDevice,
    firmware: Firmware,
    closed_port: int,
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
    device = await start_device(firmware.routes())

    async with DeviceClient() as client:
        reply = await client.status(device.address)

    assert reply.ok
    assert len(device.seen) == 1


# --- a fleet ----------------------------------------------------------------------------------


async def test_silent_devices_do_not_delay_a_healthy_one(
    start_device: StartDevice, start_silent: StartSilent, firmware: Firmware
) -> None:
    silent = [await start_silent(f"127.0.2.{n}") for n in range(1, 21)]
    healthy = await start_device(firmware.routes(), hosts=["127.0.3.1"])
    client = DeviceClient(connect_timeout=1.0, read_timeout=2.0, retries=0)
    try:
        waiting = [asyncio.create_task(client.start_collection(d.address, 7, "x")) for d in silent]
        await asyncio.sleep(0)  # the silent commands go out first
        prompt = asyncio.create_task(client.start_collection(healthy.address, 7, "2025001"))

        done, pending = await asyncio.wait([prompt, *waiting], return_when=asyncio.FIRST_COMPLETED)
        assert done == {prompt}
        assert len(pending) == 20
        replies = await asyncio.gather(*waiting)
    finally:
        await client.aclose()

    assert prompt.result().ok
    assert prompt.result().elapsed_ms < 1500
    assert all(reply.failure is Failure.TIMEOUT for reply in replies)
    assert [d.connections for d in silent] == [1] * 20


async def test_two_hundred_commands_to_two_hundred_devices_go_out_at_once(
    start_device: StartDevice,
) -> None:
    fleet_size = 200
    arrived = 0
    everyone_in = asyncio.Event()

    async def start(request: web.Request) -> web.Response:
        # Answers only once every device holds a request: a throttled client never gets there.
        nonlocal arrived
        arrived += 1
        if arrived == fleet_size:
            everyone_in.set()
        try:
            await asyncio.wait_for(everyone_in.wait(), timeout=8)
        except TimeoutError:
            return web.Response(status=503, text=f"only {arrived} arrived")
        return json_reply('{"status":"collection_started","session_id":9}')

    hosts = [f"127.0.1.{n}" for n in range(1, fleet_size + 1)]
    fleet = await start_device({("POST", "/start_collection"): start}, hosts=hosts)
    client = DeviceClient(read_timeout=10.0, retries=0)
    try:
        replies = await asyncio.gather(
            *(client.start_collection(address, 9, "x") for address in fleet.addresses)
        )
    finally:
        await client.aclose()

    assert [reply.error for reply in replies if not reply.ok] == []
    assert sorted(seen.host for seen in fleet.seen) == sorted(hosts)


# --- addresses and logging --------------------------------------------------------------------


def test_base_url_brackets_ipv6_literals() -> None:
    assert DeviceAddress("192.168.1.100").base_url == "http://192.168.1.100:80"
    assert DeviceAddress("::1", 8080).base_url == "http://[::1]:8080"
    assert DeviceAddress("fe80::1", 80).netloc == "[fe80::1]:80"


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback here")
async def test_device_on_ipv6_loopback(
    client: DeviceClient, start_device: StartDevice, firmware: Firmware
) -> None:
    device = await start_device(firmware.routes(), hosts=["::1"])

    reply = await client.status(device.address)

    assert reply.ok
    assert reply.device_status == "idle"


async def test_requests_are_logged_at_debug_only(
    caplog: pytest.LogCaptureFixture,
    client: DeviceClient,
    start_device: StartDevice,
    firmware: Firmware,
    closed_port: int,
) -> None:
    device = await start_device(firmware.routes())
    caplog.set_level(logging.DEBUG, logger="station.devices.client")

    await client.status(device.address)
    await client.status(DeviceAddress("127.0.0.1", closed_port), retries=1)

    records = [r for r in caplog.records if r.name == "station.devices.client"]
    assert [r.levelno for r in records] == [logging.DEBUG] * 3
    assert "/status" in records[0].getMessage()
