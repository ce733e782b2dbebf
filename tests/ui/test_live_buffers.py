"""The Live data tab's buffers (no Qt): bounded however much is fed, windows from the finest view
that holds them, gaps as NaN breaks, late samples left out."""

from __future__ import annotations

import numpy as np

from station.backend.events import SamplesStored
from station.ui.live_data import (
    MINUTES_CAPACITY,
    RECENT_CAPACITY,
    SESSION_CAPACITY,
    STREAM_BYTES,
    LiveBuffers,
    Stream,
    break_gaps,
    peak_decimate,
)

START_MS = 1_750_000_000_000.0


def block(first: int, count: int, rate_hz: float = 100.0) -> tuple[tuple[float, ...], ...]:
    """count samples numbered from `first`, device-timed at rate_hz; acc_x is the number."""
    n = np.arange(first, first + count, dtype=np.float64)
    data = np.zeros((count, 8))
    data[:, 0] = START_MS + n * 1000.0 / rate_hz
    data[:, 1] = data[:, 0] / 1000 + 0.5
    data[:, 2] = n % 1000
    data[:, 4] = 9.8
    return tuple(map(tuple, data.tolist()))


def test_a_stream_stays_bounded_when_fed_far_more_than_it_holds() -> None:
    stream = Stream("D1", "waist", 7)
    fed = 0
    for _ in range(360):  # two hours at 100 Hz, 100 times what `recent` holds
        stream.append(block(fed, 2000))
        fed += 2000

    assert stream.received == fed == 720_000
    assert stream.nbytes == STREAM_BYTES
    assert stream.count <= RECENT_CAPACITY
    assert stream.minutes.count <= MINUTES_CAPACITY
    assert stream.session.count <= SESSION_CAPACITY
    whole = stream.window(None)
    assert whole is not None
    assert whole.x[0] - START_MS / 1000 < stream.session.width  # still reaches the first sample
    assert whole.y[:, 0].max() == 999 and whole.y[:, 0].min() == 0
    five = stream.window(300)
    assert five is not None and five.source == "0.5 s"
    assert five.newest - five.x[0] <= 300.5 and five.newest - five.x[0] > 299
    ten = stream.window(10)
    assert ten is not None and ten.source == "samples" and len(ten.x) == 1001


def test_memory_for_a_hundred_devices_with_four_sensors_is_well_under_300_mb() -> None:
    assert 400 * STREAM_BYTES < 90 * 2**20


def test_the_number_of_streams_is_bounded_and_the_idle_ones_go_first() -> None:
    buffers = LiveBuffers(max_streams=4)
    for number in range(10):
        buffers.add(SamplesStored(1, f"D{number}", "waist", block(0, 10)))
        buffers.add(SamplesStored(1, "D0", "waist", block(10 * (number + 1), 10)))

    assert len(buffers.streams) == 4
    assert ("D0", "waist") in buffers.streams  # kept busy
    assert buffers.nbytes < 4 * STREAM_BYTES / 5  # short streams take little


def test_a_new_session_starts_the_stream_again() -> None:
    buffers = LiveBuffers()
    buffers.add(SamplesStored(1, "D1", "waist", block(0, 100)))
    buffers.add(SamplesStored(2, "D1", "waist", block(100, 10)))

    stream = buffers.get("D1", "waist")
    assert stream is not None and stream.session_id == 2
    assert stream.flush() == 10 and stream.received == 10


def test_receive_time_is_used_where_the_device_sent_no_timestamp() -> None:
    stream = Stream("D1", "waist", None)
    stream.append(((None, 1000.0, 1, 2, 3, 4, 5, 6), (None, 1000.5, 1, 2, 3, 4, 5, 6)))

    window = stream.window(10)
    assert window is not None and list(window.x) == [1000.0, 1000.5]
    assert stream.time_base == "receive time"


def test_samples_older_than_the_newest_are_left_out_and_counted() -> None:
    stream = Stream("D1", "waist", None)
    stream.append(block(100, 10))
    stream.flush()  # drawn, say: what arrives later must not be older
    stream.append(block(0, 10) + block(110, 5))
    stream.flush()

    assert stream.late == 10 and stream.received == 15
    window = stream.window(None)
    assert window is not None and bool(np.all(np.diff(window.x) > 0))


def test_batches_taken_between_draws_are_put_in_time_order() -> None:
    stream = Stream("D1", "waist", None)
    stream.append(block(10, 10))
    stream.append(block(0, 10))  # a retried older batch, before the next frame

    window = stream.window(None)
    assert window is not None and stream.late == 0 and len(window.x) == 20
    assert bool(np.all(np.diff(window.x) > 0))


def test_gaps_longer_than_three_median_steps_become_nan_breaks() -> None:
    x = np.array([0.0, 0.01, 0.02, 0.03, 0.5, 0.51, 0.52])
    y = np.ones((len(x), 8), dtype=np.float32)

    x2, y2, gaps = break_gaps(x, y)

    assert gaps == 1
    assert np.isnan(y2[4]).all() and 0.03 < x2[4] < 0.5
    assert not np.isnan(np.delete(y2, 4, axis=0)).any()


def test_bucketed_windows_show_gaps_too() -> None:
    stream = Stream("D1", "waist", None)
    fed = 0
    for _ in range(10):  # 100 s, then a minute of silence, then 100 s
        stream.append(block(fed, 1000))
        fed += 1000
    fed += 6000
    for _ in range(10):
        stream.append(block(fed, 1000))
        fed += 1000

    window = stream.window(None)
    assert window is not None and window.source != "samples"
    _x, y, gaps = break_gaps(window.x, window.y)
    assert gaps == 1 and np.isnan(y[:, 0]).sum() == 1


def test_decimation_keeps_the_envelope_and_the_breaks() -> None:
    x = np.arange(10_000, dtype=np.float64)
    y = np.zeros((10_000, 8), dtype=np.float32)
    y[1234, 0] = 50.0
    y[5000, :] = np.nan

    x2, y2 = peak_decimate(x, y, 1000)

    assert len(x2) <= 1002
    assert np.nanmax(y2[:, 0]) == 50.0
    assert np.isnan(y2[:, 1]).any()
