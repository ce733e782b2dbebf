"""Command line: `station serve` (headless backend) and `station simulate` (a simulated fleet)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from station.logs import setup_logging

if TYPE_CHECKING:
    from station.devices.simulator import SimFleet

log = logging.getLogger(__name__)


@click.group(invoke_without_command=True)
@click.version_option(package_name="station")
@click.option("--host", default=None, help="Window: address to listen on (default 0.0.0.0).")
@click.option("--port", type=int, default=None, help="Window: port to listen on (default 8000).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Window: where the database, settings and logs live (default: the user data dir; "
    "with --demo, its demo subfolder).",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Window: start with a simulated fleet of 8 devices on 127.0.0.2.. in group demo.",
)
@click.option("-v", "--verbose", is_flag=True, help="Window: log wire detail (DEBUG).")
@click.pass_context
def main(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    demo: bool,
    verbose: bool,
) -> None:
    """The collection station for ESP32 sensor labs.

    With no command, opens the desktop window, which runs the same server as `station serve`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from station.config import Settings, default_data_dir
    from station.ui.launch import run_window

    if data_dir is None:
        data_dir = default_data_dir() / "demo" if demo else default_data_dir()
    settings = Settings.load(data_dir)
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    elif demo:
        settings.port = 0  # a free port, so a demo never clashes with a real station
    ctx.exit(run_window(data_dir, settings, demo=demo, verbose=verbose))


@main.command()
@click.option(
    "--station",
    "station_url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Base URL of the station (loopback only).",
)
@click.option(
    "--count", default=8, show_default=True, type=click.IntRange(min=1), help="Number of devices."
)
@click.option(
    "--host-base",
    default="127.0.0.",
    show_default=True,
    help="Device addresses are this prefix plus a number.",
)
@click.option(
    "--first-host",
    default=2,
    show_default=True,
    type=click.IntRange(1, 254),
    help="Number of the first device's address (127.0.0.2, .3, ...).",
)
@click.option(
    "--port",
    default=0,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port every device listens on; 0 picks a free one per device.",
)
@click.option("--code-prefix", default="SIM", show_default=True, help="Device code prefix.")
@click.option(
    "--first-code",
    default=1,
    show_default=True,
    type=click.IntRange(min=0),
    help="Number of the first device code (SIM001).",
)
@click.option(
    "--dialect",
    type=click.Choice(["firmware", "seed"]),
    default="firmware",
    show_default=True,
    help="Reply shapes: the real sketch, or the seed document's.",
)
@click.option(
    "--rate",
    default=100.0,
    show_default=True,
    type=click.FloatRange(0, 1000, min_open=True),
    help="Samples per second written to the SD card while collecting.",
)
@click.option(
    "--heartbeat",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds between heartbeats; 0 disables them.",
)
@click.option(
    "--sd-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder standing in for the SD cards.  [default: the user data folder's "
    "station/simulator]",
)
@click.option(
    "--slow",
    default=0,
    type=click.IntRange(min=0),
    help="Devices (from the end) that serve one request at a time, 1 s each.",
)
@click.option(
    "--refuse",
    default=0,
    type=click.IntRange(min=0),
    help="Devices (from the end) that refuse connections.",
)
@click.option(
    "--blackhole",
    default=0,
    type=click.IntRange(min=0),
    help="Devices (from the end) that accept connections and never answer.",
)
@click.option(
    "--error-500",
    default=0,
    type=click.IntRange(min=0),
    help="Devices (from the end) that answer every request with 500.",
)
@click.option(
    "--upload",
    type=click.Choice(["none", "single", "batch"]),
    default="batch",
    show_default=True,
    help="While collecting, send samples to the station: one every 2 s (the wifi sketch), or "
    "batches of up to 50 twice a second (the multi-sensor sketch); then mark the upload complete.",
)
@click.option(
    "--all-sensors",
    is_flag=True,
    help="Every device is a multi-sensor board with waist, shoulder, wrist and racket.",
)
@click.option(
    "--polling",
    is_flag=True,
    help="Devices serve no HTTP and do not register: they poll esp32/poll_commands/ instead.",
)
@click.option(
    "--poll-interval",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between polls, with --polling.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log wire detail (heartbeats, retries).")
def simulate(
    station_url: str,
    count: int,
    host_base: str,
    first_host: int,
    port: int,
    code_prefix: str,
    first_code: int,
    dialect: str,
    rate: float,
    heartbeat: float,
    sd_dir: Path | None,
    slow: int,
    refuse: int,
    blackhole: int,
    error_500: int,
    upload: str,
    all_sensors: bool,
    polling: bool,
    poll_interval: float,
    verbose: bool,
) -> None:
    """Run a fleet of simulated ESP32 devices until Ctrl-C."""
    from station.devices.simulator import FleetFaults, SimFleet

    setup_logging(verbose)
    try:
        fleet = SimFleet.build(
            count,
            station_url,
            host_base=host_base,
            first_host=first_host,
            port=port,
            code_prefix=code_prefix,
            first_code=first_code,
            dialect=dialect,  # type: ignore[arg-type]  # click.Choice guarantees the values
            sample_rate_hz=rate,
            heartbeat_interval=heartbeat,
            sd_dir=sd_dir,
            faults=FleetFaults(slow=slow, refuse=refuse, blackhole=blackhole, error_500=error_500),
            upload=upload,  # type: ignore[arg-type]  # click.Choice guarantees the values
            all_sensors=all_sensors,
            polling=polling,
            poll_interval=poll_interval,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    log.info("Simulated SD cards are in %s", fleet.devices[0].config.sd_dir)

    try:
        asyncio.run(_run_fleet(fleet))
    except KeyboardInterrupt:
        # Only reached where signal handlers cannot be installed (Windows).
        log.info("Interrupted")


async def _run_fleet(fleet: SimFleet) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            pass  # Windows: Ctrl-C arrives as KeyboardInterrupt instead

    await fleet.start()
    try:
        await stop.wait()
        log.info("Stopping %d simulated devices", len(fleet))
    finally:
        await fleet.stop()


def _data_dir_option(func):
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where the database, settings and logs live (default: the user data dir).",
    )(func)


@main.command()
@click.option("--host", default=None, help="Address to listen on (default 0.0.0.0: every LAN).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8000).")
@_data_dir_option
@click.option("-v", "--verbose", is_flag=True, help="Log wire detail (DEBUG).")
def serve(host: str | None, port: int | None, data_dir: Path | None, verbose: bool) -> None:
    """Run the station headless: the mini-program and device API, no window."""
    from station.backend.runtime import Station, lan_addresses
    from station.config import Settings, default_data_dir

    data_dir = data_dir or default_data_dir()
    setup_logging(verbose, data_dir)
    settings = Settings.load(data_dir)
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port

    async def run() -> None:
        station = Station(data_dir, settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await station.start()
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}. "
                "Is another station (or the old server) running? Try --port."
            ) from None
        log.info("data dir: %s", data_dir)
        if settings.host in ("0.0.0.0", "::"):
            for address in lan_addresses():
                log.info(
                    "point the mini-program and firmware at http://%s:%s", address, station.port
                )
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            await station.stop()
            log.info("stopped")

    asyncio.run(run())


@main.command("export")
@click.argument("session_id", type=click.IntRange(min=1))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to export into; the session goes to its new subfolder session_<id> "
    "(session_<id>_2, ... when that exists: nothing is ever overwritten).",
)
@_data_dir_option
def export(session_id: int, out_dir: Path, data_dir: Path | None) -> None:
    """Export a session: one CSV per device and sensor, plus manifest.json.

    Safe while a station is running on the same data dir.
    """
    from station.backend.store import Store
    from station.config import default_data_dir
    from station.export import ExportError, export_session_sync

    data_dir = data_dir or default_data_dir()
    try:
        result = export_session_sync(data_dir / Store.FILENAME, session_id, out_dir)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"exported session {session_id}: {result.samples} samples in "
        f"{len(result.files)} files to {result.folder}"
    )
