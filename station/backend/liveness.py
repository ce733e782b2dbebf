"""The liveness monitor: polls every registered device's GET /status on a fixed cadence with
bounded concurrency, and turns silence into stale and offline."""

from __future__ import annotations

import asyncio
import logging

from station.backend.service import StationService
from station.devices.client import DeviceAddress

log = logging.getLogger(__name__)

FLUSH_EVERY = 5.0  # seconds between writes of last-seen times that changed nothing else


class LivenessMonitor:
    def __init__(self, service: StationService) -> None:
        self.service = service
        self._polling: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._polling.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        next_flush = next_tick + FLUSH_EVERY
        while True:
            interval = self.service.settings.poll_interval
            self.poll_due()
            self.service.refresh_liveness()
            if loop.time() >= next_flush:
                next_flush = loop.time() + FLUSH_EVERY
                try:
                    await self.service.flush_seen()
                except Exception as exc:
                    log.error("could not save last-seen times: %s", exc)
            # Deadlines from loop.time(), not fixed sleeps: Qt's coarse timers fire early.
            next_tick += interval
            if next_tick < loop.time():
                next_tick = loop.time() + interval
            await asyncio.sleep(max(0.0, next_tick - loop.time()))

    def poll_due(self) -> None:
        """Start a poll for every device that has none in flight (a slow device is never
        polled twice at once), at most poll_concurrency at a time."""
        limit = self.service.settings.poll_concurrency
        for device in self.service.pollable_devices():
            if len(self._polling) >= limit:
                break
            code = device.device_code
            if code in self._polling:
                continue
            assert device.host is not None
            task = asyncio.ensure_future(self._poll(code, DeviceAddress(device.host, device.port)))
            self._polling[code] = task
            task.add_done_callback(lambda _t, c=code: self._polling.pop(c, None))

    async def _poll(self, device_code: str, address: DeviceAddress) -> None:
        reply = await self.service.client.status(address, retries=0)
        self.service.record_poll(device_code, reply)
