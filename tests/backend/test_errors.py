"""Every failure is a JSON body with an "error" sentence and the right status; never a 500 or a
traceback, and a refused request leaves nothing half-written."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.backend.conftest import (
    DEVICE_CODE,
    FORM,
    Api,
    StartDevice,
    StartSilent,
    StartStation,
)

WXAPP_POST_ENDPOINTS = (
    "register_device_ip",
    "start_session",
    "start_data_collection",
    "notify_device_start",
    "notify_device_stop",
    "end_session",
    "get_device_status",
    "esp32/heartbeat",
)


def assert_error(status: int, body: dict[str, Any], expected: int) -> None:
    assert status == expected, body
    assert isinstance(body.get("error"), str) and body["error"].strip()
    assert "Traceback" not in json.dumps(body)


async def snapshot(api: Api) -> dict[str, Any]:
    """Everything a bad request must leave unchanged."""
    sessions = await api.sessions()
    return {
        "devices": await api.devices(),
        "sessions": sessions,
        "details": [await api.session(s["session_id"]) for s in sessions],
        "groups": await api.ok("GET", "/api/v1/groups"),
    }


@pytest.fixture
async def calibrating(api: Api, start_device: StartDevice) -> int:
    """A registered firmware device in group test_group, and a calibrating session for it."""
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    await api.join("test_group", DEVICE_CODE)
    return await api.start_session("test_group")


# ---- 400: malformed requests -----------------------------------------------------------------

BAD_SESSION_IDS = [
    pytest.param({"data": {"session_id": "abc"}}, id="form-non-numeric"),
    pytest.param({"data": {"session_id": "-1"}}, id="form-negative"),
    pytest.param({"data": {"session_id": "1.5"}}, id="form-float"),
    pytest.param({"data": {"session_id": ""}}, id="form-empty"),
    pytest.param({"data": {"session_id": "   "}}, id="form-blank"),
    pytest.param({"data": {"session_id": "0"}}, id="form-zero"),
    pytest.param({"data": {"session_id": "²"}}, id="form-superscript-digit"),
    pytest.param({"data": {"session_id": "9" * 30}}, id="form-too-large"),
    pytest.param({"data": {}}, id="form-missing"),
    pytest.param({"params": {"session_id": "abc"}}, id="query-non-numeric"),
    pytest.param({"json": {"session_id": "abc"}}, id="json-non-numeric"),
    pytest.param({"json": {"session_id": -3}}, id="json-negative"),
    pytest.param({"json": {"session_id": 1.5}}, id="json-float"),
    pytest.param({"json": {"session_id": True}}, id="json-bool"),
    pytest.param({"json": {"session_id": None}}, id="json-null"),
    pytest.param({"json": {"session_id": [1]}}, id="json-list"),
    pytest.param({"json": {"session_id": {"id": 1}}}, id="json-object"),
    pytest.param({"json": {}}, id="json-missing"),
]

BAD_BODIES = [
    pytest.param({"json": [1, 2]}, id="json-array"),
    pytest.param({"json": "1011"}, id="json-string"),
    pytest.param(
        {"data": b'{"session_id": ', "headers": {"Content-Type": "application/json"}},
        id="invalid-json",
    ),
    pytest.param(
        {"data": b'{"session_id": "\xff\xfe"}', "headers": {"Content-Type": "application/json"}},
        id="json-invalid-utf8",
    ),
    pytest.param(
        {"data": b"session_id=\xff\xfe&device_code=\xff", "headers": {"Content-Type": FORM}},
        id="form-invalid-utf8",
    ),
    pytest.param(
        {"data": b"session_id=1", "headers": {"Content-Type": f"{FORM}; charset=no-such-codec"}},
        id="form-unknown-charset",
    ),
    pytest.param(
        {
            "data": b"--b\r\nContent-Type: text/plain; charset=no-such-codec\r\n"
            b'Content-Disposition: form-data; name="session_id"\r\n\r\n1\r\n--b--\r\n',
            "headers": {"Content-Type": "multipart/form-data; boundary=b"},
        },
        id="multipart-unknown-charset",
    ),
    pytest.param(
        {
            "data": b'--b\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n'
            b"\xff\r\n--b--\r\n",
            "headers": {"Content-Type": "multipart/form-data; boundary=b"},
        },
        id="multipart-invalid-utf8",
    ),
    pytest.param(
        {"data": b"garbage", "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
        id="multipart-without-parts",
    ),
    pytest.param(
        {
            "data": b'--b\r\nContent-Disposition: form-data; name="session_id"; '
            b'filename="id.txt"\r\n\r\n1\r\n--b--\r\n',
            "headers": {"Content-Type": "multipart/form-data; boundary=b"},
        },
        id="multipart-file-upload",
    ),
    pytest.param(
        {"data": b"\xff\xfe\x00garbage", "headers": {"Content-Type": "application/octet-stream"}},
        id="binary",
    ),
    pytest.param(
        {"data": b"<session_id>1</session_id>", "headers": {"Content-Type": "application/xml"}},
        id="unsupported-content-type",
    ),
    pytest.param(
        {
            "data": b'{"session_id": ' + b"1" * 5000 + b"}",
            "headers": {"Content-Type": "application/json"},
        },
        id="json-number-with-5000-digits",
    ),
    pytest.param(
        {"data": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"},
        id="json-nested-too-deep",
    ),
]


@pytest.mark.parametrize("request_kwargs", BAD_SESSION_IDS)
async def test_start_data_collection_refuses_a_malformed_session_id(
    api: Api, calibrating: int, request_kwargs: dict[str, Any]
) -> None:
    before = await snapshot(api)

    status, body = await api.post("/wxapp/start_data_collection/", **request_kwargs)

    assert_error(status, body, 400)
    assert "session_id" in body["error"]
    assert await snapshot(api) == before


@pytest.mark.parametrize("request_kwargs", BAD_BODIES)
async def test_every_endpoint_refuses_an_unreadable_body_with_400(
    api: Api, calibrating: int, request_kwargs: dict[str, Any]
) -> None:
    before = await snapshot(api)

    for endpoint in WXAPP_POST_ENDPOINTS:
        status, body = await api.post(f"/wxapp/{endpoint}/", **request_kwargs)

        assert_error(status, body, 400)

    assert await snapshot(api) == before


@pytest.mark.parametrize(
    ("endpoint", "fields"),
    [
        ("start_session", {"device_group_code": "g"}),
        ("start_session", {"openid": "u"}),
        ("start_session", {"openid": "u", "device_group_code": "g" * 65}),
        ("start_session", {"openid": "u", "device_group_code": "g", "device_codes": "nope"}),
        ("register_device_ip", {"ip_address": "192.168.1.100"}),
        ("register_device_ip", {"device_code": "x" * 65, "ip_address": "192.168.1.100"}),
        ("notify_device_start", {"session_id": "1"}),
        ("notify_device_start", {"device_code": DEVICE_CODE}),
        ("notify_device_stop", {"session_id": "1"}),
        ("end_session", {"session_id": "abc"}),
        ("get_device_status", {"device_code": ""}),
        ("esp32/heartbeat", {"status": "collecting", "session_id": "1"}),
        ("esp32/heartbeat", {"device_code": DEVICE_CODE, "session_id": "abc"}),
    ],
)
async def test_missing_or_malformed_fields_are_refused_and_change_nothing(
    api: Api, calibrating: int, endpoint: str, fields: dict[str, str]
) -> None:
    before = await snapshot(api)

    status, body = await api.post(f"/wxapp/{endpoint}/", data=fields)

    assert status in (400, 404), body
    assert_error(status, body, status)
    assert await snapshot(api) == before


async def test_json_field_of_the_wrong_type_is_refused(api: Api, calibrating: int) -> None:
    before = await snapshot(api)

    status, body = await api.post(
        "/wxapp/register_device_ip/", json={"device_code": True, "ip_address": "192.168.1.5"}
    )

    assert_error(status, body, 400)
    assert await snapshot(api) == before


# ---- 404 -----------------------------------------------------------------------------------


async def test_unknown_session_is_404(api: Api, calibrating: int) -> None:
    before = await snapshot(api)

    for endpoint in ("start_data_collection", "end_session"):
        status, body = await api.post(f"/wxapp/{endpoint}/", data={"session_id": "999999"})
        assert_error(status, body, 404)
    status, body = await api.post(
        "/wxapp/notify_device_start/", data={"session_id": "999999", "device_code": DEVICE_CODE}
    )
    assert_error(status, body, 404)
    status, body = await api.get("/api/v1/sessions/999999")
    assert_error(status, body, 404)
    status, body = await api.post("/api/v1/sessions/999999/abort")
    assert_error(status, body, 404)

    assert await snapshot(api) == before


async def test_unknown_device_is_404(api: Api, calibrating: int) -> None:
    before = await snapshot(api)

    status, body = await api.post(
        "/wxapp/notify_device_start/", data={"session_id": str(calibrating), "device_code": "nope"}
    )
    assert_error(status, body, 404)
    for endpoint in ("notify_device_stop", "get_device_status"):
        status, body = await api.post(f"/wxapp/{endpoint}/", data={"device_code": "nope"})
        assert_error(status, body, 404)
    status, body = await api.post(
        "/wxapp/start_data_collection/", data={"session_id": str(calibrating), "device_code": "no"}
    )
    assert_error(status, body, 404)
    status, body = await api.post(
        "/wxapp/start_session/",
        data={"openid": "u", "device_group_code": "g", "device_codes": "nope"},
    )
    assert_error(status, body, 404)
    status, body = await api.get("/api/v1/devices/nope")
    assert_error(status, body, 404)

    assert await snapshot(api) == before


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
@pytest.mark.parametrize("path", ["/wxapp/nope/", "/nope", "/api/v1/nope", "/wxapp/"])
async def test_unknown_route_is_404_json(api: Api, method: str, path: str) -> None:
    status, body = await api.request(method, path)

    assert isinstance(body, dict)
    assert_error(status, body, 404)


# ---- 405 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/wxapp/start_session/", "/api/notify_device_start", "/healthz"])
async def test_other_methods_are_405_json_with_an_allow_header(
    http: aiohttp.ClientSession, api: Api, method: str, path: str
) -> None:
    async with http.request(method, api.base_url + path, data={"openid": "u"}) as response:
        body = await response.json()

        assert response.status == 405
        assert response.content_type == "application/json"
        allow = {m.strip() for m in response.headers["Allow"].split(",")}
    assert_error(response.status, body, 405)
    assert "GET" in allow
    assert method not in allow
    assert set(body["allowed_methods"]) == allow
    assert await api.sessions() == []


# ---- 409 -----------------------------------------------------------------------------------


async def test_second_start_of_same_session_is_refused(api: Api, calibrating: int) -> None:
    await api.start_collection(calibrating)
    before = await snapshot(api)

    status, body = await api.post(
        "/wxapp/start_data_collection/", data={"session_id": str(calibrating)}
    )

    assert_error(status, body, 409)
    assert body["current_status"] == "collecting"
    assert body["session_id"] == calibrating
    assert await snapshot(api) == before


async def test_second_end_of_same_session_is_refused(api: Api, calibrating: int) -> None:
    await api.start_collection(calibrating)
    ended = await api.end_session(calibrating)
    assert ended["status"] == "stopping"  # until the device reports its upload complete
    before = await snapshot(api)

    status, body = await api.post("/wxapp/end_session/", data={"session_id": str(calibrating)})

    assert_error(status, body, 409)
    assert body["current_status"] == "stopping"
    assert await snapshot(api) == before


async def test_notifying_a_device_for_a_completed_session_is_refused(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    session_id = await api.start_session("empty_group")
    await api.start_collection(session_id)
    await api.end_session(session_id)
    before = await snapshot(api)

    status, body = await api.post(
        "/wxapp/notify_device_start/",
        data={"session_id": str(session_id), "device_code": DEVICE_CODE},
    )

    assert_error(status, body, 409)
    assert body["current_status"] == "completed"
    assert device.received == []
    assert await snapshot(api) == before


# ---- 413 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_kwargs",
    [
        pytest.param({"data": {"openid": "u" * 10_000, "device_group_code": "g"}}, id="form"),
        pytest.param({"json": {"openid": "u" * 10_000, "device_group_code": "g"}}, id="json"),
        pytest.param(
            {"data": aiohttp.FormData({"openid": "u" * 10_000, "device_group_code": "g"})},
            id="urlencoded-formdata",
        ),
    ],
)
async def test_body_over_the_limit_is_413(
    start_station: StartStation, http: aiohttp.ClientSession, request_kwargs: dict[str, Any]
) -> None:
    station = await start_station(max_body_bytes=2048)
    api = Api(http, station.url)

    status, body = await api.post("/wxapp/start_session/", **request_kwargs)

    assert_error(status, body, 413)
    assert body["limit_bytes"] == 2048
    assert await api.sessions() == []


async def test_multipart_body_over_the_limit_is_413(
    start_station: StartStation, http: aiohttp.ClientSession
) -> None:
    station = await start_station(max_body_bytes=2048)
    api = Api(http, station.url)
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("openid", "u" * 10_000)
    form.add_field("device_group_code", "g")

    status, body = await api.post("/wxapp/start_session/", data=form)

    assert_error(status, body, 413)
    assert await api.sessions() == []


# ---- 502 / 504: the device failed ----------------------------------------------------------


async def notify(api: Api, session_id: int) -> tuple[int, dict[str, Any]]:
    return await api.post(
        "/wxapp/notify_device_start/",
        data={"session_id": str(session_id), "device_code": DEVICE_CODE},
    )


async def test_device_refusing_the_connection_is_502(api: Api, refusing_address: str) -> None:
    await api.register(DEVICE_CODE, refusing_address)
    session_id = await api.start_session()

    status, body = await notify(api, session_id)

    assert_error(status, body, 502)
    assert body["failure"] == "unreachable"
    assert body["device_code"] == DEVICE_CODE
    assert body["esp32_ip"] == refusing_address
    assert "refused" in body["error"]


@pytest.mark.parametrize(("behaviour", "http_status"), [("reject", 400), ("error", 500)])
async def test_device_answering_with_an_error_is_502(
    api: Api, start_device: StartDevice, behaviour: str, http_status: int
) -> None:
    device = await start_device(behaviour=behaviour)
    await api.register(DEVICE_CODE, device.address)
    session_id = await api.start_session()

    status, body = await notify(api, session_id)

    assert_error(status, body, 502)
    assert body["failure"] == "rejected"
    assert body["http_status"] == http_status
    assert str(http_status) in body["error"]


async def test_device_that_never_answers_is_504(api: Api, start_silent: StartSilent) -> None:
    device = await start_silent()
    await api.register(DEVICE_CODE, device.address)
    session_id = await api.start_session()

    status, body = await notify(api, session_id)

    assert_error(status, body, 504)
    assert body["failure"] == "timeout"
    assert len(device.arrivals) == 1  # a command the device may have received is not repeated
