"""The rest of the original server's surface under /wxapp/ (and /api/): sample uploads, upload
completion, command polling and confirmations, and the mini-program's helpers. Parameter names,
reply keys and value types are those existing firmware and mini-program code rely on."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from station.backend.errors import InvalidInput, NotFound
from station.backend.models import SessionStatus, iso, iso_from_ms, parse_iso, utc_now
from station.backend.params import MAX_SESSION_ID, Params, read_params
from station.backend.samples import (
    SENSOR_TYPES,
    SampleError,
    parse_batch,
    parse_json_text,
    parse_sample,
)
from station.backend.service import StationService
from station.backend.uploads import UploadRefused, UploadService

COMPLETION_CODE = "DATA_COLLECTION_COMPLETE_2024"
TEST_OPENID = "test_user_123456"
CONFIRMATIONS = ("START_COLLECTION_CONFIRMED", "STOP_COLLECTION_CONFIRMED")
MAX_SENSOR_TYPE = 32
MAX_CODE = 64


def reply(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _session_id(params: Params, *, required: bool = False) -> int | None:
    """session_id for uploads: the original answered 404 for one that is not a number."""
    try:
        return params.integer("session_id", required=required)
    except InvalidInput:
        if params.text("session_id") is None:
            raise
        raise NotFound(
            "Session not found or invalid session_id", session_id=params.text("session_id")
        ) from None


def _device_code(params: Params) -> str | None:
    """device_code when given, held to the same 64-character limit as registration."""
    value = params.text("device_code")
    if value is not None and len(value) > MAX_CODE:
        raise InvalidInput(f"device_code is longer than {MAX_CODE} characters", field="device_code")
    return value


def _summary(acc: tuple[float, ...], gyro: tuple[float, ...], angle: tuple[float, ...]) -> dict:
    return {
        "acc_magnitude": round(math.sqrt(sum(v * v for v in acc)), 2),
        "gyro_magnitude": round(math.sqrt(sum(v * v for v in gyro)), 2),
        "angle_range": {axis: round(abs(v), 1) for axis, v in zip("xyz", angle, strict=True)},
    }


class CompatApi:
    def __init__(self, service: StationService, uploads: UploadService) -> None:
        self.service = service
        self.uploads = uploads

    # ---- uploads -----------------------------------------------------------------------------

    async def esp32_upload(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        device_code = _device_code(params)
        sensor_type = params.text("sensor_type")
        data_text = params.raw("data")
        if not device_code or not sensor_type or data_text in (None, ""):
            raise InvalidInput(
                "Missing required parameters", required=["device_code", "sensor_type", "data"]
            )
        if sensor_type not in SENSOR_TYPES:
            raise InvalidInput(f"Invalid sensor_type. Must be one of: {list(SENSOR_TYPES)}")
        data = data_text if isinstance(data_text, dict) else _json_object(data_text)
        session = await self.uploads.session_for_upload(_session_id(params), device_code)
        try:
            sample = parse_sample(
                data,
                parse_iso(session.started_at) if session else None,
                fallback_time=params.raw("timestamp"),
            )
        except SampleError as exc:
            raise InvalidInput(_single_sample_error(str(exc)), detail=str(exc)) from None
        stored = await self.uploads.store_samples(
            device_code, sensor_type, session, [sample], count_session=True
        )
        body: dict[str, Any] = {
            "msg": "ESP32 data upload success",
            "data_id": stored.first_id,
            "device_code": device_code,
            "sensor_type": sensor_type,
            "timestamp": iso(utc_now()),
            "sensor_data_summary": _summary(sample.acc, sample.gyro, sample.angle),
        }
        if session is not None:
            body |= {
                "session_id": session.session_id,
                "session_status": str(session.status),
                "session_stats": {
                    "total_data_points": stored.session_total,
                    "active_sensor_types": stored.session_sensor_types,
                },
            }
        return reply(body)

    async def esp32_batch_upload(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        batch = params.raw("batch_data")
        device_code = _device_code(params)
        sensor_type = params.text("sensor_type")
        if batch in (None, "") or not device_code or not sensor_type:
            raise InvalidInput(
                "Missing required parameters",
                required=["batch_data", "device_code", "sensor_type"],
                received={
                    name: "present" if params.raw(name) not in (None, "") else "missing"
                    for name in ("batch_data", "device_code", "sensor_type")
                },
            )
        if len(sensor_type) > MAX_SENSOR_TYPE:
            raise InvalidInput(f"sensor_type is longer than {MAX_SENSOR_TYPE} characters")
        session = await self.uploads.session_for_upload(_session_id(params), device_code)
        text = batch if isinstance(batch, str) else json.dumps(batch)
        try:
            accepted, refused = parse_batch(
                text, parse_iso(session.started_at) if session else None
            )
        except SampleError as exc:
            reason = str(exc)
            if not reason.startswith(("batch_data must be a JSON array", "batch_data holds")):
                reason = f"Invalid JSON format for batch_data: {reason}"
            raise InvalidInput(reason, data_preview=text[:200]) from None
        results: list[dict[str, Any]] = []
        if accepted:
            stored = await self.uploads.store_samples(
                device_code, sensor_type, session, [s for _i, s in accepted]
            )
            server_time = iso(utc_now())
            results = [
                {
                    "index": index,
                    "data_id": stored.first_id + n,
                    "server_timestamp": server_time,
                    "esp32_timestamp": iso_from_ms(sample.device_ms),
                }
                for n, (index, sample) in enumerate(accepted)
            ]
        body = {
            "msg": "Batch upload completed",
            "total_items": len(accepted) + len(refused),
            "successful_items": len(accepted),
            "failed_items": len(refused),
            "results": results,
            "refused": [r.to_json() for r in refused],
        }
        if session is not None:
            body["session_id"] = session.session_id
        if refused and not accepted:
            body["error"] = "no item of batch_data could be stored"
            return reply(body, 400)
        return reply(body)

    async def upload_sensor_data(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        device_code = _device_code(params)
        sensor_type = params.text("sensor_type")
        data = params.raw("data")
        if not device_code or not sensor_type or data in (None, ""):
            raise InvalidInput("device_code, sensor_type and data required")
        session = await self.uploads.session_for_upload(_session_id(params), device_code)
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        upload_id = await self.uploads.store_raw(
            device_code, sensor_type[:MAX_SENSOR_TYPE], session, text
        )
        return reply({"msg": "data upload success", "data_id": upload_id})

    async def mark_upload_complete(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        device_code = _device_code(params)
        if params.text("session_id") is None or not device_code:
            raise InvalidInput("session_id and device_code required")
        session_id = _session_id(params, required=True)
        assert session_id is not None
        stats = _json_or_empty(params.raw("upload_stats"))
        session = await self.uploads.mark_upload_complete(session_id, device_code, stats)
        return reply(
            {
                "msg": "ESP32 data upload completed",
                "session_id": session_id,
                "device_code": device_code,
                "session_status": str(session.status),
                "data_collection_stats": await self.uploads.collection_stats(session),
                "upload_stats": stats,
                **_no_analysis(),
            }
        )

    # ---- completion from the mini-program ----------------------------------------------------

    async def mark_complete(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        session_id = _session_id(params, required=True)
        assert session_id is not None
        code = params.text("completion_code")
        if code and code != COMPLETION_CODE:
            raise InvalidInput("Invalid completion code")
        session = await self.service.session(session_id)
        if session.status not in (SessionStatus.CALIBRATING, SessionStatus.COLLECTING):
            raise UploadRefused("Session not in active state", current_status=str(session.status))
        actor = f"http:{request.remote or 'unknown'}"
        outcome = await self.service.end_session(session_id, actor)
        return reply(
            {
                "msg": "Data collection marked as complete",
                "session_id": session_id,
                "session_status": str(outcome.session.status),
                "data_collection_stats": await self.uploads.collection_stats(outcome.session),
                **_no_analysis(),
            }
        )

    async def get_latest_session(self, request: web.Request) -> web.Response:
        session, total = await self.uploads.latest_session()
        if session is None:
            return reply(
                {"error": "No sessions found", "message": "暂无数据收集会话", "total_sessions": 0},
                404,
            )
        return reply(
            {
                "success": True,
                "session": {
                    "id": session.session_id,
                    "status": str(session.status),
                    "start_time": session.started_at,
                    "end_time": session.ended_at or session.stopping_at,
                    "wx_user_id": session.openid or "unknown",
                },
                "total_sessions": total,
            }
        )

    # ---- device status, heartbeat, polling ---------------------------------------------------

    async def esp32_status(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        device_code = params.text("device_code", required=True)
        assert device_code is not None
        status = params.text("status")
        if status in CONFIRMATIONS:
            session_id = params.integer("session_id", required=True)
            assert session_id is not None
            await self.uploads.confirm(device_code, status, session_id)
            return reply(
                {
                    "msg": "状态更新成功",
                    "device_code": device_code,
                    "status": status,
                    "session_id": str(session_id),
                    "timestamp": iso(utc_now()),
                }
            )
        overview = await self.uploads.device_overview(device_code)
        return reply({"device_code": device_code, **overview})

    async def poll_commands(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        device_code = params.text("device_code", required=True)
        assert device_code is not None
        current = params.text("current_session", default="")
        status = params.text("status", default="idle")
        reported = _reported_session(current)
        await self.service.heartbeat(
            device_code, status, reported, request.remote, via="poll_commands"
        )
        polled = await self.uploads.poll_commands(device_code, reported)
        if polled is None:
            # No `command` key at all: the polling sketch crashes on a null command.
            return reply(
                {
                    "device_code": device_code,
                    "current_session": current,
                    "status": status,
                    "message": "无新指令",
                }
            )
        start = polled.kind == "start"
        return reply(
            {
                "device_code": device_code,
                "command": "START_COLLECTION" if start else "STOP_COLLECTION",
                "session_id": str(polled.session_id),
                "timestamp": iso(utc_now()),
                "message": "开始采集指令" if start else "停止采集指令",
            }
        )

    # ---- mini-program helpers ----------------------------------------------------------------

    async def bind_device(self, request: web.Request) -> web.Response:
        params = await read_params(request)
        openid = params.text("openid")
        device_code = _device_code(params)
        if not openid or not device_code:
            raise InvalidInput("openid and device_code required")
        await self.uploads.bind_device(openid[:64], device_code[:64])
        return reply({"msg": "device bind success"})

    async def simple_login(self, request: web.Request) -> web.Response:
        user_id = await self.uploads.user_id(TEST_OPENID)
        return reply(
            {"msg": "ok", "openid": TEST_OPENID, "user_id": user_id, "message": "测试用户登录成功"}
        )

    async def login(self, request: web.Request) -> web.Response:
        return reply(
            {
                "error": "WeChat login needs the WeChat cloud, which the station does not use: "
                "call simple_login, or send the user's openid directly",
                "alternative": "simple_login",
            },
            501,
        )

    async def get_analysis(self, request: web.Request) -> web.Response:
        return reply(
            {
                "error": "The station does not run the swing analysis; export the session's data "
                "and analyse it with the lab's own tools",
            },
            501,
        )


def _no_analysis() -> dict[str, Any]:
    """The analysis keys the original replies carried (the timer sketch looks for
    analysis_triggered); the station runs no analysis and says so."""
    return {
        "analysis_triggered": False,
        "analysis_id": None,
        "analysis_status": "not_run",
        "error_message": "the station runs no analysis",
    }


def _json_object(text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        raise InvalidInput("Invalid JSON data format")
    try:
        value = parse_json_text(text)
    except (ValueError, RecursionError):
        raise InvalidInput("Invalid JSON data format") from None
    if not isinstance(value, dict):
        raise InvalidInput("Missing required field: acc")
    return value


def _reported_session(current: str) -> int | None:
    """The session a polling device says it runs; it sends "" when idle."""
    if not (current.isascii() and current.isdigit() and len(current) <= 19):
        return None
    number = int(current)
    return number if 0 < number <= MAX_SESSION_ID else None


def _json_or_empty(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value.strip():
        return {}
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _single_sample_error(reason: str) -> str:
    """The original server's wording for a bad single sample."""
    for field in ("acc", "gyro", "angle"):
        if reason == f"missing {field}":
            return f"Missing required field: {field}"
        if reason.startswith(field):
            return f"Invalid {field} format. Must be [x, y, z] array"
    return "Invalid sample: " + reason


def add_routes(
    app: web.Application,
    service: StationService,
    uploads: UploadService,
    prefixes: tuple[str, ...],
) -> None:
    api = CompatApi(service, uploads)
    posts = {
        "esp32/upload": api.esp32_upload,
        "esp32/batch_upload": api.esp32_batch_upload,
        "esp32/mark_upload_complete": api.mark_upload_complete,
        "upload_sensor_data": api.upload_sensor_data,
        "esp32/status": api.esp32_status,
        "esp32/poll_commands": api.poll_commands,
        "mark_complete": api.mark_complete,
        "bind_device": api.bind_device,
        "simple_login": api.simple_login,
        "login": api.login,
        "get_analysis": api.get_analysis,
    }
    gets = {
        "get_latest_session": api.get_latest_session,
        "login": api.login,
        "get_analysis": api.get_analysis,
    }
    for prefix in prefixes:
        for name, handler in posts.items():
            for path in (f"{prefix}/{name}", f"{prefix}/{name}/"):
                app.router.add_post(path, handler)
        for name, handler in gets.items():
            for path in (f"{prefix}/{name}", f"{prefix}/{name}/"):
                app.router.add_get(path, handler)
