"""Sample uploads as the sketches send them: esp32/upload/ (one sample), esp32/batch_upload/
(up to 50 per sensor) and the legacy upload_sensor_data/. Bodies are replayed byte for byte, and
what is stored is read back from the SQLite file through a connection of our own."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from typing import Any

import aiohttp
import pytest

from station.backend.models import parse_iso
from station.backend.runtime import Station
from station.backend.samples import BEIJING
from tests.backend.conftest import Api, StartDevice
from tests.backend.firmware import (
    MULTI_SENSOR_CODE,
    MULTI_SENSOR_SESSION,
    RAW_FORM,
    WIFI_CODE,
    batch_body,
    eventually,
    firmware_items,
    imu,
    query,
    sample_json,
    samples,
    set_next_session_id,
    single_body,
)

UPLOAD = "/wxapp/esp32/upload/"
BATCH = "/wxapp/esp32/batch_upload/"
LEGACY = "/wxapp/upload_sensor_data/"
GOOD_DATA = '{"acc":[0.12,-9.81,0.30],"gyro":[0.01,0.02,-0.03],"angle":[1.5,-2.0,90.0]}'


def vectors(row: Any) -> tuple[list[float], list[float], list[float]]:
    return (
        [row["acc_x"], row["acc_y"], row["acc_z"]],
        [row["gyro_x"], row["gyro_y"], row["gyro_z"]],
        [row["angle_x"], row["angle_y"], row["angle_z"]],
    )


def printed(acc: Any, gyro: Any, angle: Any) -> tuple[list[float], list[float], list[float]]:
    """The values as they survive the sketch's %.2f / %.1f."""
    return (
        [float(f"{v:.2f}") for v in acc],
        [float(f"{v:.2f}") for v in gyro],
        [float(f"{v:.1f}") for v in angle],
    )


async def session_in(api: Api, status: str, group: str = "uploads") -> int:
    """A session of a group without devices, moved to the given status."""
    session_id = await api.start_session(group)
    if status in ("collecting", "stopping"):
        await api.start_collection(session_id)
    if status == "stopping":
        # A device that started keeps the session stopping until it reports its upload.
        await api.ok(
            "POST",
            "/wxapp/esp32/status/",
            data={
                "device_code": "keeper",
                "status": "START_COLLECTION_CONFIRMED",
                "session_id": str(session_id),
            },
        )
        assert (await api.end_session(session_id))["status"] == "stopping"
    if status == "completed":
        assert (await api.end_session(session_id))["status"] == "completed"
    if status == "stopped":
        await api.ok("POST", f"/api/v1/sessions/{session_id}/abort")
    return session_id


async def refusals(station: Station, device_code: str) -> list[Any]:
    assert station.service is not None
    events = await station.service.events_for(device_code=device_code)
    return [e for e in events if e.action == "upload.refused"]


# ---- esp32/upload/: the wifi sketch ------------------------------------------------------------


async def test_wifi_sketch_upload_is_stored_and_acknowledged(station: Station, api: Api) -> None:
    session_id = await session_in(api, "collecting")
    before = time.time()

    status, body = await api.post(UPLOAD, data=single_body(session_id, 123456), headers=RAW_FORM)

    assert status == 200, body
    assert "ESP32 data upload success" in body["msg"]
    assert isinstance(body["data_id"], int)
    assert (body["device_code"], body["sensor_type"]) == (WIFI_CODE, "waist")
    assert parse_iso(body["timestamp"])
    acc, gyro, angle = printed(*imu(0))
    assert body["sensor_data_summary"] == {
        "acc_magnitude": round(math.hypot(*acc), 2),
        "gyro_magnitude": round(math.hypot(*gyro), 2),
        "angle_range": {"x": 1.5, "y": 2.0, "z": 90.0},
    }
    assert (body["session_id"], body["session_status"]) == (session_id, "collecting")
    assert body["session_stats"] == {"total_data_points": 1, "active_sensor_types": 1}

    [row] = samples(station)
    assert row["sample_id"] == body["data_id"]
    assert (row["session_id"], row["device_code"], row["sensor_type"]) == (
        session_id,
        WIFI_CODE,
        "waist",
    )
    assert vectors(row) == (acc, gyro, angle)
    assert before <= row["received_at"] <= time.time()
    assert row["seq"] is None
    # millis() has at most 9 digits: read as HHMMSSmmm, 00:01:23.456 Beijing near the session.
    assert row["device_time"] == "123456"
    device = dt.datetime.fromtimestamp(row["device_ms"] / 1000, BEIJING)
    assert device.time() == dt.time(0, 1, 23, 456000)
    started = parse_iso((await api.session(session_id))["session"]["started_at"])
    assert started - dt.timedelta(hours=6) <= device < started + dt.timedelta(hours=18)


async def test_wifi_sketch_rotation_counts_sensor_types_per_session(api: Api) -> None:
    session_id = await session_in(api, "collecting")
    replies = []
    for i, sensor in enumerate(["waist", "shoulder", "wrist", "waist"]):
        body = single_body(session_id, 2000 * i, sensor_type=sensor, i=i)
        replies.append(await api.ok("POST", UPLOAD, data=body, headers=RAW_FORM))

    assert [r["session_stats"] for r in replies] == [
        {"total_data_points": 1, "active_sensor_types": 1},
        {"total_data_points": 2, "active_sensor_types": 2},
        {"total_data_points": 3, "active_sensor_types": 3},
        {"total_data_points": 4, "active_sensor_types": 3},
    ]
    ids = [r["data_id"] for r in replies]
    assert ids == sorted(set(ids))


async def test_millis_that_is_no_wall_clock_time_is_kept_raw_and_unparsed(
    station: Station, api: Api
) -> None:
    session_id = await session_in(api, "collecting")

    await api.ok("POST", UPLOAD, data=single_body(session_id, 45678901), headers=RAW_FORM)

    [row] = samples(station)
    assert (row["device_time"], row["device_ms"]) == ("45678901", None)


async def test_upload_without_session_is_stored_unlinked(station: Station, api: Api) -> None:
    body = f"device_code={WIFI_CODE}&sensor_type=racket&data={GOOD_DATA}".encode()

    reply = await api.ok("POST", UPLOAD, data=body, headers=RAW_FORM)

    assert "ESP32 data upload success" in reply["msg"]
    assert not {"session_id", "session_status", "session_stats"} & set(reply)
    [row] = samples(station)
    assert (row["session_id"], row["sensor_type"], row["device_time"]) == (None, "racket", None)


async def test_timer_sketch_uploads_to_its_hard_coded_session(station: Station, api: Api) -> None:
    await set_next_session_id(station, 123)
    session_id = await session_in(api, "calibrating")
    assert session_id == 123
    body = single_body(123, 30500, device_code=MULTI_SENSOR_CODE, sensor_type="wrist")

    reply = await api.ok("POST", UPLOAD, data=body, headers=RAW_FORM)

    assert reply["session_id"] == 123
    assert len(samples(station, "session_id = 123")) == 1


@pytest.mark.parametrize("encoding", ["json-object", "json-text"])
async def test_upload_as_a_json_body_is_read_too(station: Station, api: Api, encoding: str) -> None:
    session_id = await session_in(api, "collecting")
    data: Any = json.loads(GOOD_DATA) if encoding == "json-object" else GOOD_DATA
    fields = {
        "device_code": WIFI_CODE,
        "sensor_type": "shoulder",
        "data": {**data, "timestamp": 1796349600123} if isinstance(data, dict) else data,
        "session_id": session_id,
    }

    reply = await api.ok("POST", UPLOAD, json=fields)

    assert reply["session_id"] == session_id
    [row] = samples(station)
    assert row["sensor_type"] == "shoulder"
    if encoding == "json-object":
        assert (row["device_time"], row["device_ms"]) == ("1796349600123", 1796349600123)


BAD_SINGLE_UPLOADS = [
    pytest.param(
        {"sensor_type": "waist", "data": GOOD_DATA}, "Missing required parameters", id="no-device"
    ),
    pytest.param({"device_code": "d", "data": GOOD_DATA}, "Missing required", id="no-sensor"),
    pytest.param({"device_code": "d", "sensor_type": "waist"}, "Missing required", id="no-data"),
    pytest.param(
        {"device_code": "d", "sensor_type": "waist", "data": ""}, "Missing required", id="empty"
    ),
    pytest.param(
        {"device_code": "d", "sensor_type": "elbow", "data": GOOD_DATA},
        "Invalid sensor_type. Must be one of: ['waist', 'shoulder', 'wrist', 'racket']",
        id="sensor-type",
    ),
    pytest.param(
        {"device_code": "d", "sensor_type": "waist", "data": '{"acc":[1,2,3]'},
        "Invalid JSON data format",
        id="broken-json",
    ),
    pytest.param(
        {"device_code": "d", "sensor_type": "waist", "data": '{"acc":[1,2,3],"angle":[1,2,3]}'},
        "Missing required field: gyro",
        id="missing-field",
    ),
    pytest.param(
        {"device_code": "d", "sensor_type": "waist", "data": "[[1,2,3]]"},
        "Missing required field: acc",
        id="array-payload",
    ),
    pytest.param(
        {"device_code": "d", "sensor_type": "waist", "data": "42"},
        "Missing required field: acc",
        id="scalar-payload",
    ),
    pytest.param(
        {
            "device_code": "d",
            "sensor_type": "waist",
            "data": '{"acc":[1,2,3],"gyro":[1,2,3],"angle":[1,2]}',
        },
        "Invalid angle format. Must be [x, y, z] array",
        id="not-3-list",
    ),
    pytest.param(
        {
            "device_code": "d",
            "sensor_type": "waist",
            "data": '{"acc":[1,"x",3],"gyro":[1,2,3],"angle":[1,2,3]}',
        },
        "Invalid acc format. Must be [x, y, z] array",
        id="non-numeric",
    ),
    pytest.param(
        {
            "device_code": "d",
            "sensor_type": "waist",
            "data": '{"acc":[1,2,3],"gyro":[nan,2,3],"angle":[1,2,3]}',
        },
        "Invalid gyro format. Must be [x, y, z] array",
        id="printf-nan",
    ),
    pytest.param(
        {
            "device_code": "d",
            "sensor_type": "waist",
            "data": '{"acc":[1%s,2,3],"gyro":[1,2,3],"angle":[1,2,3]}' % ("0" * 400),
        },
        "Invalid acc format. Must be [x, y, z] array",
        id="huge-integer",
    ),
    pytest.param(
        {"device_code": "d", "sensor_type": "waist", "data": "[" * 50_000 + "]" * 50_000},
        "Invalid JSON data format",
        id="deep-json",
    ),
]


@pytest.mark.parametrize(("fields", "error"), BAD_SINGLE_UPLOADS)
async def test_bad_single_upload_is_refused_with_400_and_nothing_is_stored(
    station: Station, api: Api, fields: dict[str, str], error: str
) -> None:
    status, body = await api.post(UPLOAD, data=fields)

    assert status == 400, body
    assert body["error"].startswith(error)
    if error == "Missing required parameters":
        assert body["required"] == ["device_code", "sensor_type", "data"]
    assert samples(station) == []


@pytest.mark.parametrize("session_id", ["999", "abc", "-1"])
async def test_upload_to_an_unknown_session_is_refused_with_404(
    station: Station, api: Api, session_id: str
) -> None:
    status, body = await api.post(UPLOAD, data=single_body(session_id, 1), headers=RAW_FORM)

    assert status == 404, body
    assert body["error"] == "Session not found or invalid session_id"
    assert samples(station) == []


@pytest.mark.parametrize("closed", ["completed", "stopped"])
async def test_upload_to_a_closed_session_is_refused_with_its_status(
    station: Station, api: Api, closed: str
) -> None:
    session_id = await session_in(api, closed)

    status, body = await api.post(UPLOAD, data=single_body(session_id, 1), headers=RAW_FORM)
    batch_status, batch = await api.post(
        BATCH, data=batch_body(firmware_items(3), session_id=session_id), headers=RAW_FORM
    )

    assert status == 400, body
    assert (body["error"], body["session_status"]) == ("Session not active", closed)
    assert batch_status == 400, batch
    assert (batch["error"], batch["session_status"]) == ("Session not active", closed)
    assert samples(station) == []


@pytest.mark.parametrize("state", ["calibrating", "collecting", "stopping"])
async def test_uploads_are_accepted_while_calibrating_collecting_or_stopping(
    station: Station, api: Api, state: str
) -> None:
    session_id = await session_in(api, state)

    single = await api.ok("POST", UPLOAD, data=single_body(session_id, 1), headers=RAW_FORM)
    batch = await api.ok(
        "POST", BATCH, data=batch_body(firmware_items(3), session_id=session_id), headers=RAW_FORM
    )

    assert single["session_status"] == state
    assert batch["successful_items"] == 3
    assert len(samples(station, "session_id = ?", (session_id,))) == 4


# ---- esp32/batch_upload/: the multi-sensor sketch ----------------------------------------------


async def test_multi_sensor_sketch_batch_is_stored_item_by_item(station: Station, api: Api) -> None:
    await set_next_session_id(station, MULTI_SENSOR_SESSION)
    assert await session_in(api, "collecting") == MULTI_SENSOR_SESSION
    body = batch_body(firmware_items(50))
    assert body.startswith(
        b'device_code=esp32s3_multi_001&sensor_type=waist&batch_data=[{"acc":[0.12,-9.81,0.30],'
    )
    assert body.endswith(b"]&session_id=1011")
    before = time.time()

    # The sketch still names the original cloud server in its Host header.
    headers = RAW_FORM | {"Host": "47.122.129.159:8000"}

    reply = await api.ok("POST", BATCH, data=body, headers=headers)

    assert reply["msg"] == "Batch upload completed"
    assert (reply["total_items"], reply["successful_items"], reply["failed_items"]) == (50, 50, 0)
    assert reply["refused"] == []
    assert reply["session_id"] == MULTI_SENSOR_SESSION
    assert [r["index"] for r in reply["results"]] == list(range(50))
    assert all(isinstance(r["data_id"], int) for r in reply["results"])
    assert all(r["esp32_timestamp"] is None and r["server_timestamp"] for r in reply["results"])
    rows = samples(station)
    assert [row["sample_id"] for row in rows] == [r["data_id"] for r in reply["results"]]
    for i, row in enumerate(rows):
        assert vectors(row) == printed(*imu(i)), i
        assert (row["session_id"], row["device_code"], row["sensor_type"]) == (
            MULTI_SENSOR_SESSION,
            MULTI_SENSOR_CODE,
            "waist",
        )
        assert (row["device_time"], row["device_ms"], row["seq"]) == (None, None, None)
        assert before <= row["received_at"] <= time.time()


async def test_one_post_per_sensor_per_flush_is_kept_apart_by_sensor_type(
    station: Station, api: Api
) -> None:
    session_id = await session_in(api, "collecting")
    for n, sensor in enumerate(["waist", "shoulder", "wrist", "racket"]):
        body = batch_body(firmware_items(50 - n), sensor_type=sensor, session_id=session_id)
        await api.ok("POST", BATCH, data=body, headers=RAW_FORM)

    counts = query(
        station,
        "SELECT sensor_type, COUNT(*) AS n FROM samples WHERE session_id = ? GROUP BY 1 ORDER BY 1",
        (session_id,),
    )
    assert [(r["sensor_type"], r["n"]) for r in counts] == [
        ("racket", 47),
        ("shoulder", 49),
        ("waist", 50),
        ("wrist", 48),
    ]


async def test_each_200_is_on_disk_for_a_connection_of_our_own(station: Station, api: Api) -> None:
    session_id = await session_in(api, "collecting")

    for n in range(1, 6):
        body = batch_body(firmware_items(10, first=10 * n), session_id=session_id)
        await api.ok("POST", BATCH, data=body, headers=RAW_FORM)
        assert len(samples(station)) == 10 * n


async def test_batch_upload_does_not_count_the_sessions_samples(station: Station, api: Api) -> None:
    """Counting takes time in proportion to the session: at a fleet's rate it would soon take
    the writer longer than the uploads leave it."""
    session_id = await session_in(api, "collecting")
    statements: list[str] = []
    assert station.store is not None
    await station.store.write(lambda db: db.conn.set_trace_callback(statements.append))

    await api.ok(
        "POST", BATCH, data=batch_body(firmware_items(5), session_id=session_id), headers=RAW_FORM
    )
    batch = list(statements)
    await api.ok("POST", UPLOAD, data=single_body(session_id, 1), headers=RAW_FORM)
    single = statements[len(batch) :]

    assert any(s.startswith("INSERT INTO samples") for s in batch)
    assert not any("COUNT(" in s for s in batch)
    assert any("COUNT(" in s and "FROM samples" in s for s in single)


BAD_ITEMS = [
    ("7", "a sample must be a JSON object"),
    ('"sample"', "a sample must be a JSON object"),
    ('{"acc":[1.00,2.00,3.00],"angle":[1.0,2.0,3.0]}', "missing gyro"),
    ('{"gyro":[1.00,2.00,3.00],"angle":[1.0,2.0,3.0]}', "missing acc"),
    ('{"acc":[1.00,2.00,3.00],"gyro":[1.00,2.00,3.00]}', "missing angle"),
    ('{"acc":[1.00,2.00],"gyro":[1.00,2.00,3.00],"angle":[1.0,2.0,3.0]}', "acc must be a list"),
    ('{"acc":[1.00,2.00,3.00],"gyro":[1,2,3,4],"angle":[1.0,2.0,3.0]}', "gyro must be a list"),
    ('{"acc":[1.00,2.00,3.00],"gyro":[1.00,2.00,3.00],"angle":"1,2,3"}', "angle must be a list"),
    ('{"acc":[1.00,"2",3.00],"gyro":[1.00,2.00,3.00],"angle":[1.0,2.0,3.0]}', "not a number"),
    ('{"acc":[1.00,null,3.00],"gyro":[1.00,2.00,3.00],"angle":[1.0,2.0,3.0]}', "not a number"),
    ('{"acc":[nan,2.00,3.00],"gyro":[1.00,2.00,3.00],"angle":[1.0,2.0,3.0]}', "NaN or infinity"),
    ('{"acc":[-nan,2.00,3.00],"gyro":[1.00,2.00,3.00],"angle":[1.0,2.0,3.0]}', "NaN or infinity"),
    ('{"acc":[1.00,2.00,3.00],"gyro":[inf,2.00,3.00],"angle":[1.0,2.0,3.0]}', "NaN or infinity"),
    ('{"acc":[1.00,2.00,3.00],"gyro":[1.00,2.00,3.00],"angle":[-inf,2.0,3.0]}', "NaN or infinity"),
    ('{"acc":[NaN,2.00,3.00],"gyro":[1.00,2.00,3.00],"angle":[1.0,2.0,3.0]}', "NaN or infinity"),
    ('{"acc":[1e999,2.00,3.00],"gyro":[1.00,2.00,3.00],"angle":[1.0,2.0,3.0]}', "NaN or infinity"),
    (
        '{"acc":[1%s,2.00,3.00],"gyro":[1.00,2.00,3.00],"angle":[1.0,2.0,3.0]}' % ("0" * 400),
        "too large",
    ),
    (sample_json(*imu(1))[:-1] + ',"seq":%s}' % ("9" * 25), "seq is out of range"),
]


async def test_bad_items_are_refused_one_by_one_and_the_rest_of_the_batch_is_kept(
    station: Station, api: Api
) -> None:
    session_id = await session_in(api, "collecting")
    items = []
    for bad, _reason in BAD_ITEMS:
        items += [sample_json(*imu(len(items))), bad]

    reply = await api.ok(
        "POST", BATCH, data=batch_body(items, session_id=session_id), headers=RAW_FORM
    )

    assert reply["total_items"] == 2 * len(BAD_ITEMS)
    assert (reply["successful_items"], reply["failed_items"]) == (len(BAD_ITEMS), len(BAD_ITEMS))
    assert [r["index"] for r in reply["results"]] == list(range(0, len(items), 2))
    refused = reply["refused"]
    assert [r["index"] for r in refused] == list(range(1, len(items), 2))
    for (bad, reason), refusal in zip(BAD_ITEMS, refused, strict=True):
        assert reason in refusal["error"], (bad, refusal)
    rows = samples(station)
    assert [row["sample_id"] for row in rows] == [r["data_id"] for r in reply["results"]]
    assert [vectors(row) for row in rows] == [printed(*imu(i)) for i in range(0, len(items), 2)]


async def test_batch_with_no_good_item_is_refused_with_400_and_each_reason(
    station: Station, api: Api
) -> None:
    session_id = await session_in(api, "collecting")
    items = [bad for bad, _ in BAD_ITEMS[:3]]

    status, body = await api.post(
        BATCH, data=batch_body(items, session_id=session_id), headers=RAW_FORM
    )

    assert status == 400, body
    assert body["error"] == "no item of batch_data could be stored"
    assert (body["total_items"], body["successful_items"], body["failed_items"]) == (3, 0, 3)
    assert [r["index"] for r in body["refused"]] == [0, 1, 2]
    assert samples(station) == []


@pytest.mark.parametrize(
    ("batch_data", "reason"),
    [
        pytest.param('[{"acc":[0.12,-9.81,0.30],"gyro":[0.01', "Invalid JSON format", id="cut"),
        pytest.param('[{"acc":[nanx,1.00,2.00]}]', "Invalid JSON format", id="garbage-word"),
        pytest.param("[" * 50_000 + "]" * 50_000, "Invalid JSON format", id="deep"),
        pytest.param('{"acc":[1,2,3]}', "batch_data must be a JSON array", id="object"),
        pytest.param("12", "batch_data must be a JSON array", id="number"),
    ],
)
async def test_batch_that_is_broken_as_a_whole_is_refused_with_the_reason(
    station: Station, api: Api, batch_data: str, reason: str
) -> None:
    body = f"device_code=d&sensor_type=waist&batch_data={batch_data}".encode()

    status, reply = await api.post(BATCH, data=body, headers=RAW_FORM)

    assert status == 400, reply
    assert reply["error"].startswith(reason)
    assert reply["data_preview"] == batch_data[:200]
    assert samples(station) == []


async def test_empty_batch_is_fine_and_stores_nothing(station: Station, api: Api) -> None:
    reply = await api.ok("POST", BATCH, data=batch_body([], session_id=""), headers=RAW_FORM)

    assert (reply["total_items"], reply["successful_items"], reply["failed_items"]) == (0, 0, 0)
    assert reply["results"] == []
    assert samples(station) == []


@pytest.mark.parametrize("missing", ["batch_data", "device_code", "sensor_type"])
async def test_batch_missing_a_field_is_refused_with_what_was_received(
    station: Station, api: Api, missing: str
) -> None:
    fields = {"batch_data": "[]", "device_code": "d", "sensor_type": "waist"}
    del fields[missing]

    status, body = await api.post(BATCH, data=fields)

    assert status == 400, body
    assert body["error"] == "Missing required parameters"
    assert body["required"] == ["batch_data", "device_code", "sensor_type"]
    assert body["received"][missing] == "missing"
    assert list(body["received"].values()).count("present") == 2


async def test_batch_sensor_type_is_free_text_up_to_32_characters(
    station: Station, api: Api
) -> None:
    elbow = await api.ok(
        "POST",
        BATCH,
        data=batch_body(firmware_items(1), sensor_type="elbow", session_id=""),
        headers=RAW_FORM,
    )
    status, body = await api.post(
        BATCH,
        data=batch_body(firmware_items(1), sensor_type="x" * 33, session_id=""),
        headers=RAW_FORM,
    )

    assert elbow["successful_items"] == 1
    assert status == 400, body
    assert [r["sensor_type"] for r in samples(station)] == ["elbow"]


async def test_multipart_batch_upload_works(station: Station, api: Api) -> None:
    session_id = await session_in(api, "collecting")
    with aiohttp.MultipartWriter("form-data") as form:
        for name, value in (
            ("device_code", MULTI_SENSOR_CODE),
            ("sensor_type", "wrist"),
            ("batch_data", "[" + ",".join(firmware_items(5)) + "]"),
            ("session_id", str(session_id)),
        ):
            part = form.append(value)
            part.set_content_disposition("form-data", name=name)

    reply = await api.ok("POST", BATCH, data=form)

    assert reply["successful_items"] == 5
    assert [vectors(r) for r in samples(station)] == [printed(*imu(i)) for i in range(5)]


async def test_batch_as_a_json_body_works(station: Station, api: Api) -> None:
    session_id = await session_in(api, "collecting")
    items = [json.loads(item) for item in firmware_items(4)]

    reply = await api.ok(
        "POST",
        BATCH,
        json={
            "device_code": "d",
            "sensor_type": "waist",
            "batch_data": items,
            "session_id": session_id,
        },
    )

    assert reply["successful_items"] == 4
    assert len(samples(station, "session_id = ?", (session_id,))) == 4


async def test_item_timestamps_and_seq_are_stored_raw_and_parsed(
    station: Station, api: Api
) -> None:
    session_id = await session_in(api, "collecting")
    started = parse_iso((await api.session(session_id))["session"]["started_at"])
    assert started is not None
    local = started.astimezone(BEIJING) + dt.timedelta(seconds=1)
    wall = int(local.strftime("%H%M%S")) * 1000 + local.microsecond // 1000
    # As JSON text: a raw form body cannot carry "+" (it reads as a space).
    stamps = [
        "1796349600123",
        '"1796349600123"',
        f'"{wall:09d}"',
        '"2026-12-04T10:05:35.926"',
        '"2026-12-04T02:05:35.926Z"',
        '"25:00:00"',
        '"1796349600"',
        "17963496001",
        "1e17",
        "-9000000",
    ]
    items = [
        sample_json(*imu(i))[:-1] + f',"timestamp":{stamp},"seq":{i}}}'
        for i, stamp in enumerate(stamps)
    ]

    reply = await api.ok(
        "POST", BATCH, data=batch_body(items, session_id=session_id), headers=RAW_FORM
    )

    assert reply["successful_items"] == len(stamps)
    rows = samples(station)
    assert [r["seq"] for r in rows] == list(range(len(stamps)))
    assert [r["device_time"] for r in rows] == [
        "1796349600123",
        "1796349600123",
        f"{wall:09d}",
        "2026-12-04T10:05:35.926",
        "2026-12-04T02:05:35.926Z",
        "25:00:00",
        "1796349600",
        "17963496001",
        "100000000000000000",
        "-9000000",
    ]
    one_second_in = started.timestamp() * 1000 + 1000
    expected_ms = [
        1796349600123,
        1796349600123,
        pytest.approx(one_second_in, abs=1),
        1796349935926,  # 10:05:35.926 Beijing
        1796349935926,
        None,
        None,
        None,
        None,
        None,
    ]
    assert [r["device_ms"] for r in rows] == expected_ms
    assert [r["esp32_timestamp"] for r in reply["results"]][:5] == [
        "2026-12-04T02:00:00.123Z",
        "2026-12-04T02:00:00.123Z",
        reply["results"][2]["esp32_timestamp"],
        "2026-12-04T02:05:35.926Z",
        "2026-12-04T02:05:35.926Z",
    ]
    assert (await api.session(session_id))["devices"][0]["samples"] == len(stamps)


# ---- refusals in the event log -----------------------------------------------------------------


async def test_refused_uploads_show_in_the_event_log_once_a_minute_per_device(
    station: Station, api: Api
) -> None:
    closed = await session_in(api, "completed")
    for _ in range(3):
        status, _body = await api.post(BATCH, data=batch_body(firmware_items(2)), headers=RAW_FORM)
        assert status == 404
    status, _body = await api.post(
        UPLOAD, data=single_body(closed, 1, device_code="other"), headers=RAW_FORM
    )
    assert status == 400

    [unknown] = await eventually(lambda: refusals(station, MULTI_SENSOR_CODE))
    [inactive] = await eventually(lambda: refusals(station, "other"))

    assert unknown.result == "refused"
    assert unknown.data == {"session_id": MULTI_SENSOR_SESSION}
    assert "session 1011 does not exist" in unknown.message
    assert unknown.actor == f"device:{MULTI_SENSOR_CODE}"
    assert f"session {closed} is completed" in inactive.message
    assert samples(station) == []


async def test_a_device_making_up_a_new_session_id_per_batch_is_logged_once_a_minute(
    station: Station, api: Api
) -> None:
    """The flash sketch sends session_id = millis(), a new number every time."""
    for millis in (5000, 10000, 15000, 20000):
        status, _body = await api.post(
            BATCH, data=batch_body(firmware_items(2), session_id=millis), headers=RAW_FORM
        )
        assert status == 404

    [refusal] = await eventually(lambda: refusals(station, MULTI_SENSOR_CODE))
    assert await station.store.write(lambda db: None) is None  # every queued write is done
    assert len(await refusals(station, MULTI_SENSOR_CODE)) == 1
    assert refusal.data == {"session_id": 5000}


# ---- upload_sensor_data/: the legacy upload ----------------------------------------------------


async def test_legacy_upload_is_kept_verbatim(station: Station, api: Api) -> None:
    session_id = await session_in(api, "stopping")
    text = 'not JSON at all: {"acc":[1,2'

    reply = await api.ok(
        "POST",
        LEGACY,
        data={
            "device_code": "old",
            "sensor_type": "anything",
            "data": text,
            "session_id": str(session_id),
        },
    )

    assert set(reply) == {"msg", "data_id"}
    assert reply["msg"] == "data upload success"
    assert isinstance(reply["data_id"], int)
    [row] = query(station, "SELECT * FROM raw_uploads")
    assert (row["upload_id"], row["session_id"], row["device_code"]) == (
        reply["data_id"],
        session_id,
        "old",
    )
    assert (row["sensor_type"], row["data"]) == ("anything", text)
    assert samples(station) == []
    assert (await api.session(session_id))["raw_uploads"] == 1


async def test_legacy_upload_of_a_json_body_keeps_its_data_as_json_text(
    station: Station, api: Api
) -> None:
    await api.ok(
        "POST",
        LEGACY,
        json={"device_code": "old", "sensor_type": "腰", "data": {"acc": [1, 2, 3], "注": "好"}},
    )

    [row] = query(station, "SELECT * FROM raw_uploads")
    assert json.loads(row["data"]) == {"acc": [1, 2, 3], "注": "好"}
    assert row["session_id"] is None


@pytest.mark.parametrize(
    ("fields", "status", "error"),
    [
        ({"sensor_type": "t", "data": "x"}, 400, "device_code, sensor_type and data required"),
        ({"device_code": "d", "data": "x"}, 400, "device_code, sensor_type and data required"),
        (
            {"device_code": "d", "sensor_type": "t"},
            400,
            "device_code, sensor_type and data required",
        ),
        ({"device_code": "d", "sensor_type": "t", "data": "x", "session_id": "77"}, 404, "Session"),
        ({"device_code": "d", "sensor_type": "t", "data": "x", "session_id": "x"}, 404, "Session"),
    ],
)
async def test_bad_legacy_upload_is_refused(
    station: Station, api: Api, fields: dict[str, str], status: int, error: str
) -> None:
    code, body = await api.post(LEGACY, data=fields)

    assert code == status, body
    assert body["error"].startswith(error)
    assert query(station, "SELECT * FROM raw_uploads") == []


async def test_legacy_upload_to_a_closed_session_is_refused(station: Station, api: Api) -> None:
    session_id = await session_in(api, "stopped")

    status, body = await api.post(
        LEGACY,
        data={"device_code": "d", "sensor_type": "t", "data": "x", "session_id": str(session_id)},
    )

    assert status == 400, body
    assert body["session_status"] == "stopped"
    assert query(station, "SELECT * FROM raw_uploads") == []


# ---- the session's view of its uploads ---------------------------------------------------------


async def test_session_detail_shows_samples_per_device_and_upload_state(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device("W1")
    await api.register("W1", device.address)
    await api.join("court", "W1")
    session_id = await api.start_session("court")
    await api.start_collection(session_id)
    items = [
        sample_json(*imu(i))[:-1] + f',"timestamp":{1796349600000 + 10 * i}}}' for i in range(20)
    ]
    await api.ok(
        "POST",
        BATCH,
        data=batch_body(items, device_code="W1", session_id=session_id),
        headers=RAW_FORM,
    )
    await api.ok(
        "POST",
        BATCH,
        data=batch_body(items[:5], device_code="W1", sensor_type="wrist", session_id=session_id),
        headers=RAW_FORM,
    )
    await api.ok(
        "POST",
        UPLOAD,
        data=single_body(session_id, 45678901, device_code="stranger"),
        headers=RAW_FORM,
    )
    await api.end_session(session_id)

    rows = {row["device_code"]: row for row in (await api.session(session_id))["devices"]}

    assert set(rows) == {"W1", "stranger"}
    w1 = rows["W1"]
    assert (w1["samples"], w1["sensors"]) == (25, {"waist": 20, "wrist": 5})
    assert (w1["first_sample_at"], w1["last_sample_at"]) == (
        "2026-12-04T02:00:00.000Z",
        "2026-12-04T02:00:00.190Z",
    )
    assert (w1["upload"], w1["upload_completed_at"], w1["reported_stats"]) == (
        "pending",
        None,
        None,
    )
    assert w1["start"]["state"] == "acked"
    stranger = rows["stranger"]
    assert stranger["samples"] == 1
    assert stranger["first_sample_at"] == stranger["last_sample_at"]  # its server receive time
    assert stranger["start"] is None

    await api.ok(
        "POST",
        "/wxapp/esp32/mark_upload_complete/",
        data={
            "session_id": str(session_id),
            "device_code": "W1",
            "upload_stats": '{"total_data_points":25}',
        },
    )
    detail = await api.session(session_id)

    w1 = {row["device_code"]: row for row in detail["devices"]}["W1"]
    assert w1["upload"] == "complete"
    assert parse_iso(w1["upload_completed_at"])
    assert w1["reported_stats"] == {"total_data_points": 25}
    assert detail["session"]["status"] == "completed"
