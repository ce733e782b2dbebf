"""What the Live data tab costs the window: the main window offscreen, with 100 devices × 4 sensors
streaming synthetic SamplesStored at 100 Hz each through the real service's event bus on the
qasync loop, while the tab shows one device's four sensors (eight plots, 32 curves) and steps
through the windows (10 s, 30 s, 1 min, 5 min, whole session).

Prints the live plots' frame cost (updating the curves plus painting them: median, p99, max), the
event loop's worst pause (how late a 5 ms ticker woke up), what the SamplesStored handlers cost,
and peak RSS.

    QT_QPA_PLATFORM=offscreen python bench/ui_frames.py [--seconds 20] [--devices 100]
        [--sensors 4] [--rate 100] [--batch 10] [--history 600] [--sensor waist] [--fill]

--history publishes that many seconds of earlier samples for the shown device first, so the
long windows have something to draw. Buffers grow with the data up to a fixed size; --fill
brings every stream's buffers to that size (and writes every page) before the run, so RSS shows
what streams that have all run for ten minutes or more would take.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import qasync  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from station.backend.events import SamplesStored  # noqa: E402
from station.config import Settings  # noqa: E402
from station.ui.application import StationApp  # noqa: E402
from station.ui.live import WINDOWS  # noqa: E402
from station.ui.live_data import RECENT_CAPACITY, STREAM_BYTES  # noqa: E402
from station.ui.log_view import BufferHandler  # noqa: E402
from station.ui.main_window import MainWindow  # noqa: E402

SENSORS = ("waist", "shoulder", "wrist", "racket")
TICK = 0.010  # the feeder's step: each stream's batches are spread over these
PERIOD = 1000  # samples in the repeating synthetic signal


def signal_table() -> np.ndarray:
    """(PERIOD, 8) rows with device_ms and received_at left to fill: a swing on every axis."""
    phase = np.arange(PERIOD) * 2 * np.pi / 200  # a 2 s swing at 100 Hz
    table = np.zeros((PERIOD, 8))
    table[:, 2] = 3 * np.sin(phase)
    table[:, 3] = 2 * np.cos(phase)
    table[:, 4] = 9.81 + 0.5 * np.sin(3 * phase)
    table[:, 5] = 40 * np.sin(phase + 1)
    table[:, 6] = 25 * np.cos(2 * phase)
    table[:, 7] = 5 * np.sin(phase / 2)
    return table


class Feeder:
    """Publishes every stream's batches on the service's bus, spread over the ticks of a
    period, catching up when the loop fell behind so the rate stays what was asked."""

    def __init__(self, app: StationApp, codes: list[str], sensors: int, rate: float, batch: int):
        assert app.service is not None
        self.bus = app.service.events
        self.streams = [(code, SENSORS[s]) for code in codes for s in range(sensors)]
        self.step_ms = 1000.0 / rate
        self.batch = batch
        self.every = batch / rate  # seconds between one stream's batches
        self.table = signal_table()
        self.sent = {key: 0 for key in self.streams}
        self.origin_ms = time.time() * 1000
        self.publish_s: list[float] = []
        self.samples = 0

    def rows(self, first: int, count: int) -> tuple[tuple[float, ...], ...]:
        index = np.arange(first, first + count)
        block = self.table[index % PERIOD]
        block[:, 0] = self.origin_ms + index * self.step_ms
        block[:, 1] = time.time()
        return tuple(map(tuple, block.tolist()))

    def publish(self, key: tuple[str, str], count: int) -> None:
        rows = self.rows(self.sent[key], count)
        self.sent[key] += count
        started = time.perf_counter()
        self.bus.publish(SamplesStored(1, key[0], key[1], rows))
        self.publish_s.append(time.perf_counter() - started)
        self.samples += count

    def history(self, keys: list[tuple[str, str]], seconds: float) -> None:
        """Earlier samples, in big batches, before the clock starts."""
        total = int(seconds * 1000 / self.step_ms)
        self.origin_ms -= seconds * 1000
        for key in keys:
            for first in range(0, total, 6000):
                self.publish(key, min(6000, total - first))
        for key in self.streams:
            self.sent[key] = max(self.sent[key], total)  # every stream continues from now

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        slots = max(1, round(self.every / TICK))
        start = loop.time()
        done = 0  # ticks published
        while not stop.is_set():
            due = int((loop.time() - start) / TICK) + 1
            for tick in range(done, due):
                for number, key in enumerate(self.streams):
                    if number % slots == tick % slots:
                        self.publish(key, self.batch)
            done = due
            await asyncio.sleep(max(0.0, start + done * TICK - loop.time()))


async def ticker(stop: asyncio.Event, lateness: list[tuple[float, float]]) -> None:
    """Asks to wake every 5 ms and notes when and how late it woke: the loop's pauses."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        deadline = loop.time() + 0.005
        await asyncio.sleep(0.005)
        now = loop.time()
        lateness.append((now, max(0.0, now - deadline)))


def summary(values_ms: list[float]) -> str:
    if not values_ms:
        return "no frames"
    ordered = sorted(values_ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"median {statistics.median(ordered):6.1f} ms   p99 {p99:6.1f} ms   "
        f"max {ordered[-1]:6.1f} ms   ({len(ordered)} frames)"
    )


async def bench(args: argparse.Namespace, data_dir: Path) -> None:
    settings = Settings(host="127.0.0.1", port=0)
    app = StationApp(data_dir, settings)
    window = MainWindow(
        app, BufferHandler(), QSettings(str(data_dir / "w.ini"), QSettings.Format.IniFormat)
    )
    window.resize(1280, 820)
    window.show()
    await app.start()
    window.tabs.setCurrentWidget(window.live)

    codes = [f"B{n:03d}" for n in range(1, args.devices + 1)]
    feeder = Feeder(app, codes, args.sensors, args.rate, args.batch)
    shown = [key for key in feeder.streams if key[0] == codes[0]]
    if args.history:
        feeder.history(shown, args.history)
    for key in feeder.streams:  # every stream exists before the clock starts
        if feeder.sent[key] == 0 or key not in shown:
            feeder.publish(key, args.batch)
    live = window.live
    live.choose(codes[0], args.sensor, WINDOWS[0][0])
    if args.fill:  # every array at its full size, every page written (np.resize copies)
        for stream in live.buffers.streams.values():
            stream.t = np.resize(stream.t, RECENT_CAPACITY)
            stream.v = np.resize(stream.v, (RECENT_CAPACITY, stream.v.shape[1]))
            for buckets in (stream.minutes, stream.session):
                buckets.ids = np.resize(buckets.ids, buckets.capacity)
                buckets.lo = np.resize(buckets.lo, (buckets.capacity, buckets.lo.shape[1]))
                buckets.hi = np.resize(buckets.hi, (buckets.capacity, buckets.hi.shape[1]))
    await asyncio.sleep(0.5)
    live.frame_ms.clear()
    feeder.publish_s.clear()
    feeder.samples = 0

    stop = asyncio.Event()
    lateness: list[tuple[float, float]] = []
    switches: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(feeder.run(stop)), asyncio.ensure_future(ticker(stop, lateness))]
    per_window: dict[str, list[float]] = {}
    started = time.perf_counter()
    cpu_started = time.process_time()
    share = args.seconds / len(WINDOWS)
    for label, _seconds in WINDOWS:
        switches.append((loop.time(), label))
        live.choose(codes[0], args.sensor, label)
        before = len(live.frame_ms)
        await asyncio.sleep(share)
        per_window[label] = list(live.frame_ms)[before:]
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started

    frames = [f for values in per_window.values() for f in values]
    handler_us = [s * 1e6 for s in feeder.publish_s]
    streams = len(live.buffers.streams)
    held = live.buffers.nbytes
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shown_what = args.sensor or f"all {args.sensors} sensors"
    print(
        f"{args.devices} devices x {args.sensors} sensors at {args.rate:g} Hz, batches of "
        f"{args.batch}: {feeder.samples / elapsed:,.0f} samples/s over {elapsed:.1f} s "
        f"({len(handler_us) / elapsed:,.0f} SamplesStored/s); showing {codes[0]}, {shown_what}"
    )
    print(f"live plot frame (update + paint)   {summary(frames)}")
    for label, values in per_window.items():
        print(f"  window {label:<14}             {summary(values)}")
    print(
        f"frames per second                  {len(frames) / elapsed:.1f} "
        f"(timer {1000 / 40:.0f} Hz; a frame only when the shown streams changed)"
    )
    late_ms = sorted(v * 1000 for _at, v in lateness)
    p99 = late_ms[int(len(late_ms) * 0.99)]
    print(
        f"event loop pause (5 ms ticker)     worst {late_ms[-1]:.1f} ms, "
        f"p99 {p99:.1f} ms, median {statistics.median(late_ms):.2f} ms"
    )
    for at, late in sorted(lateness, key=lambda p: -p[1])[:3]:
        since, label = max((s for s in switches if s[0] <= at), default=(switches[0][0], "?"))
        print(
            f"  {late * 1000:6.1f} ms at {at - switches[0][0]:5.2f} s, {at - since:.2f} s after "
            f"switching to {label}"
        )
    print(
        f"SamplesStored handlers             median {statistics.median(handler_us):.0f} us, "
        f"p99 {sorted(handler_us)[int(len(handler_us) * 0.99)]:.0f} us per event, "
        f"{sum(handler_us) / 1e6 / elapsed * 100:.1f} % of the loop"
    )
    print(f"process CPU                        {cpu / elapsed * 100:.0f} % of one core")
    print(
        f"live buffers                       {held / 2**20:.0f} MiB held"
        + (" (all full: --fill)" if args.fill else "")
        + f"; at most {streams} streams x {STREAM_BYTES / 1024:.0f} KiB = "
        f"{streams * STREAM_BYTES / 2**20:.0f} MiB"
    )
    print(f"peak RSS                           {peak_mb:.0f} MiB")

    window.close()
    await app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--sensors", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--rate", type=float, default=100.0, help="samples per second per sensor")
    parser.add_argument("--batch", type=int, default=10, help="samples per SamplesStored")
    parser.add_argument("--history", type=float, default=600.0, help="seconds, shown device")
    parser.add_argument("--sensor", default=None, help="show one sensor instead of all")
    parser.add_argument("--fill", action="store_true", help="write every buffer page first")
    args = parser.parse_args()

    qt_app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(qt_app, QApplication)
    qt_app.setQuitOnLastWindowClosed(False)
    loop = qasync.QEventLoop(qt_app)
    asyncio.set_event_loop(loop)
    with tempfile.TemporaryDirectory(prefix="ui-frames-") as tmp:
        try:
            loop.run_until_complete(bench(args, Path(tmp)))
        finally:
            loop.close()


if __name__ == "__main__":
    main()
