"""Devices that pull their commands (the deleted esp32_http_polling.ino), confirmations on
esp32/status/, the status query, esp32/mark_upload_complete/ and the staff's finish.

A polling device serves no HTTP and never registers an address: the station cannot push to it,
so its ledger entry fails at once, and the poll then delivers that same entry.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from station.backend.models import parse_iso
from station.backend.runtime import Station
from tests.backend.conftest import DEVICE_CODE, Api, StartDevice
from tests.backend.firmware import RAW_FORM, batch_body, firmware_items, query

POLL = "/wxapp/esp32/poll_commands/"
STATUS = "/wxapp/esp32/status/"
UPLOAD_COMPLETE = "/wxapp/esp32/mark_upload_complete/"
POLLER = "esp32s3_001"  # its device code is its group code, as the sketch assumed


async def poll(api: Api, current: str | int = "", status: str = "idle") -> dict[str, Any]:
    """A poll exactly as the sketch posts it."""
    body = f"device_code={POLLER}&current_session={current}&status={status}"
    return await api.ok("POST", POLL, data=body.encode(), headers=RAW_FORM)


async def confirm(api: Api, status: str, session_id: int, device_code: str = POLLER) -> dict:
    body = f"device_code={device_code}&status={status}&session_id={session_id}"
    return await api.ok("POST", STATUS, data=body.encode(), headers=RAW_FORM)


async def ledger(api: Api, session_id: int) -> dict[tuple[str, str], dict[str, Any]]:
    detail = await api.session(session_id)
    return {(c["device_code"], c["kind"]): c for c in detail["commands"]}


def assert_no_command(reply: dict[str, Any]) -> None:
    # The key is left out entirely: the sketch calls strcmp on a null command and crashes.
    assert "command" not in reply
    assert reply["message"] == "无新指令"


def assert_command(reply: dict[str, Any], command: str, session_id: int) -> None:
    assert reply["command"] == command
    assert reply["session_id"] == str(session_id)  # a JSON string: ArduinoJson reads it as such
    assert reply["device_code"] == POLLER
    assert parse_iso(reply["timestamp"])
    assert reply["message"] == ("开始采集指令" if command == "START_COLLECTION" else "停止采集指令")


async def a_polling_session(api: Api) -> int:
    """The poller has polled once (idle); a session for its group is collecting."""
    assert_no_command(await poll(api))
    session_id = await api.start_session(POLLER)
    await api.start_collection(session_id)
    return session_id


# ---- the whole life of a polled session --------------------------------------------------------


async def test_polling_device_is_started_and_stopped_through_its_ledger_entries(
    api: Api,
) -> None:
    idle = await poll(api)
    assert_no_command(idle)
    assert (idle["device_code"], idle["current_session"], idle["status"]) == (POLLER, "", "idle")

    started = await api.ok(
        "POST", "/wxapp/start_session/", data={"openid": "u", "device_group_code": POLLER}
    )
    session_id = started["session_id"]
    assert started["device_codes"] == [POLLER]
    collecting = await api.start_collection(session_id)
    [push] = collecting["devices"]
    assert (push["state"], push["failure"]) == ("failed", "unreachable")
    assert "has not registered an address" in push["error"]
    failed = (await ledger(api, session_id))[(POLLER, "start")]

    start = await poll(api)

    assert_command(start, "START_COLLECTION", session_id)
    sent = (await ledger(api, session_id))[(POLLER, "start")]
    assert sent["command_id"] == failed["command_id"]
    assert (sent["state"], sent["target"], sent["attempts"]) == ("sent", "poll", 1)
    assert sent["failure"] is None

    confirmed = await confirm(api, "START_COLLECTION_CONFIRMED", session_id)

    assert confirmed["msg"] == "状态更新成功"
    assert (confirmed["device_code"], confirmed["status"]) == (
        POLLER,
        "START_COLLECTION_CONFIRMED",
    )
    assert confirmed["session_id"] == str(session_id)
    acked = (await ledger(api, session_id))[(POLLER, "start")]
    assert (acked["command_id"], acked["state"]) == (failed["command_id"], "acked")
    assert_no_command(await poll(api, session_id, "collecting"))
    assert_no_command(await poll(api, session_id, "collecting"))

    ended = await api.end_session(session_id)
    assert ended["status"] == "stopping"
    [stop_push] = ended["devices"]
    assert (stop_push["kind"], stop_push["state"]) == ("stop", "failed")

    assert_command(await poll(api, session_id, "collecting"), "STOP_COLLECTION", session_id)
    # The sketch clears its session on STOP: until it confirms, STOP comes again.
    assert_command(await poll(api), "STOP_COLLECTION", session_id)
    stop = (await ledger(api, session_id))[(POLLER, "stop")]
    assert (stop["state"], stop["attempts"]) == ("sent", 2)

    await confirm(api, "STOP_COLLECTION_CONFIRMED", session_id)

    assert (await ledger(api, session_id))[(POLLER, "stop")]["state"] == "acked"
    assert_no_command(await poll(api))
    assert_no_command(await poll(api))
    detail = await api.session(session_id)
    assert detail["session"]["status"] == "stopping"  # it never uploads
    acks = [e for e in detail["events"] if e["result"] == "acked"]
    assert [(e["action"], e["actor"]) for e in acks] == [
        ("command.start", f"device:{POLLER}"),
        ("command.stop", f"device:{POLLER}"),
    ]


async def test_polling_device_shows_in_the_registry_without_an_address(api: Api) -> None:
    await poll(api, status="idle")

    device = (await api.devices())[POLLER]

    assert device["address"] is None
    assert device["last_seen_via"] == "poll_commands"
    assert device["reported_status"] == "idle"
    assert device["liveness"] == "online"


async def test_polling_device_is_not_offline_between_its_polls(station: Station, api: Api) -> None:
    """The sketch polls every 3 s and the station cannot poll it back: its liveness follows its
    own cadence, not the station's poll interval (0.2 s in these tests)."""
    await poll(api)
    seen = time.time()
    assert station.service is not None

    assert station.service.liveness_of(POLLER, now=seen + 4) == "online"
    assert station.service.liveness_of(POLLER, now=seen + 12) == "stale"
    assert station.service.liveness_of(POLLER, now=seen + 16) == "offline"


async def test_poll_reporting_the_session_as_current_acknowledges_the_start(api: Api) -> None:
    session_id = await a_polling_session(api)
    assert_command(await poll(api), "START_COLLECTION", session_id)

    assert_no_command(await poll(api, session_id, "collecting"))

    start = (await ledger(api, session_id))[(POLLER, "start")]
    assert start["state"] == "acked"
    assert start["reply"] == "by poll"


async def test_polling_device_is_told_to_start_while_the_session_calibrates(api: Api) -> None:
    """As the original server did: START as soon as a session of its group exists."""
    await poll(api)
    session_id = await api.start_session(POLLER)

    assert_command(await poll(api), "START_COLLECTION", session_id)
    await confirm(api, "START_COLLECTION_CONFIRMED", session_id)
    collecting = await api.start_collection(session_id)

    assert [(d["kind"], d["state"]) for d in collecting["devices"]] == [("start", "acked")]
    assert_no_command(await poll(api, session_id, "collecting"))


async def test_device_is_told_to_stop_its_old_session_before_it_is_told_to_start_the_next(
    api: Api,
) -> None:
    first = await a_polling_session(api)
    assert_command(await poll(api), "START_COLLECTION", first)
    await confirm(api, "START_COLLECTION_CONFIRMED", first)
    await api.end_session(first)
    second = await api.start_session(POLLER)
    await api.start_collection(second)

    # The device polls only now: the old session's STOP must come first, or the STOP would
    # end the recording of the new session.
    assert_command(await poll(api, first, "collecting"), "STOP_COLLECTION", first)
    await confirm(api, "STOP_COLLECTION_CONFIRMED", first)
    assert_command(await poll(api), "START_COLLECTION", second)
    await confirm(api, "START_COLLECTION_CONFIRMED", second)
    assert_no_command(await poll(api, second, "collecting"))


async def test_device_that_never_heard_start_is_not_told_to_stop(api: Api) -> None:
    session_id = await a_polling_session(api)

    ended = await api.end_session(session_id)

    assert ended["status"] == "completed"  # it never started, so nothing to wait for
    assert ended["devices"] == []
    assert_no_command(await poll(api))


async def test_poll_for_a_group_without_sessions_has_nothing(api: Api) -> None:
    reply = await api.ok("POST", POLL, json={"device_code": "nobody", "status": "idle"})

    assert "command" not in reply
    assert (reply["device_code"], reply["current_session"], reply["status"]) == (
        "nobody",
        "",
        "idle",
    )


@pytest.mark.parametrize(
    "kwargs", [{"data": {}}, {"data": {"device_code": " "}}, {"json": {"status": "idle"}}]
)
async def test_poll_without_device_code_is_refused(api: Api, kwargs: dict[str, Any]) -> None:
    status, body = await api.post(POLL, **kwargs)

    assert status == 400, body
    assert "device_code" in body["error"]


# ---- esp32/status/ ---------------------------------------------------------------------------


async def test_status_query_answers_binding_last_data_and_active_sessions(
    station: Station, api: Api
) -> None:
    assert await api.ok("POST", STATUS, data={"device_code": POLLER}) == {
        "device_code": POLLER,
        "is_bound": False,
        "last_data_time": None,
        "active_sessions": [],
    }
    await api.ok("POST", "/wxapp/bind_device/", data={"openid": "o1", "device_code": POLLER})
    calibrating = await api.start_session(POLLER)
    member = await api.start_session("elsewhere")
    await confirm(api, "START_COLLECTION_CONFIRMED", member)  # makes it a member
    await api.start_collection(member)
    ended = await api.start_session(POLLER)
    await api.end_session(ended)
    await api.start_session("unrelated")
    await api.ok(
        "POST",
        "/wxapp/esp32/batch_upload/",
        data=batch_body(firmware_items(2), device_code=POLLER, session_id=""),
        headers=RAW_FORM,
    )
    [received] = query(station, "SELECT MAX(received_at) AS t FROM samples")

    body = await api.ok("POST", STATUS, json={"device_code": POLLER})

    assert body["is_bound"] is True
    assert parse_iso(body["last_data_time"]).timestamp() == pytest.approx(received["t"], abs=0.01)
    assert [(s["session_id"], s["status"]) for s in body["active_sessions"]] == [
        (member, "collecting"),
        (calibrating, "calibrating"),
    ]
    assert all(parse_iso(s["start_time"]) for s in body["active_sessions"])


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({}, 400),
        ({"status": "START_COLLECTION_CONFIRMED", "session_id": "1"}, 400),
        ({"device_code": POLLER, "status": "START_COLLECTION_CONFIRMED"}, 400),
        ({"device_code": POLLER, "status": "STOP_COLLECTION_CONFIRMED", "session_id": "x"}, 400),
        ({"device_code": POLLER, "status": "START_COLLECTION_CONFIRMED", "session_id": "99"}, 404),
    ],
)
async def test_bad_status_post_is_refused(api: Api, fields: dict[str, str], status: int) -> None:
    code, body = await api.post(STATUS, data=fields)

    assert code == status, body
    assert isinstance(body["error"], str)


async def test_confirmation_of_a_pushed_start_changes_nothing(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    await api.join("g", DEVICE_CODE)
    session_id = await api.start_session("g")
    await api.start_collection(session_id)
    before = await api.session(session_id)

    await confirm(api, "START_COLLECTION_CONFIRMED", session_id, DEVICE_CODE)

    after = await api.session(session_id)
    assert after["commands"] == before["commands"]
    assert after["events"] == before["events"]


async def test_stop_confirmation_of_a_device_that_already_uploaded_completes_the_session(
    api: Api,
) -> None:
    session_id = await a_polling_session(api)
    assert_command(await poll(api), "START_COLLECTION", session_id)
    await confirm(api, "START_COLLECTION_CONFIRMED", session_id)
    assert (await api.end_session(session_id))["status"] == "stopping"
    uploaded = await api.ok(
        "POST", UPLOAD_COMPLETE, data={"session_id": str(session_id), "device_code": POLLER}
    )
    assert uploaded["session_status"] == "completed"

    assert_no_command(await poll(api))


async def test_start_confirmation_for_a_session_that_is_over_is_refused(api: Api) -> None:
    session_id = await a_polling_session(api)
    await api.ok("POST", f"/api/v1/sessions/{session_id}/abort")

    code, body = await api.post(
        STATUS,
        data={
            "device_code": "LATE",
            "status": "START_COLLECTION_CONFIRMED",
            "session_id": str(session_id),
        },
    )

    assert code == 409, body
    assert body["current_status"] == "stopped"
    assert "LATE" not in (await api.session(session_id))["session"]["device_codes"]


# ---- esp32/mark_upload_complete/ ---------------------------------------------------------------


async def started_session(api: Api, *device_codes: str) -> int:
    """A collecting session whose devices all confirmed their start."""
    session_id = await api.start_session("lab")
    for code in device_codes:
        await confirm(api, "START_COLLECTION_CONFIRMED", session_id, code)
    await api.start_collection(session_id)
    return session_id


async def test_upload_complete_answers_the_original_keys(api: Api) -> None:
    session_id = await started_session(api, "A1")
    for sensor in ("waist", "wrist"):
        await api.ok(
            "POST",
            "/wxapp/esp32/batch_upload/",
            data=batch_body(firmware_items(3), sensor_type=sensor, session_id=session_id),
            headers=RAW_FORM,
        )
    await api.end_session(session_id)
    stats = '{"total_data_points":6,"sensor_types":["waist","wrist"]}'

    body = await api.ok(
        "POST",
        UPLOAD_COMPLETE,
        data=f"session_id={session_id}&device_code=A1&upload_stats={stats}".encode(),
        headers=RAW_FORM,
    )

    assert body["msg"].startswith("ESP32 data upload completed")
    assert body["session_id"] == session_id
    assert body["device_code"] == "A1"
    assert body["session_status"] == "completed"
    collection = body["data_collection_stats"]
    assert (collection["total_data_points"], collection["sensor_types"]) == (6, ["waist", "wrist"])
    assert isinstance(collection["collection_duration_seconds"], float)
    assert collection["collection_duration_seconds"] >= 0
    assert body["upload_stats"] == json.loads(stats)
    assert body["analysis_triggered"] is False


@pytest.mark.parametrize(
    ("upload_stats", "expected"),
    [
        ("not json", {}),
        ("[1,2]", {}),
        ("", {}),
        ("[" * 50_000 + "]" * 50_000, {}),
        ('{"uploaded":12}', {"uploaded": 12}),
    ],
)
async def test_upload_stats_that_are_no_json_object_are_read_as_empty(
    api: Api, upload_stats: str, expected: dict[str, Any]
) -> None:
    session_id = await started_session(api, "A1")

    body = await api.ok(
        "POST",
        UPLOAD_COMPLETE,
        data={"session_id": str(session_id), "device_code": "A1", "upload_stats": upload_stats},
    )

    assert body["upload_stats"] == expected


async def test_upload_stats_as_a_json_object_in_a_json_body_are_kept(api: Api) -> None:
    session_id = await started_session(api, "A1")

    body = await api.ok(
        "POST",
        UPLOAD_COMPLETE,
        json={"session_id": session_id, "device_code": "A1", "upload_stats": {"n": 3}},
    )

    assert body["upload_stats"] == {"n": 3}
    assert body["session_status"] == "collecting"  # reported early: the session goes on


async def test_session_completes_when_the_last_started_device_reports(api: Api) -> None:
    session_id = await started_session(api, "A1", "A2")
    assert (await api.end_session(session_id))["status"] == "stopping"

    first = await api.ok(
        "POST", UPLOAD_COMPLETE, data={"session_id": str(session_id), "device_code": "A1"}
    )
    assert first["session_status"] == "stopping"
    again = await api.ok(
        "POST", UPLOAD_COMPLETE, data={"session_id": str(session_id), "device_code": "A1"}
    )
    assert again["session_status"] == "stopping"
    last = await api.ok(
        "POST", UPLOAD_COMPLETE, json={"session_id": session_id, "device_code": "A2"}
    )

    assert last["session_status"] == "completed"
    detail = await api.session(session_id)
    assert detail["session"]["ended_at"]
    completed = [e for e in detail["events"] if e["action"] == "session.completed"]
    assert [e["actor"] for e in completed] == ["station"]


@pytest.mark.parametrize(
    ("fields", "status", "error"),
    [
        ({"device_code": "A1"}, 400, "session_id and device_code required"),
        ({"session_id": "1"}, 400, "session_id and device_code required"),
        ({"session_id": "", "device_code": "A1"}, 400, "session_id and device_code required"),
        ({"session_id": "999", "device_code": "A1"}, 404, "Session not found"),
        ({"session_id": "abc", "device_code": "A1"}, 404, "Session not found"),
    ],
)
async def test_bad_upload_complete_is_refused(
    api: Api, fields: dict[str, str], status: int, error: str
) -> None:
    code, body = await api.post(UPLOAD_COMPLETE, data=fields)

    assert code == status, body
    assert body["error"].startswith(error)


@pytest.mark.parametrize("closed", ["completed", "stopped"])
async def test_upload_complete_for_a_closed_session_is_refused_with_its_status(
    api: Api, closed: str
) -> None:
    session_id = await api.start_session("lab")
    if closed == "completed":
        await api.end_session(session_id)
    else:
        await api.ok("POST", f"/api/v1/sessions/{session_id}/abort")

    status, body = await api.post(
        UPLOAD_COMPLETE, data={"session_id": str(session_id), "device_code": "A1"}
    )

    assert status == 400, body
    assert (body["error"], body["current_status"]) == ("Session not in active state", closed)


# ---- /api/v1/sessions/{id}/finish --------------------------------------------------------------


async def test_finish_closes_a_stopping_session_and_logs_who_never_reported(api: Api) -> None:
    session_id = await started_session(api, "A1", "A2", "A3")
    await api.end_session(session_id)
    await api.ok("POST", UPLOAD_COMPLETE, data={"session_id": str(session_id), "device_code": "A2"})

    finished = await api.ok("POST", f"/api/v1/sessions/{session_id}/finish", json={"openid": "lab"})

    assert finished["session"]["status"] == "completed"
    detail = await api.session(session_id)
    [event] = [e for e in detail["events"] if e["action"] == "session.completed"]
    assert event["actor"] == "miniprogram:lab"
    assert event["data"] == {"devices_not_uploaded": ["A1", "A3"]}
    assert "A1, A3" in event["message"]
    uploads = {row["device_code"]: row["upload"] for row in detail["devices"]}
    assert uploads == {"A1": "pending", "A2": "complete", "A3": "pending"}


@pytest.mark.parametrize("state", ["calibrating", "collecting", "completed", "stopped"])
async def test_finish_is_refused_unless_the_session_is_stopping(api: Api, state: str) -> None:
    session_id = await api.start_session("lab")
    if state == "collecting":
        await api.start_collection(session_id)
    if state == "completed":
        await api.end_session(session_id)
    if state == "stopped":
        await api.ok("POST", f"/api/v1/sessions/{session_id}/abort")

    status, body = await api.post(f"/api/v1/sessions/{session_id}/finish")

    assert status == 409, body
    assert (body["current_status"], body["session_id"]) == (state, session_id)


@pytest.mark.parametrize(("session_id", "status"), [("999", 404), ("abc", 400), ("0", 400)])
async def test_finish_of_an_unknown_session_is_refused(
    api: Api, session_id: str, status: int
) -> None:
    code, body = await api.post(f"/api/v1/sessions/{session_id}/finish")

    assert code == status, body
    assert isinstance(body["error"], str)
