"""Uploads and the rest of the original device protocol: samples, upload completion, command
polling with confirmations, and the mini-program's small helpers (bind, login, latest session).

It works beside StationService and through it: the same store, the same command ledger, the same
change events. A command a polling device collects here is the ledger entry the service created.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from station.backend import records
from station.backend.errors import NotFound, StationError, WrongState
from station.backend.events import CommandChanged, SamplesStored, SessionChanged
from station.backend.models import (
    CommandKind,
    CommandState,
    Event,
    Session,
    SessionStatus,
    iso,
    iso_from_ms,
    parse_iso,
    utc_now,
)
from station.backend.samples import Sample
from station.backend.service import StationService

log = logging.getLogger(__name__)

START_CONFIRMABLE = (SessionStatus.CALIBRATING, SessionStatus.COLLECTING)
UPLOAD_OPEN = (SessionStatus.CALIBRATING, SessionStatus.COLLECTING, SessionStatus.STOPPING)
# Seconds between logged refusals per device: a device with a hard-coded session id retries all
# day, and the flash sketch makes up a new one (its millis()) for every batch.
REFUSAL_LOG_EVERY = 60.0


class UploadRefused(StationError):
    """An upload the original server refused with 400 (session not active)."""

    status = 400


@dataclass(frozen=True, slots=True)
class StoredSamples:
    first_id: int
    count: int
    received_at: float
    session: Session | None
    session_total: int | None  # counted only when asked for
    session_sensor_types: int | None


@dataclass(frozen=True, slots=True)
class PolledCommand:
    kind: CommandKind
    session_id: int


def _now() -> str:
    return iso(utc_now()) or ""


class UploadService:
    def __init__(self, service: StationService) -> None:
        self.service = service
        self.store = service.store
        self._refusals_logged: dict[str, float] = {}
        # Open sessions by id, so an upload costs no read; kept current by session events.
        self._sessions: dict[int, Session] = {}
        service.events.subscribe(self._on_change)

    def _on_change(self, change: object) -> None:
        if isinstance(change, SessionChanged):
            session = change.session
            if session.status in UPLOAD_OPEN:
                self._sessions[session.session_id] = session
            else:
                self._sessions.pop(session.session_id, None)

    # ---- samples -----------------------------------------------------------------------------

    async def session_for_upload(self, session_id: int | None, device_code: str) -> Session | None:
        """The session an upload belongs to, refused as the original server did: 404 when it
        does not exist, 400 when it is not calibrating, collecting or stopping."""
        if session_id is None:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            session = await self.store.read(records.get_session, session_id)
            if session is not None and session.status in UPLOAD_OPEN:
                self._sessions[session_id] = session
        if session is None:
            self._log_refusal(device_code, session_id, f"session {session_id} does not exist")
            raise NotFound("Session not found or invalid session_id", session_id=session_id)
        if session.status not in UPLOAD_OPEN:
            self._log_refusal(device_code, session_id, f"session {session_id} is {session.status}")
            raise UploadRefused(
                "Session not active", session_id=session_id, session_status=str(session.status)
            )
        return session

    def _log_refusal(self, device_code: str, session_id: int, why: str) -> None:
        now = time.monotonic()
        if now - self._refusals_logged.get(device_code, -REFUSAL_LOG_EVERY) < REFUSAL_LOG_EVERY:
            return
        self._refusals_logged[device_code] = now
        message = f"upload from {device_code} refused: {why}"
        log.warning(message)
        stamp = _now()
        self.service.log_in_background(
            lambda db: records.append_event(
                db,
                stamp,
                f"device:{device_code}",
                "upload.refused",
                "refused",
                message,
                None,
                device_code,
                {"session_id": session_id},
            )
        )

    async def store_samples(
        self,
        device_code: str,
        sensor_type: str,
        session: Session | None,
        samples: list[Sample],
        *,
        count_session: bool = False,
    ) -> StoredSamples:
        """Insert samples in one transaction; resolves only once they are committed.

        count_session also counts the session's samples and sensor types, for the single
        upload's reply. That takes time in proportion to the session, so batches skip it."""
        received_at = time.time()
        session_id = session.session_id if session else None
        rows = [
            (
                session_id,
                device_code,
                sensor_type,
                *s.acc,
                *s.gyro,
                *s.angle,
                s.device_time,
                s.device_ms,
                received_at,
                s.seq,
            )
            for s in samples
        ]

        def write(db: Database) -> tuple[int, int | None, int | None]:
            if session_id is not None:
                # The cache that admitted this upload may be a moment behind: the session's
                # status decides here, in the same transaction as the insert.
                status = db.conn.execute(
                    "SELECT status FROM sessions WHERE session_id = ?", [session_id]
                ).fetchone()[0]
                if status not in UPLOAD_OPEN:
                    raise UploadRefused(
                        "Session not active", session_id=session_id, session_status=status
                    )
            first = db.conn.execute("SELECT COALESCE(MAX(sample_id), 0) FROM samples").fetchone()
            first = first[0] + 1
            db.conn.executemany(
                "INSERT INTO samples (session_id, device_code, sensor_type, acc_x, acc_y, acc_z,"
                " gyro_x, gyro_y, gyro_z, angle_x, angle_y, angle_z, device_time, device_ms,"
                " received_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            if session_id is None or not count_session:
                return first, None, None
            total, types = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT sensor_type) FROM samples WHERE session_id = ?",
                [session_id],
            ).fetchone()
            return first, total, types

        first, total, types = await self.store.write(write)
        self.service.record_sign_of_life(device_code, "upload")
        self.service.events.publish(
            SamplesStored(
                session_id,
                device_code,
                sensor_type,
                tuple((s.device_ms, received_at, *s.acc, *s.gyro) for s in samples),
            )
        )
        return StoredSamples(first, len(samples), received_at, session, total, types)

    async def store_raw(
        self, device_code: str, sensor_type: str, session: Session | None, data: str
    ) -> int:
        """The legacy upload: the text is kept exactly as sent, unparsed."""
        now = _now()
        session_id = session.session_id if session else None

        def write(db: Database) -> int:
            cursor = db.execute(
                "INSERT INTO raw_uploads (session_id, device_code, sensor_type, data, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [session_id, device_code, sensor_type, data, now],
            )
            return int(cursor.lastrowid)

        upload_id = await self.store.write(write)
        self.service.record_sign_of_life(device_code, "upload")
        return upload_id

    async def session_stats(self, session_id: int) -> dict[str, Any]:
        """Samples per device: counts, first and last sample time, and upload state."""

        def read(db: Database) -> dict[str, Any]:
            per_device: dict[str, dict[str, Any]] = {}
            for code, sensor, count, first, last in db.execute(
                "SELECT device_code, sensor_type, COUNT(*), MIN(COALESCE(device_ms,"
                " received_at * 1000)), MAX(COALESCE(device_ms, received_at * 1000))"
                " FROM samples WHERE session_id = ? GROUP BY device_code, sensor_type",
                [session_id],
            ).fetchall():
                entry = per_device.setdefault(
                    code, {"samples": 0, "sensors": {}, "first_ms": first, "last_ms": last}
                )
                entry["samples"] += count
                entry["sensors"][sensor] = count
                entry["first_ms"] = min(entry["first_ms"], first)
                entry["last_ms"] = max(entry["last_ms"], last)
            completed = {
                code: (at, json.loads(stats))
                for code, at, stats in db.execute(
                    "SELECT device_code, completed_at, reported_stats FROM device_uploads"
                    " WHERE session_id = ?",
                    [session_id],
                ).fetchall()
            }
            raw = db.execute(
                "SELECT COUNT(*) FROM raw_uploads WHERE session_id = ?", [session_id]
            ).fetchone()[0]
            return {"per_device": per_device, "completed": completed, "raw_uploads": raw}

        found = await self.store.read(read)
        devices = {}
        session = await self.service.session(session_id)
        for code in sorted({*session.device_codes, *found["per_device"], *found["completed"]}):
            entry = found["per_device"].get(code, {"samples": 0, "sensors": {}})
            done = found["completed"].get(code)
            devices[code] = {
                "samples": entry["samples"],
                "sensors": entry["sensors"],
                "first_sample_at": iso_from_ms(entry.get("first_ms")),
                "last_sample_at": iso_from_ms(entry.get("last_ms")),
                "upload": "complete" if done else "pending",
                "upload_completed_at": done[0] if done else None,
                "reported_stats": done[1] if done else None,
            }
        return {"devices": devices, "raw_uploads": found["raw_uploads"]}

    # ---- completion --------------------------------------------------------------------------

    async def mark_upload_complete(
        self, session_id: int, device_code: str, stats: dict[str, Any]
    ) -> Session:
        """The device has uploaded everything; the session completes when every device has."""
        now = _now()
        actor = f"device:{device_code}"

        def write(db: Database) -> Event:
            session = records.get_session(db, session_id)
            if session is None:
                raise NotFound("Session not found", session_id=session_id)
            if session.status not in UPLOAD_OPEN:
                raise UploadRefused(
                    "Session not in active state",
                    session_id=session_id,
                    current_status=str(session.status),
                )
            db.execute(
                "INSERT OR REPLACE INTO device_uploads (session_id, device_code, completed_at,"
                " reported_stats) VALUES (?, ?, ?, ?)",
                [session_id, device_code, now, json.dumps(stats, ensure_ascii=False)],
            )
            records.add_session_devices(db, session_id, [device_code], now)
            return records.append_event(
                db,
                now,
                actor,
                "upload.complete",
                "ok",
                f"device {device_code} finished uploading session {session_id}",
                session_id,
                device_code,
                {"reported_stats": stats},
            )

        event = await self.store.write(write)
        log.info("device %s finished uploading session %s", device_code, session_id)
        self.service.publish_event(event)
        return await self.service.complete_if_uploaded(session_id)

    # ---- polling devices ---------------------------------------------------------------------

    async def poll_commands(self, device_code: str, reported: int | None) -> PolledCommand | None:
        """The command waiting for a polling device that reports running session `reported`:
        stop while one of its sessions is stopping (first, so that the stop of an old session
        does not end the recording of a new one), start while one needs it. Delivering it marks
        the ledger entry sent."""
        now = _now()

        def write(db: Database) -> tuple[PolledCommand | None, list]:
            changed = []
            for session_id, status in db.execute(
                "SELECT s.session_id, s.status FROM sessions s WHERE s.status IN"
                " ('calibrating', 'collecting', 'stopping') AND (s.group_code = ? OR EXISTS"
                " (SELECT 1 FROM session_devices d WHERE d.session_id = s.session_id"
                " AND d.device_code = ?)) ORDER BY s.status = 'stopping' DESC, s.session_id DESC",
                [device_code, device_code],
            ).fetchall():
                kind = CommandKind.STOP if status == "stopping" else CommandKind.START
                command = records.find_command(db, session_id, device_code, kind)
                if command is not None and command.state == CommandState.ACKED:
                    continue
                if kind == CommandKind.START and reported == session_id:
                    # The device already runs this session: that is its acknowledgement.
                    changed.append(_ack(db, session_id, device_code, kind, "by poll", now))
                    continue
                if (
                    kind == CommandKind.STOP
                    and command is None
                    and not _was_started(db, session_id, device_code)
                ):
                    continue
                records.add_session_devices(db, session_id, [device_code], now)
                if command is None:
                    command = records.queue_command(
                        db, session_id, device_code, kind, f"device:{device_code}", "poll", now
                    )
                changed.append(
                    records.update_command(
                        db,
                        command.command_id,
                        now,
                        state=CommandState.SENT,
                        target="poll",
                        attempts=command.attempts + 1,
                        failure=None,
                        last_error=None,
                    )
                )
                return PolledCommand(kind, session_id), changed
            return None, changed

        polled, changed = await self.store.write(write)
        for command in changed:
            if command is not None:
                self.service.events.publish(CommandChanged(command))
        return polled

    async def confirm(self, device_code: str, status: str, session_id: int) -> None:
        """START/STOP_COLLECTION_CONFIRMED from a device acknowledges the ledger entry."""
        kind = CommandKind.START if status == "START_COLLECTION_CONFIRMED" else CommandKind.STOP
        now = _now()

        def write(db: Database):
            session = records.get_session(db, session_id)
            if session is None:
                raise NotFound("Session not found", session_id=session_id)
            if kind == CommandKind.START and session.status not in START_CONFIRMABLE:
                # A late stop confirmation still tells us the device stopped; a start
                # confirmation must not pull a device into a session that is over.
                raise WrongState(
                    f"Session {session_id} is {session.status}: a start cannot be confirmed",
                    session_id=session_id,
                    current_status=str(session.status),
                )
            records.add_session_devices(db, session_id, [device_code], now)
            return _ack(db, session_id, device_code, kind, "confirmed by the device", now)

        command = await self.store.write(write)
        if command is not None:
            self.service.events.publish(CommandChanged(command))
        self.service.record_sign_of_life(device_code, "status")
        if kind == CommandKind.STOP:
            await self.service.complete_if_uploaded(session_id)

    # ---- mini-program helpers ----------------------------------------------------------------

    async def user_id(self, openid: str) -> int:
        now = _now()

        def write(db: Database) -> int:
            db.execute(
                "INSERT OR IGNORE INTO users (openid, created_at) VALUES (?, ?)", [openid, now]
            )
            return db.execute("SELECT user_id FROM users WHERE openid = ?", [openid]).fetchone()[0]

        return await self.store.write(write)

    async def bind_device(self, openid: str, device_code: str) -> None:
        now = _now()

        def write(db: Database) -> None:
            db.execute(
                "INSERT OR IGNORE INTO users (openid, created_at) VALUES (?, ?)", [openid, now]
            )
            db.execute(
                "INSERT OR IGNORE INTO device_binds (openid, device_code, bound_at)"
                " VALUES (?, ?, ?)",
                [openid, device_code, now],
            )
            records.append_event(
                db,
                now,
                f"miniprogram:{openid}",
                "device.bind",
                "ok",
                f"device {device_code} bound to user {openid}",
                None,
                device_code,
            )

        await self.store.write(write)

    async def device_overview(self, device_code: str) -> dict[str, Any]:
        def read(db: Database) -> dict[str, Any]:
            bound = (
                db.execute(
                    "SELECT 1 FROM device_binds WHERE device_code = ? LIMIT 1", [device_code]
                ).fetchone()
                is not None
            )
            last = db.execute(
                "SELECT MAX(received_at) FROM samples WHERE device_code = ?", [device_code]
            ).fetchone()[0]
            active = [
                {"session_id": sid, "status": status, "start_time": started}
                for sid, status, started in db.execute(
                    "SELECT s.session_id, s.status, s.started_at FROM sessions s"
                    " WHERE s.status IN ('calibrating', 'collecting') AND (s.group_code = ?"
                    " OR EXISTS (SELECT 1 FROM session_devices d WHERE d.session_id ="
                    " s.session_id AND d.device_code = ?)) ORDER BY s.session_id DESC LIMIT 5",
                    [device_code, device_code],
                ).fetchall()
            ]
            return {
                "is_bound": bound,
                "last_data_time": iso_from_ms(last * 1000 if last else None),
                "active_sessions": active,
            }

        return await self.store.read(read)

    async def latest_session(self) -> tuple[Session | None, int]:
        def read(db: Database) -> tuple[Session | None, int]:
            total = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            row = db.execute("SELECT MAX(session_id) FROM sessions").fetchone()[0]
            return (records.get_session(db, row) if row else None), total

        return await self.store.read(read)

    async def collection_stats(self, session: Session) -> dict[str, Any]:
        def read(db: Database) -> tuple[int, list[str]]:
            total = db.execute(
                "SELECT COUNT(*) FROM samples WHERE session_id = ?", [session.session_id]
            ).fetchone()[0]
            types = [
                r[0]
                for r in db.execute(
                    "SELECT DISTINCT sensor_type FROM samples WHERE session_id = ? ORDER BY 1",
                    [session.session_id],
                ).fetchall()
            ]
            return total, types

        total, types = await self.store.read(read)
        started = parse_iso(session.started_at)
        ended = parse_iso(session.stopping_at or session.ended_at) or utc_now()
        duration = (ended - started).total_seconds() if started else 0.0
        return {
            "total_data_points": total,
            "sensor_types": types,
            "collection_duration_seconds": round(duration, 3),
        }


def _was_started(db: Database, session_id: int, device_code: str) -> bool:
    start = records.find_command(db, session_id, device_code, CommandKind.START)
    return start is not None and start.state in (CommandState.ACKED, CommandState.SENT)


def _ack(db: Database, session_id: int, device_code: str, kind: CommandKind, how: str, now: str):
    command = records.find_command(db, session_id, device_code, kind)
    if command is None:
        command = records.queue_command(
            db, session_id, device_code, kind, f"device:{device_code}", "poll", now
        )
    if command.state == CommandState.ACKED:
        return None
    updated = records.update_command(
        db,
        command.command_id,
        now,
        state=CommandState.ACKED,
        failure=None,
        last_error=None,
        reply=how,
    )
    records.append_event(
        db,
        now,
        f"device:{device_code}",
        f"command.{kind}",
        "acked",
        f"{kind} command to {device_code} {how}",
        session_id,
        device_code,
    )
    return updated
