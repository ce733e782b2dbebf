"""How many uploaded samples per second the station stores: a real `station serve` (or, with
--window, the desktop window under an offscreen Qt) in its own process, and simulated
multi-sensor boards uploading batches from one or more other processes.

Each device plays esp32_multi_sensor_fixed.ino: every batch/rate seconds it sends one
esp32/batch_upload/ POST per sensor with `batch` samples, the body built by hand with the JSON
array un-encoded, over one keep-alive connection from its own 127.0.0.x address, waiting for
each answer before the next POST (HTTPClient is blocking). A device that falls behind sends its
backlog as fast as the station answers. Items carry a Unix-ms timestamp and a seq.

Default: 100 devices x 4 sensors x 100 Hz in batches of 50, i.e. 40,000 samples/s offered,
for 20 s. Prints the samples stored per second (rows counted in the database at the end of the
load window), the upload latency (median, p99, max), the station's CPU use and peak RSS
(psutil if installed, else VmHWM from /proc).

    python bench/ingest.py [--devices 100] [--sensors 4] [--rate 100] [--batch 50]
                           [--seconds 20] [--processes 1] [--window] [--profile OUT.svg]

--profile attaches py-spy (pip install py-spy) to the station for the load window and writes a
profile of every thread: collapsed stacks for OUT.txt, speedscope for OUT.json, else a flame
graph (SVG).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENSORS = ("waist", "shoulder", "wrist", "racket")
STARTUP_TIMEOUT = 60.0


# ---- the station -------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_station(data_dir: Path, port: int, window: bool, log_path: Path) -> subprocess.Popen:
    if window:
        command = [sys.executable, "-m", "station", "--host", "127.0.0.1"]
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    else:
        command = [sys.executable, "-m", "station", "serve", "--host", "127.0.0.1"]
        env = dict(os.environ)
    command += ["--port", str(port), "--data-dir", str(data_dir)]
    env["PYTHONPATH"] = str(REPO)
    with log_path.open("w") as log:
        return subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=REPO)


def call(port: int, path: str, form: dict[str, str] | None = None) -> dict:
    data = "&".join(f"{k}={v}" for k, v in form.items()).encode() if form is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def wait_healthy(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the station exited with {process.returncode} while starting")
        try:
            call(port, "/healthz")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise SystemExit("the station did not answer /healthz in time")


def peak_rss_mb(pid: int) -> float:
    try:
        import psutil

        info = psutil.Process(pid).memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20  # psutil has no peak on Linux
    except ImportError:
        pass
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_rows(db_path: Path, session_id: int) -> int:
    with sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(
            "SELECT COUNT(*) FROM samples WHERE session_id = ?", [session_id]
        ).fetchone()[0]


# ---- the devices -------------------------------------------------------------------------------


def device_host(index: int) -> str:
    return f"127.0.{1 + (index + 2) // 254}.{1 + (index + 2) % 254}"


def item_prefixes(count: int) -> list[str]:
    """Sample objects as %.2f/%.1f printf would write them, without timestamp and seq."""
    import math

    out = []
    for n in range(count):
        t = n / 50
        acc = (math.sin(t) * 3, math.cos(t) * 2, 9.81 + math.sin(2 * t))
        gyro = (math.cos(t), -math.sin(t), 0.1 * math.cos(3 * t))
        angle = (40 * math.sin(t), -12.5 * math.cos(t), 3.0)
        a, g, n = (
            ",".join(f"{v:.{d}f}" for v in vs) for vs, d in ((acc, 2), (gyro, 2), (angle, 1))
        )
        out.append(f'{{"acc":[{a}],"gyro":[{g}],"angle":[{n}]')
    return out


async def run_device(
    index: int,
    port: int,
    session_id: int,
    args: argparse.Namespace,
    start_at: float,
    stop_at: float,
    results: dict,
) -> None:
    code = f"BENCH{index:03d}"
    prefixes = item_prefixes(500)
    interval = args.batch / args.rate
    step_ms = 1000 / args.rate
    sensors = SENSORS[: args.sensors]
    seq = dict.fromkeys(sensors, 0)
    latencies: list[float] = results["latencies"]

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(device_host(index), 0))

    reader, writer = await connect()
    head = (
        f"POST /wxapp/esp32/batch_upload/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nUser-Agent: ESP32HTTPClient\r\n"
    ).encode()

    # Devices start spread over one interval, as real boards would be.
    tick = start_at + interval * (index % 97) / 97
    while tick < stop_at:
        delay = tick - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        base_ms = tick * 1000
        for sensor in sensors:
            first = seq[sensor]
            items = ",".join(
                f'{prefixes[(first + i) % len(prefixes)]},"timestamp":'
                f'{int(base_ms + i * step_ms)},"seq":{first + i}}}'
                for i in range(args.batch)
            )
            body = (
                f"device_code={code}&sensor_type={sensor}&batch_data=[{items}]"
                f"&session_id={session_id}"
            ).encode()
            results["offered"] += args.batch
            sent = time.perf_counter()
            try:
                writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                status = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError) as exc:
                results["errors"].append(repr(exc))
                writer.close()
                reader, writer = await connect()
                status = 0
            latencies.append(time.perf_counter() - sent)
            if status == 200:
                results["acked"] += args.batch
                seq[sensor] += args.batch
            else:
                results["failed"] += 1
        tick += interval
    writer.close()


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


def load_process(
    indexes: list[int], port: int, session_id: int, args, start_at: float, queue
) -> None:
    """Child process: some of the devices, until the load window ends."""

    async def main() -> dict:
        results = {"offered": 0, "acked": 0, "failed": 0, "latencies": [], "errors": []}
        stop_at = start_at + args.seconds
        await asyncio.gather(
            *(run_device(i, port, session_id, args, start_at, stop_at, results) for i in indexes)
        )
        results["cpu"] = time.process_time()
        return results

    queue.put(asyncio.run(main()))


# ---- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--sensors", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--rate", type=float, default=100.0, help="samples/s per sensor")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--window", action="store_true", help="run the desktop window instead")
    parser.add_argument("--profile", type=Path, help="py-spy flame graph of the station")
    parser.add_argument("--keep", action="store_true", help="keep the data dir")
    args = parser.parse_args()

    offered_rate = args.devices * args.sensors * args.rate
    data_dir = Path(tempfile.mkdtemp(prefix="station-ingest-"))
    port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}.log"
    station = start_station(data_dir, port, args.window, log_path)
    try:
        wait_healthy(port, station)
        session_id = call(
            port, "/wxapp/start_session/", {"openid": "bench", "device_group_code": "bench"}
        )["session_id"]
        call(port, "/wxapp/start_data_collection/", {"session_id": str(session_id)})

        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        start_at = time.time() + 2.0  # time for the generators to start
        groups = [list(range(args.devices))[p :: args.processes] for p in range(args.processes)]
        loaders = [
            ctx.Process(target=load_process, args=(g, port, session_id, args, start_at, queue))
            for g in groups
        ]
        for loader in loaders:
            loader.start()

        time.sleep(max(0.0, start_at - time.time()))
        cpu_before = cpu_seconds(station.pid)
        profiler = None
        if args.profile:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            form = {".txt": "raw", ".json": "speedscope"}.get(args.profile.suffix, "flamegraph")
            profiler = subprocess.Popen(
                [py_spy, "record", "--pid", str(station.pid), "--threads", "--rate", "97",
                 "--duration", str(int(args.seconds)), "--format", form, "-o", str(args.profile)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        time.sleep(args.seconds)
        rows_at_end = count_rows(data_dir / "station.db", session_id)
        cpu_used = cpu_seconds(station.pid) - cpu_before

        results = [queue.get(timeout=120) for _ in loaders]
        for loader in loaders:
            loader.join()
        if profiler is not None:
            profiler.wait(timeout=120)
        rows_total = count_rows(data_dir / "station.db", session_id)
        rss = peak_rss_mb(station.pid)
    finally:
        station.send_signal(signal.SIGINT)
        try:
            station.wait(timeout=30)
        except subprocess.TimeoutExpired:
            station.kill()

    latencies = sorted(t for r in results for t in r["latencies"])
    offered = sum(r["offered"] for r in results)
    acked = sum(r["acked"] for r in results)
    failed = sum(r["failed"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    face = "window (offscreen)" if args.window else "station serve"
    print(
        f"{face}: {args.devices} devices x {args.sensors} sensors x {args.rate:g} Hz, "
        f"batches of {args.batch}: {offered_rate:,.0f} samples/s offered for {args.seconds:g} s"
    )
    print(f"  samples stored/s:   {rows_at_end / args.seconds:,.0f} (rows in the DB at the end)")
    print(
        f"  samples sent:       {offered:,} in {len(latencies):,} POSTs; acknowledged {acked:,}, "
        f"failed POSTs {failed}; rows after the backlog drained {rows_total:,}"
    )
    print(
        f"  upload latency:     median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    print(
        f"  station CPU:        {cpu_used / args.seconds:.2f} cores; peak RSS {rss:.0f} MB "
        f"({os.cpu_count()} cores on this machine; the load generators used "
        f"{sum(r['cpu'] for r in results):.1f} CPU s in all)"
    )
    if errors:
        print(f"  connection errors:  {len(errors)}, first: {errors[0]}")
    if args.profile:
        print(f"  profile:            {args.profile}")
    if args.keep:
        print(f"  data dir:           {data_dir} (log {log_path})")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
        log_path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
