"""How a simulated ESP32 uploads what it records: the batch uploader of the multi-sensor sketch
(`esp32_multi_sensor_fixed.ino`), the one-sample-every-2-s uploader of the wifi-notification
sketch (`esp32_wifi_notification_fixed.ino`), and the closing `esp32/mark_upload_complete/`.

Bodies are built the way the sketches build them: name=value pairs joined with `&`, nothing
percent-encoded, JSON arrays and objects inserted raw, sent as
application/x-www-form-urlencoded. The samples come from the device's SD recording, so the station
receives the very samples (same `seq`, same device time) that the SD file holds.

Used by `station.devices.simulator`; never imports Qt.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

UploadMode = Literal["none", "single", "batch"]
UPLOAD_MODES: tuple[UploadMode, ...] = ("none", "single", "batch")

UPLOAD_PATH = "/wxapp/esp32/upload/"
BATCH_UPLOAD_PATH = "/wxapp/esp32/batch_upload/"
MARK_COMPLETE_PATH = "/wxapp/esp32/mark_upload_complete/"
UPLOAD_SUCCESS = "ESP32 data upload success"  # what the wifi sketch looks for in the reply


@dataclass(frozen=True, slots=True)
class StationAnswer:
    status: int
    text: str


# post(path, fields) -> the station's answer, or None when it could not be reached
Post = Callable[[str, Sequence[tuple[str, str]]], Awaitable[StationAnswer | None]]


def form_body(fields: Iterable[tuple[str, str]]) -> bytes:
    """`a=1&b=[...]` exactly as the sketches concatenate it: no percent-encoding at all."""
    return "&".join(f"{name}={value}" for name, value in fields).encode()


def _vector(values: Sequence[float], decimals: int) -> str:
    return "[" + ",".join(f"{v:.{decimals}f}" for v in values) + "]"


def sample_object(sample: dict[str, Any]) -> str:
    """`{"acc":[..],"gyro":[..],"angle":[..]}` with the sketch's printf precision
    (acc and gyro %.2f, angle %.1f)."""
    return (
        f'{{"acc":{_vector(sample["acc"], 2)},"gyro":{_vector(sample["gyro"], 2)},'
        f'"angle":{_vector(sample["angle"], 1)}}}'
    )


def batch_item(sample: dict[str, Any], unix_ms: int) -> str:
    """One batch_data item: the sketch's object plus "timestamp" (Unix ms) and "seq".

    The real sketch sends neither, so the original server could order its samples only by
    arrival; the simulator adds both so the station can order and match them."""
    return sample_object(sample)[:-1] + f',"timestamp":{unix_ms},"seq":{sample["seq"]}}}'


@dataclass(frozen=True, slots=True)
class UploadSettings:
    mode: UploadMode = "none"
    single_interval: float = 2.0  # seconds between single-sample uploads (the sketch's 2 s)
    batch_size: int = 50  # samples per batch_upload POST, at most
    batch_interval: float = 0.5  # seconds between flushes when fewer than batch_size are waiting
    retry_longest: float = 5.0  # the longest wait before sending a failed batch again
    timeout: float = 5.0  # HTTPClient's default


class SessionUploader:
    """Uploads one session's samples as they are recorded; `finish()` flushes what is left
    and then reports the upload complete.

    Batch mode sends a batch per sensor type, oldest samples first, and retries the same batch
    until the station answers 200: nothing is dropped. Single mode sends the newest sample of
    the next sensor in rotation every `single_interval` and, like the sketch, never retries.
    """

    def __init__(
        self,
        device_code: str,
        session_id: int,
        sensors: Sequence[str],
        settings: UploadSettings,
        post: Post,
        unix_offset_ms: int,
        on_upload: Callable[[], None] = lambda: None,
    ) -> None:
        if settings.mode == "none":
            raise ValueError("an uploader needs upload mode single or batch")
        self.device_code = device_code
        self.session_id = session_id
        self.sensors = tuple(sensors)
        self.settings = settings
        self._post = post
        self._unix_offset_ms = unix_offset_ms
        self._on_upload = on_upload

        self._buffers: dict[str, deque[tuple[int, str]]] = {s: deque() for s in self.sensors}
        self._unsent: dict[str, list[tuple[int, str]]] = {}  # a failed batch, sent again as is
        self._latest: dict[str, dict[str, Any]] = {}
        self._last_sent_seq: dict[str, int] = {}
        self.acked: dict[str, array[int]] = {s: array("q") for s in self.sensors}
        self.posts_ok = 0
        self.posts_failed = 0
        self.completed = asyncio.Event()
        self.complete_answer: StationAnswer | None = None

        self._finishing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<SessionUploader {self.device_code} session {self.session_id}>"

    @property
    def total_acked(self) -> int:
        return sum(len(seqs) for seqs in self.acked.values())

    @property
    def buffered(self) -> int:
        """Samples recorded and not yet taken by the station."""
        waiting = sum(len(buffer) for buffer in self._buffers.values())
        return waiting + sum(len(batch) for batch in self._unsent.values())

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def start(self) -> None:
        if self._task is None:
            run = self._run_batches if self.settings.mode == "batch" else self._run_single
            self._task = asyncio.create_task(run())

    def add(self, sensor: str, samples: list[dict[str, Any]]) -> None:
        """Samples just written to the SD file, to be uploaded."""
        if not samples or self._finishing:
            return
        if self.settings.mode == "single":
            self._latest[sensor] = samples[-1]
            return
        buffer = self._buffers[sensor]
        offset = self._unix_offset_ms
        buffer.extend((s["seq"], batch_item(s, offset + s["timestamp"])) for s in samples)
        if len(buffer) >= self.settings.batch_size:
            self._wake.set()

    def finish(self) -> None:
        """No more samples: flush what is buffered, then POST mark_upload_complete."""
        self._finishing = True
        self._wake.set()

    async def wait_complete(self) -> None:
        await self.completed.wait()

    async def aclose(self) -> None:
        """Stop at once (the device powers off); whatever is unsent stays on the SD card."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ---- batch -------------------------------------------------------------------------------

    async def _run_batches(self) -> None:
        backoff = self.settings.batch_interval
        while True:
            if not self._finishing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.batch_interval)
                self._wake.clear()
            if not await self._flush():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_longest)
                continue
            backoff = self.settings.batch_interval
            if self._finishing and not self.buffered:
                break
        await self._mark_complete()

    async def _flush(self) -> bool:
        """Send everything buffered, one POST per sensor and batch; False at the first failure,
        whose batch goes out again, unchanged, before anything newer."""
        for sensor in self.sensors:
            buffer = self._buffers[sensor]
            while sensor in self._unsent or buffer:
                batch = self._unsent.pop(sensor, None)
                if batch is None:
                    count = min(len(buffer), self.settings.batch_size)
                    batch = [buffer.popleft() for _ in range(count)]
                if not await self._send_batch(sensor, batch):
                    self._unsent[sensor] = batch
                    return False
        return True

    async def _send_batch(self, sensor: str, batch: list[tuple[int, str]]) -> bool:
        fields = [
            ("device_code", self.device_code),
            ("sensor_type", sensor),
            ("batch_data", "[" + ",".join(item for _seq, item in batch) + "]"),
            ("session_id", str(self.session_id)),
        ]
        answer = await self._post(BATCH_UPLOAD_PATH, fields)
        if answer is None or answer.status != 200:
            self.posts_failed += 1
            log.debug(
                "%s batch of %d %s samples not taken (%s); sending it again",
                self.device_code,
                len(batch),
                sensor,
                "no answer" if answer is None else f"HTTP {answer.status}",
            )
            return False
        self.posts_ok += 1
        self._on_upload()
        self.acked[sensor].extend(batch[i][0] for i in _stored_indexes(answer.text, len(batch)))
        return True

    # ---- single ------------------------------------------------------------------------------

    async def _run_single(self) -> None:
        rotation = itertools.cycle(self.sensors)
        while not self._finishing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.single_interval)
            if self._finishing:
                break
            sensor = next(rotation)
            sample = self._latest.get(sensor)
            if sample is None or self._last_sent_seq.get(sensor) == sample["seq"]:
                continue
            self._last_sent_seq[sensor] = sample["seq"]
            await self._send_single(sensor, sample)
        await self._mark_complete()

    async def _send_single(self, sensor: str, sample: dict[str, Any]) -> None:
        fields = [
            ("device_code", self.device_code),
            ("sensor_type", sensor),
            ("data", sample_object(sample)),
            ("session_id", str(self.session_id)),
            ("timestamp", str(sample["timestamp"])),  # millis(), as the sketch sends it
        ]
        answer = await self._post(UPLOAD_PATH, fields)
        if answer is not None and UPLOAD_SUCCESS in answer.text:
            self.posts_ok += 1
            self._on_upload()
            self.acked[sensor].append(sample["seq"])
        else:
            self.posts_failed += 1
            log.debug("%s single upload of %s not taken", self.device_code, sensor)

    # ---- completion --------------------------------------------------------------------------

    async def _mark_complete(self) -> None:
        """Tell the station the session's upload is done. Retried while the station cannot be
        reached or fails; a refusal (4xx: the session ended meanwhile) is final."""
        stats = {"total_data_points": self.total_acked, "sensor_types": list(self.sensors)}
        fields = [
            ("session_id", str(self.session_id)),
            ("device_code", self.device_code),
            ("upload_stats", json.dumps(stats, separators=(",", ":"))),
        ]
        wait = self.settings.batch_interval
        while True:
            answer = await self._post(MARK_COMPLETE_PATH, fields)
            if answer is not None and answer.status < 500:
                break
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.settings.retry_longest)
        self.complete_answer = answer
        if answer.status == 200:
            log.info(
                "%s uploaded session %s: %d samples",
                self.device_code,
                self.session_id,
                self.total_acked,
            )
            self.completed.set()
        else:
            log.warning(
                "%s could not mark session %s uploaded: HTTP %s %s",
                self.device_code,
                self.session_id,
                answer.status,
                answer.text[:200],
            )


def _stored_indexes(text: str, count: int) -> list[int]:
    """Which items of a batch the station stored, from its `results`; all when it does not say."""
    try:
        body = json.loads(text)
        results = body["results"]
        indexes = [r["index"] for r in results if "data_id" in r]
    except (ValueError, KeyError, TypeError):
        return list(range(count))
    return [i for i in indexes if isinstance(i, int) and 0 <= i < count]
