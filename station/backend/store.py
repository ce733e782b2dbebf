"""The SQLite store: one writer thread that owns the only write connection, one reader thread,
and the schema with its forward migrations.

Writes are functions run on the writer thread. Jobs waiting in the queue are committed together
(group commit), each inside its own savepoint so one failing job never undoes another; a job's
awaitable resolves only after its transaction is committed, so nothing is acknowledged before it
is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, asyncio.Future]

MAX_JOBS_PER_COMMIT = 512

migrations = Migrations("station")


@migrations()
def m001_initial_schema(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE devices (
            device_code TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            host TEXT,
            port INTEGER NOT NULL DEFAULT 80,
            registered_at TEXT,
            updated_at TEXT,
            moved_to TEXT,
            liveness TEXT NOT NULL DEFAULT 'unknown',
            last_seen TEXT,
            last_seen_via TEXT,
            reported_status TEXT,
            reported_session_id INTEGER,
            last_error TEXT
        );
        CREATE TABLE device_groups (
            group_code TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        );
        CREATE TABLE group_members (
            group_code TEXT NOT NULL REFERENCES device_groups(group_code),
            device_code TEXT NOT NULL REFERENCES devices(device_code),
            added_at TEXT NOT NULL,
            PRIMARY KEY (group_code, device_code)
        );
        CREATE TABLE sessions (
            session_id INTEGER PRIMARY KEY AUTOINCREMENT,
            group_code TEXT NOT NULL,
            status TEXT NOT NULL,
            openid TEXT,
            started_by TEXT NOT NULL,
            started_at TEXT NOT NULL,
            collecting_at TEXT,
            stopping_at TEXT,
            ended_at TEXT
        );
        CREATE INDEX sessions_by_status ON sessions(status);
        CREATE TABLE session_devices (
            session_id INTEGER NOT NULL REFERENCES sessions(session_id),
            device_code TEXT NOT NULL,
            added_at TEXT NOT NULL,
            PRIMARY KEY (session_id, device_code)
        );
        CREATE TABLE commands (
            command_id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id INTEGER REFERENCES sessions(session_id),
            device_code TEXT NOT NULL,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            requested_by TEXT NOT NULL DEFAULT '',
            target TEXT,
            failure TEXT,
            last_error TEXT,
            http_status INTEGER,
            reply TEXT,
            round_trip_ms REAL
        );
        CREATE UNIQUE INDEX commands_once_per_session
            ON commands(session_id, device_code, kind) WHERE session_id IS NOT NULL;
        CREATE INDEX commands_by_device ON commands(device_code);
        CREATE TABLE events (
            event_id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            result TEXT NOT NULL,
            message TEXT NOT NULL,
            session_id INTEGER,
            device_code TEXT,
            data TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX events_by_session ON events(session_id);
        CREATE INDEX events_by_device ON events(device_code);
        CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
            BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
        CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
            BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
        """
    )


@migrations()
def m002_samples_and_uploads(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE samples (
            sample_id INTEGER PRIMARY KEY,
            session_id INTEGER,
            device_code TEXT NOT NULL,
            sensor_type TEXT NOT NULL,
            acc_x REAL NOT NULL, acc_y REAL NOT NULL, acc_z REAL NOT NULL,
            gyro_x REAL NOT NULL, gyro_y REAL NOT NULL, gyro_z REAL NOT NULL,
            angle_x REAL NOT NULL, angle_y REAL NOT NULL, angle_z REAL NOT NULL,
            device_time TEXT,
            device_ms REAL,
            received_at REAL NOT NULL,
            seq INTEGER
        );
        CREATE INDEX samples_by_session ON samples(session_id, device_code, sensor_type);
        CREATE TABLE raw_uploads (
            upload_id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id INTEGER,
            device_code TEXT NOT NULL,
            sensor_type TEXT NOT NULL,
            data TEXT NOT NULL,
            received_at TEXT NOT NULL
        );
        CREATE TABLE device_uploads (
            session_id INTEGER NOT NULL,
            device_code TEXT NOT NULL,
            completed_at TEXT NOT NULL,
            reported_stats TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (session_id, device_code)
        );
        CREATE TABLE users (
            user_id INTEGER PRIMARY KEY AUTOINCREMENT,
            openid TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        CREATE TABLE device_binds (
            openid TEXT NOT NULL,
            device_code TEXT NOT NULL,
            bound_at TEXT NOT NULL,
            PRIMARY KEY (openid, device_code)
        );
        """
    )


def schema_version(db: Database) -> int:
    return len(migrations.applied(db))


def _connect(path: Path) -> Database:
    conn = sqlite3.connect(str(path), timeout=30)
    db = Database(conn)
    with db.ensure_autocommit_on():
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when the writer reports it, even across a power cut.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
    return db


class _DbThread:
    """A thread that owns one connection and runs functions on it, in order."""

    def __init__(self, path: Path, name: str, *, writer: bool) -> None:
        self._path = path
        self._writer = writer
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, args, loop, future))
        return future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            db = _connect(self._path)
            if self._writer:
                migrations.apply(db)
        except BaseException as exc:  # reported to the opener, which re-raises it
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                batch = [job]
                stop = False
                while len(batch) < MAX_JOBS_PER_COMMIT:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.append(more)
                if self._writer:
                    self._commit_batch(db, batch)
                else:
                    for one in batch:
                        self._read_one(db, one)
                if stop:
                    break
        finally:
            db.close()

    @staticmethod
    def _read_one(db: Database, job: Job) -> None:
        fn, args, loop, future = job
        try:
            outcome: tuple[bool, Any] = (True, fn(db, *args))
        except Exception as exc:
            outcome = (False, exc)
        _resolve(loop, [(future, outcome)])

    @staticmethod
    def _commit_batch(db: Database, batch: list[Job]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with db.atomic():
                for fn, args, _loop, _future in batch:
                    try:
                        with db.atomic():
                            outcomes.append((True, fn(db, *args)))
                    except Exception as exc:
                        outcomes.append((False, exc))
        except Exception as exc:
            log.error("commit failed, %d writes refused: %s", len(batch), exc)
            outcomes = [(False, exc) for _ in batch]
        # One wake-up of each waiting loop per commit, not one per job.
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for (_fn, _args, loop, future), outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, settlements in by_loop.items():
            _resolve(loop, settlements)


def _resolve(
    loop: asyncio.AbstractEventLoop, settlements: list[tuple[asyncio.Future, tuple[bool, Any]]]
) -> None:
    def settle() -> None:
        for future, (ok, value) in settlements:
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # the loop closed while the job ran: nobody is waiting any more


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a background write failed: %s", future.exception())


class Store:
    """The station's database: `await store.write(fn, ...)` and `await store.read(fn, ...)`,
    where fn(db, ...) runs on the store's own threads and never on the event loop."""

    FILENAME = "station.db"

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / self.FILENAME
        self._writer = _DbThread(self.path, "station-db-writer", writer=True)
        self._reader = _DbThread(self.path, "station-db-reader", writer=False)
        self._closed = False

    def write(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue fn(db, *args) to run in a transaction; the future resolves once committed.

        The job is queued at call time, so writes keep the order of the calls even when the
        caller awaits later (or, through write_soon, not at all)."""
        return self._writer.submit(fn, *args)

    def write_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a write nobody waits for; a failure is logged instead of lost."""
        self._writer.submit(fn, *args).add_done_callback(_log_failure)

    def read(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return self._reader.submit(fn, *args)

    def close(self) -> None:
        """Finish every queued write, then close both connections."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._reader.close()
