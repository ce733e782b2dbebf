"""The one seam between the station and an ESP32's own HTTP API (POST /start_collection,
POST /stop_collection, GET /status). Every command the station sends goes through DeviceClient."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from station import __version__
from station.backend.models import Failure
from station.devices.transport import DeviceTransport

log = logging.getLogger(__name__)

BODY_LIMIT = 2000  # characters of a reply kept in DeviceReply.body
_READ_LIMIT = 64 * 1024  # bytes read from a reply; whatever answers at a stale address may be huge
_MAX_BACKOFF = 1.0  # seconds; a fleet command should not sit out long pauses
_MAX_REASON = 200  # characters of an error reply quoted in the staff sentence

# Only failures where the device never received the request are safe to repeat.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout)


@dataclass(frozen=True, slots=True)
class DeviceAddress:
    host: str  # IPv4 or IPv6 literal, without brackets
    port: int = 80

    @property
    def netloc(self) -> str:
        """host:port as staff read it, with brackets around an IPv6 literal."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.netloc}"


@dataclass(frozen=True, slots=True)
class DeviceReply:
    """What came of one command, after any retries."""

    ok: bool
    attempts: int
    elapsed_ms: float
    failure: Failure | None = None
    error: str | None = None  # a plain sentence for staff, None when ok
    http_status: int | None = None
    body: str | None = None  # the reply text as received, cut to 2,000 characters
    data: dict[str, Any] | None = None  # the reply parsed as a JSON object, when it was one
    device_status: str | None = None  # for status replies: "collecting", "idle", ...
    session_id: int | None = None  # the session the device reports, None when idle


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    text: str


def parse_body(text: str) -> dict[str, Any] | None:
    """The reply as a JSON object, or None.

    Content-type is ignored: the firmware labels everything application/json, and builds its JSON
    by string concatenation, so a 2xx body may still be invalid.
    """
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def reported_session_id(data: Mapping[str, Any] | None) -> int | None:
    """The firmware reports 0 when idle; anything but a positive int means no session."""
    if data is None:
        return None
    value = data.get("session_id")
    if isinstance(value, bool) or not isinstance(value, int) or value == 0:
        return None
    return value


def reported_status(data: Mapping[str, Any] | None) -> str | None:
    """One vocabulary for both dialects: firmware is_collecting, or the seed's status string."""
    if data is None:
        return None
    collecting = data.get("is_collecting")
    if isinstance(collecting, bool):
        return "collecting" if collecting else "idle"
    status = data.get("status")
    if isinstance(status, str) and status.strip():
        return status.strip().lower()
    return None


def _plural(count: int) -> str:
    return "attempt" if count == 1 else "attempts"


def _os_error(exc: BaseException) -> OSError | None:
    """The socket error under an httpx exception (anyio hides it behind a generic OSError)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return None


class DeviceClient:
    """Sends commands to devices through one httpx client; never raises for network trouble.

    Each request opens its own connection and asks the device to close it afterwards: the Arduino
    WebServer serves one client at a time, so an idle kept-alive socket would lock others out, and a
    stale one would fail a command that the device might already have carried out. The default
    transport (DeviceTransport) does exactly that and nothing more, so a command to a whole fleet
    goes out quickly; tests pass their own transport.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 3.0,
        retries: int = 2,
        backoff: float = 0.1,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._retries = retries
        self._backoff = backoff
        self.configure()

        self._http = httpx.AsyncClient(
            transport=DeviceTransport() if transport is None else transport,
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            headers={"Connection": "close", "User-Agent": f"collection-station/{__version__}"},
            follow_redirects=False,
            trust_env=False,
        )

    def configure(
        self,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
    ) -> None:
        """Change settings at run time; the next request uses them."""
        connect_timeout = self._connect_timeout if connect_timeout is None else connect_timeout
        read_timeout = self._read_timeout if read_timeout is None else read_timeout
        retries = self._retries if retries is None else retries
        backoff = self._backoff if backoff is None else backoff

        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")

        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._retries = retries
        self._backoff = backoff
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )

    @property
    def retries(self) -> int:
        return self._retries

    async def start_collection(
        self, address: DeviceAddress, session_id: int, device_code: str
    ) -> DeviceReply:
        form = {"session_id": str(session_id), "device_code": device_code}
        reply = await self._request("POST", address, "/start_collection", form, self._retries)
        if not reply.ok:
            return reply
        return replace(reply, session_id=reported_session_id(reply.data))

    async def stop_collection(self, address: DeviceAddress, device_code: str) -> DeviceReply:
        form = {"command": "STOP_COLLECTION", "device_code": device_code}
        return await self._request("POST", address, "/stop_collection", form, self._retries)

    async def status(self, address: DeviceAddress, *, retries: int | None = None) -> DeviceReply:
        """The liveness monitor passes retries=0: its next poll is the retry."""
        tries = self._retries if retries is None else max(0, retries)
        reply = await self._request("GET", address, "/status", None, tries)
        if not reply.ok:
            return reply
        return replace(
            reply,
            device_status=reported_status(reply.data),
            session_id=reported_session_id(reply.data),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        address: DeviceAddress,
        path: str,
        form: dict[str, str] | None,
        retries: int,
    ) -> DeviceReply:
        started = time.perf_counter()
        url = address.base_url + path
        timeouts = self._timeout  # a configure() call mid-command applies to the next one
        attempts = 0

        def done(**fields: Any) -> DeviceReply:
            elapsed_ms = (time.perf_counter() - started) * 1000
            return DeviceReply(attempts=attempts, elapsed_ms=elapsed_ms, **fields)

        try:
            attempts = 1
            try:
                answer = await self._send(method, url, form, timeouts, attempts)
            except _RETRYABLE:
                if retries == 0:
                    raise
                # Tenacity only on this rare path: building it for every command costs a fleet
                # of 200 about 12 ms, before the first device hears anything.
                retrying = AsyncRetrying(
                    stop=stop_after_attempt(retries),
                    wait=wait_exponential(multiplier=2 * self._backoff, max=_MAX_BACKOFF)
                    + wait_random(0, self._backoff / 10),
                    retry=retry_if_exception_type(_RETRYABLE),
                    reraise=True,
                )
                await asyncio.sleep(self._backoff)  # tenacity waits only between its own tries
                async for attempt in retrying:
                    with attempt:
                        attempts += 1
                        answer = await self._send(method, url, form, timeouts, attempts)
        except _RETRYABLE as exc:
            error = self._connect_error(exc, address, attempts)
            return done(ok=False, failure=Failure.UNREACHABLE, error=error)
        except httpx.TimeoutException as exc:
            return done(ok=False, failure=Failure.TIMEOUT, error=self._timeout_error(exc, address))
        except httpx.RemoteProtocolError:
            error = f"{address.netloc} closed the connection without a proper answer"
            return done(ok=False, failure=Failure.UNREACHABLE, error=error)
        except (httpx.ReadError, httpx.WriteError):
            error = f"the connection to {address.netloc} broke off before the device answered"
            return done(ok=False, failure=Failure.UNREACHABLE, error=error)
        except (httpx.RequestError, httpx.InvalidURL) as exc:
            error = f"could not talk to {address.netloc}: {str(exc) or type(exc).__name__}"
            return done(ok=False, failure=Failure.UNREACHABLE, error=error)

        body = answer.text[:BODY_LIMIT]
        data = parse_body(answer.text)
        if 200 <= answer.status < 300:
            return done(ok=True, http_status=answer.status, body=body, data=data)

        reason = " ".join(answer.text.split())[:_MAX_REASON]
        error = f"device at {address.netloc} answered {answer.status}"
        error = f"{error}: {reason}" if reason else error
        return done(
            ok=False,
            failure=Failure.REJECTED,
            error=error,
            http_status=answer.status,
            body=body,
            data=data,
        )

    async def _send(
        self,
        method: str,
        url: str,
        form: dict[str, str] | None,
        timeouts: httpx.Timeout,
        attempt: int,
    ) -> _Answer:
        """One request on the wire, logged at DEBUG whatever comes of it."""
        started = time.perf_counter()
        try:
            async with self._http.stream(method, url, data=form, timeout=timeouts) as response:
                raw = bytearray()
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) >= _READ_LIMIT:
                        break
                text = _decode(bytes(raw[:_READ_LIMIT]), response.encoding)
        except (httpx.RequestError, httpx.InvalidURL) as exc:
            ms = (time.perf_counter() - started) * 1000
            log.debug("%s %s %s attempt %d: %r after %.0f ms", method, url, form, attempt, exc, ms)
            raise

        ms = (time.perf_counter() - started) * 1000
        log.debug(
            "%s %s %s attempt %d: %d in %.0f ms %.200r",
            method,
            url,
            form,
            attempt,
            response.status_code,
            ms,
            text,
        )
        return _Answer(status=response.status_code, text=text)

    def _timeout_error(self, exc: httpx.TimeoutException, address: DeviceAddress) -> str:
        if isinstance(exc, httpx.WriteTimeout):
            return f"could not send the command to {address.netloc} within {self._read_timeout} s"
        return f"no answer from {address.netloc} within {self._read_timeout} s"

    def _connect_error(
        self, exc: httpx.ConnectError | httpx.ConnectTimeout, address: DeviceAddress, n: int
    ) -> str:
        after = f"after {n} {_plural(n)}"
        if isinstance(exc, httpx.ConnectTimeout):
            return f"could not connect to {address.netloc} within {self._connect_timeout} s {after}"

        cause = _os_error(exc)
        code = cause.errno if cause is not None else None
        if code == errno.ECONNREFUSED:
            return f"connection refused by {address.netloc} {after}"
        if code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
            return f"no route to {address.netloc} {after}"
        detail = cause.strerror if cause is not None and cause.strerror else str(exc)
        return f"could not connect to {address.netloc} {after}: {detail}"


def _decode(raw: bytes, encoding: str | None) -> str:
    try:
        return raw.decode(encoding or "utf-8", errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")
