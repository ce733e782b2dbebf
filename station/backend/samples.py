"""Sensor samples as the firmware uploads them: validation and device timestamps.

A sample is a JSON object with `acc`, `gyro` and `angle`, each three finite numbers, and optionally
`timestamp`, `seq` (or `sequence`) and `sensor_id`. Device timestamps are kept as sent and also
parsed by one rule per form:

- a number or a string of digits with 12 or more digits: Unix time in milliseconds;
- a number or a string of digits with at most 9 digits: the original server's HHMMSSmmm, a wall
  clock time in Beijing (UTC+8) on the session's start date (the day after, if that would put it
  more than 6 hours before the session started); an impossible time such as 25:00 parses to nothing;
- an ISO 8601 string: that moment; without an offset it is Beijing time, as the original assumed;
- anything else (10 or 11 digits, other text, a negative number, a moment outside the years
  1 to 9999): kept as sent, parsed to nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from math import isfinite
from typing import Any

BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
# Firmware sends up to 100 per upload; far more would hold the event loop while they are checked.
MAX_BATCH_ITEMS = 2000
SENSOR_TYPES = ("waist", "shoulder", "wrist", "racket")
SENSOR_BY_ID = {1: "waist", 2: "shoulder", 3: "wrist", 4: "racket"}  # as the firmware numbers them
AXES = ("acc", "gyro", "angle")
SQLITE_INTEGER = range(-(2**63), 2**63)

# The device times a datetime can hold, with a day to spare at either end for time zones.
MIN_DEVICE_MS = dt.datetime(1, 1, 2, tzinfo=dt.UTC).timestamp() * 1000
MAX_DEVICE_MS = dt.datetime(9999, 12, 30, tzinfo=dt.UTC).timestamp() * 1000
MAX_MS_DIGITS = len(str(int(MAX_DEVICE_MS)))


@dataclass(frozen=True, slots=True)
class Sample:
    acc: tuple[float, float, float]
    gyro: tuple[float, float, float]
    angle: tuple[float, float, float]
    device_time: str | None  # the timestamp exactly as sent
    device_ms: float | None  # that timestamp parsed, in Unix milliseconds
    seq: int | None


@dataclass(frozen=True, slots=True)
class Refusal:
    index: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "error": self.reason}


class SampleError(ValueError):
    """One sample that cannot be stored, with the reason in plain words."""


# printf("%.2f") writes a failed sensor reading as nan or inf (-nan when the sign bit is set),
# which is not JSON. Reading them as NaN and Infinity lets the one bad sample be refused instead
# of losing the whole batch.
_C_FLOAT_WORDS = re.compile(r"(?<=[\[,:\s])(-?)(nan|inf(?:inity)?)(?=\s*[\],}])", re.IGNORECASE)


def parse_json_text(text: str) -> Any:
    """Parse JSON as the firmware writes it, C-style nan and inf included (validation refuses
    them later, sample by sample)."""
    try:
        return json.loads(text)
    except ValueError:
        repaired = _C_FLOAT_WORDS.sub(
            lambda m: "NaN" if m.group(2).lower() == "nan" else m.group(1) + "Infinity", text
        )
        if repaired == text:
            raise
        return json.loads(repaired)


def _vector(item: dict[str, Any], name: str) -> tuple[float, float, float]:
    value = item.get(name)
    if type(value) is list and len(value) == 3:
        x, y, z = value
        # The common case, three floats as printf writes them, without the checks below.
        if type(x) is float and type(y) is float and type(z) is float and isfinite(x + y + z):
            return x, y, z
    return _checked_vector(item, name)


def _checked_vector(item: dict[str, Any], name: str) -> tuple[float, float, float]:
    if name not in item:
        raise SampleError(f"missing {name}")
    value = item[name]
    if not isinstance(value, list) or len(value) != 3:
        raise SampleError(f"{name} must be a list of 3 numbers [x, y, z]")
    numbers = []
    for element in value:
        if isinstance(element, bool) or not isinstance(element, (int, float)):
            raise SampleError(f"{name} holds a value that is not a number: {element!r}")
        try:
            number = float(element)
        except OverflowError:  # a JSON integer with hundreds of digits
            raise SampleError(f"{name} holds a number too large for a float") from None
        if not math.isfinite(number):
            raise SampleError(f"{name} holds NaN or infinity")
        numbers.append(number)
    return numbers[0], numbers[1], numbers[2]


def parse_sample(item: Any, session_start: dt.datetime | None, fallback_time: Any = None) -> Sample:
    if not isinstance(item, dict):
        raise SampleError("a sample must be a JSON object with acc, gyro and angle")
    acc, gyro, angle = _vector(item, "acc"), _vector(item, "gyro"), _vector(item, "angle")
    raw_time = item.get("timestamp", fallback_time)
    seq = item.get("seq", item.get("sequence"))
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        if not (isinstance(seq, str) and seq.isascii() and seq.isdigit()):
            raise SampleError("seq must be an integer")
        if len(seq) > 19:  # and int() refuses strings of over 4,300 digits
            raise SampleError("seq is out of range for a 64-bit integer")
        seq = int(seq)
    if seq is not None and seq not in SQLITE_INTEGER:
        raise SampleError("seq is out of range for a 64-bit integer")
    device_time = None if raw_time is None else _raw_text(raw_time)
    return Sample(acc, gyro, angle, device_time, parse_device_time(raw_time, session_start), seq)


def _raw_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse_device_time(value: Any, session_start: dt.datetime | None) -> float | None:
    """A device timestamp in Unix milliseconds, by the rules in this module's docstring."""
    ms = _device_ms(value, session_start)
    if ms is None or not MIN_DEVICE_MS <= ms <= MAX_DEVICE_MS:
        return None
    return ms


def _device_ms(value: Any, session_start: dt.datetime | None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value) if value.is_integer() else value
    if isinstance(value, (int, float)):
        if value < 0:
            return None
        digits = len(str(int(value)))
        return _from_digits(int(value), digits, session_start, value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        if len(text) > MAX_MS_DIGITS:  # also spares int() its limit on digits
            return None
        return _from_digits(int(text), len(text), session_start, int(text))
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=BEIJING)
    return moment.timestamp() * 1000


def _from_digits(
    number: int, digits: int, session_start: dt.datetime | None, exact: float
) -> float | None:
    if digits >= 12:
        return float(exact) if exact <= MAX_DEVICE_MS else None
    if digits > 9:
        return None
    return _wall_clock(number, session_start)


def _wall_clock(number: int, session_start: dt.datetime | None) -> float | None:
    hours, rest = divmod(number, 10_000_000)
    minutes, rest = divmod(rest, 100_000)
    seconds, millis = divmod(rest, 1000)
    if hours > 23 or minutes > 59 or seconds > 59:
        return None
    start = (session_start or dt.datetime.now(dt.UTC)).astimezone(BEIJING)
    moment = dt.datetime.combine(
        start.date(), dt.time(hours, minutes, seconds, millis * 1000), tzinfo=BEIJING
    )
    if moment < start - dt.timedelta(hours=6):
        moment += dt.timedelta(days=1)
    return moment.timestamp() * 1000


def parse_batch(
    text: str, session_start: dt.datetime | None
) -> tuple[list[tuple[int, Sample]], list[Refusal]]:
    """The samples of a batch_data array, and each refused item with its reason.

    Raises SampleError when the text as a whole is not a JSON array."""
    try:
        items = parse_json_text(text)
    except (ValueError, RecursionError) as exc:
        raise SampleError(f"batch_data is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise SampleError(f"batch_data must be a JSON array, not {type(items).__name__}")
    if len(items) > MAX_BATCH_ITEMS:
        raise SampleError(
            f"batch_data holds {len(items)} items; send at most {MAX_BATCH_ITEMS} per upload"
        )
    accepted: list[tuple[int, Sample]] = []
    refused: list[Refusal] = []
    for index, item in enumerate(items):
        try:
            accepted.append((index, parse_sample(item, session_start)))
        except SampleError as exc:
            refused.append(Refusal(index, str(exc)))
    return accepted, refused
