"""The session state machine: calibrating → collecting → stopping → completed, abort → stopped,
and every other transition refused with the session's current status."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.backend.conftest import DEVICE_CODE, FORM, Api, StartDevice, StartStation


async def a_device_in_group(api: Api, start_device: StartDevice, group: str = "test_group"):
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    await api.join(group, DEVICE_CODE)
    return device


def actions(detail: dict[str, Any]) -> list[str]:
    return [e["action"] for e in detail["events"]]


async def test_session_runs_calibrating_collecting_stopping_completed(
    api: Api, start_device: StartDevice
) -> None:
    device = await a_device_in_group(api, start_device)

    session_id = await api.start_session("test_group")
    assert (await api.session(session_id))["session"]["status"] == "calibrating"
    collecting = await api.start_collection(session_id)
    ended = await api.end_session(session_id)

    assert collecting["status"] == "collecting"
    assert ended["msg"] == "session ended"
    assert ended["status"] == "stopping"
    assert [d["state"] for d in ended["devices"]] == ["acked"]
    assert [(r.path, r.fields) for r in device.commands()] == [
        ("/start_collection", {"session_id": str(session_id), "device_code": DEVICE_CODE}),
        ("/stop_collection", {"command": "STOP_COLLECTION", "device_code": DEVICE_CODE}),
    ]
    assert (await api.session(session_id))["session"]["ended_at"] is None

    uploaded = await api.upload_complete(session_id)

    assert uploaded["session_status"] == "completed"
    detail = await api.session(session_id)
    session = detail["session"]
    assert session["status"] == "completed"
    assert session["collecting_at"] and session["stopping_at"] and session["ended_at"]
    assert [a for a in actions(detail) if a.startswith("session.")] == [
        "session.start",
        "session.collecting",
        "session.stopping",
        "session.completed",
    ]


async def test_session_stays_stopping_until_every_started_device_reports_its_upload(
    api: Api, start_device: StartDevice
) -> None:
    device = await a_device_in_group(api, start_device)
    session_id = await api.start_session("test_group")
    await api.start_collection(session_id)
    device.behaviour = "reject"

    ended = await api.end_session(session_id)

    assert ended["status"] == "stopping"
    assert ended["devices_failed"] == 1
    device.behaviour = "ok"
    await api.ok("POST", "/wxapp/notify_device_stop/", data={"device_code": DEVICE_CODE})
    assert (await api.session(session_id))["session"]["status"] == "stopping"
    await api.upload_complete(session_id)
    assert (await api.session(session_id))["session"]["status"] == "completed"


async def test_staff_can_finish_a_stopping_session_without_waiting_for_uploads(
    api: Api, start_device: StartDevice
) -> None:
    await a_device_in_group(api, start_device)
    session_id = await api.start_session("test_group")
    await api.start_collection(session_id)
    assert (await api.end_session(session_id))["status"] == "stopping"

    finished = await api.finish(session_id)

    assert finished["session"]["status"] == "completed"
    assert finished["session"]["ended_at"]
    [event] = [
        e for e in (await api.session(session_id))["events"] if e["action"] == "session.completed"
    ]
    assert event["data"] == {"devices_not_uploaded": [DEVICE_CODE]}
    assert DEVICE_CODE in event["message"]


async def test_session_without_devices_completes_when_ended(api: Api) -> None:
    session_id = await api.start_session("nobody")

    ended = await api.end_session(session_id)

    assert ended["status"] == "completed"
    assert ended["devices"] == []


async def test_abort_stops_a_collecting_session_and_tells_its_devices(
    api: Api, start_device: StartDevice
) -> None:
    device = await a_device_in_group(api, start_device)
    session_id = await api.start_session("test_group")
    await api.start_collection(session_id)

    aborted = await api.ok("POST", f"/api/v1/sessions/{session_id}/abort")

    assert aborted["session"]["status"] == "stopped"
    assert aborted["session"]["ended_at"]
    assert [(d["kind"], d["state"]) for d in aborted["devices"]] == [("stop", "acked")]
    assert device.paths("POST") == ["/start_collection", "/stop_collection"]
    assert "session.stopped" in actions(await api.session(session_id))


async def test_abort_of_a_stopping_session_stops_it(api: Api, start_device: StartDevice) -> None:
    device = await a_device_in_group(api, start_device)
    session_id = await api.start_session("test_group")
    await api.start_collection(session_id)
    device.behaviour = "reject"
    assert (await api.end_session(session_id))["status"] == "stopping"

    aborted = await api.ok("POST", f"/api/v1/sessions/{session_id}/abort")

    assert aborted["session"]["status"] == "stopped"


async def test_abort_of_a_calibrating_session_sends_nothing(
    api: Api, start_device: StartDevice
) -> None:
    device = await a_device_in_group(api, start_device)
    session_id = await api.start_session("test_group")

    aborted = await api.ok("POST", f"/api/v1/sessions/{session_id}/abort", data={})

    assert aborted["session"]["status"] == "stopped"
    assert aborted["devices"] == []
    assert device.received == []


async def assert_refused(
    api: Api, path: str, session_id: int, current_status: str, **kwargs: Any
) -> None:
    status, body = await api.post(path, **kwargs)
    assert status == 409, (path, body)
    assert body["current_status"] == current_status
    assert body["session_id"] == session_id
    assert isinstance(body["error"], str)


async def test_transitions_out_of_order_are_refused_with_the_current_status(api: Api) -> None:
    form = {"session_id": ""}

    completed = await api.start_session("g")
    await api.start_collection(completed)
    await api.end_session(completed)
    form["session_id"] = str(completed)
    await assert_refused(api, "/wxapp/start_data_collection/", completed, "completed", data=form)
    await assert_refused(api, "/wxapp/end_session/", completed, "completed", data=form)
    await assert_refused(api, f"/api/v1/sessions/{completed}/abort", completed, "completed")

    stopped = await api.start_session("g")
    await api.ok("POST", f"/api/v1/sessions/{stopped}/abort")
    form["session_id"] = str(stopped)
    await assert_refused(api, "/wxapp/start_data_collection/", stopped, "stopped", data=form)
    await assert_refused(api, "/wxapp/end_session/", stopped, "stopped", data=form)
    await assert_refused(api, f"/api/v1/sessions/{stopped}/abort", stopped, "stopped")

    statuses = {s["session_id"]: s["status"] for s in await api.sessions()}
    assert statuses == {completed: "completed", stopped: "stopped"}


async def test_ending_a_calibrating_session_is_allowed(api: Api) -> None:
    session_id = await api.start_session("g")

    ended = await api.end_session(session_id)

    assert ended["status"] == "completed"
    assert (await api.session(session_id))["session"]["collecting_at"] is None


async def test_ten_concurrent_starts_of_one_session_succeed_exactly_once(
    api: Api, start_device: StartDevice
) -> None:
    device = await a_device_in_group(api, start_device)
    session_id = await api.start_session("test_group")

    results = await asyncio.gather(
        *(
            api.post("/wxapp/start_data_collection/", data={"session_id": str(session_id)})
            for _ in range(10)
        )
    )

    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [409] * 9
    assert {b["current_status"] for s, b in results if s == 409} == {"collecting"}
    assert device.paths("POST") == ["/start_collection"]
    detail = await api.session(session_id)
    assert actions(detail).count("session.collecting") == 1


async def test_ten_concurrent_ends_of_one_session_succeed_exactly_once(
    api: Api, start_device: StartDevice
) -> None:
    device = await a_device_in_group(api, start_device)
    session_id = await api.start_session("test_group")
    await api.start_collection(session_id)

    results = await asyncio.gather(
        *(api.post("/wxapp/end_session/", data={"session_id": str(session_id)}) for _ in range(10))
    )

    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [409] * 9
    assert device.paths("POST") == ["/start_collection", "/stop_collection"]
    detail = await api.session(session_id)
    assert actions(detail).count("session.stopping") == 1
    assert detail["session"]["status"] == "stopping"
    assert (await api.upload_complete(session_id))["session_status"] == "completed"


async def test_session_ids_are_json_integers_that_increase(api: Api) -> None:
    ids = [await api.start_session(f"g{n}") for n in range(5)]

    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(set(ids))


async def test_session_ids_are_never_reused_after_a_restart(
    start_station: StartStation, http: aiohttp.ClientSession, tmp_path
) -> None:
    data_dir = tmp_path / "lab"
    first = await start_station(data_dir=data_dir)
    api = Api(http, first.url)
    before = [await api.start_session("g") for _ in range(3)]
    await first.stop()

    second = await start_station(data_dir=data_dir)
    api = Api(http, second.url)
    after = await api.start_session("g")

    assert after > max(before)
    assert [s["session_id"] for s in await api.sessions()] == [after, *reversed(before)]


async def test_curl_style_form_for_end_session_is_read(api: Api) -> None:
    session_id = await api.start_session("g")

    status, body = await api.post(
        "/wxapp/end_session/",
        data=f"session_id={session_id}".encode(),
        headers={"Content-Type": FORM},
    )

    assert status == 200, body
    assert body["session_id"] == session_id
