"""Liveness: heartbeats and status polls are signs of life; the monitor turns silence into
offline (logged) and never mistakes a slow device for a dead one. Loopback devices only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

from tests.backend.conftest import DEVICE_CODE, Api, StartDevice, StartStation

MONITORED = {"poll_interval": 0.2, "missed_polls_offline": 3}


async def heartbeat(api: Api, **fields: str) -> dict:
    return await api.ok("POST", "/wxapp/esp32/heartbeat/", data=fields)


async def wait_for(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until check() holds; fails the test if it does not within that many."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not within {within} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# ---- heartbeat -----------------------------------------------------------------------------


async def test_heartbeat_from_an_unknown_device_adds_it_without_an_address(api: Api) -> None:
    body = await heartbeat(api, device_code="G2", status="collecting", session_id="2")

    assert body["msg"] == "心跳接收成功"
    assert body["device_code"] == "G2"
    assert body["session_id"] == "2"
    assert body["status"] == "collecting"
    assert isinstance(body["timestamp"], str) and body["timestamp"]
    device = (await api.devices())["G2"]
    assert device["host"] is None and device["address"] is None
    assert device["liveness"] == "online"
    assert device["last_seen"] and device["last_seen_via"] == "heartbeat"
    assert (device["reported_status"], device["reported_session_id"]) == ("collecting", 2)

    async def logged() -> bool:
        detail = await api.ok("GET", "/api/v1/devices/G2")
        return [e["action"] for e in detail["events"]] == ["device.discover", "device.liveness"]

    await wait_for(logged, within=2)  # liveness changes are logged in the background


async def test_heartbeat_status_defaults_to_collecting_and_session_id_is_optional(
    api: Api,
) -> None:
    body = await heartbeat(api, device_code="G3")

    assert (body["status"], body["session_id"]) == ("collecting", "")
    device = (await api.devices())["G3"]
    assert device["reported_session_id"] is None


async def test_heartbeat_from_a_registered_device_refreshes_last_seen(api: Api) -> None:
    await api.register(DEVICE_CODE, "127.0.0.1:9")
    registered = (await api.devices())[DEVICE_CODE]
    await asyncio.sleep(0.01)

    await heartbeat(api, device_code=DEVICE_CODE, status="idle", session_id="0")

    device = (await api.devices())[DEVICE_CODE]
    assert device["last_seen"] > registered["last_seen"]
    assert device["last_seen_via"] == "heartbeat"
    assert device["address"] == "127.0.0.1:9"
    assert (device["reported_status"], device["reported_session_id"]) == ("idle", None)


async def test_device_added_by_heartbeat_cannot_be_commanded_until_it_registers(
    api: Api,
) -> None:
    await heartbeat(api, device_code="G2")
    session_id = await api.start_session()

    status, body = await api.post(
        "/wxapp/notify_device_start/", data={"session_id": str(session_id), "device_code": "G2"}
    )

    assert status == 404
    assert "not registered" in body["error"]


# ---- the monitor ---------------------------------------------------------------------------


async def test_polled_device_goes_offline_when_it_stops_answering(
    start_station: StartStation, start_device: StartDevice, http: aiohttp.ClientSession
) -> None:
    station = await start_station(monitor=True, **MONITORED)
    api = Api(http, station.url)
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)

    async def polled_and_online() -> bool:
        found = (await api.devices())[DEVICE_CODE]
        return found["liveness"] == "online" and found["last_seen_via"] == "poll"

    await wait_for(polled_and_online, within=5)
    assert device.paths("GET")[0] == "/status"
    await device.stop()
    stopped_at = time.monotonic()
    last_seen_when_stopped = (await api.devices())[DEVICE_CODE]["last_seen"]

    async def offline() -> bool:
        return (await api.devices())[DEVICE_CODE]["liveness"] == "offline"

    await wait_for(offline, within=5)
    took = time.monotonic() - stopped_at

    assert took < 0.6 + 2.0  # three missed polls, plus generous slack for a busy machine
    found = (await api.devices())[DEVICE_CODE]
    assert found["last_seen"] is not None
    assert found["last_seen"] >= last_seen_when_stopped
    assert found["last_error"] and "refused" in found["last_error"]

    async def logged() -> bool:
        detail = await api.ok("GET", f"/api/v1/devices/{DEVICE_CODE}")
        return any(
            e["action"] == "device.liveness" and e["result"] == "offline" for e in detail["events"]
        )

    await wait_for(logged, within=2)
    health = await api.ok("GET", "/healthz")
    assert (health["devices"], health["devices_online"]) == (1, 0)


async def test_device_coming_back_is_online_again(
    start_station: StartStation, start_device: StartDevice, http: aiohttp.ClientSession
) -> None:
    station = await start_station(monitor=True, **MONITORED)
    api = Api(http, station.url)
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    await device.stop()

    async def liveness_is(expected: str) -> bool:
        return (await api.devices())[DEVICE_CODE]["liveness"] == expected

    await wait_for(lambda: liveness_is("offline"), within=5)
    await device.start()
    await wait_for(lambda: liveness_is("online"), within=5)

    async def logged() -> bool:
        detail = await api.ok("GET", f"/api/v1/devices/{DEVICE_CODE}")
        changes = [e["result"] for e in detail["events"] if e["action"] == "device.liveness"]
        return changes[-2:] == ["offline", "online"]

    await wait_for(logged, within=2)


async def test_slow_device_that_answers_every_poll_is_never_offline(
    start_station: StartStation, start_device: StartDevice, http: aiohttp.ClientSession
) -> None:
    station = await start_station(monitor=True, **MONITORED)
    api = Api(http, station.url)
    device = await start_device(behaviour="slow", delay=0.25)
    await api.register(DEVICE_CODE, device.address)

    seen: set[str] = set()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        seen.add((await api.devices())[DEVICE_CODE]["liveness"])
        await asyncio.sleep(0.05)

    assert "offline" not in seen
    assert len(device.paths("GET")) >= 4
    detail = await api.ok("GET", f"/api/v1/devices/{DEVICE_CODE}")
    changes = [e["result"] for e in detail["events"] if e["action"] == "device.liveness"]
    assert "offline" not in changes
