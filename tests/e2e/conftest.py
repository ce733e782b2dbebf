"""A real station and a simulated ESP32 fleet in one test process, on one event loop.

The station listens on 127.0.0.1 (port 0); every simulated device listens on its own address
from 127.0.0.2 upwards. Nothing here ever contacts an address outside 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import pytest

from station.backend.runtime import Station
from station.config import Settings
from station.devices.simulator import SimDevice, SimDeviceConfig, SimFaults, SimFleet, SimRequest

T = TypeVar("T")

Encoding = Literal["form", "json"]

FLEET_SIZE = 20
WAIT = 10.0  # ceiling for anything that should happen "soon" on a busy two-core machine

# Short device timeouts keep the failure paths quick; the rest are the defaults.
STATION_SETTINGS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "connect_timeout": 0.5,
    "read_timeout": 0.8,
    "command_retries": 1,
    "retry_backoff": 0.05,
    "poll_interval": 0.3,
}


async def eventually(
    predicate: Callable[[], T | Awaitable[T]], within: float = WAIT, interval: float = 0.05
) -> T:
    """Poll `predicate` (plain or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s (last value: {value!r})")
        await asyncio.sleep(interval)


def commands_received(device: SimDevice, path: str) -> list[SimRequest]:
    """The POSTs to `path` ("/start_collection", "/stop_collection") a device received."""
    return [r for r in device.requests if r.method == "POST" and r.path == path]


# ---- the mini-program's side of the wire -----------------------------------------------------


class MiniProgram:
    """The station's HTTP API as the mini-program (and staff scripts) call it.

    `encoding` decides how bodies travel: urlencoded form fields, as the seed's curl examples
    send them, or a JSON object, the wx.request default.
    """

    def __init__(self, http: aiohttp.ClientSession, base_url: str, encoding: Encoding = "form"):
        self.http = http
        self.base_url = base_url
        self.encoding = encoding

    async def call(
        self, method: str, path: str, fields: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if fields is not None:
            if self.encoding == "json":
                kwargs["json"] = fields
            else:
                kwargs["data"] = {k: str(v) for k, v in fields.items()}
        async with self.http.request(method, self.base_url + path, **kwargs) as response:
            assert response.content_type == "application/json", await response.text()
            body = await response.json()
            assert isinstance(body, dict)
            return response.status, body

    async def ok(self, method: str, path: str, fields: dict[str, Any] | None = None) -> dict:
        status, body = await self.call(method, path, fields)
        assert status == 200, (path, status, body)
        return body

    async def devices(self) -> dict[str, dict[str, Any]]:
        body = await self.ok("GET", "/api/v1/devices")
        return {d["device_code"]: d for d in body["devices"]}

    async def join_group(self, group: str, device_codes: Sequence[str]) -> None:
        for code in device_codes:
            await self.ok("POST", f"/api/v1/groups/{group}/devices", {"device_code": code})

    async def start_session(self, group: str, openid: str = "test_openid") -> dict[str, Any]:
        return await self.ok(
            "POST", "/wxapp/start_session/", {"openid": openid, "device_group_code": group}
        )

    async def start_data_collection(self, session_id: int) -> dict[str, Any]:
        return await self.ok("POST", "/wxapp/start_data_collection/", {"session_id": session_id})

    async def notify_device_start(self, session_id: int, device_code: str) -> dict[str, Any]:
        return await self.ok(
            "POST",
            "/wxapp/notify_device_start/",
            {"session_id": session_id, "device_code": device_code},
        )

    async def end_session(self, session_id: int) -> dict[str, Any]:
        return await self.ok("POST", "/wxapp/end_session/", {"session_id": session_id})

    async def session(self, session_id: int) -> dict[str, Any]:
        return await self.ok("GET", f"/api/v1/sessions/{session_id}")

    async def abort(self, session_id: int) -> tuple[int, dict[str, Any]]:
        return await self.call("POST", f"/api/v1/sessions/{session_id}/abort", {})


async def wait_fleet_listed(mini: MiniProgram, devices: Sequence[SimDevice]) -> dict[str, dict]:
    """Wait until GET /api/v1/devices lists every device at the address it registered."""

    async def listed() -> dict[str, dict] | None:
        known = await mini.devices()
        for device in devices:
            entry = known.get(device.device_code)
            if entry is None or entry["address"] != device.ip_address:
                return None
        return known

    return await eventually(listed)


# ---- fixtures --------------------------------------------------------------------------------

StartStation = Callable[..., Awaitable[Station]]
StartFleet = Callable[..., Awaitable[SimFleet]]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "station"


@pytest.fixture
async def start_station(data_dir: Path) -> AsyncIterator[StartStation]:
    """Start a station on 127.0.0.1 with the short test timeouts; stopped after the test."""
    running: list[Station] = []

    async def start(*, monitor: bool = False, **overrides: Any) -> Station:
        station = Station(data_dir, Settings(**(STATION_SETTINGS | overrides)))
        await station.start(serve=True, monitor=monitor)
        running.append(station)
        return station

    yield start

    for station in reversed(running):
        await station.stop()


@pytest.fixture
async def start_fleet(tmp_path: Path) -> AsyncIterator[StartFleet]:
    """Start simulated devices SIM001... on 127.0.0.2..., with per-device faults and delays."""
    fleets: list[SimFleet] = []

    async def start(
        station_url: str,
        count: int = FLEET_SIZE,
        *,
        faults: dict[int, SimFaults] | None = None,
        request_delay: dict[int, float] | None = None,
        heartbeat_interval: float = 1.0,
        sample_rate_hz: float = 100.0,
        codes: Sequence[str] | None = None,
        first_host: int = 2,
    ) -> SimFleet:
        devices = [
            SimDevice(
                SimDeviceConfig(
                    device_code=codes[i] if codes else f"SIM{i + 1:03d}",
                    host=f"127.0.0.{first_host + i}",
                    station_url=station_url,
                    sample_rate_hz=sample_rate_hz,
                    heartbeat_interval=heartbeat_interval,
                    sd_dir=tmp_path / "sd" / f"{first_host + i}",
                    request_delay=(request_delay or {}).get(i, 0.0),
                    register_retry_backoff=(0.05, 0.5),
                    faults=(faults or {}).get(i, SimFaults()),
                )
            )
            for i in range(count)
        ]
        fleet = SimFleet(devices)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield start

    for fleet in fleets:
        await fleet.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
