"""A simulated fleet of ESP32 sensor devices, for end-to-end tests, benchmarks, demo mode and staff.

By default a SimDevice plays `esp32_wifi_notification_fixed.ino`: it registers its address with
the station at boot and after every Wi-Fi reconnect, serves the firmware's own HTTP API
(POST /start_collection, POST /stop_collection, GET /status), records IMU-like samples to a
CSV file per session and sensor on a folder that stands in for its SD card, and sends heartbeats.
Faults (slow, refusing, silent, failing, dropping off the network) can be switched on at any time.

Two settings cover the other sketches:

- `upload` sends what is recorded to the station while collecting: `single` is the wifi sketch's
  one sample every 2 s to esp32/upload/, `batch` the multi-sensor sketch's batches of up to 50 to
  esp32/batch_upload/ (see `station.devices.sim_uploads`). After a stop the device flushes and
  reports its upload complete.
- `polling` plays the deleted `esp32_http_polling.ino` instead: no HTTP server and no
  registration; the device polls esp32/poll_commands/ every 3 s, confirms START and STOP on
  esp32/status/ and sends heartbeats every 5 s while collecting.

Runs on whatever asyncio loop is current and never imports Qt. By design it only ever talks to
loopback addresses: devices listen on 127.0.0.x and the station must be local too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import platformdirs
from aiohttp import web
from yarl import URL

from station.devices.sim_samples import SENSOR_TYPES, SessionRecording, stable_seed
from station.devices.sim_uploads import (
    UPLOAD_MODES,
    SessionUploader,
    StationAnswer,
    UploadMode,
    UploadSettings,
    form_body,
)

log = logging.getLogger(__name__)

Dialect = Literal["firmware", "seed"]
DIALECTS: tuple[Dialect, ...] = ("firmware", "seed")

# The firmware's loop() serves one request and then waits delay(1000).
SLOW_REPLY_DELAY = 1.0
RECORD_TICK = 0.05  # seconds between SD writes while collecting
SHUTDOWN_TIMEOUT = 0.2  # how long stop() lets in-flight requests finish
REGISTER_TIMEOUT = 5.0  # the firmware's HTTPClient default
STATION_TIMEOUT = 5.0  # the same default, for every other request to the station
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
REQUEST_LOG_SIZE = 10_000


def default_sd_dir() -> Path:
    return platformdirs.user_data_path("station") / "simulator"


def format_ip_address(host: str, port: int) -> str:
    """The `ip_address` a device registers: "host:port", with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _require_loopback(host: str | None, what: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the simulator only uses loopback addresses; {what} is {host!r}")


def _unused_port(host: str) -> int:
    """A port on `host` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _arduino_to_int(text: str) -> int:
    """Arduino String.toInt(): leading sign and digits, 0 when there are none."""
    text = text.lstrip()
    sign = -1 if text[:1] == "-" else 1
    if text[:1] in "+-":
        text = text[1:]
    digits = ""
    for char in text:
        if not char.isdigit():
            break
        digits += char
    value = sign * int(digits) if digits else 0
    return max(-(2**31), min(value, 2**31 - 1))  # the ESP32's long is 32 bits


@dataclass(frozen=True, slots=True)
class SimFaults:
    """Misbehaviour switched on for one device. Change it with `SimDevice.set_faults`."""

    slow: bool = False  # one request at a time, each reply delayed (request_delay, else 1 s)
    refuse: bool = False  # not listening: connections are refused
    blackhole: bool = False  # connections accepted, requests never answered
    error_500: bool = False  # every request answered 500


@dataclass(slots=True)
class SimDeviceConfig:
    device_code: str
    sensor_type: str = "waist"
    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port
    station_url: str = "http://127.0.0.1:8000"
    dialect: Dialect = "firmware"
    sample_rate_hz: float = 100.0
    heartbeat_interval: float = 1.0  # seconds; 0 disables heartbeats
    sd_dir: Path = field(default_factory=default_sd_dir)
    request_delay: float = 0.0  # seconds added to every reply
    register_retry_backoff: tuple[float, float] = (0.2, 5.0)  # first and longest wait
    faults: SimFaults = field(default_factory=SimFaults)
    # The sensors the board carries; empty means just `sensor_type`. The multi-sensor board has
    # all four, each recorded to its own SD file and uploaded in its own batches.
    sensor_types: tuple[str, ...] = ()
    upload: UploadMode = "none"
    single_upload_interval: float = 2.0  # seconds, single mode
    batch_interval: float = 0.5  # seconds between batch flushes, batch mode
    batch_size: int = 50
    polling: bool = False
    poll_interval: float = 3.0  # seconds between esp32/poll_commands/ calls
    polling_heartbeat_interval: float = 5.0  # seconds, while collecting; 0 disables

    def __post_init__(self) -> None:
        _require_loopback(self.host, "the device host")
        _require_loopback(URL(self.station_url).host, "the station URL host")
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, got {self.dialect!r}")
        if self.upload not in UPLOAD_MODES:
            raise ValueError(f"upload must be one of {UPLOAD_MODES}, got {self.upload!r}")
        if not 0 < self.sample_rate_hz <= 1000:
            raise ValueError("sample_rate_hz must be in (0, 1000]: timestamps are whole ms")
        if not 1 <= self.batch_size <= 1000:
            raise ValueError("batch_size must be between 1 and 1000")
        for name in ("single_upload_interval", "batch_interval", "poll_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        self.sensor_types = tuple(self.sensor_types) or (self.sensor_type,)
        if len(set(self.sensor_types)) != len(self.sensor_types):
            raise ValueError(f"sensor_types repeats a sensor: {self.sensor_types}")
        self.sensor_type = self.sensor_types[0]
        self.sd_dir = Path(self.sd_dir)

    @property
    def upload_settings(self) -> UploadSettings:
        return UploadSettings(
            mode=self.upload,
            single_interval=self.single_upload_interval,
            batch_size=self.batch_size,
            batch_interval=self.batch_interval,
        )


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request a device received, as logged before any fault applies."""

    method: str
    path: str
    fields: dict[str, str]  # query string and urlencoded body, first value per name
    time: float  # time.monotonic() at arrival
    remote: str | None = None


class SimDevice:
    """One simulated ESP32 with its own HTTP server on a loopback address."""

    def __init__(self, config: SimDeviceConfig) -> None:
        self.config = config
        self._faults = config.faults
        self._port = config.port
        self._rng = random.Random(stable_seed(config.device_code))
        self._requests: deque[SimRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self._sd_files: list[Path] = []
        self._boot = time.monotonic()

        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._http: aiohttp.ClientSession | None = None
        self._closing = False
        self._dropped_out = False

        self._recordings: list[SessionRecording] = []
        self._session_id: int | None = None
        self._upload_count = 0  # upload POSTs the station took, reported as the firmware does
        self._uploader: SessionUploader | None = None  # the collecting session's
        self._uploaders: list[SessionUploader] = []  # every session's, oldest first
        self._unix_offset_ms = 0  # Unix ms at millis() == 0: the device's wall clock

        self._serial = asyncio.Lock()
        self._blackhole_cleared = asyncio.Event()
        if not self._faults.blackhole:
            self._blackhole_cleared.set()
        self._registered = asyncio.Event()
        self.registrations = 0  # successful registrations so far

        self._register_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._record_task: asyncio.Task[None] | None = None
        self._comeback_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        host, port = self.address
        return f"<SimDevice {self.device_code} {self.config.sensor_type} {host}:{port}>"

    # -- public state ---------------------------------------------------------------------------

    @property
    def device_code(self) -> str:
        return self.config.device_code

    @property
    def address(self) -> tuple[str, int]:
        """Where the device listens (or last listened, while refusing or dropped out)."""
        return self.config.host, self._port

    @property
    def ip_address(self) -> str:
        return format_ip_address(*self.address)

    @property
    def base_url(self) -> str:
        return f"http://{self.ip_address}"

    @property
    def listening(self) -> bool:
        return self._site is not None

    @property
    def collecting(self) -> bool:
        return self._session_id is not None

    @property
    def session_id(self) -> int | None:
        return self._session_id

    @property
    def faults(self) -> SimFaults:
        return self._faults

    @property
    def requests(self) -> list[SimRequest]:
        return list(self._requests)

    @property
    def sd_files(self) -> list[Path]:
        """Session files this device has written to since it started, oldest first."""
        return list(self._sd_files)

    @property
    def uptime_ms(self) -> int:
        return int(self._millis())

    @property
    def upload_count(self) -> int:
        return self._upload_count

    def uploaders(self, session_id: int) -> list[SessionUploader]:
        """The uploads of one session (more than one if it was started again after a stop)."""
        return [u for u in self._uploaders if u.session_id == session_id]

    def uploaded(self, session_id: int) -> dict[str, list[int]]:
        """Per sensor type, the `seq` of every sample of the session the station acknowledged."""
        found: dict[str, list[int]] = {sensor: [] for sensor in self.config.sensor_types}
        for uploader in self.uploaders(session_id):
            for sensor, seqs in uploader.acked.items():
                found[sensor].extend(seqs)
        return found

    def upload_complete(self, session_id: int) -> bool:
        """Whether the station accepted this session's mark_upload_complete."""
        uploads = self.uploaders(session_id)
        return bool(uploads) and all(u.completed.is_set() for u in uploads)

    async def wait_upload_complete(self, session_id: int) -> None:
        """Wait (no timeout) until the session is uploaded and reported complete."""
        uploads = self.uploaders(session_id)
        if not uploads:
            raise LookupError(f"{self.device_code} has not uploaded session {session_id}")
        await asyncio.gather(*(u.wait_complete() for u in uploads))

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the configured address, then register with the station in the background."""
        if self._runner is not None:
            return
        self._boot = time.monotonic()
        self._unix_offset_ms = round(time.time() * 1000)
        self._closing = self._dropped_out = False
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        self._http = aiohttp.ClientSession(connector=self._make_connector())
        try:
            await self._sync_listening()
        except BaseException:
            await self.stop()
            raise

        sensors = "+".join(self.config.sensor_types)
        if self.config.polling:
            log.info("%s (%s) started, polling the station", self.device_code, sensors)
            self._poll_task = asyncio.create_task(self._poll_loop())
            if self.config.polling_heartbeat_interval > 0:
                self._heartbeat_task = asyncio.create_task(self._polling_heartbeat_loop())
            return

        faults = self._describe_faults()
        log.info(
            "%s (%s) started on %s%s",
            self.device_code,
            sensors,
            self.ip_address,
            "" if faults == "none" else f" with faults: {faults}",
        )
        if self.config.heartbeat_interval > 0:
            self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        # A refusing device still registers: the station then meets a refused connection.
        self._start_registering()

    async def stop(self) -> None:
        """Stop recording, uploads, heartbeats and the server; closes the SD files cleanly.

        Like pulling the power: samples not uploaded yet stay on the SD card only."""
        if self._runner is None or self._closing:
            return
        self._closing = True
        tasks = [
            self._register_task,
            self._heartbeat_task,
            self._record_task,
            self._comeback_task,
            self._poll_task,
        ]
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        self._close_recording(upload=False)
        await asyncio.gather(*(u.aclose() for u in self._uploaders))

        self._site = None
        await self._runner.cleanup()
        self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        log.debug("%s stopped", self.device_code)

    async def __aenter__(self) -> SimDevice:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_registered(self) -> None:
        """Wait until the station has accepted the device's current address (no timeout).

        A polling device never registers, so for it this returns at once."""
        if self.config.polling:
            return
        await self._registered.wait()

    async def reconnect_wifi(self) -> None:
        """What the firmware does after a Wi-Fi reconnect: register its address again."""
        if self._runner is None or self._closing:
            return
        log.info("%s reconnected to Wi-Fi; registering again", self.device_code)
        self._start_registering()

    # -- faults ---------------------------------------------------------------------------------

    async def set_faults(self, **changes: bool) -> None:
        """Switch faults on or off, e.g. `await device.set_faults(refuse=True)`."""
        self._faults = dataclasses.replace(self._faults, **changes)
        log.info("%s faults now %s", self.device_code, self._describe_faults())
        if self._faults.blackhole:
            self._blackhole_cleared.clear()
        else:
            self._blackhole_cleared.set()
        if self._runner is not None and not self._closing:
            await self._sync_listening()

    async def dropout(self, seconds: float) -> None:
        """Leave the network for `seconds`, then come back on a new port and register again.

        Returns as soon as the device is off the network. Recording carries on meanwhile, as
        it would on the real device, but heartbeats stop.
        """
        if self._runner is None or self._closing:
            return
        log.info("%s drops off the network for %.1f s", self.device_code, seconds)
        self._dropped_out = True
        self._registered.clear()
        if self._register_task is not None:
            self._register_task.cancel()
        await self._sync_listening()
        if self._comeback_task is not None:
            self._comeback_task.cancel()
        self._comeback_task = asyncio.create_task(self._come_back_after(seconds))

    async def _come_back_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._dropped_out = False
        try:
            await self._sync_listening(new_port=True)
        except OSError as exc:
            log.error("%s could not listen again after its dropout: %s", self.device_code, exc)
            return
        log.info("%s back on the network at %s", self.device_code, self.ip_address)
        if self.listening:
            self._start_registering()

    def _describe_faults(self) -> str:
        on = [f.name for f in dataclasses.fields(self._faults) if getattr(self._faults, f.name)]
        return ", ".join(on) or "none"

    # -- listening ------------------------------------------------------------------------------

    async def _sync_listening(self, *, new_port: bool = False) -> None:
        """Open or close the listening socket to match the faults and the dropout state."""
        assert self._runner is not None
        if self.config.polling:
            return  # the polling sketch serves nothing
        wanted = not (self._closing or self._faults.refuse or self._dropped_out)
        if not wanted:
            if self._site is not None:
                site, self._site = self._site, None
                await site.stop()
            elif self._port == 0:
                # Built refusing: it still needs a real port to register (the station rejects
                # port 0), one where nothing listens so connections are refused.
                self._port = _unused_port(self.config.host)
            return
        if self._site is not None:
            return

        old_port = self._port
        if new_port or self._port == 0:
            self._site = await self._bind_fresh_port(avoid=old_port)
            return
        try:
            self._site = await self._bind(self._port)
        except OSError as exc:
            # Someone took our port while we were refusing; behave like a new DHCP lease.
            log.warning("%s cannot listen on port %s again (%s)", self.device_code, old_port, exc)
            self._site = await self._bind_fresh_port(avoid=old_port)
            self._start_registering()

    async def _bind_fresh_port(self, avoid: int) -> web.TCPSite:
        for _ in range(5):
            site = await self._bind(0)
            if site.port != avoid:
                return site
            await site.stop()
        raise OSError(f"could not find a new port for {self.device_code}")

    async def _bind(self, port: int) -> web.TCPSite:
        assert self._runner is not None
        site = web.TCPSite(self._runner, self.config.host, port)
        await site.start()
        self._port = site.port
        return site

    # -- talking to the station -----------------------------------------------------------------

    def _make_connector(self) -> aiohttp.TCPConnector:
        # Send from the device's own address, as a real device would, when the families match.
        station_host = URL(self.config.station_url).host or ""
        local_addr = None
        with contextlib.suppress(ValueError):
            ours, theirs = (
                ipaddress.ip_address(self.config.host),
                ipaddress.ip_address(station_host),
            )
            if ours.version == theirs.version:
                local_addr = (self.config.host, 0)
        return aiohttp.TCPConnector(local_addr=local_addr)

    def _station(self, path: str) -> str:
        return self.config.station_url.rstrip("/") + path

    def _start_registering(self) -> None:
        if self._register_task is not None:
            self._register_task.cancel()
        self._registered.clear()
        self._register_task = asyncio.create_task(self._register_loop())

    async def _register_loop(self) -> None:
        assert self._http is not None
        wait, longest = self.config.register_retry_backoff
        url = self._station("/wxapp/register_device_ip/")
        timeout = aiohttp.ClientTimeout(total=REGISTER_TIMEOUT)
        form = {"device_code": self.device_code, "ip_address": self.ip_address}
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._http.post(url, data=form, timeout=timeout) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("%s registration attempt %d failed: %r", self.device_code, attempt, exc)
            else:
                if status < 400:
                    self.registrations += 1
                    self._registered.set()
                    log.debug("%s registered as %s", self.device_code, self.ip_address)
                    return
                if status < 500:
                    log.warning(
                        "%s registration refused by station: HTTP %s", self.device_code, status
                    )
                    return
                log.debug("%s registration attempt %d: HTTP %s", self.device_code, attempt, status)
            # Jitter keeps a whole fleet from retrying in lockstep against a booting station.
            await asyncio.sleep(wait * self._rng.uniform(0.8, 1.2))
            wait = min(wait * 2, longest)

    async def _heartbeat_loop(self) -> None:
        assert self._http is not None
        interval = self.config.heartbeat_interval
        url = self._station("/wxapp/esp32/heartbeat/")
        timeout = aiohttp.ClientTimeout(total=max(1.0, interval))
        while True:
            await asyncio.sleep(interval)
            if self._dropped_out:
                continue
            form = {
                "device_code": self.device_code,
                "status": "collecting" if self.collecting else "idle",
                "session_id": str(self._session_id or 0),
            }
            try:
                async with self._http.post(url, data=form, timeout=timeout) as resp:
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.debug("%s heartbeat failed: %r", self.device_code, exc)

    async def _post_form(
        self, path: str, fields: Sequence[tuple[str, str]]
    ) -> StationAnswer | None:
        """POST a hand-built form body, as the sketches do; None when the station could not be
        reached (or the device is off the network)."""
        if self._http is None or self._dropped_out:
            return None
        timeout = aiohttp.ClientTimeout(total=STATION_TIMEOUT)
        try:
            async with self._http.post(
                self._station(path), data=form_body(fields), headers=FORM, timeout=timeout
            ) as resp:
                return StationAnswer(resp.status, await resp.text(errors="replace"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("%s POST %s failed: %r", self.device_code, path, exc)
            return None

    # -- polling (esp32_http_polling.ino) -------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self._poll_once()
            except Exception:  # a bug in one poll must not end the device's polling
                log.exception("%s poll failed", self.device_code)
            await asyncio.sleep(self.config.poll_interval)

    async def _poll_once(self) -> None:
        fields = [
            ("device_code", self.device_code),
            ("current_session", str(self._session_id) if self.collecting else ""),
            ("status", "collecting" if self.collecting else "idle"),
        ]
        answer = await self._post_form("/wxapp/esp32/poll_commands/", fields)
        if answer is None or answer.status != 200:
            return
        try:
            body = json.loads(answer.text)
        except ValueError:
            return
        # The sketch calls strcmp on `command`: a reply without the key means "nothing to do".
        # A null command crashed the real device; the simulator lets it pass and says so.
        if not isinstance(body, dict) or "command" not in body:
            return
        command = body["command"]
        if command is None:
            log.warning("%s got command null, which would crash the real sketch", self.device_code)
            return
        session_text = body.get("session_id")
        if not isinstance(session_text, str):
            # ArduinoJson reads a number as a null C string: the command cannot be acted on.
            log.warning("%s got %s without a string session_id", self.device_code, command)
            return
        if command == "START_COLLECTION":
            await self._polled_start(session_text)
        elif command == "STOP_COLLECTION":
            await self._polled_stop(session_text)

    async def _polled_start(self, session_text: str) -> None:
        session_id = _arduino_to_int(session_text)
        log.info("%s polled START_COLLECTION for session %s", self.device_code, session_id)
        if self._session_id != session_id:
            self._close_recording()
            try:
                self._open_recording(session_id)
            except OSError as exc:
                log.error("%s cannot write to its SD card: %s", self.device_code, exc)
                return
        await self._confirm("START_COLLECTION_CONFIRMED", session_text)

    async def _polled_stop(self, session_text: str) -> None:
        log.info("%s polled STOP_COLLECTION for session %s", self.device_code, session_text)
        self._close_recording()
        await self._confirm("STOP_COLLECTION_CONFIRMED", session_text)

    async def _confirm(self, status: str, session_text: str) -> None:
        fields = [
            ("status", status),
            ("session_id", session_text),
            ("device_code", self.device_code),
        ]
        answer = await self._post_form("/wxapp/esp32/status/", fields)
        if answer is None or answer.status != 200:
            log.debug("%s %s not taken: %s", self.device_code, status, answer)

    async def _polling_heartbeat_loop(self) -> None:
        """The polling sketch's heartbeat: only while collecting."""
        while True:
            await asyncio.sleep(self.config.polling_heartbeat_interval)
            if not self.collecting:
                continue
            fields = [
                ("session_id", str(self._session_id)),
                ("device_code", self.device_code),
                ("status", "collecting"),
            ]
            await self._post_form("/wxapp/esp32/heartbeat/", fields)

    # -- the device's HTTP API ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fields = await self._read_fields(request)
        self._requests.append(
            SimRequest(request.method, request.path, fields, time.monotonic(), request.remote)
        )
        log.info("%s <- %s %s %s", self.device_code, request.method, request.path, fields)

        if not self._blackhole_cleared.is_set():
            # Never answer; stop() cancels this handler after its short shutdown timeout.
            await self._blackhole_cleared.wait()

        if self._faults.slow:
            async with self._serial:
                await asyncio.sleep(self._reply_delay())
                return self._answer(request, fields)
        if self.config.request_delay > 0:
            await asyncio.sleep(self.config.request_delay)
        return self._answer(request, fields)

    def _reply_delay(self) -> float:
        return self.config.request_delay if self.config.request_delay > 0 else SLOW_REPLY_DELAY

    @staticmethod
    async def _read_fields(request: web.Request) -> dict[str, str]:
        # Like the Arduino WebServer: query string plus urlencoded (or multipart) body args;
        # a JSON body is not parsed, so its keys count as missing.
        fields: dict[str, str] = {}
        for name, value in request.query.items():
            fields.setdefault(name, value)
        if request.method == "POST" and request.can_read_body:
            with contextlib.suppress(ValueError, aiohttp.ClientError):
                for name, value in (await request.post()).items():
                    if isinstance(value, str):
                        fields.setdefault(name, value)
        return fields

    def _answer(self, request: web.Request, fields: dict[str, str]) -> web.Response:
        if self._faults.error_500:
            return self._reply(text="Internal Server Error", status=500)
        route = (request.method, request.path)
        if route == ("POST", "/start_collection"):
            return self._start_collection(fields)
        if route == ("POST", "/stop_collection"):
            return self._stop_collection(fields)
        if route == ("GET", "/status"):
            return self._status()
        return self._reply(text=f"Not found: {request.path}", status=404, content_type="text/html")

    @staticmethod
    def _reply(
        body: dict[str, Any] | None = None,
        *,
        text: str | None = None,
        status: int = 200,
        content_type: str = "text/plain",
    ) -> web.Response:
        if body is not None:
            text, content_type = json.dumps(body, separators=(",", ":")), "application/json"
        response = web.Response(text=text, status=status, content_type=content_type)
        response.force_close()  # the Arduino WebServer closes the connection after each reply
        return response

    def _start_collection(self, fields: dict[str, str]) -> web.Response:
        if "session_id" not in fields or "device_code" not in fields:
            return self._reply(text="Missing parameters", status=400)

        session_id = _arduino_to_int(fields["session_id"])
        if self._session_id != session_id:
            self._close_recording()
            try:
                self._open_recording(session_id)
            except OSError as exc:
                log.error("%s cannot write to its SD card: %s", self.device_code, exc)
                return self._reply(text="SD card error", status=500)

        if self.config.dialect == "seed":
            return self._reply(
                {
                    "msg": "Collection started",
                    "session_id": session_id,
                    "device_code": self.device_code,
                }
            )
        return self._reply(
            {
                "status": "collection_started",
                "session_id": session_id,
                "device_code": self.device_code,
            }
        )

    def _stop_collection(self, fields: dict[str, str]) -> web.Response:
        if "device_code" not in fields:
            return self._reply(text="Missing device_code", status=400)

        self._close_recording()
        if self.config.dialect == "seed":
            return self._reply({"msg": "Collection stopped", "status": "stopped"})
        return self._reply(
            {
                "status": "collection_stopped",
                "device_code": self.device_code,
                "total_uploads": self._upload_count,
            }
        )

    def _status(self) -> web.Response:
        if self.config.dialect == "seed":
            return self._reply(
                {
                    "msg": "Device status",
                    "device_code": self.device_code,
                    "status": "collecting" if self.collecting else "idle",
                    "session_id": self._session_id or 0,
                }
            )
        return self._reply(
            {
                "device_code": self.device_code,
                "ip_address": self.ip_address,
                "wifi_status": "connected",
                "is_collecting": self.collecting,
                "session_id": self._session_id or 0,
                "signal_strength": self._rng.randint(-62, -48),
                "upload_count": self._upload_count,
                "uptime": self.uptime_ms,
            }
        )

    # -- recording ------------------------------------------------------------------------------

    def _millis(self) -> float:
        return (time.monotonic() - self._boot) * 1000.0

    def _sd_path(self, session_id: int, sensor: str) -> Path:
        """session_<id>.csv on a one-sensor board, session_<id>_<sensor>.csv per sensor else."""
        folder = self.config.sd_dir / self.device_code
        if len(self.config.sensor_types) == 1:
            return folder / f"session_{session_id}.csv"
        return folder / f"session_{session_id}_{sensor}.csv"

    def _open_recording(self, session_id: int) -> None:
        sensors = self.config.sensor_types
        start_ms = self._millis()
        recordings = []
        try:
            for sensor in sensors:
                seed = f"{self.device_code}/{session_id}"
                recordings.append(
                    SessionRecording.open(
                        self._sd_path(session_id, sensor),
                        session_id,
                        sensor_type=sensor,
                        rate_hz=self.config.sample_rate_hz,
                        start_ms=start_ms,
                        seed=stable_seed(seed if len(sensors) == 1 else f"{seed}/{sensor}"),
                    )
                )
        except OSError:
            for recording in recordings:
                recording.close(start_ms)
            raise
        self._recordings = recordings
        self._session_id = session_id
        for recording in recordings:
            if recording.path not in self._sd_files:
                self._sd_files.append(recording.path)

        if self.config.upload != "none":
            self._uploader = SessionUploader(
                self.device_code,
                session_id,
                sensors,
                self.config.upload_settings,
                self._post_form,
                self._unix_offset_ms,
                on_upload=self._count_upload,
            )
            self._uploaders.append(self._uploader)
            self._uploader.start()
        self._record_task = asyncio.create_task(self._record_loop(recordings, self._uploader))
        log.debug("%s recording session %s", self.device_code, session_id)

    def _count_upload(self) -> None:
        self._upload_count += 1

    def _close_recording(self, *, upload: bool = True) -> None:
        """Stop recording; with `upload`, the session's uploader flushes and reports complete."""
        recordings, self._recordings = self._recordings, []
        uploader, self._uploader = self._uploader, None
        self._session_id = None
        if self._record_task is not None:
            self._record_task.cancel()
            self._record_task = None
        now = self._millis()
        for recording in recordings:
            try:
                last = recording.close(now)
            except OSError as exc:
                log.error("%s could not finish %s: %s", self.device_code, recording.path, exc)
                continue
            if uploader is not None:
                uploader.add(recording.sensor_type, last)
            log.debug(
                "%s closed session %s (%s) after %d samples",
                self.device_code,
                recording.session_id,
                recording.sensor_type,
                recording.samples_written,
            )
        if uploader is not None and upload:
            uploader.finish()

    async def _record_loop(
        self, recordings: list[SessionRecording], uploader: SessionUploader | None
    ) -> None:
        while True:
            await asyncio.sleep(RECORD_TICK)
            now = self._millis()
            for recording in recordings:
                try:
                    samples = recording.record_due(now)
                except OSError as exc:
                    log.error("%s SD write failed: %s", self.device_code, exc)
                    return
                if uploader is not None:
                    uploader.add(recording.sensor_type, samples)


@dataclass(frozen=True, slots=True)
class FleetFaults:
    """How many devices, counted from the end of the fleet, have each fault."""

    slow: int = 0
    refuse: int = 0
    blackhole: int = 0
    error_500: int = 0

    def for_device(self, index: int, count: int) -> SimFaults:
        from_end = count - index
        return SimFaults(
            slow=from_end <= self.slow,
            refuse=from_end <= self.refuse,
            blackhole=from_end <= self.blackhole,
            error_500=from_end <= self.error_500,
        )


class SimFleet:
    """Many SimDevices started and stopped together."""

    def __init__(self, devices: Sequence[SimDevice]) -> None:
        self.devices = list(devices)

    @classmethod
    def build(
        cls,
        count: int,
        station_url: str,
        *,
        host_base: str = "127.0.0.",
        first_host: int = 2,
        port: int = 0,
        code_prefix: str = "SIM",
        first_code: int = 1,
        code_digits: int = 3,
        sensor_types: Sequence[str] = SENSOR_TYPES,
        dialect: Dialect = "firmware",
        sample_rate_hz: float = 100.0,
        heartbeat_interval: float = 1.0,
        sd_dir: Path | None = None,
        request_delay: float = 0.0,
        register_retry_backoff: tuple[float, float] = (0.2, 5.0),
        faults: FleetFaults | None = None,
        upload: UploadMode = "none",
        all_sensors: bool = False,
        polling: bool = False,
        poll_interval: float = 3.0,
    ) -> SimFleet:
        """Devices SIM001, SIM002, ... on 127.0.0.2, 127.0.0.3, ..., sensor types in rotation
        (or, with `all_sensors`, every device a multi-sensor board carrying all of them)."""
        if count < 0:
            raise ValueError("count must not be negative")
        if count and first_host + count - 1 > 254:
            raise ValueError(f"{count} devices from {host_base}{first_host} run past .254")
        sd_dir = Path(sd_dir) if sd_dir is not None else default_sd_dir()
        faults = faults or FleetFaults()
        devices = [
            SimDevice(
                SimDeviceConfig(
                    device_code=f"{code_prefix}{first_code + i:0{code_digits}d}",
                    sensor_type=sensor_types[i % len(sensor_types)],
                    host=f"{host_base}{first_host + i}",
                    port=port,
                    station_url=station_url,
                    dialect=dialect,
                    sample_rate_hz=sample_rate_hz,
                    heartbeat_interval=heartbeat_interval,
                    sd_dir=sd_dir,
                    request_delay=request_delay,
                    register_retry_backoff=register_retry_backoff,
                    faults=faults.for_device(i, count),
                    sensor_types=tuple(sensor_types) if all_sensors else (),
                    upload=upload,
                    polling=polling,
                    poll_interval=poll_interval,
                )
            )
            for i in range(count)
        ]
        return cls(devices)

    def __len__(self) -> int:
        return len(self.devices)

    def __iter__(self) -> Iterator[SimDevice]:
        return iter(self.devices)

    def __getitem__(self, device_code: str) -> SimDevice:
        """The first device with this code (codes may be duplicated on purpose)."""
        for device in self.devices:
            if device.device_code == device_code:
                return device
        raise KeyError(device_code)

    def by_code(self) -> Mapping[str, list[SimDevice]]:
        found: dict[str, list[SimDevice]] = {}
        for device in self.devices:
            found.setdefault(device.device_code, []).append(device)
        return found

    async def start(self) -> None:
        """Start every device at once; if any fails, stop them all and re-raise."""
        results = await asyncio.gather(*(d.start() for d in self.devices), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices))

    async def wait_registered(self) -> None:
        await asyncio.gather(*(d.wait_registered() for d in self.devices))

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
