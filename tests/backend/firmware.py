"""Request bodies written exactly as the ESP32 sketches write them, and a look into the station's
SQLite file from outside the station.

The sketches build `application/x-www-form-urlencoded` bodies by string concatenation and do not
percent-encode: JSON goes in raw, quotes, brackets, commas and minus signs included. Numbers are
printed with printf-style %.2f (acc, gyro) and %.1f (angle), which Python's .2f and .1f
formats match.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from station.backend.runtime import Station
from tests.backend.conftest import FORM

MULTI_SENSOR_CODE = "esp32s3_multi_001"
MULTI_SENSOR_SESSION = 1011  # hard-coded in esp32_multi_sensor_fixed.ino
TIMER_SESSION = 123  # hard-coded in esp32s3_multi_sensor_with_timer.ino
WIFI_CODE = "2025001"
RAW_FORM = {"Content-Type": FORM}

Vector = tuple[float, float, float]


def imu(i: int) -> tuple[Vector, Vector, Vector]:
    """A plausible, deterministic IMU reading number i: gravity on y, a slow turn about z."""
    acc = (0.12 + 0.01 * (i % 7), -9.81 + 0.02 * (i % 5), 0.30 - 0.01 * (i % 3))
    gyro = (0.01 * (i % 4), 0.02, -0.03 - 0.01 * (i % 2))
    angle = (1.5, -2.0, 90.0 + 0.5 * i)
    return acc, gyro, angle


def sample_json(acc: Vector, gyro: Vector, angle: Vector) -> str:
    """One sample as the multi-sensor sketch prints it (no timestamp, no sensor_id)."""
    a = ",".join(f"{v:.2f}" for v in acc)
    g = ",".join(f"{v:.2f}" for v in gyro)
    r = ",".join(f"{v:.1f}" for v in angle)
    return f'{{"acc":[{a}],"gyro":[{g}],"angle":[{r}]}}'


def firmware_items(count: int = 50, first: int = 0) -> list[str]:
    return [sample_json(*imu(i)) for i in range(first, first + count)]


def batch_body(
    items: list[str],
    *,
    sensor_type: str = "waist",
    session_id: int | str = MULTI_SENSOR_SESSION,
    device_code: str = MULTI_SENSOR_CODE,
) -> bytes:
    """POST /wxapp/esp32/batch_upload/ as esp32_multi_sensor_fixed.ino sends it."""
    return (
        f"device_code={device_code}&sensor_type={sensor_type}"
        f"&batch_data=[{','.join(items)}]&session_id={session_id}"
    ).encode()


def single_body(
    session_id: int | str,
    millis: int,
    *,
    sensor_type: str = "waist",
    device_code: str = WIFI_CODE,
    i: int = 0,
) -> bytes:
    """POST /wxapp/esp32/upload/ as esp32_wifi_notification_fixed.ino sends it."""
    return (
        f"device_code={device_code}&sensor_type={sensor_type}&data={sample_json(*imu(i))}"
        f"&session_id={session_id}&timestamp={millis}"
    ).encode()


# ---- the store, seen from outside -------------------------------------------------------------


def query(station: Station, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Rows read through a fresh connection of our own: only what is committed is visible."""
    assert station.store is not None
    conn = sqlite3.connect(station.store.path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def samples(station: Station, where: str = "1", params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    return query(station, f"SELECT * FROM samples WHERE {where} ORDER BY sample_id", params)


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 5.0) -> Any:
    """The first truthy result of check(), polled for some seconds (for background writes)."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            assert result, "condition not met in time"
            return result
        await asyncio.sleep(0.02)


async def set_next_session_id(station: Station, session_id: int) -> None:
    """Make the next session get this id, as if the lab's station had run that many sessions:
    the sketches hard-code 1011 and 123."""
    assert station.store is not None

    def write(db: Any) -> None:
        db.execute("DELETE FROM sqlite_sequence WHERE name = 'sessions'")
        db.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('sessions', ?)", [session_id - 1]
        )

    await station.store.write(write)
