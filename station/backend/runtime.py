"""The station as one object: store, service, device client, liveness monitor and HTTP server,
started and stopped together on whatever asyncio loop is current (plain asyncio for
`station serve` and the tests, qasync for the desktop window)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable
from pathlib import Path

import ifaddr
from aiohttp import web

from station.backend.api import build_app
from station.backend.liveness import LivenessMonitor
from station.backend.service import StationService
from station.backend.store import Store
from station.config import Settings
from station.devices.client import DeviceClient

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 0.75  # seconds an open client may hold the server at shutdown


class Station:
    def __init__(self, data_dir: Path, settings: Settings | None = None) -> None:
        self.data_dir = data_dir
        self.settings = settings or Settings.load(data_dir)
        self.store: Store | None = None
        self.client: DeviceClient | None = None
        self.service: StationService | None = None
        self.monitor: LivenessMonitor | None = None
        self._runner: web.AppRunner | None = None
        self.addresses: list[tuple[str, int]] = []

    async def start(self, *, serve: bool = True, monitor: bool = True) -> None:
        """Open the store and the service; then serve HTTP and watch liveness."""
        settings = self.settings
        self.store = Store(self.data_dir)
        self.client = DeviceClient(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries=settings.command_retries,
            backoff=settings.retry_backoff,
        )
        self.service = StationService(self.store, self.client, settings)
        try:
            await self.service.open()
            if serve:
                await self._serve()
        except BaseException:
            await self.stop()
            raise
        if monitor:
            self.monitor = LivenessMonitor(self.service)
            self.monitor.start()

    async def _serve(self) -> None:
        assert self.service is not None
        app = build_app(self.service, max_body_bytes=self.settings.max_body_bytes)
        self._runner = web.AppRunner(
            app, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=logging.getLogger("aiohttp.access")
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()
        self.addresses = [(str(a[0]), int(a[1])) for a in self._runner.addresses]
        log.info(
            "station listening on %s",
            ", ".join(f"http://{_fmt(h)}:{p}/wxapp/" for h, p in self.addresses),
        )

    @property
    def port(self) -> int:
        return self.addresses[0][1] if self.addresses else self.settings.port

    @property
    def url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{_fmt(host)}:{self.port}"

    async def stop(self) -> None:
        """Stop serving, finish commands and writes, close the store. Safe to call twice."""
        if self.monitor is not None:
            await self.monitor.stop()
            self.monitor = None
        # A request handler may be waiting for a device command. Settling the commands (a short
        # wait, then cancel) while the server drains lets that handler answer its client, and
        # shutdown takes one grace period rather than aiohttp's two plus the service's own.
        closing: list[Awaitable[None]] = []
        if self._runner is not None:
            closing.append(self._runner.cleanup())
        if self.service is not None:
            closing.append(self.service.close())
        await asyncio.gather(*closing)
        self._runner = None
        self.service = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.store is not None:
            self.store.close()
            self.store = None


def _fmt(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses that devices on the LAN can reach: every interface's
    address except loopback and link-local, private ranges first."""
    found: list[ipaddress.IPv4Address] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue  # IPv6: the firmware and the mini-program are given IPv4 addresses
            address = ipaddress.IPv4Address(ip.ip)
            if not (address.is_loopback or address.is_link_local) and address not in found:
                found.append(address)
    found.sort(key=lambda a: (not a.is_private, a))
    return [str(a) for a in found]
