"""Simulated IMU samples and the SD-card file a simulated ESP32 records them to.

Used by `station.devices.simulator`; the samples a recording writes are also what the simulated
uploader (`station.devices.sim_uploads`) sends, so the SD file and the station hold the same
`seq` and device timestamps.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

SENSOR_TYPES = ("waist", "shoulder", "wrist", "racket")

CSV_HEADER = (
    "seq",
    "device_ms",
    "acc_x",
    "acc_y",
    "acc_z",
    "gyro_x",
    "gyro_y",
    "gyro_z",
    "angle_x",
    "angle_y",
    "angle_z",
)

GRAVITY = 9.81  # m/s²


@dataclass(frozen=True, slots=True)
class Motion:
    """How one body part moves: a periodic swing of a given size."""

    swing_hz: float
    angle_amplitude: float  # degrees of roll at the top of the swing
    linear_acc: float  # m/s², acceleration of the swing itself on top of gravity


# Bigger and faster towards the end of the arm, as in a badminton stroke.
MOTIONS: dict[str, Motion] = {
    "waist": Motion(swing_hz=0.5, angle_amplitude=15.0, linear_acc=1.0),
    "shoulder": Motion(swing_hz=0.8, angle_amplitude=35.0, linear_acc=3.0),
    "wrist": Motion(swing_hz=1.2, angle_amplitude=55.0, linear_acc=6.0),
    "racket": Motion(swing_hz=1.5, angle_amplitude=80.0, linear_acc=15.0),
}


def stable_seed(text: str) -> int:
    """A seed that is the same in every run (str hashes are salted per process)."""
    return zlib.crc32(text.encode())


class SampleGenerator:
    """Samples `{"acc", "gyro", "angle", "timestamp", "seq"}` at an exact rate on the device clock.

    Sample `n` belongs to device time `start_ms + n * 1000 / rate_hz`; `take_until(now_ms)` returns
    every sample whose time has come, so the rate stays exact however late the caller's timer fires.
    Angles are in degrees, gyro in rad/s (the derivative of the angles), acc in m/s² (gravity seen
    through the current tilt plus the swing). `timestamp` is integer device milliseconds (millis()).
    """

    def __init__(
        self,
        sensor_type: str,
        rate_hz: float,
        *,
        start_ms: float = 0.0,
        first_seq: int = 0,
        seed: int = 0,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError(f"sample rate must be positive, got {rate_hz}")
        self.sensor_type = sensor_type
        self.rate_hz = rate_hz
        self.start_ms = start_ms
        self._motion = MOTIONS.get(sensor_type, MOTIONS["waist"])
        self._rng = random.Random(seed)
        self._phase = self._rng.uniform(0, 2 * math.pi)
        self._first_seq = first_seq
        self._emitted = 0  # samples handed out since start_ms

    @property
    def next_seq(self) -> int:
        return self._first_seq + self._emitted

    def sample_time_ms(self, index: int) -> float:
        return self.start_ms + index * 1000.0 / self.rate_hz

    def take_until(self, now_ms: float) -> list[dict[str, Any]]:
        """Every sample due at or before `now_ms` that has not been handed out yet."""
        due = math.floor((now_ms - self.start_ms) * self.rate_hz / 1000.0) + 1
        samples = []
        while self._emitted < due:
            samples.append(self._make(self._emitted))
            self._emitted += 1
        return samples

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Endless samples, ignoring the wall clock (for batch producers and tests)."""
        while True:
            sample = self._make(self._emitted)
            self._emitted += 1
            yield sample

    def _make(self, index: int) -> dict[str, Any]:
        device_ms = self.sample_time_ms(index)
        motion = self._motion
        omega = 2 * math.pi * motion.swing_hz
        theta = omega * device_ms / 1000.0 + self._phase
        amp = motion.angle_amplitude

        roll = amp * math.sin(theta)
        pitch = 0.4 * amp * math.sin(2 * theta + 0.5)
        yaw = 0.2 * amp * math.sin(theta / 3)
        roll_rate = math.radians(amp * omega * math.cos(theta))
        pitch_rate = math.radians(0.8 * amp * omega * math.cos(2 * theta + 0.5))
        yaw_rate = math.radians(0.2 * amp * omega / 3 * math.cos(theta / 3))

        r, p = math.radians(roll), math.radians(pitch)
        gravity = (
            -GRAVITY * math.sin(p),
            GRAVITY * math.sin(r) * math.cos(p),
            GRAVITY * math.cos(r) * math.cos(p),
        )
        swing = (motion.linear_acc * math.cos(theta), 0.5 * motion.linear_acc * math.sin(2 * theta))
        noise = self._rng.gauss

        acc = [
            round(gravity[0] + swing[0] + noise(0, 0.05), 3),
            round(gravity[1] + swing[1] + noise(0, 0.05), 3),
            round(gravity[2] + noise(0, 0.05), 3),
        ]
        gyro = [round(v + noise(0, 0.01), 4) for v in (roll_rate, pitch_rate, yaw_rate)]
        angle = [round(v + noise(0, 0.05), 2) for v in (roll, pitch, yaw)]
        return {
            "acc": acc,
            "gyro": gyro,
            "angle": angle,
            "timestamp": round(device_ms),
            "seq": self._first_seq + index,
        }


class SessionRecording:
    """One session's CSV file on the simulated SD card, fed from a SampleGenerator.

    Starting a session that already has a file (the same session started again after a stop)
    appends to it and carries on the sequence, so that a session stays one file with one `seq` run.
    """

    def __init__(self, path: Path, session_id: int, generator: SampleGenerator) -> None:
        self.path = path
        self.session_id = session_id
        self.generator = generator
        self.samples_written = 0
        self._file: IO[str] | None = None
        self._writer: Any = None

    @classmethod
    def open(
        cls,
        path: Path,
        session_id: int,
        *,
        sensor_type: str,
        rate_hz: float,
        start_ms: float,
        seed: int,
    ) -> SessionRecording:
        path.parent.mkdir(parents=True, exist_ok=True)
        existing_rows = _count_data_rows(path)
        generator = SampleGenerator(
            sensor_type, rate_hz, start_ms=start_ms, first_seq=existing_rows, seed=seed
        )
        recording = cls(path, session_id, generator)
        recording._file = path.open("a", newline="", encoding="ascii")
        recording._writer = csv.writer(recording._file)
        if recording._file.tell() == 0:
            recording._writer.writerow(CSV_HEADER)
        return recording

    @property
    def closed(self) -> bool:
        return self._file is None

    @property
    def sensor_type(self) -> str:
        return self.generator.sensor_type

    def record_due(self, now_ms: float) -> list[dict[str, Any]]:
        """Write the samples due by `now_ms` and flush; returns the samples written."""
        if self._file is None:
            return []
        samples = self.generator.take_until(now_ms)
        self._writer.writerows(
            (s["seq"], s["timestamp"], *s["acc"], *s["gyro"], *s["angle"]) for s in samples
        )
        self._file.flush()
        self.samples_written += len(samples)
        return samples

    def record_until(self, now_ms: float) -> int:
        """Write the samples due by `now_ms` and flush; returns how many were written."""
        return len(self.record_due(now_ms))

    def close(self, now_ms: float) -> list[dict[str, Any]]:
        """Write what is due up to the stop, then close the file; returns those last samples."""
        if self._file is None:
            return []
        try:
            return self.record_due(now_ms)
        finally:
            self._file.close()
            self._file = None
            self._writer = None


def _count_data_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        lines = sum(1 for _ in f)
    return max(lines - 1, 0)
