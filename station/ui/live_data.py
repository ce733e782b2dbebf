"""Bounded buffers of live sensor samples for the Live data tab, one stream per device and sensor.
Plain numpy, no Qt: the window's event handler appends, its frame timer reads windows.

Each stream keeps three views of the same samples, so any window from 10 s to the whole session
is drawn from a few thousand points and the memory of a stream stops growing:

- `recent`: the newest samples at full rate (at least 7,168, about 70 s at 100 Hz), in one
  contiguous block; when it is full the oldest 1,024 are dropped, so every window is one slice;
- `minutes`: the minimum and maximum of each channel per 0.5 s, for at least the last 5 minutes;
- `session`: the minimum and maximum per bucket since the session began; when it is full,
  neighbouring buckets merge and the bucket doubles, so it always spans the whole session.

A window is drawn from the finest view that holds all of it. A stream starts again when its
device uploads for another session.

Arrays start small and double until they reach those sizes, so a stream that has run for a
minute holds a minute's worth; the most one stream takes is STREAM_BYTES (220 KiB: 100 devices
with 4 sensors each stay under 90 MiB). Values are kept as float16: three significant digits,
what a plot a few hundred pixels tall can show. Times are Unix seconds, the device's clock where
the upload carried a timestamp (device_ms), else the station's receive time; `recent` keeps them
as float32 offsets from the stream's first sample (4 ms steps after ten hours, far below a pixel
of any window).

The handler only keeps a reference to the uploaded rows; they go into the numpy views 64 to 127
rows at a time (or when the stream is drawn), because numpy's cost per call would dominate the
small batches devices send. Each stream has its own point in those ranges, and in how often the
bucket views catch up: devices that started together would otherwise all pay at the same moment,
which paused the window for over 100 ms with 400 streams.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from station.backend.events import SamplesStored

# Channels of a window: the six axes as uploaded, then the two magnitudes.
ACC_X, ACC_Y, ACC_Z, GYRO_X, GYRO_Y, GYRO_Z, ACC_MAG, GYRO_MAG = range(8)
AXES = 6
CHANNELS = 8

FLUSH_ROWS = 64  # uploaded rows kept as they came (plus a per-stream spread up to as many again)
RECENT_CAPACITY = 8192
RECENT_DROP = 1024
RECENT_START = 512  # first allocation; doubles up to the capacity
FOLD_EVERY = 1024  # samples of `recent` added to the bucket views in one go (plus a spread)
MINUTES_WIDTH = 0.5  # seconds per bucket
MINUTES_CAPACITY = 832  # 704 buckets (352 s) remain after a drop
MINUTES_DROP = 128
SESSION_WIDTH = 0.5  # seconds per bucket at first; doubles as the session grows
SESSION_CAPACITY = 1536
BUCKETS_START = 128
MAX_STREAMS = 512  # beyond this, the stream updated longest ago is dropped
FLOAT16_LIMIT = 65000.0
GAP_FACTOR = 3.0  # a step this many times the median step is a gap


def with_magnitudes(values: np.ndarray) -> np.ndarray:
    """(n, 6) axes → (n, 8) float32 with |acc| and |gyro| appended."""
    out = np.empty((len(values), CHANNELS), dtype=np.float32)
    out[:, :AXES] = values
    squared = np.square(out[:, :AXES])
    out[:, ACC_MAG] = np.sqrt(squared[:, 0:3].sum(axis=1))
    out[:, GYRO_MAG] = np.sqrt(squared[:, 3:6].sum(axis=1))
    return out


def break_gaps(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Insert a NaN row where consecutive points are further apart than GAP_FACTOR times the
    median step, so a curve drawn with connect="finite" shows the gap. Returns x, y, gaps."""
    if len(x) < 3:
        return x, y, 0
    steps = np.diff(x)
    positive = steps[steps > 0]
    if not len(positive):
        return x, y, 0
    limit = GAP_FACTOR * float(np.median(positive))
    gaps = np.flatnonzero(steps > limit)
    if not len(gaps):
        return x, y, 0
    x = np.insert(x, gaps + 1, (x[gaps] + x[gaps + 1]) / 2)
    y = np.insert(y, gaps + 1, np.nan, axis=0)
    return x, y, len(gaps)


def peak_decimate(x: np.ndarray, y: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most about `points` points: the minimum and maximum of each run of samples, per channel
    (the envelope a plot that narrow would draw anyway). NaN breaks survive as NaN pairs."""
    if points < 4 or len(x) <= points:
        return x, y
    runs = points // 2
    size = -(-len(x) // runs)  # ceil
    usable = (len(x) // size) * size
    head_y = y[:usable].reshape(-1, size, y.shape[1])
    pairs = np.empty((head_y.shape[0], 2, y.shape[1]), dtype=y.dtype)
    pairs[:, 0] = head_y.min(axis=1)
    pairs[:, 1] = head_y.max(axis=1)
    head_x = x[:usable].reshape(-1, size)
    xs = np.empty((head_x.shape[0], 2))
    xs[:, 0] = head_x[:, 0]
    xs[:, 1] = head_x[:, -1]
    x_out = xs.reshape(-1)
    y_out = pairs.reshape(-1, y.shape[1])
    if usable < len(x):  # the newest few samples as they are
        x_out = np.concatenate([x_out, x[usable:]])
        y_out = np.concatenate([y_out, y[usable:]])
    return x_out, y_out


class Buckets:
    """Minimum and maximum of each channel per time bucket, oldest first, in fixed memory.

    When full, `merge_when_full` merges neighbours and doubles the width (the whole history
    stays, coarser); otherwise the oldest `drop` buckets go."""

    def __init__(self, width: float, capacity: int, *, merge_when_full: bool, drop: int = 0):
        self.width = width
        self.capacity = capacity
        self.merge_when_full = merge_when_full
        self.drop = drop
        size = min(BUCKETS_START, capacity)
        self.ids = np.zeros(size, dtype=np.int64)  # bucket number: floor(t / width)
        self.lo = np.zeros((size, CHANNELS), dtype=np.float16)
        self.hi = np.zeros((size, CHANNELS), dtype=np.float16)
        self.count = 0
        self.dropped = False  # some of the stream is no longer here

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.lo.nbytes + self.hi.nbytes

    @staticmethod
    def bytes_at_most(capacity: int) -> int:
        return capacity * (8 + 2 * CHANNELS * 2)

    @property
    def first_time(self) -> float | None:
        return float(self.ids[0] * self.width) if self.count else None

    def add(self, t: np.ndarray, values: np.ndarray) -> None:
        """t ascending, not before the newest bucket; values (n, 8) float32."""
        if not len(t):
            return
        while True:
            ids = np.floor(t / self.width).astype(np.int64)
            starts = np.concatenate(([0], np.flatnonzero(np.diff(ids)) + 1))
            ids = ids[starts]
            joins_last = bool(self.count) and ids[0] <= self.ids[self.count - 1]
            fresh = len(ids) - joins_last
            if not self.merge_when_full or self.count + fresh <= self.capacity:
                break
            self._merge()  # the width doubles: cut the new samples again
        lo = np.minimum.reduceat(values, starts, axis=0)
        hi = np.maximum.reduceat(values, starts, axis=0)
        if joins_last:
            last = self.count - 1
            self.lo[last] = np.minimum(self.lo[last], lo[0])
            self.hi[last] = np.maximum(self.hi[last], hi[0])
            ids, lo, hi = ids[1:], lo[1:], hi[1:]
        while len(ids):
            if self.count == len(self.ids):
                if len(self.ids) < self.capacity:
                    self._grow()
                else:
                    self._drop_oldest()
            take = min(len(self.ids) - self.count, len(ids))
            end = self.count + take
            self.ids[self.count : end] = ids[:take]
            self.lo[self.count : end] = lo[:take]
            self.hi[self.count : end] = hi[:take]
            self.count = end
            ids, lo, hi = ids[take:], lo[take:], hi[take:]

    def _grow(self) -> None:
        size = min(self.capacity, 2 * len(self.ids))
        self.ids = np.resize(self.ids, size)
        self.lo = np.resize(self.lo, (size, CHANNELS))
        self.hi = np.resize(self.hi, (size, CHANNELS))

    def _drop_oldest(self) -> None:
        keep = self.count - self.drop
        self.ids[:keep] = self.ids[self.drop : self.count]
        self.lo[:keep] = self.lo[self.drop : self.count]
        self.hi[:keep] = self.hi[self.drop : self.count]
        self.count = keep
        self.dropped = True

    def _merge(self) -> None:
        """Neighbouring buckets become one; the width doubles."""
        if self.count:
            ids = self.ids[: self.count] // 2
            starts = np.concatenate(([0], np.flatnonzero(np.diff(ids)) + 1))
            merged = len(starts)
            self.lo[:merged] = np.minimum.reduceat(self.lo[: self.count], starts, axis=0)
            self.hi[:merged] = np.maximum.reduceat(self.hi[: self.count], starts, axis=0)
            self.ids[:merged] = ids[starts]
            self.count = merged
        self.width *= 2

    def envelope(self, start: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Buckets from `start` (None: all) as points: each bucket's low then high."""
        count = self.count
        first = 0
        if start is not None and count:
            first = int(np.searchsorted(self.ids[:count], np.floor(start / self.width)))
        ids = self.ids[first:count]
        x = np.empty((len(ids), 2))
        x[:, 0] = (ids + 0.25) * self.width
        x[:, 1] = (ids + 0.75) * self.width
        y = np.empty((len(ids), 2, CHANNELS), dtype=np.float32)
        y[:, 0] = self.lo[first:count]
        y[:, 1] = self.hi[first:count]
        return x.reshape(-1), y.reshape(-1, CHANNELS)


@dataclass(frozen=True, slots=True)
class Window:
    """What a plot shows: x in seconds (Unix), y (n, 8) float32, and where it came from."""

    x: np.ndarray
    y: np.ndarray
    source: str  # "samples", or the bucket width such as "0.5 s"
    newest: float  # Unix time of the newest sample
    oldest: float  # Unix time of the oldest sample the stream still holds in some form


class Stream:
    """One device's sensor: the three views of its samples in the current session."""

    def __init__(self, device_code: str, sensor_type: str, session_id: int | None) -> None:
        self.device_code = device_code
        self.sensor_type = sensor_type
        self.session_id = session_id
        self.origin = 0.0  # Unix time that `t` counts from: the first sample's
        self.t = np.zeros(RECENT_START, dtype=np.float32)
        self.v = np.zeros((RECENT_START, AXES), dtype=np.float16)
        self.count = 0  # samples in `recent`
        self.folded = 0  # of those, how many the bucket views have seen
        self.recent_dropped = False
        self.minutes = Buckets(
            MINUTES_WIDTH, MINUTES_CAPACITY, merge_when_full=False, drop=MINUTES_DROP
        )
        self.session = Buckets(SESSION_WIDTH, SESSION_CAPACITY, merge_when_full=True)
        self._pending: list[tuple[tuple[float | None, ...], ...]] = []
        self._pending_rows = 0
        spread = zlib.crc32(f"{device_code}/{sensor_type}".encode())
        self._flush_at = FLUSH_ROWS + spread % FLUSH_ROWS
        self._fold_at = FOLD_EVERY + spread % FOLD_EVERY
        self.first_time: float | None = None
        self.last_time = -np.inf
        self.received = 0  # samples appended in this session
        self.late = 0  # samples older than the newest one, not shown
        self.device_timed = 0  # samples that carried a device timestamp
        self.version = 0  # changes with every append
        self.touched = 0  # LiveBuffers' clock at the last append

    @property
    def nbytes(self) -> int:
        return self.t.nbytes + self.v.nbytes + self.minutes.nbytes + self.session.nbytes

    @property
    def time_base(self) -> str:
        if self.device_timed == self.received:
            return "device clock"
        if self.device_timed == 0:
            return "receive time"
        return "device clock, receive time where missing"

    # ---- appending (the event handler's side: cheap) ----------------------------------------

    def append(self, rows: tuple[tuple[float | None, ...], ...]) -> None:
        """Take uploaded rows (device_ms, received_at, acc xyz, gyro xyz); the handler's part."""
        if not rows:
            return
        self._pending.append(rows)
        self._pending_rows += len(rows)
        self.version += 1
        if self._pending_rows >= self._flush_at:
            self.flush()

    def flush(self) -> int:
        """Put the rows taken so far into the views; returns how many were kept."""
        if not self._pending:
            return 0
        pending = self._pending
        self._pending = []
        self._pending_rows = 0
        rows = pending[0] if len(pending) == 1 else [r for rows in pending for r in rows]
        try:
            block = np.array(rows, dtype=np.float64)  # None (no device time) becomes NaN
        except (TypeError, ValueError):  # rows of another shape: nothing a plot can use
            return 0
        if block.ndim != 2 or block.shape[1] < 2 + AXES:
            return 0
        device_ms = block[:, 0]
        timed = np.isfinite(device_ms)
        t = np.where(timed, device_ms / 1000.0, block[:, 1])
        values = block[:, 2 : 2 + AXES]
        keep = np.isfinite(t) & np.isfinite(values).all(axis=1) & (t >= self.last_time)
        if len(t) > 1 and not (np.diff(t) >= 0).all():
            order = np.argsort(t, kind="stable")
            t, values, keep, timed = t[order], values[order], keep[order], timed[order]
            keep &= t >= self.last_time
        if not keep.all():
            self.late += int((~keep).sum())
            t, values, timed = t[keep], values[keep], timed[keep]
        if not len(t):
            return 0
        values = np.clip(values, -FLOAT16_LIMIT, FLOAT16_LIMIT)
        if self.first_time is None:
            self.first_time = self.origin = float(t[0])
        self._write(t - self.origin, values)
        self.last_time = float(t[-1])
        self.received += len(t)
        self.device_timed += int(timed.sum())
        if self.count - self.folded >= self._fold_at:
            self.fold()
        return len(t)

    def _write(self, t: np.ndarray, values: np.ndarray) -> None:
        done = 0
        while done < len(t):
            if self.count == len(self.t) < RECENT_CAPACITY:
                size = min(RECENT_CAPACITY, 2 * len(self.t))
                self.t = np.resize(self.t, size)
                self.v = np.resize(self.v, (size, AXES))
            elif self.count == RECENT_CAPACITY:
                self.fold()
                keep = self.count - RECENT_DROP
                self.t[:keep] = self.t[RECENT_DROP : self.count]
                self.v[:keep] = self.v[RECENT_DROP : self.count]
                self.count = self.folded = keep
                self.recent_dropped = True
            take = min(len(self.t) - self.count, len(t) - done)
            end = self.count + take
            self.t[self.count : end] = t[done : done + take]
            self.v[self.count : end] = values[done : done + take]
            self.count = end
            done += take

    def fold(self) -> None:
        """Bring the bucket views up to date with `recent`."""
        if self.folded == self.count:
            return
        t = self.t[self.folded : self.count].astype(np.float64) + self.origin
        values = with_magnitudes(self.v[self.folded : self.count])
        self.minutes.add(t, values)
        self.session.add(t, values)
        self.folded = self.count

    # ---- reading (the frame timer's side) ----------------------------------------------------

    def window(self, seconds: float | None) -> Window | None:
        """The last `seconds` (None: the whole session) from the finest view that holds them."""
        self.flush()
        if not self.count:
            return None
        newest = self.last_time
        start = None if seconds is None else newest - seconds
        oldest = self.first_time if self.first_time is not None else newest
        holds_recent = not self.recent_dropped or (
            start is not None and start >= self.origin + float(self.t[0])
        )
        if holds_recent:
            first = 0
            if start is not None:
                first = int(np.searchsorted(self.t[: self.count], start - self.origin))
            x = self.t[first : self.count].astype(np.float64) + self.origin
            y = with_magnitudes(self.v[first : self.count])
            return Window(x, y, "samples", newest, oldest)
        self.fold()
        minutes = self.minutes
        if minutes.count and (
            not minutes.dropped or (start is not None and start >= minutes.first_time)
        ):
            x, y = minutes.envelope(start)
            return Window(x, y, f"{minutes.width:g} s", newest, oldest)
        x, y = self.session.envelope(start)
        return Window(x, y, f"{self.session.width:g} s", newest, oldest)


class LiveBuffers:
    """Every stream, keyed by (device_code, sensor_type); bounded in number and in size."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self.streams: dict[tuple[str, str], Stream] = {}
        self.max_streams = max_streams
        self.layout_version = 0  # changes when a stream appears or goes
        self._clock = 0

    def add(self, change: SamplesStored) -> None:
        """The SamplesStored handler: append only."""
        key = (change.device_code, change.sensor_type)
        stream = self.streams.get(key)
        if stream is None or stream.session_id != change.session_id:
            if stream is None and len(self.streams) >= self.max_streams:
                oldest = min(self.streams, key=lambda k: self.streams[k].touched)
                del self.streams[oldest]
            stream = self.streams[key] = Stream(*key, change.session_id)
            self.layout_version += 1
        self._clock += 1
        stream.touched = self._clock
        stream.append(change.rows)

    def forget_device(self, device_code: str) -> None:
        gone = [key for key in self.streams if key[0] == device_code]
        for key in gone:
            del self.streams[key]
        if gone:
            self.layout_version += 1

    def devices(self) -> list[str]:
        return sorted({code for code, _sensor in self.streams})

    def sensors(self, device_code: str) -> list[str]:
        return sorted(sensor for code, sensor in self.streams if code == device_code)

    def get(self, device_code: str, sensor_type: str) -> Stream | None:
        return self.streams.get((device_code, sensor_type))

    @property
    def nbytes(self) -> int:
        return sum(stream.nbytes for stream in self.streams.values())


# The most memory one stream's buffers take, once full.
STREAM_BYTES = (
    RECENT_CAPACITY * (4 + AXES * 2)
    + Buckets.bytes_at_most(MINUTES_CAPACITY)
    + Buckets.bytes_at_most(SESSION_CAPACITY)
)
