"""Change events: how the faces of the station (HTTP API, desktop window) learn what the core
did. The core publishes after each commit; subscribers are called on the event-loop thread and
must return quickly (the window coalesces redraws on its own timer)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from station.backend.models import Command, Device, Event, Session

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceChanged:
    device: Device


@dataclass(frozen=True, slots=True)
class DeviceForgotten:
    device_code: str


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    """A sign of life (heartbeat, status poll, registration, upload); frequent."""

    device_code: str
    at: float  # time.time()
    via: str


@dataclass(frozen=True, slots=True)
class SessionChanged:
    session: Session


@dataclass(frozen=True, slots=True)
class CommandChanged:
    command: Command


@dataclass(frozen=True, slots=True)
class EventLogged:
    event: Event


@dataclass(frozen=True, slots=True)
class SamplesStored:
    """Samples committed for one device and sensor; for live plots (frequent, keep handlers cheap).

    `rows` holds (device_ms or None, received_at, acc_x, acc_y, acc_z, gyro_x, gyro_y, gyro_z)."""

    session_id: int | None
    device_code: str
    sensor_type: str
    rows: tuple[tuple[float | None, float, float, float, float, float, float, float], ...]


Change = (
    DeviceChanged
    | DeviceForgotten
    | DeviceSeen
    | SessionChanged
    | CommandChanged
    | EventLogged
    | SamplesStored
)
Subscriber = Callable[[Change], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call subscriber with every change from now on; returns the function that stops it."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def publish(self, change: Change) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(change)
            except Exception:
                log.exception("a subscriber failed on %s", type(change).__name__)
