"""Stand-in ESP32 devices on loopback: real HTTP servers, so the wire is what DeviceClient meets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from station.devices.client import DeviceAddress, DeviceClient

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Routes = Mapping[tuple[str, str], Handler]


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the device received it."""

    method: str
    path: str
    host: str  # the local address the request arrived on
    content_type: str
    fields: list[tuple[str, str]]  # urlencoded body pairs, in wire order


@dataclass
class FakeDevice:
    addresses: list[DeviceAddress]
    seen: list[Seen] = field(default_factory=list)

    @property
    def address(self) -> DeviceAddress:
        return self.addresses[0]


@dataclass
class SilentDevice:
    """Accepts TCP connections and reads, but never answers (or hangs up, if told to)."""

    address: DeviceAddress
    connections: int = 0


StartDevice = Callable[..., Awaitable[FakeDevice]]
StartSilent = Callable[..., Awaitable[SilentDevice]]


class Firmware:
    """The routes of esp32_wifi_notification_fixed.ino, replies concatenated as it does."""

    def __init__(self, device_code: str = "2025001") -> None:
        self.device_code = device_code
        self.collecting = False
        self.session_id = 0
        self.uploads = 0

    @staticmethod
    async def _args(request: web.Request) -> dict[str, str]:
        form = await request.post()
        return dict(request.query) | {key: str(value) for key, value in form.items()}

    async def start(self, request: web.Request) -> web.Response:
        args = await self._args(request)
        if "session_id" not in args or "device_code" not in args:
            return web.Response(status=400, text="Missing parameters", content_type="text/plain")
        self.collecting = True
        self.session_id = int(args["session_id"]) if args["session_id"].isdigit() else 0
        body = (
            '{"status":"collection_started","session_id":'
            + args["session_id"]
            + ',"device_code":"'
            + self.device_code
            + '"}'
        )
        return web.Response(text=body, content_type="application/json")

    async def stop(self, request: web.Request) -> web.Response:
        args = await self._args(request)
        if "device_code" not in args:
            return web.Response(status=400, text="Missing device_code", content_type="text/plain")
        self.collecting = False
        self.session_id = 0
        self.uploads += 3
        body = (
            '{"status":"collection_stopped","device_code":"'
            + self.device_code
            + '","total_uploads":'
            + str(self.uploads)
            + "}"
        )
        return web.Response(text=body, content_type="application/json")

    async def status(self, request: web.Request) -> web.Response:
        body = (
            '{"device_code":"' + self.device_code + '","ip_address":"192.168.1.100",'
            '"wifi_status":"connected","is_collecting":'
            + ("true" if self.collecting else "false")
            + ',"session_id":'
            + str(self.session_id)
            + ',"signal_strength":-61,"upload_count":'
            + str(self.uploads)
            + ',"uptime":123456}'
        )
        return web.Response(text=body, content_type="application/json")

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("POST", "/start_collection"): self.start,
            ("POST", "/stop_collection"): self.stop,
            ("GET", "/status"): self.status,
        }


async def _not_found(request: web.Request) -> web.Response:
    """The arduino-esp32 WebServer default for any other route."""
    return web.Response(status=404, text=f"Not found: {request.path}", content_type="text/html")


def bound_port(runner: web.BaseRunner, host: str) -> int:
    for sockname in runner.addresses:
        if sockname[0] == host:
            return int(sockname[1])
    raise LookupError(host)


@pytest.fixture
async def start_device() -> AsyncIterator[StartDevice]:
    """Start an aiohttp device on one or more loopback addresses, each on a free port."""
    runners: list[web.AppRunner] = []

    async def start(routes: Routes, hosts: Sequence[str] = ("127.0.0.1",)) -> FakeDevice:
        device = FakeDevice(addresses=[])

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            text = await request.text()
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            device.seen.append(
                Seen(
                    method=request.method,
                    path=request.path,
                    host=sockname[0] if sockname else "",
                    content_type=request.content_type,
                    fields=parse_qsl(text, keep_blank_values=True),
                )
            )
            return await handler(request)

        app = web.Application(middlewares=[record])
        for (method, path), handler in routes.items():
            app.router.add_route(method, path, handler)
        app.router.add_route("*", "/{tail:.*}", _not_found)

        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        for host in hosts:
            await web.TCPSite(runner, host, 0).start()
        device.addresses = [DeviceAddress(host, bound_port(runner, host)) for host in hosts]
        return device

    yield start

    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def start_silent() -> AsyncIterator[StartSilent]:
    """Start a device that takes the connection and the request, then says nothing."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []
    release = asyncio.Event()

    async def start(host: str = "127.0.0.1", *, hang_up: bool = False) -> SilentDevice:
        device = SilentDevice(address=DeviceAddress(host, 0))

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            device.connections += 1
            writers.append(writer)
            await reader.readuntil(b"\r\n\r\n")
            if hang_up:
                writer.close()
                return
            await release.wait()

        server = await asyncio.start_server(handle, host, 0)
        servers.append(server)
        device.address = DeviceAddress(host, server.sockets[0].getsockname()[1])
        return device

    yield start

    release.set()
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def firmware() -> Firmware:
    return Firmware()


@pytest.fixture
def closed_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def client() -> AsyncIterator[DeviceClient]:
    station_client = DeviceClient(connect_timeout=1.0, read_timeout=2.0, retries=2, backoff=0.05)
    yield station_client
    await station_client.aclose()
