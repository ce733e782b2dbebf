"""Domain records shared by the store, the service, the HTTP API and the desktop window."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime | None) -> str | None:
    """UTC ISO 8601 with milliseconds, the one time format of the store and the API."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_from_ms(ms: float | None) -> str | None:
    """ISO text for a Unix time in milliseconds; the same format as iso(), made quickly because
    a batch upload's reply holds one per sample."""
    if ms is None:
        return None
    seconds, millis = divmod(int(ms), 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=1024)
def _iso_second(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_iso(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


class SessionStatus(StrEnum):
    CALIBRATING = "calibrating"
    COLLECTING = "collecting"
    STOPPING = "stopping"
    COMPLETED = "completed"
    STOPPED = "stopped"

    @property
    def active(self) -> bool:
        return self in (SessionStatus.CALIBRATING, SessionStatus.COLLECTING, SessionStatus.STOPPING)


class Liveness(StrEnum):
    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


class CommandKind(StrEnum):
    START = "start"
    STOP = "stop"


class CommandState(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    ACKED = "acked"
    FAILED = "failed"

    @property
    def settled(self) -> bool:
        return self in (CommandState.ACKED, CommandState.FAILED)


class Failure(StrEnum):
    """Why a device command failed; decides the HTTP status the caller sees."""

    UNREACHABLE = "unreachable"  # connection refused or no route: 502
    REJECTED = "rejected"  # the device answered with an error status: 502
    TIMEOUT = "timeout"  # connected but no answer in time: 504
    MOVED = "moved"  # the device's address now belongs to another device: 409


@dataclass(frozen=True, slots=True)
class Device:
    device_code: str
    host: str | None
    port: int
    name: str = ""
    registered_at: str | None = None
    updated_at: str | None = None
    moved_to: str | None = None
    liveness: Liveness = Liveness.UNKNOWN
    last_seen: str | None = None
    last_seen_via: str | None = None
    reported_status: str | None = None
    reported_session_id: int | None = None
    last_error: str | None = None
    groups: tuple[str, ...] = ()

    @property
    def address(self) -> str | None:
        if self.host is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["address"] = self.address
        data["groups"] = list(self.groups)
        return data


@dataclass(frozen=True, slots=True)
class Session:
    session_id: int
    group_code: str
    status: SessionStatus
    started_by: str
    started_at: str
    collecting_at: str | None = None
    stopping_at: str | None = None
    ended_at: str | None = None
    openid: str | None = None
    device_codes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["device_codes"] = list(self.device_codes)
        return data


@dataclass(frozen=True, slots=True)
class Command:
    command_id: int
    session_id: int | None
    device_code: str
    kind: CommandKind
    state: CommandState
    attempts: int = 0
    created_at: str | None = None
    updated_at: str | None = None
    requested_by: str = ""
    target: str | None = None
    failure: Failure | None = None
    last_error: str | None = None
    http_status: int | None = None
    reply: str | None = None
    round_trip_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Event:
    event_id: int
    at: str
    actor: str
    action: str
    result: str
    message: str
    session_id: int | None = None
    device_code: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
