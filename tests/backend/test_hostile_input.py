"""Input a hostile client might send: lone UTF-16 surrogates in JSON text, integers longer than
Python will convert, bodies that cannot be read as their headers claim, and oversized batches.
Each is a 400 (or 404) with a JSON "error", never a 500, and the station carries on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from station.backend.runtime import Station
from tests.backend.conftest import FORM, Api
from tests.backend.firmware import batch_body, firmware_items, query

JSON = {"Content-Type": "application/json"}
HUGE = "9" * 5000  # Python's int() refuses text of over 4,300 digits
BATCH = "/wxapp/esp32/batch_upload/"


def assert_refused(status: int, body: dict[str, Any], *expected: int) -> None:
    assert status in (expected or (400,)), body
    assert isinstance(body.get("error"), str) and body["error"].strip(), body


# ---- lone surrogates ----------------------------------------------------------------------------

# Raw JSON text: the \ud800 escape is valid JSON but decodes to text no database can store.
SURROGATE_BODIES = [
    pytest.param(
        "register_device_ip",
        r'{"device_code":"A\ud800","ip_address":"192.168.1.50"}',
        id="register-device-code",
    ),
    pytest.param(
        "esp32/heartbeat", r'{"device_code":"A\ud800","status":"idle"}', id="heartbeat-code"
    ),
    pytest.param(
        "esp32/heartbeat", r'{"device_code":"HB-NEW","status":"\ud800"}', id="heartbeat-status"
    ),
    pytest.param(
        "esp32/heartbeat", r'{"device_code":"OTHER","status":"x\udfff"}', id="heartbeat-known"
    ),
    pytest.param(
        "start_session",
        r'{"openid":"u","device_group_code":"g\ud800"}',
        id="start-session-group",
    ),
    pytest.param(
        "upload_sensor_data",
        r'{"device_code":"D1","sensor_type":"waist","data":"x\ud800"}',
        id="upload-sensor-data",
    ),
    pytest.param("bind_device", r'{"openid":"o\ud800","device_code":"D1"}', id="bind-openid"),
    pytest.param("bind_device", r'{"openid":"o","device_code":"D1","\ud800":1}', id="bind-key"),
]


@pytest.mark.parametrize(("endpoint", "text"), SURROGATE_BODIES)
async def test_lone_surrogate_in_json_is_refused_and_last_seen_is_still_saved(
    station: Station, api: Api, endpoint: str, text: str
) -> None:
    await api.register("OTHER", "192.168.1.60")
    before = (await api.devices())["OTHER"]["last_seen"]

    status, body = await api.post(f"/wxapp/{endpoint}/", data=text.encode(), headers=JSON)

    assert_refused(status, body)
    await api.ok("POST", "/wxapp/esp32/heartbeat/", data={"device_code": "OTHER", "status": "idle"})
    seen = (await api.devices())["OTHER"]["last_seen"]
    assert seen is not None and seen >= before
    assert station.service is not None
    await station.service.flush_seen()
    rows = query(
        station, "SELECT last_seen, reported_status FROM devices WHERE device_code = ?", ("OTHER",)
    )
    assert [tuple(r) for r in rows] == [(seen, "idle")]


# ---- integers over 4,300 digits ---------------------------------------------------------------

HUGE_SESSION_IDS = [
    pytest.param("start_data_collection", {"data": {"session_id": HUGE}}, 400, id="start-form"),
    pytest.param("start_data_collection", {"json": {"session_id": HUGE}}, 400, id="start-json"),
    pytest.param("end_session", {"data": {"session_id": HUGE}}, 400, id="end-form"),
    pytest.param("end_session", {"json": {"session_id": HUGE}}, 400, id="end-json"),
    pytest.param(
        "notify_device_start",
        {"json": {"session_id": HUGE, "device_code": "D1"}},
        400,
        id="notify-start-json",
    ),
    pytest.param(
        "esp32/heartbeat",
        {"data": {"device_code": "D1", "session_id": HUGE}},
        400,
        id="heartbeat-form",
    ),
    pytest.param(
        "esp32/upload",
        {
            "json": {
                "device_code": "D1",
                "sensor_type": "waist",
                "data": '{"acc":[1,2,3],"gyro":[1,2,3],"angle":[1,2,3]}',
                "session_id": HUGE,
            }
        },
        404,
        id="upload-json",
    ),
    pytest.param(
        "esp32/mark_upload_complete",
        {"data": {"device_code": "D1", "session_id": HUGE}},
        404,
        id="upload-complete-form",
    ),
]


@pytest.mark.parametrize(("endpoint", "kwargs", "expected"), HUGE_SESSION_IDS)
async def test_session_id_of_5000_digits_is_refused(
    api: Api, endpoint: str, kwargs: dict[str, Any], expected: int
) -> None:
    status, body = await api.post(f"/wxapp/{endpoint}/", **kwargs)

    assert_refused(status, body, expected)


async def test_huge_integers_in_the_station_api_are_refused(api: Api) -> None:
    status, body = await api.get("/api/v1/sessions", params={"limit": HUGE})
    assert_refused(status, body)

    status, body = await api.get(f"/api/v1/sessions/{HUGE}")
    assert_refused(status, body, 400, 404)

    status, body = await api.post(f"/api/v1/sessions/{HUGE}/abort")
    assert_refused(status, body, 400, 404)


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_batch_item_with_a_5000_digit_seq_is_refused(api: Api, encoding: str) -> None:
    item = '{"acc":[1,2,3],"gyro":[1,2,3],"angle":[1,2,3],"seq":"' + HUGE + '"}'
    fields = {"device_code": "D1", "sensor_type": "waist", "batch_data": f"[{item}]"}
    kwargs: dict[str, Any] = {"json": fields} if encoding == "json" else {"data": fields}

    status, body = await api.post(BATCH, **kwargs)

    assert_refused(status, body)
    assert [r["index"] for r in body["refused"]] == [0]


# ---- bodies that cannot be read ---------------------------------------------------------------

UNREADABLE = [
    pytest.param(
        b"--xx\r\nbroken", {"Content-Type": "multipart/form-data; boundary=xx"}, id="multipart"
    ),
    pytest.param(
        b'{"device_code":"D1","ip_address":"192.168.1.50"}',
        JSON | {"Content-Encoding": "gzip"},
        id="json-not-gzip",
    ),
    pytest.param(
        b"device_code=D1&ip_address=192.168.1.50",
        {"Content-Type": FORM, "Content-Encoding": "gzip"},
        id="form-not-gzip",
    ),
    pytest.param(
        b'{"device_code":"D1","ip_address":"192.168.1.50"}',
        JSON | {"Content-Encoding": "deflate"},
        id="json-not-deflate",
    ),
]


@pytest.mark.parametrize(("data", "headers"), UNREADABLE)
async def test_body_that_cannot_be_read_as_its_headers_say_is_400(
    api: Api, data: bytes, headers: dict[str, str]
) -> None:
    for endpoint in ("register_device_ip", "start_session", "esp32/batch_upload", "bind_device"):
        status, body = await api.post(f"/wxapp/{endpoint}/", data=data, headers=headers)

        assert_refused(status, body)

    assert await api.devices() == {}


# ---- batch size -------------------------------------------------------------------------------


async def test_batch_of_more_than_2000_items_is_refused_before_any_is_read(
    station: Station, api: Api
) -> None:
    for count in (2001, 10_000):
        body = batch_body(firmware_items(count), device_code="BIG", session_id="")

        status, reply = await api.post(BATCH, data=body, headers={"Content-Type": FORM})

        assert_refused(status, reply)
        assert "at most 2000" in reply["error"], reply["error"]
    assert query(station, "SELECT COUNT(*) FROM samples")[0][0] == 0


async def test_batch_of_2000_items_is_stored(station: Station, api: Api) -> None:
    items = json.dumps([json.loads(item) for item in firmware_items(2000)])

    reply = await api.ok(
        "POST", BATCH, data={"device_code": "BIG", "sensor_type": "waist", "batch_data": items}
    )

    assert (reply["total_items"], reply["successful_items"]) == (2000, 2000)
    assert query(station, "SELECT COUNT(*) FROM samples")[0][0] == 2000
