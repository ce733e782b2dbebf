"""Export one session to plain files a lab can analyse with its own tools.

The export of session 12 into OUT is the folder OUT/session_12/ holding:

- `<device_code>_<sensor_type>.csv` for every device and sensor that uploaded samples: sample_id,
  seq, device_time (exactly as the device sent it), device_time_iso (as the station parsed it,
  empty when it could not), received_at_iso, then acc_x ... angle_z. Rows are ordered by device
  time; rows without one come after, by seq (rows without a seq last), then by sample_id.
  Characters other than letters, digits, `.`, `-` and `_` become `_` in file names, and so do
  leading dots.
- `raw_uploads.csv`, when the legacy upload_sensor_data endpoint stored anything for the session.
- `manifest.json`, written last: the session record, its devices with their sample counts and
  upload state, the command ledger, the event log, the export time, the station version, and
  each file with its row count and sha256. A folder without a manifest is an unfinished export.

An export never overwrites or adds to another: when OUT/session_12/ exists, it goes to
OUT/session_12_2/, then _3, and so on, and the folder it chose is in the result.

It reads through its own read-only SQLite connection inside one read transaction, so the files
are a consistent snapshot even while a station keeps serving and writing (WAL lets one writer
and many readers work side by side). `export_session` runs it off the event loop, for the
desktop window; `export_session_sync` is the same for the command line.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import logging
import re
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from station import __version__
from station.backend import records
from station.backend.models import Session, iso, iso_from_ms, utc_now
from station.backend.store import Store

log = logging.getLogger(__name__)

FORMAT = "station-session-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RAW_UPLOADS = "raw_uploads.csv"

SAMPLE_COLUMNS = (
    "sample_id",
    "seq",
    "device_time",
    "device_time_iso",
    "received_at_iso",
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
RAW_COLUMNS = ("upload_id", "device_code", "sensor_type", "received_at", "data")
ALL_ROWS = 2**62  # records.events takes a limit; an export wants every event

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ExportError(Exception):
    """The export could not be made; the message says why in plain words."""


@dataclass(frozen=True, slots=True)
class ExportedFile:
    name: str
    rows: int
    bytes: int
    sha256: str
    device_code: str | None = None
    sensor_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device_code": self.device_code,
            "sensor_type": self.sensor_type,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True, slots=True)
class ExportResult:
    session_id: int
    folder: Path
    files: tuple[ExportedFile, ...]  # the data files; manifest.json is beside them

    @property
    def samples(self) -> int:
        return sum(f.rows for f in self.files if f.device_code is not None)


async def export_session(store: Store | Path, session_id: int, out_dir: Path) -> ExportResult:
    """Export a session from a running station's store (or a database file) without blocking
    the event loop or the store's own threads."""
    path = store.path if isinstance(store, Store) else Path(store)
    return await asyncio.to_thread(export_session_sync, path, session_id, out_dir)


def export_session_sync(db_path: Path, session_id: int, out_dir: Path) -> ExportResult:
    """Export session `session_id` of the database at `db_path` into a new folder of
    `out_dir`. Raises ExportError when there is no such database or session."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise ExportError(f"no station database at {db_path}")
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise ExportError(f"cannot open the station database {db_path}: {exc}") from None

    with closing(conn):
        try:
            conn.execute("BEGIN")  # one snapshot for every file, however long the export takes
            db = Database(conn, recursive_triggers=False, execute_plugins=False)
            session = records.get_session(db, session_id)
            if session is None:
                raise ExportError(f"session {session_id} not found in {db_path}")
            folder = _new_folder(Path(out_dir), session_id)
            try:
                result = _write_export(db, session, folder, db_path)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        except sqlite3.Error as exc:
            raise ExportError(f"cannot read session {session_id} from {db_path}: {exc}") from None
        finally:
            if conn.in_transaction:
                conn.rollback()
    log.info(
        "session %s exported to %s: %d samples in %d files",
        session_id,
        result.folder,
        result.samples,
        len(result.files),
    )
    return result


def _new_folder(out_dir: Path, session_id: int) -> Path:
    """session_<id>, or the first free session_<id>_<n>; created here, so the name is ours."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the output folder {out_dir}: {exc}") from None
    base = f"session_{session_id}"
    for number in range(1, 10_000):
        folder = out_dir / (base if number == 1 else f"{base}_{number}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise ExportError(f"cannot create {folder}: {exc}") from None
        return folder
    raise ExportError(f"{out_dir} already holds too many exports of session {session_id}")


def _write_export(db: Database, session: Session, folder: Path, db_path: Path) -> ExportResult:
    session_id = session.session_id
    files: list[ExportedFile] = []
    taken: set[str] = set()

    groups = db.execute(
        "SELECT device_code, sensor_type FROM samples WHERE session_id = ?"
        " GROUP BY device_code, sensor_type ORDER BY device_code, sensor_type",
        [session_id],
    ).fetchall()
    for device_code, sensor_type in groups:
        name = _file_name(f"{device_code}_{sensor_type}", taken)
        rows = _sample_rows(db, session_id, device_code, sensor_type)
        files.append(_write_csv(folder / name, SAMPLE_COLUMNS, rows, device_code, sensor_type))

    raw_count = db.execute(
        "SELECT COUNT(*) FROM raw_uploads WHERE session_id = ?", [session_id]
    ).fetchone()[0]
    if raw_count:
        raw_rows = db.execute(
            "SELECT upload_id, device_code, sensor_type, received_at, data FROM raw_uploads"
            " WHERE session_id = ? ORDER BY upload_id",
            [session_id],
        )
        files.append(_write_csv(folder / _file_name(RAW_UPLOADS, taken), RAW_COLUMNS, raw_rows))

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "station_version": __version__,
        "exported_at": iso(utc_now()),
        "database": str(db_path.resolve()),
        "session": session.to_json(),
        "devices": _devices(db, session),
        "commands": [c.to_json() for c in records.session_commands(db, session_id)],
        "events": [e.to_json() for e in records.events(db, session_id=session_id, limit=ALL_ROWS)],
        "raw_uploads": raw_count,
        "files": [f.to_json() for f in files],
    }
    text = json.dumps(manifest, ensure_ascii=False, indent=2, default=str) + "\n"
    (folder / MANIFEST).write_text(text, encoding="utf-8")
    return ExportResult(session_id, folder, tuple(files))


def _file_name(stem: str, taken: set[str]) -> str:
    """A safe file name, unique within this export."""
    stem = _UNSAFE.sub("_", stem)
    stem = "_" * (len(stem) - len(stem.lstrip("."))) + stem.lstrip(".")  # no hidden files
    suffix = "" if stem.endswith(".csv") else ".csv"
    name, number = stem + suffix, 1
    while name.lower() in taken:  # case-insensitive file systems would merge them
        number += 1
        name = f"{stem.removesuffix('.csv')}_{number}.csv"
    taken.add(name.lower())
    return name


def _sample_rows(
    db: Database, session_id: int, device_code: str, sensor_type: str
) -> Iterator[tuple[Any, ...]]:
    cursor = db.execute(
        "SELECT sample_id, seq, device_time, device_ms, received_at, acc_x, acc_y, acc_z,"
        " gyro_x, gyro_y, gyro_z, angle_x, angle_y, angle_z FROM samples"
        " WHERE session_id = ? AND device_code = ? AND sensor_type = ?"
        " ORDER BY device_ms IS NULL, device_ms, seq IS NULL, seq, sample_id",
        [session_id, device_code, sensor_type],
    )
    for sample_id, seq, device_time, device_ms, received_at, *values in cursor:
        yield (
            sample_id,
            seq,
            device_time,
            iso_from_ms(device_ms),
            iso_from_ms(received_at * 1000),
            *values,
        )


def _write_csv(
    path: Path,
    header: tuple[str, ...],
    rows: Iterable[Iterable[Any]],
    device_code: str | None = None,
    sensor_type: str | None = None,
) -> ExportedFile:
    count = 0
    with path.open("x", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            count += 1
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return ExportedFile(path.name, count, path.stat().st_size, digest, device_code, sensor_type)


def _devices(db: Database, session: Session) -> list[dict[str, Any]]:
    """Every device of the session, with what it uploaded and whether it said it was done."""
    session_id = session.session_id
    samples: dict[str, dict[str, Any]] = {}
    for code, sensor, count, first, last in db.execute(
        "SELECT device_code, sensor_type, COUNT(*), MIN(device_ms), MAX(device_ms) FROM samples"
        " WHERE session_id = ? GROUP BY device_code, sensor_type",
        [session_id],
    ).fetchall():
        entry = samples.setdefault(code, {"samples": 0, "sensors": {}, "first": [], "last": []})
        entry["samples"] += count
        entry["sensors"][sensor] = count
        entry["first"] += [first] if first is not None else []
        entry["last"] += [last] if last is not None else []
    uploads = {
        code: (completed_at, json.loads(stats))
        for code, completed_at, stats in db.execute(
            "SELECT device_code, completed_at, reported_stats FROM device_uploads"
            " WHERE session_id = ?",
            [session_id],
        ).fetchall()
    }

    devices = []
    for code in sorted({*session.device_codes, *samples, *uploads}):
        entry = samples.get(code, {"samples": 0, "sensors": {}, "first": [], "last": []})
        done = uploads.get(code)
        devices.append(
            {
                "device_code": code,
                "samples": entry["samples"],
                "sensors": entry["sensors"],
                "first_device_time": iso_from_ms(min(entry["first"])) if entry["first"] else None,
                "last_device_time": iso_from_ms(max(entry["last"])) if entry["last"] else None,
                "upload": "complete" if done else "pending",
                "upload_completed_at": done[0] if done else None,
                "reported_stats": done[1] if done else None,
            }
        )
    return devices
