"""Queries over the store: plain functions of a sqlite-utils Database, run on the store's
threads. They turn rows into the domain records of models.py and back."""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from station.backend.models import (
    Command,
    CommandKind,
    CommandState,
    Device,
    Event,
    Failure,
    Liveness,
    Session,
    SessionStatus,
)

# ---- devices -------------------------------------------------------------------------------


def _device(row: dict[str, Any], groups: tuple[str, ...]) -> Device:
    return Device(
        device_code=row["device_code"],
        host=row["host"],
        port=row["port"],
        name=row["name"],
        registered_at=row["registered_at"],
        updated_at=row["updated_at"],
        moved_to=row["moved_to"],
        liveness=Liveness(row["liveness"]),
        last_seen=row["last_seen"],
        last_seen_via=row["last_seen_via"],
        reported_status=row["reported_status"],
        reported_session_id=row["reported_session_id"],
        last_error=row["last_error"],
        groups=groups,
    )


def device_groups(db: Database, device_code: str) -> tuple[str, ...]:
    rows = db.execute(
        "SELECT group_code FROM group_members WHERE device_code = ? ORDER BY group_code",
        [device_code],
    ).fetchall()
    return tuple(r[0] for r in rows)


def get_device(db: Database, device_code: str) -> Device | None:
    rows = list(db["devices"].rows_where("device_code = ?", [device_code]))
    if not rows:
        return None
    return _device(rows[0], device_groups(db, device_code))


def all_devices(db: Database) -> list[Device]:
    memberships: dict[str, list[str]] = {}
    for group_code, device_code in db.execute(
        "SELECT group_code, device_code FROM group_members ORDER BY group_code"
    ).fetchall():
        memberships.setdefault(device_code, []).append(group_code)
    return [
        _device(row, tuple(memberships.get(row["device_code"], ())))
        for row in db["devices"].rows_where(order_by="device_code")
    ]


DEVICE_COLUMNS = (
    "name",
    "host",
    "port",
    "registered_at",
    "updated_at",
    "moved_to",
    "liveness",
    "last_seen",
    "last_seen_via",
    "reported_status",
    "reported_session_id",
    "last_error",
)


def save_device(db: Database, device: Device) -> Device:
    row = {"device_code": device.device_code}
    for column in DEVICE_COLUMNS:
        value = getattr(device, column)
        row[column] = str(value) if column == "liveness" else value
    db["devices"].upsert(row, pk="device_code")
    return device


def save_devices(db: Database, devices: list[Device]) -> None:
    for device in devices:
        save_device(db, device)


def delete_device(db: Database, device_code: str) -> None:
    db.execute("DELETE FROM group_members WHERE device_code = ?", [device_code])
    db.execute("DELETE FROM devices WHERE device_code = ?", [device_code])


# ---- groups --------------------------------------------------------------------------------


def ensure_group(db: Database, group_code: str, now: str) -> None:
    db.execute(
        "INSERT OR IGNORE INTO device_groups (group_code, name, created_at) VALUES (?, '', ?)",
        [group_code, now],
    )


def set_membership(db: Database, group_code: str, device_code: str, member: bool, now: str):
    ensure_group(db, group_code, now)
    if member:
        db.execute(
            "INSERT OR IGNORE INTO group_members (group_code, device_code, added_at) "
            "VALUES (?, ?, ?)",
            [group_code, device_code, now],
        )
    else:
        db.execute(
            "DELETE FROM group_members WHERE group_code = ? AND device_code = ?",
            [group_code, device_code],
        )


def all_groups(db: Database) -> list[dict[str, Any]]:
    members: dict[str, list[str]] = {}
    for group_code, device_code in db.execute(
        "SELECT group_code, device_code FROM group_members ORDER BY device_code"
    ).fetchall():
        members.setdefault(group_code, []).append(device_code)
    return [
        {**row, "device_codes": members.get(row["group_code"], [])}
        for row in db["device_groups"].rows_where(order_by="group_code")
    ]


def group_member_codes(db: Database, group_code: str) -> list[str]:
    rows = db.execute(
        "SELECT device_code FROM group_members WHERE group_code = ? ORDER BY device_code",
        [group_code],
    ).fetchall()
    return [r[0] for r in rows]


# ---- sessions ------------------------------------------------------------------------------


def _session(row: dict[str, Any], device_codes: tuple[str, ...]) -> Session:
    return Session(
        session_id=row["session_id"],
        group_code=row["group_code"],
        status=SessionStatus(row["status"]),
        started_by=row["started_by"],
        started_at=row["started_at"],
        collecting_at=row["collecting_at"],
        stopping_at=row["stopping_at"],
        ended_at=row["ended_at"],
        openid=row["openid"],
        device_codes=device_codes,
    )


def session_device_codes(db: Database, session_id: int) -> tuple[str, ...]:
    rows = db.execute(
        "SELECT device_code FROM session_devices WHERE session_id = ? ORDER BY device_code",
        [session_id],
    ).fetchall()
    return tuple(r[0] for r in rows)


def get_session(db: Database, session_id: int) -> Session | None:
    rows = list(db["sessions"].rows_where("session_id = ?", [session_id]))
    if not rows:
        return None
    return _session(rows[0], session_device_codes(db, session_id))


def list_sessions(db: Database, limit: int = 200, status: str | None = None) -> list[Session]:
    where, params = ("status = ?", [status]) if status else (None, [])
    rows = db["sessions"].rows_where(where, params, order_by="session_id DESC", limit=limit)
    return [_session(row, session_device_codes(db, row["session_id"])) for row in rows]


def create_session(
    db: Database, group_code: str, openid: str | None, started_by: str, now: str
) -> int:
    ensure_group(db, group_code, now)
    cursor = db.execute(
        "INSERT INTO sessions (group_code, status, openid, started_by, started_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [group_code, str(SessionStatus.CALIBRATING), openid, started_by, now],
    )
    return int(cursor.lastrowid)


def add_session_devices(db: Database, session_id: int, device_codes: list[str], now: str) -> None:
    db.conn.executemany(
        "INSERT OR IGNORE INTO session_devices (session_id, device_code, added_at) "
        "VALUES (?, ?, ?)",
        [(session_id, code, now) for code in device_codes],
    )


STATUS_STAMP = {
    SessionStatus.COLLECTING: "collecting_at",
    SessionStatus.STOPPING: "stopping_at",
    SessionStatus.COMPLETED: "ended_at",
    SessionStatus.STOPPED: "ended_at",
}


def set_session_status(db: Database, session_id: int, status: SessionStatus, now: str) -> None:
    stamp = STATUS_STAMP[status]
    db.execute(
        f"UPDATE sessions SET status = ?, {stamp} = ? WHERE session_id = ?",
        [str(status), now, session_id],
    )


def devices_not_uploaded(db: Database, session_id: int, device_codes: list[str]) -> list[str]:
    """Those of device_codes that have not reported their upload complete for the session."""
    done = {
        row[0]
        for row in db.execute(
            "SELECT device_code FROM device_uploads WHERE session_id = ?", [session_id]
        ).fetchall()
    }
    return [code for code in device_codes if code not in done]


# ---- command ledger ------------------------------------------------------------------------


def _command(row: dict[str, Any]) -> Command:
    return Command(
        command_id=row["command_id"],
        session_id=row["session_id"],
        device_code=row["device_code"],
        kind=CommandKind(row["kind"]),
        state=CommandState(row["state"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        requested_by=row["requested_by"],
        target=row["target"],
        failure=Failure(row["failure"]) if row["failure"] else None,
        last_error=row["last_error"],
        http_status=row["http_status"],
        reply=row["reply"],
        round_trip_ms=row["round_trip_ms"],
    )


def _dicts(cursor: Any) -> list[dict[str, Any]]:
    """Rows as dicts, without sqlite-utils' per-call overhead: these run once per device when
    a command goes to a whole fleet."""
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def get_command(db: Database, command_id: int) -> Command:
    rows = _dicts(db.conn.execute("SELECT * FROM commands WHERE command_id = ?", [command_id]))
    return _command(rows[0])


def find_command(
    db: Database, session_id: int, device_code: str, kind: CommandKind
) -> Command | None:
    rows = _dicts(
        db.conn.execute(
            "SELECT * FROM commands WHERE session_id = ? AND device_code = ? AND kind = ?",
            [session_id, device_code, str(kind)],
        )
    )
    return _command(rows[0]) if rows else None


def session_commands(db: Database, session_id: int) -> list[Command]:
    return [
        _command(row)
        for row in db["commands"].rows_where("session_id = ?", [session_id], order_by="command_id")
    ]


def device_commands(db: Database, device_code: str, limit: int = 50) -> list[Command]:
    return [
        _command(row)
        for row in db["commands"].rows_where(
            "device_code = ?", [device_code], order_by="command_id DESC", limit=limit
        )
    ]


def queue_command(
    db: Database,
    session_id: int | None,
    device_code: str,
    kind: CommandKind,
    requested_by: str,
    target: str | None,
    now: str,
) -> Command:
    """Create the ledger entry, or put a failed one back in the queue for another try."""
    existing = find_command(db, session_id, device_code, kind) if session_id else None
    if existing is None:
        cursor = db.conn.execute(
            "INSERT INTO commands (session_id, device_code, kind, state, created_at, updated_at,"
            " requested_by, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [session_id, device_code, str(kind), "queued", now, now, requested_by, target],
        )
        return get_command(db, int(cursor.lastrowid))
    db.execute(
        "UPDATE commands SET state = 'queued', updated_at = ?, requested_by = ?, target = ?,"
        " failure = NULL, last_error = NULL WHERE command_id = ?",
        [now, requested_by, target, existing.command_id],
    )
    return get_command(db, existing.command_id)


def update_command(db: Database, command_id: int, now: str, **fields: Any) -> Command:
    fields["updated_at"] = now
    if "failure" in fields and fields["failure"] is not None:
        fields["failure"] = str(fields["failure"])
    if "state" in fields:
        fields["state"] = str(fields["state"])
    assignments = ", ".join(f"{name} = ?" for name in fields)
    db.execute(
        f"UPDATE commands SET {assignments} WHERE command_id = ?",
        [*fields.values(), command_id],
    )
    return get_command(db, command_id)


def fail_interrupted_commands(db: Database, now: str) -> list[Command]:
    """Commands left queued or sent by a station that stopped before the device answered.

    A sent command may have been carried out, as after a timeout, so it fails as one: a start
    the device may be acting on still earns that device a stop."""
    rows = list(db["commands"].rows_where("state IN ('queued', 'sent')"))
    for row in rows:
        failure = Failure.TIMEOUT if row["state"] == "sent" else Failure.UNREACHABLE
        db.execute(
            "UPDATE commands SET state = 'failed', failure = ?, updated_at = ?,"
            " last_error = 'the station stopped before the device answered; send it again'"
            " WHERE command_id = ?",
            [str(failure), now, row["command_id"]],
        )
    return [get_command(db, row["command_id"]) for row in rows]


# ---- event log -----------------------------------------------------------------------------


def _event(row: dict[str, Any]) -> Event:
    return Event(
        event_id=row["event_id"],
        at=row["at"],
        actor=row["actor"],
        action=row["action"],
        result=row["result"],
        message=row["message"],
        session_id=row["session_id"],
        device_code=row["device_code"],
        data=json.loads(row["data"]),
    )


def append_event(
    db: Database,
    at: str,
    actor: str,
    action: str,
    result: str,
    message: str,
    session_id: int | None = None,
    device_code: str | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    cursor = db.execute(
        "INSERT INTO events (at, actor, action, result, message, session_id, device_code, data)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            at,
            actor,
            action,
            result,
            message,
            session_id,
            device_code,
            json.dumps(data or {}, ensure_ascii=False),
        ],
    )
    return Event(
        event_id=int(cursor.lastrowid),
        at=at,
        actor=actor,
        action=action,
        result=result,
        message=message,
        session_id=session_id,
        device_code=device_code,
        data=data or {},
    )


def events(
    db: Database,
    *,
    session_id: int | None = None,
    device_code: str | None = None,
    limit: int = 500,
) -> list[Event]:
    clauses, params = [], []
    if session_id is not None:
        clauses.append("session_id = ?")
        params.append(session_id)
    if device_code is not None:
        clauses.append("device_code = ?")
        params.append(device_code)
    where = " AND ".join(clauses) or None
    rows = db["events"].rows_where(where, params, order_by="event_id DESC", limit=limit)
    return [_event(row) for row in reversed(list(rows))]
