"""Requests that race each other: a stop sent while its device's start is still retrying, and
registry changes (registrations, heartbeats, group membership) arriving at the same moment. Each
must end as if the requests had come one after another."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp

from station.backend.runtime import Station
from tests.backend.conftest import (
    Api,
    FakeDevice,
    StartStation,
    next_loopback_host,
)


def unused_address() -> tuple[str, int]:
    """A loopback host and port nothing listens on yet (a device that is still booting)."""
    host = next_loopback_host()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return host, int(probe.getsockname()[1])


async def heartbeat(api: Api, device_code: str) -> None:
    await api.ok(
        "POST", "/wxapp/esp32/heartbeat/", data={"device_code": device_code, "status": "idle"}
    )


async def restarted(
    station: Station, start_station: StartStation, http: aiohttp.ClientSession
) -> Api:
    """The same data dir served again: what the registry saved, not what it cached."""
    await station.stop()
    again = await start_station(data_dir=Path(station.data_dir))
    return Api(http, again.url)


# ---- a stop never overtakes its start ---------------------------------------------------------


async def test_stop_waits_for_a_start_still_retrying_against_a_booting_device(
    start_station: StartStation, http: aiohttp.ClientSession
) -> None:
    # Refused tries at about 0, 0.05, 0.15, 0.35 and 0.75 s after the start is sent.
    station = await start_station(command_retries=4, retry_backoff=0.05)
    api = Api(http, station.url)

    for n in range(3):
        device_code = f"BOOT{n}"
        host, port = unused_address()
        device = FakeDevice(device_code, host, port=port)
        await api.register(device_code, device.address)
        await api.join(f"boot{n}", device_code)
        session_id = await api.start_session(f"boot{n}")
        starting = asyncio.ensure_future(api.start_collection(session_id))

        # Between two of the start's tries the device comes up and the session is ended: a stop
        # sent at once would reach the device before the start's next try does.
        await asyncio.sleep(0.5)
        await device.start()
        try:
            await api.end_session(session_id)
            await starting
        finally:
            await device.stop()

        paths = device.paths("POST")
        assert paths in ([], ["/stop_collection"], ["/start_collection", "/stop_collection"]), n
        assert not device.collecting


# ---- registry changes at the same moment ------------------------------------------------------


async def test_device_moving_while_another_takes_its_old_address_ends_at_its_new_one(
    station: Station, start_station: StartStation, http: aiohttp.ClientSession, api: Api
) -> None:
    pairs = []
    for n in range(1, 6):
        old, new = f"127.0.4.{n}:9", f"127.0.5.{n}:9"
        await api.register(f"MA{n}", old)
        pairs.append((n, old, new))

    await asyncio.gather(
        *(api.register(f"MA{n}", new) for n, _old, new in pairs),
        *(api.register(f"MB{n}", old) for n, old, _new in pairs),
    )

    for restart in (False, True):
        view = await restarted(station, start_station, http) if restart else api
        devices = await view.devices()
        for n, old, new in pairs:
            ma, mb = devices[f"MA{n}"], devices[f"MB{n}"]
            assert (ma["address"], ma["moved_to"]) == (new, None), ma
            assert (mb["address"], mb["moved_to"]) == (old, None), mb


async def test_many_devices_registering_one_address_at_once_leave_one_holder(
    station: Station, start_station: StartStation, http: aiohttp.ClientSession, api: Api
) -> None:
    address = "127.0.6.1:9"
    codes = [f"SAME{n:02}" for n in range(30)]

    await asyncio.gather(*(api.register(code, address) for code in codes))

    for restart in (False, True):
        view = await restarted(station, start_station, http) if restart else api
        devices = await view.devices()
        assert all(devices[code]["address"] == address for code in codes)
        holders = [code for code in codes if devices[code]["moved_to"] is None]
        assert len(holders) == 1, holders
        # Each registration marked the one before it moved: a chain of 29 distinct takers.
        takers = [devices[code]["moved_to"] for code in codes if code not in holders]
        assert len(set(takers)) == 29 and set(takers) <= set(codes)


async def test_first_heartbeat_racing_the_first_registration_keeps_the_address(
    station: Station, start_station: StartStation, http: aiohttp.ClientSession, api: Api
) -> None:
    codes = [f"HB{n}" for n in range(10)]

    await asyncio.gather(
        *(
            call
            for n, code in enumerate(codes)
            for call in (
                (api.register(code, f"127.0.7.{n + 1}:9"), heartbeat(api, code))
                if n % 2
                else (heartbeat(api, code), api.register(code, f"127.0.7.{n + 1}:9"))
            )
        )
    )

    for restart in (False, True):
        view = await restarted(station, start_station, http) if restart else api
        devices = await view.devices()
        for n, code in enumerate(codes):
            assert devices[code]["address"] == f"127.0.7.{n + 1}:9", devices[code]


async def test_group_add_racing_a_registration_keeps_the_group(
    station: Station, start_station: StartStation, http: aiohttp.ClientSession, api: Api
) -> None:
    codes = [f"GR{n}" for n in range(10)]
    for n, code in enumerate(codes):
        await api.register(code, f"127.0.8.{n + 1}:9")

    await asyncio.gather(
        *(
            call
            for n, code in enumerate(codes)
            for call in (api.join("racing", code), api.register(code, f"127.0.9.{n + 1}:9"))
        )
    )

    for restart in (False, True):
        view = await restarted(station, start_station, http) if restart else api
        devices = await view.devices()
        for n, code in enumerate(codes):
            assert "racing" in devices[code]["groups"], devices[code]
            assert devices[code]["address"] == f"127.0.9.{n + 1}:9"
