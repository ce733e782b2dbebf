"""The simulated ESP32 fleet, driven over real loopback sockets against a tiny fake station."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import math
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from click.testing import CliRunner

from station.cli import main
from station.devices.sim_samples import CSV_HEADER, SENSOR_TYPES, SampleGenerator
from station.devices.simulator import (
    FleetFaults,
    SimDevice,
    SimDeviceConfig,
    SimFaults,
    SimFleet,
    format_ip_address,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 5.0  # generous ceiling for anything that should happen "soon" on a busy machine


async def wait_until(predicate: Callable[[], bool], within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Posted:
    """One request to the fake station, with its body exactly as it came over the wire."""

    path: str
    content_type: str
    body: str


@dataclass
class FakeStation:
    """Records what devices post (registration, heartbeats, uploads, polls, confirmations) and
    answers JSON 200, or what a test scripted."""

    registrations: list[dict[str, str]] = field(default_factory=list)
    heartbeats: list[dict[str, str]] = field(default_factory=list)
    registration_content_types: list[str] = field(default_factory=list)
    failures_left: int = 0  # answer this many registrations with 503 first
    posted: list[Posted] = field(default_factory=list)  # every device POST but registrations
    batch_failures_left: int = 0  # answer this many batch uploads with 500 first
    single_replies: list[str] = field(default_factory=list)  # msg values to answer uploads with
    poll_replies: list[dict[str, Any]] = field(default_factory=list)  # then "no new command"
    url: str = ""
    runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/wxapp/register_device_ip/", self._register)
        app.router.add_post("/wxapp/esp32/heartbeat/", self._heartbeat)
        for path in (
            "/wxapp/esp32/upload/",
            "/wxapp/esp32/batch_upload/",
            "/wxapp/esp32/mark_upload_complete/",
            "/wxapp/esp32/poll_commands/",
            "/wxapp/esp32/status/",
        ):
            app.router.add_post(path, self._device_post)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{site.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def registered(self, device_code: str) -> list[str]:
        return [r["ip_address"] for r in self.registrations if r["device_code"] == device_code]

    async def _register(self, request: web.Request) -> web.Response:
        if self.failures_left > 0:
            self.failures_left -= 1
            return web.json_response({"error": "booting"}, status=503)
        form = dict(await request.post())
        self.registrations.append({k: str(v) for k, v in form.items()})
        self.registration_content_types.append(request.content_type)
        return web.json_response({"msg": "registered"})

    async def _heartbeat(self, request: web.Request) -> web.Response:
        self.posted.append(Posted(request.path, request.content_type, await request.text()))
        form = dict(await request.post())
        self.heartbeats.append({k: str(v) for k, v in form.items()})
        return web.json_response({"msg": "ok"})

    def bodies(self, path: str) -> list[str]:
        return [p.body for p in self.posted if p.path == path]

    async def _device_post(self, request: web.Request) -> web.Response:
        self.posted.append(Posted(request.path, request.content_type, await request.text()))
        if request.path == "/wxapp/esp32/batch_upload/":
            if self.batch_failures_left > 0:
                self.batch_failures_left -= 1
                return web.json_response({"error": "Batch upload failed"}, status=500)
            return web.json_response({"msg": "Batch upload completed"})
        if request.path == "/wxapp/esp32/upload/":
            msg = self.single_replies.pop(0) if self.single_replies else "ESP32 data upload success"
            return web.json_response({"msg": msg})
        if request.path == "/wxapp/esp32/poll_commands/":
            if self.poll_replies:
                return web.json_response(self.poll_replies.pop(0))
            return web.json_response({"message": "no new command"})
        return web.json_response({"msg": "ok"})


@pytest.fixture
async def station() -> AsyncIterator[FakeStation]:
    fake = FakeStation()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as client:
        yield client


MakeDevice = Callable[..., Awaitable[SimDevice]]


@pytest.fixture
async def make_device(station: FakeStation, tmp_path: Path) -> AsyncIterator[MakeDevice]:
    devices: list[SimDevice] = []
    hosts = itertools.count(2)
    codes = itertools.count(1)

    async def make(**overrides: Any) -> SimDevice:
        settings: dict[str, Any] = {
            "device_code": f"T{next(codes):03d}",
            "host": f"127.0.0.{next(hosts)}",
            "station_url": station.url,
            "heartbeat_interval": 0.1,
            "sd_dir": tmp_path / "sd",
            "register_retry_backoff": (0.05, 0.2),
        }
        settings.update(overrides)
        device = SimDevice(SimDeviceConfig(**settings))
        devices.append(device)
        await device.start()
        return device

    yield make
    for device in devices:
        await device.stop()


def url(device: SimDevice, path: str) -> str:
    return device.base_url + path


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


# -- registration -------------------------------------------------------------------------------


async def test_boot_registers_device_code_and_host_port(
    station: FakeStation, make_device: MakeDevice
) -> None:
    device = await make_device(device_code="SIM042", host="127.0.0.7")

    await wait_until(lambda: bool(station.registrations))

    host, port = device.address
    assert host == "127.0.0.7" and port > 0
    assert station.registrations == [{"device_code": "SIM042", "ip_address": f"127.0.0.7:{port}"}]
    assert station.registration_content_types == ["application/x-www-form-urlencoded"]


async def test_registration_is_retried_until_the_station_starts(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    port = free_port()
    config = SimDeviceConfig(
        device_code="LATE01",
        host="127.0.0.3",
        station_url=f"http://127.0.0.1:{port}",
        heartbeat_interval=0,
        sd_dir=tmp_path,
        register_retry_backoff=(0.05, 0.2),
    )
    late = FakeStation()
    async with SimDevice(config) as device:
        await asyncio.sleep(0.4)  # several refused attempts
        assert device.registrations == 0

        await late.start(port)
        try:
            await asyncio.wait_for(device.wait_registered(), WAIT)
        finally:
            await late.stop()

    assert late.registered("LATE01") == [device.ip_address]


async def test_registration_is_retried_after_server_errors(
    station: FakeStation, make_device: MakeDevice
) -> None:
    station.failures_left = 2

    device = await make_device()
    await asyncio.wait_for(device.wait_registered(), WAIT)

    assert station.failures_left == 0
    assert station.registered(device.device_code) == [device.ip_address]


async def test_wifi_reconnect_registers_again(
    station: FakeStation, make_device: MakeDevice
) -> None:
    device = await make_device()
    await asyncio.wait_for(device.wait_registered(), WAIT)

    await device.reconnect_wifi()

    await wait_until(lambda: len(station.registered(device.device_code)) == 2)
    assert station.registered(device.device_code) == [device.ip_address] * 2


def test_ip_address_puts_ipv6_hosts_in_brackets() -> None:
    assert format_ip_address("127.0.0.5", 8080) == "127.0.0.5:8080"
    assert format_ip_address("::1", 8080) == "[::1]:8080"


def test_config_refuses_addresses_outside_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SimDeviceConfig(device_code="X", station_url="http://192.168.1.100:8000")
    with pytest.raises(ValueError, match="loopback"):
        SimDeviceConfig(device_code="X", host="192.168.1.100")


# -- the device's HTTP API ------------------------------------------------------------------------


async def test_firmware_dialect_start_status_stop(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(device_code="2025001")

    idle = await http.get(url(device, "/status"))
    assert idle.status_code == 200
    assert idle.headers["content-type"].startswith("application/json")
    body = idle.json()
    assert set(body) == {
        "device_code",
        "ip_address",
        "wifi_status",
        "is_collecting",
        "session_id",
        "signal_strength",
        "upload_count",
        "uptime",
    }
    assert body["device_code"] == "2025001"
    assert body["ip_address"] == device.ip_address
    assert body["wifi_status"] == "connected"
    assert body["is_collecting"] is False
    assert body["session_id"] == 0
    assert isinstance(body["signal_strength"], int) and -100 < body["signal_strength"] < 0
    assert body["upload_count"] == 0
    assert isinstance(body["uptime"], int) and body["uptime"] >= 0

    started = await http.post(
        url(device, "/start_collection"), data={"session_id": "12", "device_code": "any"}
    )
    assert started.status_code == 200
    assert started.headers["content-type"].startswith("application/json")
    assert started.json() == {
        "status": "collection_started",
        "session_id": 12,
        "device_code": "2025001",
    }

    busy = (await http.get(url(device, "/status"))).json()
    assert busy["is_collecting"] is True
    assert busy["session_id"] == 12
    assert device.collecting and device.session_id == 12

    stopped = await http.post(url(device, "/stop_collection"), data={"device_code": "2025001"})
    assert stopped.status_code == 200
    assert stopped.json() == {
        "status": "collection_stopped",
        "device_code": "2025001",
        "total_uploads": 0,
    }
    assert not device.collecting and device.session_id is None


async def test_seed_dialect_replies_with_msg(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(device_code="2025002", dialect="seed")

    idle = await http.get(url(device, "/status"))
    assert idle.json() == {
        "msg": "Device status",
        "device_code": "2025002",
        "status": "idle",
        "session_id": 0,
    }

    started = await http.post(
        url(device, "/start_collection"), data={"session_id": "1011", "device_code": "2025002"}
    )
    assert started.status_code == 200
    assert started.json() == {
        "msg": "Collection started",
        "session_id": 1011,
        "device_code": "2025002",
    }

    busy = await http.get(url(device, "/status"))
    assert busy.json()["status"] == "collecting"
    assert busy.json()["session_id"] == 1011

    stopped = await http.post(
        url(device, "/stop_collection"),
        data={"device_code": "2025002", "command": "STOP_COLLECTION"},
    )
    assert stopped.status_code == 200
    assert stopped.json() == {"msg": "Collection stopped", "status": "stopped"}


async def test_arguments_may_come_in_the_query_string(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device()

    reply = await http.post(url(device, "/start_collection?session_id=7&device_code=X"))

    assert reply.status_code == 200
    assert reply.json()["session_id"] == 7


@pytest.mark.parametrize(
    ("path", "form", "message"),
    [
        ("/start_collection", {"device_code": "X"}, "Missing parameters"),
        ("/start_collection", {"session_id": "3"}, "Missing parameters"),
        ("/stop_collection", {"command": "STOP_COLLECTION"}, "Missing device_code"),
    ],
)
async def test_missing_parameters_are_a_plain_text_400(
    make_device: MakeDevice, http: httpx.AsyncClient, path: str, form: dict[str, str], message: str
) -> None:
    device = await make_device()

    reply = await http.post(url(device, path), data=form)

    assert reply.status_code == 400
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.text == message
    assert not device.collecting


async def test_json_bodies_are_not_parsed_like_the_firmware(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device()

    reply = await http.post(
        url(device, "/start_collection"), json={"session_id": 1, "device_code": "X"}
    )

    assert reply.status_code == 400
    assert reply.text == "Missing parameters"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/start_collection"), ("GET", "/stop_collection"), ("POST", "/status"), ("GET", "/")],
)
async def test_unknown_routes_and_wrong_methods_are_a_404(
    make_device: MakeDevice, http: httpx.AsyncClient, method: str, path: str
) -> None:
    device = await make_device()

    reply = await http.request(method, url(device, path))

    assert reply.status_code == 404
    assert reply.headers["content-type"].startswith("text/html")
    assert reply.text == f"Not found: {path}"


async def test_received_requests_are_logged_with_their_fields(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device()

    await http.post(url(device, "/start_collection"), data={"session_id": "4", "device_code": "X"})
    await http.get(url(device, "/status"))

    assert [(r.method, r.path) for r in device.requests] == [
        ("POST", "/start_collection"),
        ("GET", "/status"),
    ]
    assert device.requests[0].fields == {"session_id": "4", "device_code": "X"}
    assert device.requests[0].time <= device.requests[1].time


# -- recording ------------------------------------------------------------------------------------


async def test_sd_file_holds_samples_only_between_start_and_stop(
    make_device: MakeDevice, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    device = await make_device(device_code="SD001", sample_rate_hz=100)
    await asyncio.sleep(0.2)
    assert device.sd_files == []

    before_start = time.monotonic()
    await http.post(url(device, "/start_collection"), data={"session_id": "5", "device_code": "x"})
    after_start = time.monotonic()
    await asyncio.sleep(0.5)
    before_stop = time.monotonic()
    await http.post(url(device, "/stop_collection"), data={"device_code": "x"})
    after_stop = time.monotonic()

    path = tmp_path / "sd" / "SD001" / "session_5.csv"
    assert device.sd_files == [path]
    header, rows = read_rows(path)
    assert tuple(header) == CSV_HEADER
    shortest, longest = before_stop - after_start, after_stop - before_start
    assert 100 * shortest * 0.8 - 2 <= len(rows) <= 100 * longest * 1.2 + 2
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    device_ms = [int(r[1]) for r in rows]
    assert all(a < b for a, b in itertools.pairwise(device_ms))
    assert all(len(r) == len(CSV_HEADER) for r in rows)

    size = path.stat().st_size
    await asyncio.sleep(0.2)
    assert path.stat().st_size == size
    assert list((tmp_path / "sd" / "SD001").iterdir()) == [path]


async def test_samples_look_like_imu_data(make_device: MakeDevice, http: httpx.AsyncClient) -> None:
    device = await make_device(sensor_type="racket", sample_rate_hz=200)
    await http.post(url(device, "/start_collection"), data={"session_id": "1", "device_code": "x"})
    await asyncio.sleep(0.3)
    await http.post(url(device, "/stop_collection"), data={"device_code": "x"})

    _, rows = read_rows(device.sd_files[0])
    assert rows
    for row in rows:
        acc_x, acc_y, acc_z, gx, gy, gz, ax, ay, az = map(float, row[2:])
        assert 3 < math.hypot(acc_x, acc_y, acc_z) < 40
        assert all(abs(g) < 50 for g in (gx, gy, gz))
        assert all(abs(a) <= 180 for a in (ax, ay, az))


async def test_second_start_of_same_session_keeps_the_file(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device()
    form = {"session_id": "8", "device_code": "x"}

    await http.post(url(device, "/start_collection"), data=form)
    await asyncio.sleep(0.15)
    again = await http.post(url(device, "/start_collection"), data=form)
    await asyncio.sleep(0.15)
    await http.post(url(device, "/stop_collection"), data={"device_code": "x"})

    assert again.status_code == 200
    assert len(device.sd_files) == 1
    _, rows = read_rows(device.sd_files[0])
    assert [int(r[0]) for r in rows] == list(range(len(rows)))


async def test_start_of_another_session_closes_the_first_file(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device()

    await http.post(url(device, "/start_collection"), data={"session_id": "1", "device_code": "x"})
    await asyncio.sleep(0.15)
    await http.post(url(device, "/start_collection"), data={"session_id": "2", "device_code": "x"})
    first, second = device.sd_files
    size = first.stat().st_size
    await asyncio.sleep(0.2)

    assert first.name == "session_1.csv" and second.name == "session_2.csv"
    assert first.stat().st_size == size
    assert device.session_id == 2
    _, rows = read_rows(second)
    assert rows and rows[0][0] == "0"


async def test_restarting_a_stopped_session_appends_and_continues_seq(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device()
    start = {"session_id": "3", "device_code": "x"}
    stop = {"device_code": "x"}

    for _ in range(2):
        await http.post(url(device, "/start_collection"), data=start)
        await asyncio.sleep(0.15)
        await http.post(url(device, "/stop_collection"), data=stop)

    header, rows = read_rows(device.sd_files[0])
    assert tuple(header) == CSV_HEADER
    assert [int(r[0]) for r in rows] == list(range(len(rows)))


async def test_stopping_the_device_closes_its_open_session_file(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device()
    await http.post(url(device, "/start_collection"), data={"session_id": "2", "device_code": "x"})
    await asyncio.sleep(0.15)

    await device.stop()

    path = device.sd_files[0]
    size = path.stat().st_size
    _, rows = read_rows(path)
    assert rows and not device.collecting
    await asyncio.sleep(0.15)
    assert path.stat().st_size == size


async def test_a_stopped_device_can_start_again(
    station: FakeStation, make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device()
    await asyncio.wait_for(device.wait_registered(), WAIT)
    await device.stop()

    await device.start()

    await wait_until(lambda: len(station.registered(device.device_code)) == 2)
    assert (await http.get(url(device, "/status"))).status_code == 200


def test_sample_generator_keeps_an_exact_rate_on_the_device_clock() -> None:
    generator = SampleGenerator("wrist", 100, start_ms=1000.0, seed=1)

    assert generator.take_until(999.0) == []
    first = generator.take_until(1000.0)
    rest = generator.take_until(1995.0)

    assert [s["seq"] for s in first + rest] == list(range(100))
    assert [s["timestamp"] for s in first + rest] == list(range(1000, 2000, 10))
    assert set(first[0]) == {"acc", "gyro", "angle", "timestamp", "seq"}
    assert all(len(first[0][k]) == 3 for k in ("acc", "gyro", "angle"))


# -- heartbeats -----------------------------------------------------------------------------------


async def test_heartbeats_report_idle_then_the_collecting_session(
    station: FakeStation, make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(device_code="HB001", heartbeat_interval=0.1)

    await wait_until(lambda: len(station.heartbeats) >= 1)
    assert station.heartbeats[0] == {"device_code": "HB001", "status": "idle", "session_id": "0"}

    await http.post(url(device, "/start_collection"), data={"session_id": "9", "device_code": "x"})
    expected = {"device_code": "HB001", "status": "collecting", "session_id": "9"}
    await wait_until(lambda: expected in station.heartbeats)


async def test_heartbeat_interval_zero_disables_heartbeats(
    station: FakeStation, make_device: MakeDevice
) -> None:
    device = await make_device(heartbeat_interval=0)
    await asyncio.wait_for(device.wait_registered(), WAIT)
    await asyncio.sleep(0.3)

    assert station.heartbeats == []


# -- faults ---------------------------------------------------------------------------------------


async def test_slow_device_serves_one_request_at_a_time(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(request_delay=0.2, faults=SimFaults(slow=True))

    began = time.monotonic()
    replies = await asyncio.gather(*(http.get(url(device, "/status")) for _ in range(3)))
    elapsed = time.monotonic() - began

    assert [r.status_code for r in replies] == [200, 200, 200]
    assert elapsed >= 3 * 0.2 * 0.9


async def test_refusing_device_refuses_connections_until_resumed(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device()
    await http.get(url(device, "/status"))

    await device.set_faults(refuse=True)
    with pytest.raises(httpx.ConnectError):
        await http.get(url(device, "/status"))

    await device.set_faults(refuse=False)
    reply = await http.get(url(device, "/status"))
    assert reply.status_code == 200


async def test_device_built_refusing_still_registers(
    station: FakeStation, make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(faults=SimFaults(refuse=True))
    await asyncio.wait_for(device.wait_registered(), WAIT)

    with pytest.raises(httpx.ConnectError):
        await http.get(url(device, "/status"))


async def test_blackholed_device_accepts_but_never_answers(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(faults=SimFaults(blackhole=True))

    with pytest.raises(httpx.ReadTimeout):
        await http.get(url(device, "/status"), timeout=httpx.Timeout(5.0, read=0.3))
    assert [r.path for r in device.requests] == ["/status"]

    pending = asyncio.create_task(http.get(url(device, "/status")))
    await wait_until(lambda: len(device.requests) == 2)
    await device.set_faults(blackhole=False)
    assert (await pending).status_code == 200


async def test_stopping_a_blackholed_device_drops_its_connections(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(faults=SimFaults(blackhole=True))
    pending = asyncio.create_task(http.get(url(device, "/status")))
    await wait_until(lambda: len(device.requests) == 1)

    await asyncio.wait_for(device.stop(), WAIT)

    with pytest.raises(httpx.TransportError):
        await pending


async def test_error_500_fault_answers_500_and_does_nothing(
    make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(faults=SimFaults(error_500=True))

    status = await http.get(url(device, "/status"))
    start = await http.post(
        url(device, "/start_collection"), data={"session_id": "1", "device_code": "x"}
    )

    assert status.status_code == 500
    assert start.status_code == 500
    assert not device.collecting

    await device.set_faults(error_500=False)
    assert (await http.get(url(device, "/status"))).status_code == 200


async def test_dropout_comes_back_on_a_new_port_and_registers_again(
    station: FakeStation, make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(device_code="DROP01")
    await asyncio.wait_for(device.wait_registered(), WAIT)
    old_url = url(device, "/status")
    old_port = device.address[1]

    await device.dropout(0.4)
    assert not device.listening
    with pytest.raises(httpx.ConnectError):
        await http.get(old_url)

    await wait_until(lambda: len(station.registered("DROP01")) == 2)
    first, second = station.registered("DROP01")
    assert device.address[1] != old_port
    assert second == device.ip_address != first

    reply = await http.get(url(device, "/status"))
    assert reply.status_code == 200
    assert reply.json()["ip_address"] == second


async def test_devices_may_share_a_device_code(
    station: FakeStation, make_device: MakeDevice, tmp_path: Path
) -> None:
    one = await make_device(device_code="TWIN", sd_dir=tmp_path / "a")
    two = await make_device(device_code="TWIN", sd_dir=tmp_path / "b")

    await wait_until(lambda: len(station.registered("TWIN")) == 2)

    assert sorted(station.registered("TWIN")) == sorted([one.ip_address, two.ip_address])


# -- fleet ----------------------------------------------------------------------------------------


async def test_fleet_of_twenty_starts_registers_and_stops(
    station: FakeStation, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    fleet = SimFleet.build(
        20,
        station.url,
        heartbeat_interval=0.1,
        sd_dir=tmp_path,
        register_retry_backoff=(0.05, 0.2),
        faults=FleetFaults(error_500=2),
    )

    await fleet.start()
    try:
        await asyncio.wait_for(fleet.wait_registered(), WAIT)

        assert [d.address[0] for d in fleet] == [f"127.0.0.{n}" for n in range(2, 22)]
        assert [d.device_code for d in fleet] == [f"SIM{n:03d}" for n in range(1, 21)]
        assert [d.config.sensor_type for d in fleet][:5] == [
            "waist",
            "shoulder",
            "wrist",
            "racket",
            "waist",
        ]
        assert {r["device_code"] for r in station.registrations} == {d.device_code for d in fleet}
        assert fleet["SIM007"].address[0] == "127.0.0.8"
        assert (await http.get(url(fleet["SIM018"], "/status"))).status_code == 200
        assert (await http.get(url(fleet["SIM019"], "/status"))).status_code == 500
        last = fleet.devices[-1]
    finally:
        await fleet.stop()

    with pytest.raises(httpx.ConnectError):
        await http.get(url(last, "/status"))


def test_fleet_faults_are_taken_from_the_end() -> None:
    faults = FleetFaults(slow=1, blackhole=2)

    per_device = [faults.for_device(i, 4) for i in range(4)]

    assert [f.slow for f in per_device] == [False, False, False, True]
    assert [f.blackhole for f in per_device] == [False, False, True, True]
    assert not any(f.refuse or f.error_500 for f in per_device)


def test_fleet_refuses_to_run_past_the_last_address() -> None:
    with pytest.raises(ValueError):
        SimFleet.build(300, "http://127.0.0.1:8000")


# -- uploads --------------------------------------------------------------------------------------

FORM_TYPE = "application/x-www-form-urlencoded"
BATCH_PATH = "/wxapp/esp32/batch_upload/"
UPLOAD_PATH = "/wxapp/esp32/upload/"
COMPLETE_PATH = "/wxapp/esp32/mark_upload_complete/"
POLL_PATH = "/wxapp/esp32/poll_commands/"
STATUS_PATH = "/wxapp/esp32/status/"
HEARTBEAT_PATH = "/wxapp/esp32/heartbeat/"

_TWO = r"-?\d+\.\d\d"
_ONE = r"-?\d+\.\d"
SAMPLE_OBJECT = re.compile(
    rf'\{{"acc":\[{_TWO},{_TWO},{_TWO}\],"gyro":\[{_TWO},{_TWO},{_TWO}\],'
    rf'"angle":\[{_ONE},{_ONE},{_ONE}\]\}}'
)
BATCH_ITEM = (
    rf'\{{"acc":\[{_TWO},{_TWO},{_TWO}\],"gyro":\[{_TWO},{_TWO},{_TWO}\],'
    rf'"angle":\[{_ONE},{_ONE},{_ONE}\],"timestamp":\d{{13}},"seq":\d+\}}'
)
BATCH_DATA = re.compile(rf"\[{BATCH_ITEM}(,{BATCH_ITEM})*\]")


def raw_fields(body: str) -> list[tuple[str, str]]:
    """name=value pairs of a body that was never percent-encoded (no value holds an &)."""
    return [tuple(pair.split("=", 1)) for pair in body.split("&")]  # type: ignore[misc]


def as_sent(row: list[str]) -> dict[str, list[float]]:
    """An SD row's values as the sketch prints them: acc and gyro %.2f, angle %.1f."""
    values = [float(v) for v in row[2:]]
    return {
        "acc": [float(f"{v:.2f}") for v in values[0:3]],
        "gyro": [float(f"{v:.2f}") for v in values[3:6]],
        "angle": [float(f"{v:.1f}") for v in values[6:9]],
    }


async def collect(http: httpx.AsyncClient, device: SimDevice, session_id: int, seconds: float):
    """Start a session over the device's own API, let it record, stop it."""
    start = {"session_id": str(session_id), "device_code": device.device_code}
    assert (await http.post(url(device, "/start_collection"), data=start)).status_code == 200
    await asyncio.sleep(seconds)
    stop = {"device_code": device.device_code}
    assert (await http.post(url(device, "/stop_collection"), data=stop)).status_code == 200


def batches_of(station: FakeStation, sensor: str | None = None) -> list[list[tuple[str, str]]]:
    found = [raw_fields(p.body) for p in station.posted if p.path == BATCH_PATH]
    return [f for f in found if sensor is None or f[1] == ("sensor_type", sensor)]


async def test_batch_uploads_are_the_recorded_samples_as_a_raw_json_array(
    station: FakeStation, make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(device_code="B001", upload="batch", batch_interval=0.1)

    await collect(http, device, 5, 0.5)
    await asyncio.wait_for(device.wait_upload_complete(5), WAIT)

    posts = [p for p in station.posted if p.path == BATCH_PATH]
    assert len(posts) >= 3
    assert {p.content_type for p in posts} == {FORM_TYPE}
    items = []
    for post in posts:
        assert "%" not in post.body
        fields = raw_fields(post.body)
        assert [name for name, _ in fields] == [
            "device_code",
            "sensor_type",
            "batch_data",
            "session_id",
        ]
        assert (fields[0][1], fields[1][1], fields[3][1]) == ("B001", "waist", "5")
        assert BATCH_DATA.fullmatch(fields[2][1]), fields[2][1][:200]
        batch = json.loads(fields[2][1])
        assert 1 <= len(batch) <= 50
        items += batch

    _, rows = read_rows(device.sd_files[0])
    assert [item["seq"] for item in items] == [int(r[0]) for r in rows]
    offset = items[0]["timestamp"] - int(rows[0][1])
    assert abs(offset + device.uptime_ms - time.time() * 1000) < 1000  # Unix ms of millis() = 0
    assert [item["timestamp"] for item in items] == [offset + int(r[1]) for r in rows]
    for item, row in zip(items, rows, strict=True):
        assert {k: item[k] for k in ("acc", "gyro", "angle")} == as_sent(row)

    assert station.bodies(COMPLETE_PATH) == [
        f'session_id=5&device_code=B001&upload_stats={{"total_data_points":{len(rows)},'
        '"sensor_types":["waist"]}'
    ]
    uploads_and_completion = [p.path for p in station.posted if p.path != HEARTBEAT_PATH]
    assert uploads_and_completion[-1] == COMPLETE_PATH  # heartbeats may still come after it
    assert device.uploaded(5) == {"waist": [int(r[0]) for r in rows]}
    assert device.upload_complete(5)
    status = (await http.get(url(device, "/status"))).json()
    assert status["upload_count"] == len(posts) == device.upload_count


async def test_a_batch_goes_out_as_soon_as_fifty_samples_wait(
    station: FakeStation, make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device(upload="batch", sample_rate_hz=1000, batch_interval=5.0)

    await collect(http, device, 2, 0.4)
    await asyncio.wait_for(device.wait_upload_complete(2), WAIT)

    sizes = [len(json.loads(fields[2][1])) for fields in batches_of(station)]
    assert max(sizes) == 50
    assert len(sizes) >= 6  # well before the 5 s timer
    _, rows = read_rows(device.sd_files[0])
    assert sum(sizes) == len(rows)


async def test_multi_sensor_board_sends_one_batch_per_sensor_type(
    station: FakeStation, make_device: MakeDevice, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    device = await make_device(
        device_code="M001", upload="batch", sensor_types=SENSOR_TYPES, batch_interval=0.1
    )

    await collect(http, device, 9, 0.4)
    await asyncio.wait_for(device.wait_upload_complete(9), WAIT)

    folder = tmp_path / "sd" / "M001"
    assert device.sd_files == [folder / f"session_9_{sensor}.csv" for sensor in SENSOR_TYPES]
    total = 0
    for sensor, path in zip(SENSOR_TYPES, device.sd_files, strict=True):
        _, rows = read_rows(path)
        sent = [item for f in batches_of(station, sensor) for item in json.loads(f[2][1])]
        assert [item["seq"] for item in sent] == [int(r[0]) for r in rows] != []
        assert device.uploaded(9)[sensor] == [int(r[0]) for r in rows]
        total += len(rows)
    assert station.bodies(COMPLETE_PATH) == [
        f'session_id=9&device_code=M001&upload_stats={{"total_data_points":{total},'
        '"sensor_types":["waist","shoulder","wrist","racket"]}'
    ]


async def test_a_refused_batch_is_sent_again_unchanged_and_nothing_is_lost(
    station: FakeStation, make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    station.batch_failures_left = 3
    device = await make_device(upload="batch", batch_interval=0.05)

    await collect(http, device, 4, 0.5)
    await asyncio.wait_for(device.wait_upload_complete(4), WAIT)

    bodies = station.bodies(BATCH_PATH)
    assert bodies[0] == bodies[1] == bodies[2] == bodies[3]
    taken = [item["seq"] for body in bodies[3:] for item in json.loads(raw_fields(body)[2][1])]
    _, rows = read_rows(device.sd_files[0])
    assert taken == [int(r[0]) for r in rows]
    assert device.uploaded(4)["waist"] == taken
    assert device.upload_count == len(bodies) - 3


async def test_single_uploads_send_the_newest_sample_and_count_only_acknowledged_ones(
    station: FakeStation, make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    station.single_replies = ["ESP32 data upload success", "Session not active"]
    device = await make_device(device_code="W001", upload="single", single_upload_interval=0.1)

    await collect(http, device, 7, 0.55)
    await asyncio.wait_for(device.wait_upload_complete(7), WAIT)

    posts = [p for p in station.posted if p.path == UPLOAD_PATH]
    assert len(posts) >= 3
    assert {p.content_type for p in posts} == {FORM_TYPE}
    _, rows = read_rows(device.sd_files[0])
    by_millis = {row[1]: row for row in rows}
    seqs = []
    for post in posts:
        fields = raw_fields(post.body)
        assert [name for name, _ in fields] == [
            "device_code",
            "sensor_type",
            "data",
            "session_id",
            "timestamp",
        ]
        assert (fields[0][1], fields[1][1], fields[3][1]) == ("W001", "waist", "7")
        assert SAMPLE_OBJECT.fullmatch(fields[2][1]), fields[2][1]
        row = by_millis[fields[4][1]]  # timestamp is the sample's millis()
        assert json.loads(fields[2][1]) == as_sent(row)
        seqs.append(int(row[0]))
    assert seqs == sorted(set(seqs))

    acknowledged = [seq for i, seq in enumerate(seqs) if i != 1]
    assert device.uploaded(7) == {"waist": acknowledged}
    assert device.upload_count == len(posts) - 1
    assert station.bodies(COMPLETE_PATH) == [
        f'session_id=7&device_code=W001&upload_stats={{"total_data_points":{len(posts) - 1},'
        '"sensor_types":["waist"]}'
    ]


async def test_a_device_without_uploads_never_posts_samples(
    station: FakeStation, make_device: MakeDevice, http: httpx.AsyncClient
) -> None:
    device = await make_device()

    await collect(http, device, 3, 0.3)
    await asyncio.sleep(0.2)

    assert station.posted == [p for p in station.posted if p.path == HEARTBEAT_PATH]
    assert device.uploaded(3) == {"waist": []}


# -- polling --------------------------------------------------------------------------------------


def poll_command(command: str | None, session_id: Any = None) -> dict[str, Any]:
    return {"device_code": "P001", "command": command, "session_id": session_id, "message": ""}


async def test_polling_device_starts_and_stops_on_polled_commands_and_confirms_them(
    station: FakeStation, make_device: MakeDevice
) -> None:
    station.poll_replies = [
        {"device_code": "P001", "current_session": "", "status": "idle", "message": "无新指令"},
        poll_command("START_COLLECTION", "12"),
    ]
    device = await make_device(
        device_code="P001",
        polling=True,
        poll_interval=0.05,
        polling_heartbeat_interval=0.05,
        upload="batch",
        batch_interval=0.05,
    )
    await wait_until(lambda: device.collecting)
    assert device.session_id == 12
    await wait_until(lambda: len(station.heartbeats) >= 2)

    station.poll_replies.append(poll_command("STOP_COLLECTION", "12"))
    await wait_until(lambda: not device.collecting)
    await asyncio.wait_for(device.wait_upload_complete(12), WAIT)

    assert station.registrations == [] and not device.listening
    assert {p.content_type for p in station.posted} == {FORM_TYPE}
    polls = station.bodies(POLL_PATH)
    assert polls[:2] == ["device_code=P001&current_session=&status=idle"] * 2
    assert "device_code=P001&current_session=12&status=collecting" in polls
    assert station.bodies(STATUS_PATH) == [
        "status=START_COLLECTION_CONFIRMED&session_id=12&device_code=P001",
        "status=STOP_COLLECTION_CONFIRMED&session_id=12&device_code=P001",
    ]
    assert set(station.bodies(HEARTBEAT_PATH)) == {
        "session_id=12&device_code=P001&status=collecting"
    }
    paths = [p.path for p in station.posted]
    assert paths.index(HEARTBEAT_PATH) > paths.index(STATUS_PATH)  # none while idle
    _, rows = read_rows(device.sd_files[0])
    assert device.uploaded(12)["waist"] == [int(r[0]) for r in rows] != []
    assert len(station.bodies(COMPLETE_PATH)) == 1


async def test_polling_device_ignores_a_null_command_and_a_numeric_session_id(
    station: FakeStation, make_device: MakeDevice
) -> None:
    station.poll_replies = [
        poll_command(None),
        poll_command("START_COLLECTION", 12),
        {"device_code": "P001", "command": "START_COLLECTION"},
        poll_command("START_COLLECTION", "3"),
    ]
    device = await make_device(device_code="P001", polling=True, poll_interval=0.05)

    await wait_until(lambda: device.collecting)

    assert device.session_id == 3
    assert len(station.bodies(POLL_PATH)) == 4
    assert station.bodies(STATUS_PATH) == [
        "status=START_COLLECTION_CONFIRMED&session_id=3&device_code=P001"
    ]


async def test_polling_device_without_uploads_reports_no_upload(
    station: FakeStation, make_device: MakeDevice
) -> None:
    station.poll_replies = [poll_command("START_COLLECTION", "5")]
    device = await make_device(device_code="P001", polling=True, poll_interval=0.05)
    await wait_until(lambda: device.collecting)

    station.poll_replies.append(poll_command("STOP_COLLECTION", "5"))
    await wait_until(lambda: len(station.bodies(STATUS_PATH)) == 2)

    assert not device.collecting
    assert station.bodies(COMPLETE_PATH) == []
    assert device.upload_count == 0


def test_config_refuses_an_unknown_upload_mode_and_repeated_sensors() -> None:
    with pytest.raises(ValueError, match="upload"):
        SimDeviceConfig(device_code="X", upload="bulk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repeats"):
        SimDeviceConfig(device_code="X", sensor_types=("waist", "waist"))


# -- command line ---------------------------------------------------------------------------------


def test_simulate_help_lists_the_options() -> None:
    result = CliRunner().invoke(main, ["simulate", "--help"])

    assert result.exit_code == 0
    for option in (
        "--station",
        "--count",
        "--dialect",
        "--sd-dir",
        "--blackhole",
        "--error-500",
        "--upload",
        "--polling",
        "--all-sensors",
    ):
        assert option in result.output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_simulate_command_runs_a_fleet_and_stops_cleanly_on_a_signal(
    station: FakeStation, tmp_path: Path, http: httpx.AsyncClient, signum: signal.Signals
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "station",
        "simulate",
        "--count",
        "2",
        "--station",
        station.url,
        "--first-host",
        "40",
        "--heartbeat",
        "0.2",
        "--sd-dir",
        str(tmp_path / "sd"),
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until(lambda: len(station.registrations) == 2, within=20)
        address = station.registered("SIM002")[0]
        assert (await http.get(f"http://{address}/status")).status_code == 200
        process.send_signal(signum)
        stdout, stderr = await asyncio.wait_for(process.communicate(), WAIT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    log_text = stderr.decode()
    assert process.returncode == 0, log_text
    assert "Traceback" not in log_text
    assert {r["device_code"] for r in station.registrations} == {"SIM001", "SIM002"}
    assert "SIM001 (waist) started on 127.0.0.40:" in log_text
    assert "SIM002 <- GET /status {}" in log_text
