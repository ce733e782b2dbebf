"""A real station on loopback, a client for its HTTP API, and small fake ESP32 devices.

Every server here listens on 127.0.0.0/8 only. Fake devices speak the firmware dialect of
esp32_wifi_notification_fixed.ino or the seed-era dialect, and record each request they receive.
Tests that register a non-loopback address (as data) keep the liveness monitor off, so the
station never dials it.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web

from station.backend.runtime import Station
from station.config import Settings

Dialect = Literal["firmware", "seed"]
Behaviour = Literal["ok", "slow", "reject", "error"]

FORM = "application/x-www-form-urlencoded"
DEVICE_CODE = "2025001"

# Short timeouts keep failure paths fast; generous reply_wait keeps them deterministic.
TEST_SETTINGS = {
    "host": "127.0.0.1",
    "port": 0,
    "connect_timeout": 0.5,
    "read_timeout": 0.5,
    "command_retries": 1,
    "retry_backoff": 0.05,
    "reply_wait": 5,
    "poll_interval": 0.2,
    "missed_polls_offline": 3,
}

_hosts = itertools.cycle(f"127.0.0.{n}" for n in range(2, 255))


def next_loopback_host() -> str:
    """A loopback address no other fake in this run has used lately."""
    return next(_hosts)


# ---- the station ---------------------------------------------------------------------------


class Api:
    """The station's HTTP API as a client sees it: every call answers (status, JSON body)."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, dict[str, Any] | list[Any]]:
        kwargs.setdefault("allow_redirects", False)
        async with self.http.request(method, self.base_url + path, **kwargs) as response:
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json()

    async def post(self, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        status, body = await self.request("POST", path, **kwargs)
        assert isinstance(body, dict)
        return status, body

    async def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        status, body = await self.request("GET", path, **kwargs)
        assert isinstance(body, dict)
        return status, body

    async def ok(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        status, body = await self.request(method, path, **kwargs)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    # The seed flow, as the mini-program and the firmware call it.

    async def register(self, device_code: str, ip_address: str) -> dict[str, Any]:
        return await self.ok(
            "POST",
            "/wxapp/register_device_ip/",
            data={"device_code": device_code, "ip_address": ip_address},
        )

    async def start_session(self, group: str = "test_group", **extra: Any) -> int:
        body = await self.ok(
            "POST",
            "/wxapp/start_session/",
            data={"openid": "test_user", "device_group_code": group, **extra},
        )
        return int(body["session_id"])

    async def start_collection(self, session_id: int) -> dict[str, Any]:
        return await self.ok(
            "POST", "/wxapp/start_data_collection/", data={"session_id": str(session_id)}
        )

    async def end_session(self, session_id: int) -> dict[str, Any]:
        return await self.ok("POST", "/wxapp/end_session/", data={"session_id": str(session_id)})

    async def upload_complete(self, session_id: int, device_code: str = DEVICE_CODE) -> dict:
        """The device says it has uploaded everything it recorded for the session."""
        return await self.ok(
            "POST",
            "/wxapp/esp32/mark_upload_complete/",
            data={"session_id": str(session_id), "device_code": device_code},
        )

    async def finish(self, session_id: int) -> dict[str, Any]:
        """Staff close a stopping session without waiting for the missing uploads."""
        return await self.ok("POST", f"/api/v1/sessions/{session_id}/finish")

    async def devices(self) -> dict[str, dict[str, Any]]:
        body = await self.ok("GET", "/api/v1/devices")
        return {d["device_code"]: d for d in body["devices"]}

    async def sessions(self, query: str = "") -> list[dict[str, Any]]:
        body = await self.ok("GET", "/api/v1/sessions" + query)
        return body["sessions"]

    async def session(self, session_id: int) -> dict[str, Any]:
        return await self.ok("GET", f"/api/v1/sessions/{session_id}")

    async def join(self, group: str, device_code: str) -> dict[str, Any]:
        return await self.ok(
            "POST", f"/api/v1/groups/{group}/devices", data={"device_code": device_code}
        )


StartStation = Callable[..., Awaitable[Station]]


@pytest.fixture
async def start_station(tmp_path: Path) -> AsyncIterator[StartStation]:
    """Start a station on loopback with test settings; pass overrides, monitor, data_dir."""
    running: list[Station] = []

    async def start(
        *, data_dir: Path | None = None, monitor: bool = False, **overrides: Any
    ) -> Station:
        station = Station(data_dir or tmp_path / "data", Settings(**(TEST_SETTINGS | overrides)))
        await station.start(monitor=monitor)
        running.append(station)
        return station

    yield start

    for station in running:
        await station.stop()


@pytest.fixture
async def station(start_station: StartStation) -> Station:
    return await start_station()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def api(station: Station, http: aiohttp.ClientSession) -> Api:
    return Api(http, station.url)


# ---- fake devices --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the device received it."""

    method: str
    path: str
    content_type: str
    fields: dict[str, str]
    at: float  # time.monotonic() on arrival


@dataclass
class FakeDevice:
    """An ESP32's own web server: POST /start_collection, POST /stop_collection, GET /status."""

    device_code: str
    host: str
    dialect: Dialect = "firmware"
    behaviour: Behaviour = "ok"
    delay: float = 0.3  # how long a slow device takes to answer
    port: int = 0
    received: list[Received] = field(default_factory=list)
    collecting: bool = False
    session_id: int = 0
    _runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.received if method is None or r.method == method]

    def commands(self) -> list[Received]:
        return [r for r in self.received if r.method == "POST"]

    async def start(self) -> None:
        """Listen (again) on the device's address; the port stays the same after a restart."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else {}
        fields = dict(request.query) | {k: str(v) for k, v in form.items()}
        self.received.append(
            Received(request.method, request.path, request.content_type, fields, time.monotonic())
        )
        if self.behaviour == "slow":
            await asyncio.sleep(self.delay)
        if self.behaviour == "error":
            return web.Response(status=500, text="Internal Server Error", content_type="text/plain")

        route = (request.method, request.path)
        if route == ("POST", "/start_collection"):
            return self._start(fields)
        if route == ("POST", "/stop_collection"):
            return self._stop(fields)
        if route == ("GET", "/status"):
            return self._status()
        return web.Response(status=404, text=f"Not found: {request.path}", content_type="text/html")

    def _start(self, fields: dict[str, str]) -> web.Response:
        if self.behaviour == "reject" or "session_id" not in fields or "device_code" not in fields:
            return web.Response(status=400, text="Missing parameters", content_type="text/plain")
        self.collecting = True
        self.session_id = int(fields["session_id"])
        if self.dialect == "seed":
            body = (
                '{"msg":"Collection started","session_id":'
                + fields["session_id"]
                + ',"device_code":"'
                + self.device_code
                + '"}'
            )
        else:
            body = (
                '{"status":"collection_started","session_id":'
                + fields["session_id"]
                + ',"device_code":"'
                + self.device_code
                + '"}'
            )
        return web.Response(text=body, content_type="application/json")

    def _stop(self, fields: dict[str, str]) -> web.Response:
        if self.behaviour == "reject" or "device_code" not in fields:
            return web.Response(status=400, text="Missing device_code", content_type="text/plain")
        self.collecting = False
        self.session_id = 0
        if self.dialect == "seed":
            body = '{"msg":"Collection stopped","status":"stopped"}'
        else:
            body = (
                '{"status":"collection_stopped","device_code":"'
                + self.device_code
                + '","total_uploads":0}'
            )
        return web.Response(text=body, content_type="application/json")

    def _status(self) -> web.Response:
        if self.dialect == "seed":
            body = (
                '{"msg":"Device status","device_code":"'
                + self.device_code
                + '","status":"'
                + ("collecting" if self.collecting else "idle")
                + '","session_id":'
                + str(self.session_id)
                + "}"
            )
        else:
            body = (
                '{"device_code":"' + self.device_code + '","ip_address":"' + self.host + '",'
                '"wifi_status":"connected","is_collecting":'
                + ("true" if self.collecting else "false")
                + ',"session_id":'
                + str(self.session_id)
                + ',"signal_strength":-61,"upload_count":0,"uptime":123456}'
            )
        return web.Response(text=body, content_type="application/json")


@dataclass
class SilentDevice:
    """Accepts the connection, reads the request, never answers."""

    host: str
    port: int = 0
    arrivals: list[float] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set by the first request

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


StartDevice = Callable[..., Awaitable[FakeDevice]]
StartSilent = Callable[[], Awaitable[SilentDevice]]


@pytest.fixture
async def start_device() -> AsyncIterator[StartDevice]:
    """Start a fake device on its own loopback address and a free port."""
    devices: list[FakeDevice] = []

    async def start(
        device_code: str = DEVICE_CODE,
        *,
        dialect: Dialect = "firmware",
        behaviour: Behaviour = "ok",
        delay: float = 0.3,
    ) -> FakeDevice:
        device = FakeDevice(
            device_code, next_loopback_host(), dialect=dialect, behaviour=behaviour, delay=delay
        )
        await device.start()
        devices.append(device)
        return device

    yield start

    for device in devices:
        await device.stop()


@pytest.fixture
async def start_silent() -> AsyncIterator[StartSilent]:
    """Start a device that holds every request open without a word."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []
    release = asyncio.Event()

    async def start() -> SilentDevice:
        device = SilentDevice(next_loopback_host())

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            device.arrivals.append(time.monotonic())
            writers.append(writer)
            try:
                await reader.readuntil(b"\r\n\r\n")
                device.arrived.set()
                await release.wait()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, device.host, 0)
        servers.append(server)
        device.port = int(server.sockets[0].getsockname()[1])
        return device

    yield start

    release.set()
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def refusing_address() -> str:
    """A loopback host:port that nothing listens on: connections are refused at once."""
    host = next_loopback_host()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = int(probe.getsockname()[1])
    return f"{host}:{port}"
