"""The HTTP face of the station: the mini-program and device API under /wxapp/ (and its alias
/api/), the station's own read API under /api/v1/, and /healthz.

Handlers are thin: read the parameters, call the service, shape the reply with the keys existing
clients read. Every failure becomes a JSON body {"error": "..."} with the right status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from station import __version__
from station.backend import records
from station.backend.compat_api import add_routes as add_compat_routes
from station.backend.errors import InvalidInput, StationError
from station.backend.models import Command, CommandKind, CommandState, Session, iso, utc_now
from station.backend.params import Params, read_params
from station.backend.service import SessionOutcome, StationService
from station.backend.store import schema_version
from station.backend.uploads import UploadService

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVICE = web.AppKey("service", StationService)
STARTED = web.AppKey("started", float)

PREFIXES = ("/wxapp", "/api")


def reply(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as JSON with the right status; never a traceback on the wire."""
    try:
        return await handler(request)
    except StationError as exc:
        if exc.status >= 500:
            log.info("%s %s answered %d: %s", request.method, request.path, exc.status, exc.message)
        response = reply(exc.to_json(), exc.status)
        if request.content.exception() is not None:
            # aiohttp drops a connection whose body it could not decode once the reply is out;
            # saying so keeps a keep-alive client from sending its next request down it.
            response.force_close()
        return response
    except web.HTTPException as exc:
        return _http_error(request, exc)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return reply({"error": "internal error: the station logged the details"}, 500)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 413:
        limit = request.app._client_max_size  # noqa: SLF001 - aiohttp exposes no getter
        body = {
            "error": f"request body is larger than the limit of {limit} bytes",
            "limit_bytes": limit,
        }
    elif exc.status == 404:
        body = {"error": f"no such endpoint: {request.path}"}
    elif exc.status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
        body = {"error": f"{request.method} is not allowed here", "allowed_methods": allowed}
        response = reply(body, 405)
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response
    else:
        body = {"error": exc.reason}
    return reply(body, exc.status)


def _actor(request: web.Request, params: Params) -> str:
    openid = params.text("openid")
    if openid:
        return f"miniprogram:{openid}"
    return f"http:{request.remote or 'unknown'}"


def _usage(path: str, required: list[str], optional: list[str], example: dict[str, Any]):
    """What a GET on a POST endpoint answers, as the original server did."""

    async def handler(request: web.Request) -> web.Response:
        return reply(
            {
                "msg": f"POST {path} with form fields or a JSON object",
                "method": "POST",
                "required_params": required,
                "optional_params": optional,
                "example": example,
            }
        )

    return handler


def _command_summary(command: Command) -> dict[str, Any]:
    return {
        "device_code": command.device_code,
        "kind": str(command.kind),
        "state": str(command.state),
        "attempts": command.attempts,
        "error": command.last_error,
        "failure": str(command.failure) if command.failure else None,
        "round_trip_ms": command.round_trip_ms,
    }


def _outcome_fields(outcome: SessionOutcome) -> dict[str, Any]:
    commands = outcome.commands
    return {
        "devices": [_command_summary(c) for c in commands],
        "devices_total": len(commands),
        "devices_acked": sum(c.state == CommandState.ACKED for c in commands),
        "devices_failed": sum(c.state == CommandState.FAILED for c in commands),
    }


class WxappApi:
    """The endpoints existing mini-program code and firmware call."""

    def __init__(self, service: StationService) -> None:
        self.service = service

    async def register_device_ip(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        device_code = params.text("device_code", required=True)
        assert device_code is not None
        ip_address = params.text("ip_address") or request.remote
        if not ip_address:
            raise InvalidInput("ip_address is required: the request's own address is unknown")
        registration = await self.service.register_device(
            device_code, ip_address, f"device:{device_code}"
        )
        device = registration.device
        return reply(
            {
                "msg": f"Device {device_code} IP registered successfully",
                "device_code": device_code,
                "ip_address": ip_address,
                "address": device.address,
                "previous_address": registration.previous_address,
                "moved_device": registration.moved_device,
            }
        )

    async def start_session(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        openid = params.text("openid")
        group_code = params.text("device_group_code")
        if not openid or not group_code:
            raise InvalidInput(
                "openid and device_group_code required", required=["openid", "device_group_code"]
            )
        device_codes = params.text_list("device_codes")
        # The original server took device_code to pick which device to tell; here that device
        # takes part in the session, besides the group's.
        extra = params.text("device_code")
        also = (
            (extra,) if extra and extra in {d.device_code for d in self.service.devices()} else ()
        )
        session = await self.service.start_session(
            group_code, _actor(request, params), openid=openid, device_codes=device_codes, also=also
        )
        return reply(
            {
                "msg": "session started",
                "session_id": session.session_id,
                "status": str(session.status),
                "calibration_command": f"CALIBRATE_{group_code}",
                "device_group_code": group_code,
                "device_codes": list(session.device_codes),
                "timestamp": session.started_at,
            }
        )

    async def start_data_collection(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        session_id = params.integer("session_id", required=True)
        assert session_id is not None
        outcome = await self.service.start_collection(
            session_id, _actor(request, params), device_code=params.text("device_code")
        )
        return reply(
            {
                "msg": "Data collection started",
                "session_id": session_id,
                "status": str(outcome.session.status),
                **_outcome_fields(outcome),
            }
        )

    async def notify_device_start(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        session_id = params.integer("session_id")
        device_code = params.text("device_code")
        if session_id is None or device_code is None:
            raise InvalidInput(
                "session_id and device_code required", required=["session_id", "device_code"]
            )
        command = await self.service.notify_device_start(
            session_id, device_code, _actor(request, params)
        )
        return reply(
            {
                "msg": f"Device {device_code} notified to start collection",
                "session_id": session_id,
                "device_code": device_code,
                "esp32_ip": command.target,
                "esp32_response": command.reply,
                "command": _command_summary(command),
            }
        )

    async def notify_device_stop(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        device_code = params.text("device_code", required=True)
        assert device_code is not None
        command = await self.service.notify_device_stop(
            device_code, _actor(request, params), session_id=params.integer("session_id")
        )
        return reply(
            {
                "msg": f"Device {device_code} notified to stop collection",
                "device_code": device_code,
                "session_id": command.session_id,
                "esp32_ip": command.target,
                "esp32_response": command.reply,
                "command": _command_summary(command),
            }
        )

    async def end_session(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        session_id = params.integer("session_id", required=True)
        assert session_id is not None
        outcome = await self.service.end_session(session_id, _actor(request, params))
        return reply(
            {
                "msg": "session ended",
                "session_id": session_id,
                "status": str(outcome.session.status),
                "timestamp": outcome.session.stopping_at,
                **_outcome_fields(outcome),
            }
        )

    async def get_device_status(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        device_code = params.text("device_code", required=True)
        assert device_code is not None
        answer = await self.service.check_device(device_code, _actor(request, params))
        device = self.service.device(device_code)
        return reply(
            {
                "msg": f"Device {device_code} status",
                "device_code": device_code,
                "esp32_ip": device.address,
                "connection_status": "connected",
                "status": answer.data if answer.data is not None else answer.body,
                "liveness": str(device.liveness),
                "last_seen": device.last_seen,
            }
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        device_code = params.text("device_code", required=True)
        assert device_code is not None
        status = params.text("status", default="collecting")
        raw_session = params.text("session_id")
        session_id = params.integer("session_id") if raw_session not in (None, "0") else None
        await self.service.heartbeat(device_code, status, session_id, request.remote)
        return reply(
            {
                "msg": "心跳接收成功",
                "device_code": device_code,
                "session_id": raw_session or "",
                "status": status,
                "timestamp": iso(utc_now()),
            }
        )

    def routes(self) -> list[tuple[str, str, Handler, list[str], list[str]]]:
        """(name, method, handler, required, optional) for each endpoint."""
        return [
            (
                "register_device_ip",
                "POST",
                self.register_device_ip,
                ["device_code"],
                ["ip_address"],
            ),
            (
                "start_session",
                "POST",
                self.start_session,
                ["openid", "device_group_code"],
                ["device_codes", "device_code"],
            ),
            (
                "start_data_collection",
                "POST",
                self.start_data_collection,
                ["session_id"],
                ["device_code"],
            ),
            (
                "notify_device_start",
                "POST",
                self.notify_device_start,
                ["session_id", "device_code"],
                [],
            ),
            (
                "notify_device_stop",
                "POST",
                self.notify_device_stop,
                ["device_code"],
                ["session_id"],
            ),
            ("end_session", "POST", self.end_session, ["session_id"], []),
            ("get_device_status", "GET_POST", self.get_device_status, ["device_code"], []),
            ("esp32/heartbeat", "POST", self.heartbeat, ["device_code"], ["status", "session_id"]),
        ]


class StationApi:
    """The station's own JSON API, for scripts, dashboards and tests."""

    def __init__(self, service: StationService, uploads: UploadService, started: float) -> None:
        self.service = service
        self.uploads = uploads
        self.started = started

    async def healthz(self, request: web.Request) -> web.Response:
        devices = self.service.devices()
        version = await self.service.store.read(schema_version)
        return reply(
            {
                "status": "ok",
                "version": __version__,
                "schema_version": version,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "devices": len(devices),
                "devices_online": sum(d.liveness == "online" for d in devices),
            }
        )

    async def devices(self, request: web.Request) -> web.Response:
        return reply({"devices": [d.to_json() for d in self.service.devices()]})

    async def device(self, request: web.Request) -> web.Response:
        code = request.match_info["device_code"]
        device = self.service.device(code)
        commands = await self.service.store.read(records.device_commands, code)
        events = await self.service.events_for(device_code=code, limit=100)
        return reply(
            {
                "device": device.to_json(),
                "commands": [c.to_json() for c in commands],
                "events": [e.to_json() for e in events],
            }
        )

    async def sessions(self, request: web.Request) -> web.Response:
        params = Params(request.query)
        limit = params.integer("limit") or 200
        sessions = await self.service.sessions(
            limit=min(limit, 10_000), status=params.text("status")
        )
        return reply({"sessions": [s.to_json() for s in sessions]})

    async def session(self, request: web.Request) -> web.Response:
        session_id = Params(request.match_info).integer("session_id", required=True)
        assert session_id is not None
        detail = await self.service.session_detail(session_id)
        stats = await self.uploads.session_stats(session_id)
        return reply(
            {
                "session": detail.session.to_json(),
                "devices": self._session_devices(detail.session, detail.commands, stats),
                "raw_uploads": stats["raw_uploads"],
                "commands": [c.to_json() for c in detail.commands],
                "events": [e.to_json() for e in detail.events],
            }
        )

    def _session_devices(
        self, session: Session, commands: tuple[Command, ...], stats: dict[str, Any]
    ) -> list[dict]:
        known = {d.device_code: d for d in self.service.devices()}
        rows = []
        for code in sorted({*session.device_codes, *stats["devices"]}):
            device = known.get(code)
            latest = {c.kind: c for c in commands if c.device_code == code}
            rows.append(
                {
                    "device_code": code,
                    "liveness": str(device.liveness) if device else "unknown",
                    "address": device.address if device else None,
                    "start": _command_summary(latest[CommandKind.START])
                    if CommandKind.START in latest
                    else None,
                    "stop": _command_summary(latest[CommandKind.STOP])
                    if CommandKind.STOP in latest
                    else None,
                    **stats["devices"].get(code, {"samples": 0, "upload": "pending"}),
                }
            )
        return rows

    async def abort(self, request: web.Request) -> web.Response:
        session_id = Params(request.match_info).integer("session_id", required=True)
        assert session_id is not None
        params = await read_params(request)
        outcome = await self.service.abort_session(session_id, _actor(request, params))
        return reply({"session": outcome.session.to_json(), **_outcome_fields(outcome)})

    async def finish(self, request: web.Request) -> web.Response:
        session_id = Params(request.match_info).integer("session_id", required=True)
        assert session_id is not None
        params = await read_params(request)
        session = await self.service.finish_session(session_id, _actor(request, params))
        return reply({"session": session.to_json()})

    async def groups(self, request: web.Request) -> web.Response:
        return reply({"groups": await self.service.groups()})

    async def add_member(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        device_code = params.text("device_code", required=True)
        assert device_code is not None
        device = await self.service.set_group_membership(
            request.match_info["group_code"], device_code, True, _actor(request, params)
        )
        return reply({"device": device.to_json()})

    async def remove_member(self, request: web.Request) -> web.Response:
        device = await self.service.set_group_membership(
            request.match_info["group_code"],
            request.match_info["device_code"],
            False,
            f"http:{request.remote or 'unknown'}",
        )
        return reply({"device": device.to_json()})


def build_app(service: StationService, *, max_body_bytes: int) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=max_body_bytes)
    app[SERVICE] = service
    app[STARTED] = time.monotonic()
    wxapp = WxappApi(service)
    for name, method, handler, required, optional in wxapp.routes():
        example = {field: "..." for field in required}
        for prefix in PREFIXES:
            path = f"{prefix}/{name}"
            usage = _usage(f"{path}/", required, optional, example)
            for variant in (path, f"{path}/"):
                # Both spellings are real routes: a redirect would lose a POST body.
                app.router.add_post(variant, handler)
                app.router.add_get(variant, handler if method == "GET_POST" else usage)

    uploads = UploadService(service)
    add_compat_routes(app, service, uploads, PREFIXES)
    own = StationApi(service, uploads, app[STARTED])
    app.router.add_get("/healthz", own.healthz)
    app.router.add_get("/api/v1/devices", own.devices)
    app.router.add_get("/api/v1/devices/{device_code}", own.device)
    app.router.add_get("/api/v1/sessions", own.sessions)
    app.router.add_get("/api/v1/sessions/{session_id}", own.session)
    app.router.add_post("/api/v1/sessions/{session_id}/abort", own.abort)
    app.router.add_post("/api/v1/sessions/{session_id}/finish", own.finish)
    app.router.add_get("/api/v1/groups", own.groups)
    app.router.add_post("/api/v1/groups/{group_code}/devices", own.add_member)
    app.router.add_delete("/api/v1/groups/{group_code}/devices/{device_code}", own.remove_member)
    return app
