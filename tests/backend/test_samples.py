"""Sample validation and the device timestamp rules of station.backend.samples, one rule at a
time, without a server."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pytest

from station.backend.samples import (
    BEIJING,
    SampleError,
    parse_batch,
    parse_device_time,
    parse_json_text,
    parse_sample,
)

UTC = dt.UTC
# A session started at 10:05:34.926 in Beijing on 2026-12-04.
START = dt.datetime(2026, 12, 4, 2, 5, 34, 926000, tzinfo=UTC)
GOOD = {"acc": [0.12, -9.81, 0.3], "gyro": [0.01, 0.02, -0.03], "angle": [1.5, -2.0, 90.0]}


def ms(moment: dt.datetime) -> float:
    return moment.timestamp() * 1000


def beijing(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=BEIJING)


# ---- device timestamps -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [1796349600123, "1796349600123", 1796349600123.0, " 1796349600123 "]
)
def test_thirteen_digits_are_unix_milliseconds(value: Any) -> None:
    assert parse_device_time(value, START) == 1796349600123


def test_twelve_digits_are_unix_milliseconds_too() -> None:
    assert parse_device_time("999999999999", START) == 999999999999


@pytest.mark.parametrize("value", [153012345, "153012345", 153012345.0])
def test_nine_digits_are_beijing_wall_clock_on_the_session_date(value: Any) -> None:
    assert parse_device_time(value, START) == ms(beijing(2026, 12, 4, 15, 30, 12, 345000))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("123456", beijing(2026, 12, 5, 0, 1, 23, 456000)),  # millis() read as 00:01:23.456
        ("000123456", beijing(2026, 12, 5, 0, 1, 23, 456000)),
        (100500000, beijing(2026, 12, 4, 10, 5, 0)),  # just before the session started
        (43000000, beijing(2026, 12, 4, 4, 30, 0)),  # 5 h 35 min before: the same day
        (40000000, beijing(2026, 12, 5, 4, 0, 0)),  # 6 h 5 min before: the next day
    ],
)
def test_short_wall_clock_times_more_than_six_hours_before_the_start_are_the_next_day(
    value: Any, expected: dt.datetime
) -> None:
    assert parse_device_time(value, START) == ms(expected)


def test_wall_clock_time_without_a_session_is_on_todays_beijing_date() -> None:
    parsed = parse_device_time("120000000", None)

    assert parsed is not None
    moment = dt.datetime.fromtimestamp(parsed / 1000, BEIJING)
    today = dt.datetime.now(BEIJING).date()
    assert moment.time() == dt.time(12, 0)
    assert moment.date() in (today, today + dt.timedelta(days=1))


@pytest.mark.parametrize(
    "value", ["60000", 60000, "246000000", "006000000", "000060000", 45678901, "45678901"]
)
def test_impossible_wall_clock_time_parses_to_nothing(value: Any) -> None:
    assert parse_device_time(value, START) is None


@pytest.mark.parametrize("value", ["1796349600", 1796349600, "17963496001", 17963496001])
def test_ten_or_eleven_digits_parse_to_nothing(value: Any) -> None:
    assert parse_device_time(value, START) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-04T10:05:35.926", beijing(2026, 12, 4, 10, 5, 35, 926000)),
        ("2026-12-04 10:05:35", beijing(2026, 12, 4, 10, 5, 35)),
        ("2026-12-04T02:05:35.926Z", dt.datetime(2026, 12, 4, 2, 5, 35, 926000, tzinfo=UTC)),
        ("2026-12-04T02:05:35+00:00", dt.datetime(2026, 12, 4, 2, 5, 35, tzinfo=UTC)),
        ("2026-12-04T10:05:35+08:00", beijing(2026, 12, 4, 10, 5, 35)),
    ],
)
def test_iso_text_is_that_moment_and_beijing_time_without_an_offset(
    text: str, expected: dt.datetime
) -> None:
    assert parse_device_time(text, START) == ms(expected)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        "",
        "soon",
        "2026-13-01T00:00:00",
        "-123",
        -1,
        -9000000,  # divides into a negative hour
        -1796349600123,
        float("nan"),
        float("inf"),
        1e300,
        10**30,
        10**400,
        "9" * 5000,  # more digits than int() accepts
        "0001-01-01T00:00:00",  # a moment before the year 1 in UTC
        "9999-12-31T23:59:59-12:00",  # after the year 9999 in UTC
        [153012345],
        {"t": 1},
    ],
)
def test_anything_else_parses_to_nothing(value: Any) -> None:
    assert parse_device_time(value, START) is None


# ---- samples -----------------------------------------------------------------------------------


def test_sample_keeps_the_raw_timestamp_and_its_parsed_milliseconds() -> None:
    sample = parse_sample({**GOOD, "timestamp": 153012345.0, "seq": "7"}, START)

    assert sample.acc == (0.12, -9.81, 0.3)
    assert sample.gyro == (0.01, 0.02, -0.03)
    assert sample.angle == (1.5, -2.0, 90.0)
    assert sample.device_time == "153012345"
    assert sample.device_ms == ms(beijing(2026, 12, 4, 15, 30, 12, 345000))
    assert sample.seq == 7


def test_timestamp_inside_the_sample_wins_over_the_form_field() -> None:
    sample = parse_sample({**GOOD, "timestamp": "1796349600123"}, START, fallback_time="123456")
    fallback = parse_sample(GOOD, START, fallback_time="123456")

    assert sample.device_time == "1796349600123"
    assert fallback.device_time == "123456"
    assert fallback.device_ms == ms(beijing(2026, 12, 5, 0, 1, 23, 456000))


def test_sample_without_timestamp_has_no_device_time() -> None:
    sample = parse_sample(GOOD, START)

    assert (sample.device_time, sample.device_ms, sample.seq) == (None, None, None)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"acc": None}, "acc must be a list of 3 numbers"),
        ({"gyro": [1, 2]}, "gyro must be a list of 3 numbers"),
        ({"angle": [1, 2, 3, 4]}, "angle must be a list of 3 numbers"),
        ({"acc": "1,2,3"}, "acc must be a list of 3 numbers"),
        ({"acc": [1, "2", 3]}, "acc holds a value that is not a number"),
        ({"gyro": [1, None, 3]}, "gyro holds a value that is not a number"),
        ({"angle": [True, 0, 0]}, "angle holds a value that is not a number"),
        ({"acc": [float("nan"), 0, 0]}, "acc holds NaN or infinity"),
        ({"gyro": [0, float("-inf"), 0]}, "gyro holds NaN or infinity"),
        ({"acc": [10**400, 0, 0]}, "acc holds a number too large"),
        ({"seq": "x"}, "seq must be an integer"),
        ({"seq": 1.5}, "seq must be an integer"),
        ({"seq": 2**63}, "seq is out of range"),
        ({"seq": "9" * 30}, "seq is out of range"),
    ],
)
def test_bad_sample_is_refused_with_the_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(SampleError, match=reason):
        parse_sample({**GOOD, **change}, START)


@pytest.mark.parametrize("axis", ["acc", "gyro", "angle"])
def test_sample_missing_an_axis_is_refused(axis: str) -> None:
    item = {k: v for k, v in GOOD.items() if k != axis}

    with pytest.raises(SampleError, match=f"missing {axis}"):
        parse_sample(item, START)


@pytest.mark.parametrize("item", [[1, 2, 3], "acc", 5, None])
def test_sample_that_is_not_an_object_is_refused(item: Any) -> None:
    with pytest.raises(SampleError, match="JSON object"):
        parse_sample(item, START)


# ---- batches and C-style floats ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [("nan", "nan"), ("-nan", "nan"), ("NAN", "nan"), ("inf", "inf"), ("-inf", "-inf")],
)
def test_printf_nan_and_inf_are_read_as_numbers(word: str, expected: str) -> None:
    parsed = parse_json_text('[{"acc":[' + word + ",1.00,2.00]}]")

    value = parsed[0]["acc"][0]
    assert math.isnan(value) if expected == "nan" else value == float(expected)


def test_text_that_is_not_json_even_after_repair_raises() -> None:
    with pytest.raises(ValueError):
        parse_json_text('[{"acc":[nanx,1,2]}]')


def test_batch_keeps_good_items_and_names_each_refused_one() -> None:
    items = [
        json.dumps(GOOD),
        '{"acc":[nan,0.00,0.00],"gyro":[0.01,0.02,0.03],"angle":[1.0,2.0,3.0]}',
        json.dumps({**GOOD, "timestamp": 1796349600123}),
        "7",
    ]

    accepted, refused = parse_batch("[" + ",".join(items) + "]", START)

    assert [index for index, _ in accepted] == [0, 2]
    assert accepted[1][1].device_ms == 1796349600123
    assert [(r.index, r.to_json()["error"]) for r in refused] == [
        (1, "acc holds NaN or infinity"),
        (3, "a sample must be a JSON object with acc, gyro and angle"),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[{"acc":[1,2,3]', "not valid JSON"),
        ("{}", "must be a JSON array"),
        ('"[]"', "must be a JSON array"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ],
)
def test_batch_that_is_not_a_json_array_raises_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(SampleError, match=reason):
        parse_batch(text, START)
