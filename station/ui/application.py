"""The desktop application object: ties the headless Station (and, in demo mode, a simulated
fleet) to the Qt window. It owns the background tasks the window starts, so none is lost to
garbage collection, and it runs start-up and shutdown in order on the qasync loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from station.backend.errors import StationError
from station.backend.runtime import Station
from station.backend.service import StationService
from station.config import Settings

log = logging.getLogger(__name__)

DEMO_GROUP = "demo"
DEMO_ACTOR = "demo"
DEMO_SENSOR_TYPES = ("waist", "shoulder", "wrist", "racket")


class StationApp(QObject):
    """Start and stop the station (and the demo fleet) and run the window's background work."""

    started = Signal()  # the station serves; `service` is usable
    stopped = Signal()  # the station is down; `service` is None
    failed = Signal(str, str)  # what was being done, the failure in plain words

    def __init__(
        self,
        data_dir: Path,
        settings: Settings | None = None,
        *,
        demo_devices: int = 0,
        demo_host_base: str = "127.0.0.",
        demo_first_host: int = 2,
        demo_collects: bool = True,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.data_dir = data_dir
        self.settings = settings or Settings.load(data_dir)
        self.station: Station | None = None
        self.fleet: Any = None  # SimFleet in demo mode; imported lazily
        self.demo_devices = demo_devices
        self.demo_collects = demo_collects  # start a session so the Live data tab has samples
        self._demo_host_base = demo_host_base
        self._demo_first_host = demo_first_host
        self._tasks: set[asyncio.Task[Any]] = set()
        self._quit = asyncio.Event()

    # ---- state ---------------------------------------------------------------------------------

    @property
    def service(self) -> StationService | None:
        return self.station.service if self.station is not None else None

    @property
    def running(self) -> bool:
        return self.service is not None

    @property
    def port(self) -> int:
        return self.station.port if self.station is not None else self.settings.port

    # ---- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and serve HTTP; raise OSError when the port cannot be bound."""
        station = Station(self.data_dir, self.settings)
        await station.start()
        self.station = station
        log.info("data dir: %s", self.data_dir)
        settle_garbage_collector()
        self.started.emit()
        if self.demo_devices:
            self.spawn(self._start_demo(), self.tr("start the demo fleet"))

    async def stop(self) -> None:
        """Stop the fleet, cancel the window's tasks, then stop the station. Safe to call twice."""
        self._quit.set()
        if self.fleet is not None:
            fleet, self.fleet = self.fleet, None
            await fleet.stop()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.station is not None:
            station, self.station = self.station, None
            await station.stop()
            log.info("station stopped")
            self.stopped.emit()

    def request_quit(self) -> None:
        self._quit.set()

    async def wait_for_quit(self) -> None:
        await self._quit.wait()

    # ---- background work -----------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any] | None:
        """Run coro in the background; a StationError or OSError becomes a `failed` signal.

        Returns None when the loop is not running (a Qt timer firing during shutdown)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return None
        task = asyncio.ensure_future(self._guard(coro, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, Any], what: str) -> Any:
        try:
            return await coro
        except StationError as exc:
            log.warning("could not %s: %s", what, exc.message)
            self.failed.emit(what, exc.message)
        except (OSError, ValueError) as exc:
            log.warning("could not %s: %s", what, exc)
            self.failed.emit(what, str(exc))
        return None

    async def _start_demo(self) -> None:
        from station.devices.simulator import SimFleet

        assert self.station is not None
        fleet = SimFleet.build(
            self.demo_devices,
            f"http://127.0.0.1:{self.station.port}",
            host_base=self._demo_host_base,
            first_host=self._demo_first_host,
            sensor_types=DEMO_SENSOR_TYPES,
            sd_dir=self.data_dir / "simulator",
            register_retry_backoff=(0.1, 1.0),
            upload="batch",  # the multi-sensor sketch's uploads: the Live data tab shows them
        )
        self.fleet = fleet
        await fleet.start()
        await fleet.wait_registered()
        service = self.service
        if service is None:
            return
        for number, device in enumerate(fleet, start=1):
            code = device.device_code
            if DEMO_GROUP not in service.device(code).groups:
                await service.set_group_membership(DEMO_GROUP, code, True)
            if not service.device(code).name:
                name = f"{device.config.sensor_type} {(number + 3) // 4}"
                await service.rename_device(code, name)
        log.info("demo fleet of %d devices is in group %s", len(fleet), DEMO_GROUP)
        if self.demo_collects:
            session = await service.start_session(DEMO_GROUP, DEMO_ACTOR)
            await service.start_collection(session.session_id, DEMO_ACTOR)
            log.info(
                "demo session %s is collecting (see Live data); stop it in the Sessions tab",
                session.session_id,
            )


def settle_garbage_collector() -> None:
    """Move everything alive after start-up out of the collector's reach.

    Uploads allocate many short-lived objects; every so often that triggers a full collection,
    which walks every object of Qt, pyqtgraph and aiohttp too and paused the window's loop for
    50 to 70 ms. Frozen objects are not walked again (they are never freed, which is right for
    what start-up made)."""
    gc.collect()
    gc.freeze()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, to offer when the configured one is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "::") else "0.0.0.0", 0))
        return int(sock.getsockname()[1])
