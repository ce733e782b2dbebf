"""The station's core service: device registry, sessions, the command ledger and liveness.

Every face of the station calls this one service: the HTTP API for the mini-program and the
devices, and the desktop window for staff. It owns the rules (which transition is allowed, when a
command is sent again, when a device is offline), commits through the store before answering,
and publishes a change event after each commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlite_utils import Database

from station.backend import records
from station.backend.addresses import parse_device_address
from station.backend.errors import DeviceFailed, DeviceTimeout, InvalidInput, NotFound, WrongState
from station.backend.events import (
    CommandChanged,
    DeviceChanged,
    DeviceForgotten,
    DeviceSeen,
    EventBus,
    EventLogged,
    SessionChanged,
)
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
    iso,
    parse_iso,
    utc_now,
)
from station.backend.store import Store
from station.config import Settings
from station.devices.client import DeviceAddress, DeviceClient, DeviceReply

log = logging.getLogger(__name__)

SETTLE_AT_CLOSE = 0.5  # seconds commands in flight get to finish when the station stops

STAFF = "staff"
STATION = "station"

# Which statuses each session action may start from.
START_COLLECTION_FROM = (SessionStatus.CALIBRATING,)
END_FROM = (SessionStatus.CALIBRATING, SessionStatus.COLLECTING)
ABORT_FROM = (SessionStatus.CALIBRATING, SessionStatus.COLLECTING, SessionStatus.STOPPING)
NOTIFY_START_IN = (SessionStatus.CALIBRATING, SessionStatus.COLLECTING)

# The station cannot poll a device without an address: it is judged by its own reports, which
# the sketches send every 3 s (command polls) or 5 s (heartbeats while collecting).
SELF_REPORT_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class Registration:
    device: Device
    previous_address: str | None
    moved_device: str | None  # the device that held this address before, now marked moved


@dataclass(frozen=True, slots=True)
class SessionOutcome:
    """A session after an action, with the commands that action sent to its devices."""

    session: Session
    commands: tuple[Command, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionDetail:
    session: Session
    commands: tuple[Command, ...]
    events: tuple[Event, ...]


def _now() -> str:
    return iso(utc_now()) or ""


def _stamp_epoch(stamp: str | None) -> float | None:
    moment = parse_iso(stamp)
    return moment.timestamp() if moment else None


class StationService:
    def __init__(self, store: Store, client: DeviceClient, settings: Settings) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.events = EventBus()
        self._devices: dict[str, Device] = {}
        self._seen_at: dict[str, float] = {}
        self._seen_dirty: set[str] = set()
        self._inflight: dict[tuple[int, str, CommandKind], asyncio.Task[Command]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Registry changes read a device, await their write, then update the cache: one at a
        # time, or two of them racing would each save a stale copy of the other's device.
        self._registry = asyncio.Lock()

    # ---- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the registry and settle commands a previous run left unanswered."""
        devices = await self.store.read(records.all_devices)
        self._devices = {d.device_code: d for d in devices}
        for device in devices:
            seen = _stamp_epoch(device.last_seen)
            if seen is not None:
                self._seen_at[device.device_code] = seen
        interrupted = await self.store.write(self._settle_interrupted, _now())
        if interrupted:
            log.warning("%d device commands were interrupted by the last shutdown", interrupted)
        self.refresh_liveness()

    @staticmethod
    def _settle_interrupted(db: Database, now: str) -> int:
        commands = records.fail_interrupted_commands(db, now)
        for command in commands:
            records.append_event(
                db,
                now,
                STATION,
                f"command.{command.kind}",
                "failed",
                f"{command.kind} command to {command.device_code} was interrupted by a "
                "station shutdown",
                command.session_id,
                command.device_code,
            )
        return len(commands)

    async def close(self) -> None:
        """Wait briefly for commands in flight, then persist what liveness learnt."""
        pending = [t for t in [*self._inflight.values(), *self._background] if not t.done()]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=SETTLE_AT_CLOSE)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        await self.flush_seen()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def publish_event(self, event: Event | None) -> None:
        """Announce an event-log entry that has been committed."""
        if event is not None:
            self.events.publish(EventLogged(event))

    # ---- registry ----------------------------------------------------------------------------

    def devices(self) -> list[Device]:
        return sorted(self._devices.values(), key=lambda d: d.device_code)

    def device(self, device_code: str) -> Device:
        device = self._devices.get(device_code)
        if device is None:
            raise NotFound(f"Device {device_code} is not registered", device_code=device_code)
        return device

    async def register_device(self, device_code: str, ip_address: str, actor: str) -> Registration:
        """Record where a device listens. Another device on the same address is marked moved."""
        device_code = _require_code(device_code, "device_code")
        host, port = parse_device_address(ip_address, self.settings)
        async with self._registry:
            return await self._register(device_code, host, port, actor)

    async def _register(self, device_code: str, host: str, port: int, actor: str) -> Registration:
        now = _now()
        previous = self._devices.get(device_code)
        holder = next(
            (
                d
                for d in self._devices.values()
                if d.host == host
                and d.port == port
                and d.device_code != device_code
                and d.moved_to is None
            ),
            None,
        )
        device = replace(
            previous or Device(device_code=device_code, host=None, port=80, registered_at=now),
            host=host,
            port=port,
            updated_at=now,
            moved_to=None,
        )
        moved = replace(holder, moved_to=device_code, updated_at=now) if holder else None
        previous_address = previous.address if previous else None
        if previous is None:
            message = f"device {device_code} registered at {device.address}"
        elif previous_address != device.address:
            message = f"device {device_code} moved from {previous_address} to {device.address}"
        else:
            message = f"device {device_code} registered again at {device.address}"

        def write(db: Database) -> list[Event]:
            records.save_device(db, device)
            logged = [
                records.append_event(
                    db,
                    now,
                    actor,
                    "device.register",
                    "ok",
                    message,
                    None,
                    device_code,
                    {"address": device.address, "previous_address": previous_address},
                )
            ]
            if moved is not None:
                records.save_device(db, moved)
                logged.append(
                    records.append_event(
                        db,
                        now,
                        actor,
                        "device.moved",
                        "ok",
                        f"device {moved.device_code} no longer answers at {device.address}: "
                        f"{device_code} registered there",
                        None,
                        moved.device_code,
                        {"address": device.address},
                    )
                )
            return logged

        logged = await self.store.write(write)
        log.info(message)
        if moved is not None:
            moved = self._merge(moved, moved_to=device_code, updated_at=now)
            self.events.publish(DeviceChanged(moved))
            log.warning(
                "device %s marked moved: %s took its address", moved.device_code, device_code
            )
        device = self._merge(device, host=host, port=port, updated_at=now, moved_to=None)
        self.events.publish(DeviceChanged(device))
        for event in logged:
            self.publish_event(event)
        self.record_sign_of_life(device_code, "register")
        return Registration(
            self._devices[device_code], previous_address, moved.device_code if moved else None
        )

    async def rename_device(self, device_code: str, name: str, actor: str = STAFF) -> Device:
        async with self._registry:
            device = replace(self.device(device_code), name=name.strip(), updated_at=_now())
            return await self._save_device_with_event(
                device,
                actor,
                "device.rename",
                f"device {device_code} renamed to '{device.name}'",
                changed=("name", "updated_at"),
            )

    async def forget_device(self, device_code: str, actor: str = STAFF) -> None:
        async with self._registry:
            await self._forget(device_code, actor)

    async def _forget(self, device_code: str, actor: str) -> None:
        self.device(device_code)
        now = _now()

        def write(db: Database) -> Event:
            records.delete_device(db, device_code)
            return records.append_event(
                db,
                now,
                actor,
                "device.forget",
                "ok",
                f"device {device_code} forgotten",
                None,
                device_code,
            )

        event = await self.store.write(write)
        self._devices.pop(device_code, None)
        self._seen_at.pop(device_code, None)
        self._seen_dirty.discard(device_code)
        self.events.publish(DeviceForgotten(device_code))
        self.publish_event(event)

    async def set_group_membership(
        self, group_code: str, device_code: str, member: bool, actor: str = STAFF
    ) -> Device:
        group_code = _require_code(group_code, "group_code")
        async with self._registry:
            return await self._set_membership(group_code, device_code, member, actor)

    async def _set_membership(
        self, group_code: str, device_code: str, member: bool, actor: str
    ) -> Device:
        self.device(device_code)
        now = _now()
        verb = "added to" if member else "removed from"

        def write(db: Database) -> tuple[tuple[str, ...], Event]:
            records.set_membership(db, group_code, device_code, member, now)
            event = records.append_event(
                db,
                now,
                actor,
                "group.member",
                "ok",
                f"device {device_code} {verb} group {group_code}",
                None,
                device_code,
                {"group_code": group_code, "member": member},
            )
            return records.device_groups(db, device_code), event

        groups, event = await self.store.write(write)
        device = self._merge(self.device(device_code), groups=groups)
        self.events.publish(DeviceChanged(device))
        self.publish_event(event)
        return device

    async def groups(self) -> list[dict[str, Any]]:
        return await self.store.read(records.all_groups)

    async def _save_device_with_event(
        self, device: Device, actor: str, action: str, message: str, *, changed: tuple[str, ...]
    ) -> Device:
        """Save a device the caller changed (the fields named in changed) with an event."""
        now = _now()

        def write(db: Database) -> Event:
            records.save_device(db, device)
            return records.append_event(
                db, now, actor, action, "ok", message, None, device.device_code
            )

        event = await self.store.write(write)
        device = self._merge(device, **{name: getattr(device, name) for name in changed})
        self.events.publish(DeviceChanged(device))
        self.publish_event(event)
        return device

    def _merge(self, device: Device, **fields: Any) -> Device:
        """Apply fields to the cached device as it is now: signs of life that arrived while a
        write was pending are kept. A device not cached (new) is taken as given."""
        current = self._devices.get(device.device_code)
        merged = replace(current, **fields) if current is not None else replace(device, **fields)
        self._devices[device.device_code] = merged
        return merged

    # ---- liveness ----------------------------------------------------------------------------

    def record_sign_of_life(
        self,
        device_code: str,
        via: str,
        *,
        status: str | None = None,
        session_id: int | None = None,
        report: bool = False,
    ) -> None:
        """The device spoke to us (or answered us) just now."""
        device = self._devices.get(device_code)
        if device is None:
            return
        now = time.time()
        self._seen_at[device_code] = now
        self._seen_dirty.add(device_code)
        updated = replace(device, last_seen=iso(utc_now()), last_seen_via=via)
        if report:
            updated = replace(updated, reported_status=status, reported_session_id=session_id)
        changed = report and (device.reported_status, device.reported_session_id) != (
            status,
            session_id,
        )
        self._devices[device_code] = updated
        self.events.publish(DeviceSeen(device_code, now, via))
        if changed:
            self.events.publish(DeviceChanged(updated))
        self.refresh_liveness(only=device_code)

    def liveness_of(self, device_code: str, now: float | None = None) -> Liveness:
        seen = self._seen_at.get(device_code)
        if seen is None:
            return Liveness.OFFLINE if device_code in self._devices else Liveness.UNKNOWN
        age = (now or time.time()) - seen
        interval = self.settings.poll_interval
        device = self._devices.get(device_code)
        if device is not None and device.host is None:
            interval = max(interval, SELF_REPORT_INTERVAL)
        if age <= interval * 2:
            return Liveness.ONLINE
        if age <= interval * self.settings.missed_polls_offline:
            return Liveness.STALE
        return Liveness.OFFLINE

    def refresh_liveness(self, only: str | None = None) -> None:
        """Re-derive liveness from last-seen times; log and publish every change."""
        now = time.time()
        codes = [only] if only else list(self._devices)
        for code in codes:
            device = self._devices.get(code)
            if device is None:
                continue
            liveness = self.liveness_of(code, now)
            if liveness == device.liveness:
                continue
            updated = replace(device, liveness=liveness)
            self._devices[code] = updated
            self.events.publish(DeviceChanged(updated))
            if Liveness.STALE in (liveness, device.liveness) and Liveness.OFFLINE not in (
                liveness,
                device.liveness,
            ):
                continue  # online <-> stale is routine jitter: shown, not logged
            self._log_liveness_change(updated, device.liveness)

    def _log_liveness_change(self, device: Device, before: Liveness) -> None:
        code = device.device_code
        if device.liveness == Liveness.OFFLINE:
            message = f"device {code} went offline (last seen {device.last_seen or 'never'})"
            log.warning(message)
        elif before in (Liveness.UNKNOWN, Liveness.OFFLINE) and device.last_seen_via == "register":
            message = f"device {code} is online"
            log.info(message)
        else:
            message = f"device {code} is {device.liveness} again (was {before})"
            log.info(message)
        now = _now()

        def write(db: Database) -> Event:
            records.save_device(db, self._devices.get(code, device))
            return records.append_event(
                db,
                now,
                STATION,
                "device.liveness",
                str(device.liveness),
                message,
                None,
                code,
                {"before": str(before), "last_seen": device.last_seen},
            )

        self.log_in_background(write)
        self._seen_dirty.discard(code)

    def log_in_background(self, write: Callable[[Database], Event]) -> None:
        """Commit an event-log entry without making the caller wait, then announce it."""
        self._spawn(self._write_and_publish(write))

    async def _write_and_publish(self, fn: Any) -> None:
        try:
            self.publish_event(await self.store.write(fn))
        except Exception as exc:
            log.error("could not record a change: %s", exc)

    async def flush_seen(self) -> None:
        """Persist last-seen times in one write; called periodically by the monitor."""
        if not self._seen_dirty:
            return
        dirty = [self._devices[c] for c in self._seen_dirty if c in self._devices]
        self._seen_dirty.clear()
        await self.store.write(records.save_devices, dirty)

    async def heartbeat(
        self,
        device_code: str,
        status: str | None,
        session_id: int | None,
        peer: str | None,
        *,
        via: str = "heartbeat",
    ) -> Device:
        """A device's heartbeat, or a command poll, which reports the same. A device never
        registered is added, without an address."""
        device_code = _require_code(device_code, "device_code")
        if device_code not in self._devices:
            async with self._registry:
                if device_code not in self._devices:  # a registration may have won the race
                    now = _now()
                    device = Device(
                        device_code=device_code,
                        host=None,
                        port=80,
                        registered_at=now,
                        updated_at=now,
                    )
                    await self._save_device_with_event(
                        device,
                        f"device:{device_code}",
                        "device.discover",
                        f"device {device_code} first heard from by {via}"
                        + (f" from {peer}" if peer else "")
                        + "; it has no registered address yet",
                        changed=(),
                    )
        self.record_sign_of_life(
            device_code, via, status=status, session_id=session_id, report=True
        )
        return self._devices[device_code]

    async def check_device(self, device_code: str, actor: str = STAFF) -> DeviceReply:
        """Ask the device for its status now; raise DeviceFailed/DeviceTimeout if it fails."""
        device = self._addressable(device_code)
        reply = await self.client.status(_address(device))
        self.record_poll(device_code, reply)
        if not reply.ok:
            raise _device_error(device, reply, "status")
        return reply

    def record_poll(self, device_code: str, reply: DeviceReply) -> None:
        device = self._devices.get(device_code)
        if device is None:
            return
        if reply.ok:
            if device.last_error is not None:
                self._devices[device_code] = replace(device, last_error=None)
            self.record_sign_of_life(
                device_code,
                "poll",
                status=reply.device_status,
                session_id=reply.session_id,
                report=True,
            )
            return
        if reply.failure == Failure.REJECTED:
            self.record_sign_of_life(device_code, "poll")
        device = self._devices[device_code]
        if device.last_error != reply.error:
            device = replace(device, last_error=reply.error)
            self._devices[device_code] = device
            self._seen_dirty.add(device_code)
            self.events.publish(DeviceChanged(device))

    def pollable_devices(self) -> list[Device]:
        return [d for d in self._devices.values() if d.host is not None and d.moved_to is None]

    # ---- sessions ----------------------------------------------------------------------------

    async def start_session(
        self,
        group_code: str,
        actor: str,
        *,
        openid: str | None = None,
        device_codes: list[str] | None = None,
        also: tuple[str, ...] = (),
    ) -> Session:
        """A new session in `calibrating`, for the group's devices (or the devices given)."""
        group_code = _require_code(group_code, "device_group_code")
        for code in device_codes or ():
            self.device(code)
        now = _now()

        def write(db: Database) -> tuple[Session, Event]:
            if device_codes:
                members = list(device_codes)
            else:
                members = records.group_member_codes(db, group_code)
                if not members and records.get_device(db, group_code) is not None:
                    members = [group_code]  # older firmware uses its device code as group code
            members += [code for code in also if code not in members]
            session_id = records.create_session(db, group_code, openid, actor, now)
            records.add_session_devices(db, session_id, members, now)
            event = records.append_event(
                db,
                now,
                actor,
                "session.start",
                "ok",
                f"session {session_id} started for group {group_code} with "
                f"{len(members)} device(s)",
                session_id,
                None,
                {"device_codes": members, "openid": openid},
            )
            session = records.get_session(db, session_id)
            assert session is not None
            return session, event

        session, event = await self.store.write(write)
        log.info(
            "session %s started by %s for group %s (%d devices)",
            session.session_id,
            actor,
            group_code,
            len(session.device_codes),
        )
        self.events.publish(SessionChanged(session))
        self.publish_event(event)
        return session

    async def session(self, session_id: int) -> Session:
        session = await self.store.read(records.get_session, session_id)
        if session is None:
            raise NotFound("Session not found", session_id=session_id)
        return session

    async def sessions(self, limit: int = 200, status: str | None = None) -> list[Session]:
        return await self.store.read(records.list_sessions, limit, status)

    async def session_detail(self, session_id: int) -> SessionDetail:
        def read(db: Database) -> SessionDetail | None:
            session = records.get_session(db, session_id)
            if session is None:
                return None
            return SessionDetail(
                session,
                tuple(records.session_commands(db, session_id)),
                tuple(records.events(db, session_id=session_id)),
            )

        detail = await self.store.read(read)
        if detail is None:
            raise NotFound("Session not found", session_id=session_id)
        return detail

    async def events_for(
        self, *, session_id: int | None = None, device_code: str | None = None, limit: int = 500
    ) -> list[Event]:
        return await self.store.read(
            lambda db: records.events(
                db, session_id=session_id, device_code=device_code, limit=limit
            )
        )

    def _transition(
        self,
        db: Database,
        session_id: int,
        allowed: tuple[SessionStatus, ...],
        target: SessionStatus,
        actor: str,
        verb: str,
        now: str,
        note: str = "",
        data: dict[str, Any] | None = None,
    ) -> tuple[Session, Event]:
        """Move a session, checked and written in one transaction on the single writer."""
        session = records.get_session(db, session_id)
        if session is None:
            raise NotFound("Session not found", session_id=session_id)
        if session.status not in allowed:
            raise WrongState(
                f"Session {session_id} cannot {verb} while it is {session.status}",
                session_id=session_id,
                current_status=str(session.status),
            )
        records.set_session_status(db, session_id, target, now)
        event = records.append_event(
            db,
            now,
            actor,
            f"session.{target}",
            "ok",
            f"session {session_id} is {target} (was {session.status})" + note,
            session_id,
            None,
            data,
        )
        moved = records.get_session(db, session_id)
        assert moved is not None
        return moved, event

    async def start_collection(
        self, session_id: int, actor: str, *, device_code: str | None = None
    ) -> SessionOutcome:
        """calibrating → collecting, then tell every device of the session to start."""
        if device_code is not None:
            self.device(device_code)
        now = _now()

        def write(db: Database) -> tuple[Session, Event, list[Command]]:
            session, event = self._transition(
                db,
                session_id,
                START_COLLECTION_FROM,
                SessionStatus.COLLECTING,
                actor,
                "start collecting",
                now,
            )
            if device_code is not None and device_code not in session.device_codes:
                records.add_session_devices(db, session_id, [device_code], now)
                session = replace(session, device_codes=(*session.device_codes, device_code))
            commands = [
                self._queue(db, session_id, code, CommandKind.START, actor, now)
                for code in session.device_codes
            ]
            return session, event, commands

        session, event, commands = await self.store.write(write)
        log.info("session %s collecting (by %s)", session_id, actor)
        self.events.publish(SessionChanged(session))
        self.publish_event(event)
        settled = await self._dispatch(session_id, commands)
        return SessionOutcome(session, tuple(settled))

    async def end_session(self, session_id: int, actor: str) -> SessionOutcome:
        """calibrating|collecting → stopping, then tell every started device to stop."""
        now = _now()

        def write(db: Database) -> tuple[Session, Event, list[Command]]:
            session, event = self._transition(
                db, session_id, END_FROM, SessionStatus.STOPPING, actor, "end", now
            )
            commands = [
                self._queue(db, session_id, code, CommandKind.STOP, actor, now)
                for code in self._started_devices(db, session_id)
            ]
            return session, event, commands

        session, event, commands = await self.store.write(write)
        log.info("session %s stopping (by %s)", session_id, actor)
        self.events.publish(SessionChanged(session))
        self.publish_event(event)
        settled = await self._dispatch(session_id, commands)
        session = await self.complete_if_uploaded(session_id)
        return SessionOutcome(session, tuple(settled))

    async def abort_session(self, session_id: int, actor: str = STAFF) -> SessionOutcome:
        """Any active state → stopped; started devices are told to stop, best effort."""
        now = _now()

        def write(db: Database) -> tuple[Session, Event, list[Command]]:
            session, event = self._transition(
                db, session_id, ABORT_FROM, SessionStatus.STOPPED, actor, "be aborted", now
            )
            commands = []
            for code in self._started_devices(db, session_id):
                stop = records.find_command(db, session_id, code, CommandKind.STOP)
                if stop is None or stop.state != CommandState.ACKED:
                    commands.append(self._queue(db, session_id, code, CommandKind.STOP, actor, now))
            return session, event, commands

        session, event, commands = await self.store.write(write)
        log.warning("session %s aborted by %s", session_id, actor)
        self.events.publish(SessionChanged(session))
        self.publish_event(event)
        settled = await self._dispatch(session_id, commands)
        return SessionOutcome(session, tuple(settled))

    @staticmethod
    def _started_devices(db: Database, session_id: int) -> list[str]:
        """Devices of the session that may be recording: every start except those the device
        surely never acted on (refused connection, error reply). A start that timed out may have
        been carried out, so that device is told to stop too."""
        return [
            c.device_code
            for c in records.session_commands(db, session_id)
            if c.kind == CommandKind.START
            and (c.state != CommandState.FAILED or c.failure == Failure.TIMEOUT)
        ]

    async def complete_if_uploaded(self, session_id: int) -> Session:
        """stopping → completed once every device that may have recorded has reported its
        upload complete (a device whose start was refused recorded nothing)."""
        now = _now()

        def write(db: Database) -> tuple[Session, Event | None]:
            session = records.get_session(db, session_id)
            if session is None or session.status != SessionStatus.STOPPING:
                return session, None
            started = self._started_devices(db, session_id)
            if records.devices_not_uploaded(db, session_id, started):
                return session, None
            return self._transition(
                db,
                session_id,
                (SessionStatus.STOPPING,),
                SessionStatus.COMPLETED,
                STATION,
                "complete",
                now,
                note=": every device reported its upload complete",
            )

        session, event = await self.store.write(write)
        if event is not None:
            log.info("session %s completed: every device reported its upload", session_id)
            self.events.publish(SessionChanged(session))
            self.publish_event(event)
        if session is None:
            raise NotFound("Session not found", session_id=session_id)
        return session

    async def finish_session(self, session_id: int, actor: str = STAFF) -> Session:
        """Staff close a stopping session without waiting for every upload; the event log
        names the devices that never reported theirs."""
        now = _now()

        def write(db: Database) -> tuple[Session, Event]:
            missing = records.devices_not_uploaded(
                db, session_id, self._started_devices(db, session_id)
            )
            return self._transition(
                db,
                session_id,
                (SessionStatus.STOPPING,),
                SessionStatus.COMPLETED,
                actor,
                "be finished (end it first)",
                now,
                note=f"; finished by {actor}, devices that never reported their upload "
                f"complete: {', '.join(missing) if missing else 'none'}",
                data={"devices_not_uploaded": missing},
            )

        session, event = await self.store.write(write)
        log.info("session %s finished by %s", session_id, actor)
        self.events.publish(SessionChanged(session))
        self.publish_event(event)
        return session

    # ---- commands ----------------------------------------------------------------------------

    async def notify_device_start(self, session_id: int, device_code: str, actor: str) -> Command:
        """Tell one device to start recording for a session; success without resending when
        it already acknowledged this session's start."""
        device = self._addressable(device_code)
        inflight = self._inflight.get((session_id, device_code, CommandKind.START))
        if inflight is not None:
            return _raise_if_failed(device, await asyncio.shield(inflight))
        now = _now()

        def write(db: Database) -> Command:
            session = records.get_session(db, session_id)
            if session is None:
                raise NotFound("Session not found", session_id=session_id)
            existing = records.find_command(db, session_id, device_code, CommandKind.START)
            if existing is not None and existing.state == CommandState.ACKED:
                return existing
            if session.status not in NOTIFY_START_IN:
                raise WrongState(
                    f"Session {session_id} is {session.status}: devices can only be started "
                    "while it is calibrating or collecting",
                    session_id=session_id,
                    current_status=str(session.status),
                )
            records.add_session_devices(db, session_id, [device_code], now)
            return self._queue(db, session_id, device_code, CommandKind.START, actor, now)

        command = await self.store.write(write)
        command = (await self._dispatch(session_id, [command]))[0]
        return _raise_if_failed(device, command)

    async def notify_device_stop(
        self, device_code: str, actor: str, *, session_id: int | None = None
    ) -> Command:
        """Tell one device to stop recording, for the given session or the one it is in."""
        device = self._addressable(device_code)
        now = _now()

        def write(db: Database) -> Command:
            sid = session_id
            if sid is not None:
                if records.get_session(db, sid) is None:
                    raise NotFound("Session not found", session_id=sid)
            else:
                sid = self._current_session_of(db, device_code)
            if sid is not None:
                existing = records.find_command(db, sid, device_code, CommandKind.STOP)
                if existing is not None and (
                    existing.state == CommandState.ACKED
                    or (sid, device_code, CommandKind.STOP) in self._inflight
                ):
                    return existing
            return self._queue(db, sid, device_code, CommandKind.STOP, actor, now)

        command = await self.store.write(write)
        command = (await self._dispatch(command.session_id, [command]))[0]
        if command.session_id is not None and command.state == CommandState.ACKED:
            await self.complete_if_uploaded(command.session_id)
        return _raise_if_failed(device, command)

    @staticmethod
    def _current_session_of(db: Database, device_code: str) -> int | None:
        row = db.execute(
            "SELECT c.session_id FROM commands c JOIN sessions s ON s.session_id = c.session_id"
            " WHERE c.device_code = ? AND c.kind = 'start' AND c.state != 'failed'"
            " AND s.status IN ('calibrating', 'collecting', 'stopping')"
            " ORDER BY c.session_id DESC LIMIT 1",
            [device_code],
        ).fetchone()
        return row[0] if row else None

    def _addressable(self, device_code: str) -> Device:
        device = self._devices.get(device_code)
        if device is None or device.host is None:
            raise NotFound(
                f"Device {device_code} not registered or IP not found", device_code=device_code
            )
        if device.moved_to is not None:
            raise WrongState(
                f"Device {device_code} no longer answers at {device.address}: device "
                f"{device.moved_to} registered that address since; it must register again",
                device_code=device_code,
                moved_to=device.moved_to,
            )
        return device

    def _queue(
        self,
        db: Database,
        session_id: int | None,
        device_code: str,
        kind: CommandKind,
        actor: str,
        now: str,
    ) -> Command:
        """A ledger entry for one command; an acknowledged one is kept as it is (idempotent)."""
        if session_id is not None:
            existing = records.find_command(db, session_id, device_code, kind)
            if existing is not None and (
                existing.state == CommandState.ACKED
                or (session_id, device_code, kind) in self._inflight
            ):
                return existing
        device = self._devices.get(device_code)
        target = device.address if device else None
        command = records.queue_command(db, session_id, device_code, kind, actor, target, now)
        problem = _undeliverable(device)
        if problem is not None:
            command = records.update_command(
                db,
                command.command_id,
                now,
                state=CommandState.FAILED,
                failure=Failure.UNREACHABLE,
                last_error=problem,
            )
        return command

    async def _dispatch(self, session_id: int | None, commands: list[Command]) -> list[Command]:
        """Send queued commands concurrently; wait for them up to the reply-wait setting."""
        tasks: list[asyncio.Task[Command]] = []
        sending = []
        for command in commands:
            key = (command.session_id, command.device_code, command.kind)
            inflight = self._inflight.get(key) if command.session_id is not None else None
            if inflight is not None:
                tasks.append(inflight)
            elif command.state == CommandState.QUEUED:
                sending.append(command)
            else:
                self.events.publish(CommandChanged(command))
        if sending:
            now = _now()
            self.store.write_soon(
                _mark_sent, [(c.command_id, _target(c, self._devices)) for c in sending], now
            )
        for command in sending:
            key = (command.session_id, command.device_code, command.kind)
            task = self._spawn(self._deliver(command))  # close() waits for every delivery
            if command.session_id is not None:
                self._inflight[key] = task
                task.add_done_callback(lambda _t, k=key: self._inflight.pop(k, None))
            tasks.append(task)
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.reply_wait)
        return await self._reread(commands) if commands else []

    async def _reread(self, commands: list[Command]) -> list[Command]:
        ids = [c.command_id for c in commands]
        return await self.store.read(lambda db: [records.get_command(db, i) for i in ids])

    async def _deliver(self, command: Command) -> Command:
        device = self._devices[command.device_code]
        self.events.publish(CommandChanged(replace(command, state=CommandState.SENT)))
        try:
            reply = await self._send(command, _address(device))
        except Exception as exc:  # a bug must not leave the ledger entry hanging in "sent"
            log.exception("sending %s to %s failed", command.kind, command.device_code)
            reply = DeviceReply(
                ok=False,
                attempts=1,
                elapsed_ms=0.0,
                failure=Failure.UNREACHABLE,
                error=f"the station could not send the command: {exc}",
            )
        if reply.ok or reply.failure == Failure.REJECTED:
            self.record_sign_of_life(command.device_code, f"command.{command.kind}")
        return await self._record_reply(command, device, reply)

    async def _send(self, command: Command, address: DeviceAddress) -> DeviceReply:
        if command.kind == CommandKind.STOP and command.session_id is not None:
            # A start still retrying must not land after this stop: the device would go on
            # recording with its session over.
            start = self._inflight.get((command.session_id, command.device_code, CommandKind.START))
            if start is not None:
                await asyncio.wait([start])
        if command.kind == CommandKind.START:
            assert command.session_id is not None
            return await self.client.start_collection(
                address, command.session_id, command.device_code
            )
        return await self.client.stop_collection(address, command.device_code)

    async def _record_reply(self, command: Command, device: Device, reply: DeviceReply) -> Command:
        now = _now()
        state = CommandState.ACKED if reply.ok else CommandState.FAILED
        what = f"{command.kind} command to {device.device_code}"
        if reply.ok:
            message = f"{what} acknowledged in {reply.elapsed_ms:.0f} ms"
        else:
            message = f"{what} failed: {reply.error}"

        def write(db: Database) -> tuple[Command, Event]:
            previous = records.get_command(db, command.command_id)
            updated = records.update_command(
                db,
                command.command_id,
                now,
                state=state,
                attempts=previous.attempts + reply.attempts,
                failure=reply.failure,
                last_error=reply.error,
                http_status=reply.http_status,
                reply=reply.body,
                round_trip_ms=round(reply.elapsed_ms, 1),
            )
            event = records.append_event(
                db,
                now,
                STATION,
                f"command.{command.kind}",
                str(state),
                message,
                command.session_id,
                device.device_code,
                {
                    "attempts": reply.attempts,
                    "http_status": reply.http_status,
                    "failure": str(reply.failure) if reply.failure else None,
                },
            )
            return updated, event

        updated, event = await self.store.write(write)
        (log.info if reply.ok else log.warning)(
            "session %s: %s", command.session_id if command.session_id else "-", message
        )
        self.events.publish(CommandChanged(updated))
        self.publish_event(event)
        return updated


def _mark_sent(db: Database, targets: list[tuple[int, str | None]], now: str) -> None:
    for command_id, target in targets:
        records.update_command(db, command_id, now, state=CommandState.SENT, target=target)


def _target(command: Command, devices: dict[str, Device]) -> str | None:
    device = devices.get(command.device_code)
    return device.address if device else command.target


def _require_code(value: str | None, field: str) -> str:
    value = (value or "").strip()
    if not value:
        raise InvalidInput(f"{field} is required", field=field)
    if len(value) > 64:
        raise InvalidInput(f"{field} is longer than 64 characters", field=field)
    return value


def _address(device: Device) -> DeviceAddress:
    assert device.host is not None
    return DeviceAddress(device.host, device.port)


def _undeliverable(device: Device | None) -> str | None:
    if device is None or device.host is None:
        return "the device has not registered an address with the station"
    if device.moved_to is not None:
        return f"device {device.moved_to} registered this device's address since"
    return None


def _device_error(device: Device, reply: DeviceReply, what: str) -> DeviceFailed | DeviceTimeout:
    cls = DeviceTimeout if reply.failure == Failure.TIMEOUT else DeviceFailed
    return cls(
        f"Device {device.device_code} {what} failed: {reply.error}",
        device_code=device.device_code,
        esp32_ip=device.address,
        failure=str(reply.failure),
        http_status=reply.http_status,
        esp32_response=reply.body,
        attempts=reply.attempts,
    )


def _raise_if_failed(device: Device, command: Command) -> Command:
    if command.state == CommandState.ACKED:
        return command
    if command.state == CommandState.FAILED:
        cls = DeviceTimeout if command.failure == Failure.TIMEOUT else DeviceFailed
        raise cls(
            f"Failed to notify device {device.device_code}: {command.last_error}",
            device_code=device.device_code,
            esp32_ip=command.target,
            failure=str(command.failure),
            http_status=command.http_status,
            esp32_response=command.reply,
            attempts=command.attempts,
            command=command.to_json(),
        )
    raise DeviceTimeout(
        f"Device {device.device_code} has not answered yet; the command is still {command.state}",
        device_code=device.device_code,
        esp32_ip=command.target,
        command=command.to_json(),
    )
