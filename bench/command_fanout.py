"""How fast a start command reaches a fleet: a real `station serve` in its own process, 200
device servers on 127.0.0.x in another, some refusing connections and some never answering.

Prints, for the healthy devices, how long after the mini-program's start_data_collection request
each device received POST /start_collection (median, p99, max), and how long the request took.
Target: every healthy device within 100 ms.

    python bench/command_fanout.py [--devices 200] [--refusing 10] [--silent 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

DEVICE_PORT = 18080


def device_host(index: int) -> str:
    return f"127.0.{1 + (index + 1) // 250}.{2 + (index + 1) % 250}"


def run_fleet(hosts: list[str], silent: set[str], arrivals, ready) -> None:
    """Child process: minimal firmware-like servers that note when a start arrives."""

    async def main() -> None:
        hold: list[asyncio.StreamWriter] = []

        def handler_for(host: str):
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    writer.close()
                    return
                if host in silent:
                    hold.append(writer)
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"POST /start_collection"):
                    arrivals.put((host, time.time()))
                body = b'{"status":"collection_started","session_id":1,"device_code":"x"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                writer.close()

            return handle

        servers = [
            await asyncio.start_server(handler_for(h), h, DEVICE_PORT, backlog=64) for h in hosts
        ]
        ready.set()
        await asyncio.sleep(3600)
        for server in servers:
            server.close()

    asyncio.run(main())


def launch_station(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "station", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        [*command, "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def bench(args: argparse.Namespace) -> None:
    total = args.devices
    hosts = [device_host(i) for i in range(total)]
    refusing = set(hosts[total - args.refusing - args.silent : total - args.silent])
    silent = set(hosts[total - args.silent :])
    listening = [h for h in hosts if h not in refusing]

    ctx = multiprocessing.get_context("spawn")
    arrivals = ctx.Queue()
    ready = ctx.Event()
    fleet = ctx.Process(target=run_fleet, args=(listening, silent, arrivals, ready), daemon=True)
    fleet.start()
    ready.wait(30)

    data_dir = Path(tempfile.mkdtemp(prefix="station-bench-"))
    port = 18765
    station = launch_station(port, data_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as http:
            for _ in range(100):
                try:
                    await http.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            for index, host in enumerate(hosts):
                code = f"B{index:03d}"
                await http.post(
                    "/wxapp/register_device_ip/",
                    data={"device_code": code, "ip_address": f"{host}:{DEVICE_PORT}"},
                )
                await http.post("/api/v1/groups/bench/devices", data={"device_code": code})
            await asyncio.sleep(2)  # let the liveness monitor settle into its rhythm

            for round_no in range(1, args.rounds + 1):
                session = await http.post(
                    "/wxapp/start_session/", data={"openid": "bench", "device_group_code": "bench"}
                )
                session_id = session.json()["session_id"]
                t0 = time.time()
                answer = await http.post(
                    "/wxapp/start_data_collection/", data={"session_id": session_id}
                )
                request_ms = (time.time() - t0) * 1000
                body = answer.json()
                reached = {}
                deadline = time.time() + 10
                expected = len(listening) - len(silent)
                while len(reached) < expected and time.time() < deadline:
                    try:
                        host, at = arrivals.get(timeout=0.5)
                    except Exception:
                        continue
                    reached[host] = (at - t0) * 1000
                lat = sorted(reached.values())
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
                print(
                    f"round {round_no}: {len(lat)}/{expected} healthy devices reached; "
                    f"median {statistics.median(lat):.1f} ms, p99 {p99:.1f} ms, "
                    f"max {lat[-1]:.1f} ms; acked {body['devices_acked']}, "
                    f"failed {body['devices_failed']} (expected {len(refusing) + len(silent)}); "
                    f"start_data_collection answered in {request_ms:.0f} ms"
                )
                await http.post(f"/api/v1/sessions/{session_id}/abort")
    finally:
        station.terminate()
        station.wait(10)
        fleet.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--refusing", type=int, default=10)
    parser.add_argument("--silent", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
