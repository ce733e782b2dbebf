"""The mini-program's smaller calls (mark_complete, get_latest_session, bind_device, the logins,
get_analysis) in form and JSON encodings, and the whole original surface under both prefixes,
with and without the trailing slash, never answering a bad request with a 500."""

from __future__ import annotations

import math
from typing import Any

import pytest

from station.backend.models import parse_iso
from station.backend.runtime import Station
from tests.backend.conftest import DEVICE_CODE, Api, StartDevice
from tests.backend.firmware import RAW_FORM, TIMER_SESSION, set_next_session_id
from tests.backend.test_errors import BAD_BODIES

COMPLETION_CODE = "DATA_COLLECTION_COMPLETE_2024"
TEST_OPENID = "test_user_123456"
ENCODINGS = ["form", "json"]


def body_of(encoding: str, fields: dict[str, Any]) -> dict[str, Any]:
    if encoding == "json":
        return {"json": fields}
    return {"data": {k: str(v) for k, v in fields.items()}}


# ---- mark_complete -----------------------------------------------------------------------------


async def test_timer_sketch_marks_its_session_complete(station: Station, api: Api) -> None:
    await set_next_session_id(station, TIMER_SESSION)
    assert await api.start_session("timer") == TIMER_SESSION
    raw = f"session_id=123&completion_code={COMPLETION_CODE}".encode()

    async with api.http.post(
        api.base_url + "/wxapp/mark_complete/", data=raw, headers=RAW_FORM
    ) as response:
        text = await response.text()
        body = await response.json()

    assert response.status == 200, text
    assert "analysis_triggered" in text  # all the sketch looks for
    assert body["msg"] == "Data collection marked as complete"
    assert body["session_id"] == TIMER_SESSION
    assert body["session_status"] == "completed"  # no device had started
    stats = body["data_collection_stats"]
    assert (stats["total_data_points"], stats["sensor_types"]) == (0, [])
    assert math.isfinite(stats["collection_duration_seconds"])
    assert (body["analysis_triggered"], body["analysis_id"], body["analysis_status"]) == (
        False,
        None,
        "not_run",
    )
    assert isinstance(body["error_message"], str)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("code", [COMPLETION_CODE, "", None])
async def test_mark_complete_ends_a_collecting_session(
    api: Api, start_device: StartDevice, encoding: str, code: str | None
) -> None:
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    await api.join("lab", DEVICE_CODE)
    session_id = await api.start_session("lab")
    await api.start_collection(session_id)
    fields: dict[str, Any] = {"session_id": session_id}
    if code is not None:
        fields["completion_code"] = code

    body = await api.ok("POST", "/wxapp/mark_complete/", **body_of(encoding, fields))

    assert body["session_status"] == "stopping"  # the device has not reported its upload
    assert device.paths("POST") == ["/start_collection", "/stop_collection"]
    assert (await api.session(session_id))["session"]["status"] == "stopping"


async def test_mark_complete_with_a_wrong_code_is_refused_and_changes_nothing(api: Api) -> None:
    session_id = await api.start_session("lab")

    status, body = await api.post(
        "/wxapp/mark_complete/",
        data={"session_id": str(session_id), "completion_code": "DATA_COLLECTION_COMPLETE_2023"},
    )

    assert status == 400, body
    assert body["error"] == "Invalid completion code"
    assert (await api.session(session_id))["session"]["status"] == "calibrating"


@pytest.mark.parametrize("state", ["stopping", "completed", "stopped"])
async def test_mark_complete_is_refused_once_the_session_has_ended(api: Api, state: str) -> None:
    session_id = await api.start_session("lab")
    if state == "stopping":
        await api.ok(
            "POST",
            "/wxapp/esp32/status/",
            data={
                "device_code": "A1",
                "status": "START_COLLECTION_CONFIRMED",
                "session_id": str(session_id),
            },
        )
    if state in ("stopping", "completed"):
        await api.end_session(session_id)
    else:
        await api.ok("POST", f"/api/v1/sessions/{session_id}/abort")

    status, body = await api.post("/wxapp/mark_complete/", data={"session_id": str(session_id)})

    assert status == 400, body
    assert (body["error"], body["current_status"]) == ("Session not in active state", state)


@pytest.mark.parametrize(
    ("fields", "status"),
    [({}, 400), ({"session_id": ""}, 400), ({"session_id": "77"}, 404), ({"session_id": "x"}, 404)],
)
async def test_mark_complete_without_a_known_session_is_refused(
    api: Api, fields: dict[str, str], status: int
) -> None:
    code, body = await api.post("/wxapp/mark_complete/", data=fields)

    assert code == status, body
    assert isinstance(body["error"], str)


# ---- get_latest_session ------------------------------------------------------------------------


async def test_latest_session_is_404_while_there_is_none(api: Api) -> None:
    status, body = await api.get("/wxapp/get_latest_session/")

    assert status == 404, body
    assert body == {
        "error": "No sessions found",
        "message": "暂无数据收集会话",
        "total_sessions": 0,
    }


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_latest_session_is_the_newest_with_its_users_openid(api: Api, encoding: str) -> None:
    await api.start_session("lab")
    newest = (
        await api.ok(
            "POST",
            "/wxapp/start_session/",
            **body_of(encoding, {"openid": "o_wx_42", "device_group_code": "lab"}),
        )
    )["session_id"]

    active = await api.ok("GET", "/wxapp/get_latest_session/")
    await api.end_session(newest)
    ended = await api.ok("GET", "/wxapp/get_latest_session")

    assert active["success"] is True
    assert active["total_sessions"] == 2
    session = active["session"]
    assert set(session) == {"id", "status", "start_time", "end_time", "wx_user_id"}
    assert (session["id"], session["status"], session["wx_user_id"]) == (
        newest,
        "calibrating",
        "o_wx_42",
    )
    assert parse_iso(session["start_time"])
    assert session["end_time"] is None
    assert ended["session"]["status"] == "completed"
    assert parse_iso(ended["session"]["end_time"]) >= parse_iso(session["start_time"])


# ---- bind_device -------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_binding_a_device_again_is_fine(station: Station, api: Api, encoding: str) -> None:
    fields = {"openid": "o1", "device_code": "esp32s3_multi_001"}

    replies = [
        await api.ok("POST", "/wxapp/bind_device/", **body_of(encoding, fields)) for _ in range(3)
    ]

    assert replies == [{"msg": "device bind success"}] * 3
    status = await api.ok("POST", "/wxapp/esp32/status/", data={"device_code": "esp32s3_multi_001"})
    assert status["is_bound"] is True
    assert station.service is not None
    events = await station.service.events_for(device_code="esp32s3_multi_001")
    assert [e.action for e in events] == ["device.bind"] * 3


@pytest.mark.parametrize(
    "fields", [{}, {"openid": "o1"}, {"device_code": "d"}, {"openid": " ", "device_code": "d"}]
)
async def test_binding_without_openid_and_device_code_is_refused(
    api: Api, fields: dict[str, str]
) -> None:
    status, body = await api.post("/wxapp/bind_device/", data=fields)

    assert status == 400, body
    assert body["error"] == "openid and device_code required"


# ---- logins and analysis -----------------------------------------------------------------------


async def test_simple_login_gives_the_test_user_a_stable_id(api: Api) -> None:
    first = await api.ok("POST", "/wxapp/simple_login/")
    again = await api.ok("POST", "/wxapp/simple_login/", data={"anything": "x"})
    as_json = await api.ok("POST", "/api/simple_login", json={})

    assert first == {
        "msg": "ok",
        "openid": TEST_OPENID,
        "user_id": first["user_id"],
        "message": "测试用户登录成功",
    }
    assert isinstance(first["user_id"], int) and not isinstance(first["user_id"], bool)
    assert again == first
    assert as_json == first


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/wxapp/login/", {"data": {"code": "wx-code"}}),
        ("POST", "/wxapp/login/", {"json": {"code": "wx-code"}}),
        ("GET", "/wxapp/login/", {}),
        ("GET", "/wxapp/get_analysis/", {"params": {"session_id": "1"}}),
        ("POST", "/wxapp/get_analysis/", {"data": {"session_id": "1"}}),
        ("POST", "/api/get_analysis", {}),
    ],
)
async def test_login_and_analysis_say_clearly_that_the_station_does_not_do_them(
    api: Api, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    status, body = await api.request(method, path, **kwargs)

    assert status == 501, body
    assert isinstance(body, dict)
    assert isinstance(body["error"], str) and body["error"].strip()


# ---- the whole surface ------------------------------------------------------------------------

POST_ENDPOINTS = [
    "esp32/upload",
    "esp32/batch_upload",
    "esp32/mark_upload_complete",
    "upload_sensor_data",
    "esp32/status",
    "esp32/poll_commands",
    "mark_complete",
    "bind_device",
    "simple_login",
    "login",
    "get_analysis",
    "register_device_ip",
    "start_session",
    "start_data_collection",
    "notify_device_start",
    "notify_device_stop",
    "end_session",
    "get_device_status",
    "esp32/heartbeat",
]
GET_ENDPOINTS = ["get_latest_session", "login", "get_analysis", "get_device_status"]
READS_A_BODY = [
    "esp32/upload",
    "esp32/batch_upload",
    "esp32/mark_upload_complete",
    "upload_sensor_data",
    "esp32/status",
    "esp32/poll_commands",
    "mark_complete",
    "bind_device",
]


def spellings(endpoint: str) -> list[str]:
    return [f"{prefix}/{endpoint}{slash}" for prefix in ("/wxapp", "/api") for slash in ("/", "")]


async def test_every_endpoint_answers_under_both_prefixes_with_or_without_the_slash(
    api: Api,
) -> None:
    for endpoint in POST_ENDPOINTS:
        for path in spellings(endpoint):
            status, body = await api.post(path, data={})
            assert status in (200, 400, 404, 501), (path, status, body)
            assert status == 200 or body["error"].strip(), (path, body)
            assert "no such endpoint" not in body.get("error", ""), path
    for endpoint in GET_ENDPOINTS:
        for path in spellings(endpoint):
            status, body = await api.get(path)
            assert status in (200, 400, 404, 501), (path, status, body)
            assert "no such endpoint" not in body.get("error", ""), path


@pytest.mark.parametrize("request_kwargs", BAD_BODIES)
async def test_unreadable_bodies_are_refused_with_400_everywhere(
    station: Station, api: Api, request_kwargs: dict[str, Any]
) -> None:
    for endpoint in READS_A_BODY:
        status, body = await api.post(f"/wxapp/{endpoint}/", **request_kwargs)

        assert status == 400, (endpoint, body)
        assert body["error"].strip()


ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    2**70,
    float("nan"),
    "",
    " ",
    "abc",
    "-1",
    "1e3",
    "9" * 40,
    "x" * 5000,
    "\x00",
    "[",
    "{}",
    [1],
    {"a": 1},
]
FIELDS = {
    "esp32/upload": {
        "device_code": "d",
        "sensor_type": "waist",
        "data": '{"acc":[1,2,3],"gyro":[1,2,3],"angle":[1,2,3],"timestamp":123456}',
        "session_id": "1",
        "timestamp": "123456",
    },
    "esp32/batch_upload": {
        "device_code": "d",
        "sensor_type": "waist",
        "batch_data": '[{"acc":[1,2,3],"gyro":[1,2,3],"angle":[1,2,3],"seq":1}]',
        "session_id": "1",
    },
    "esp32/mark_upload_complete": {"session_id": "1", "device_code": "d", "upload_stats": "{}"},
    "upload_sensor_data": {"device_code": "d", "sensor_type": "t", "data": "x", "session_id": "1"},
    "esp32/status": {"device_code": "d", "status": "START_COLLECTION_CONFIRMED", "session_id": "1"},
    "esp32/poll_commands": {"device_code": "d", "current_session": "1", "status": "idle"},
    "mark_complete": {"session_id": "1", "completion_code": COMPLETION_CODE},
    "bind_device": {"openid": "o", "device_code": "d"},
}


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_odd_field_values_never_cause_a_500(api: Api, encoding: str) -> None:
    """Each field of each endpoint, in turn, set to something odd; the rest stays valid."""
    for endpoint, fields in FIELDS.items():
        for name in fields:
            session_id = await api.start_session("d")
            await api.start_collection(session_id)
            base = {k: (str(session_id) if k == "session_id" else v) for k, v in fields.items()}
            for value in ODD_VALUES:
                if encoding == "form" and isinstance(value, (list, dict)):
                    continue
                kwargs = body_of(encoding, {**base, name: value})
                status, body = await api.post(f"/wxapp/{endpoint}/", **kwargs)

                assert status < 500, (endpoint, name, value, body)
                assert status == 200 or body["error"].strip(), (endpoint, name, value, body)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_on_post_endpoints_are_405_json(api: Api, method: str) -> None:
    for endpoint in READS_A_BODY + ["simple_login"]:
        status, body = await api.request(method, f"/wxapp/{endpoint}/")

        assert status == 405, (endpoint, body)
        assert isinstance(body, dict) and "POST" in body["allowed_methods"]
