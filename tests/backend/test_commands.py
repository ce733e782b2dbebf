"""Commands to devices through the command ledger: idempotent, retried only when safe, sent
concurrently so a silent device never holds up a healthy one, and a clean shutdown mid-command."""

from __future__ import annotations

import asyncio
import time
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


async def notify(api: Api, session_id: int, device_code: str = DEVICE_CODE):
    return await api.post(
        "/wxapp/notify_device_start/",
        data={"session_id": str(session_id), "device_code": device_code},
    )


async def ledger(api: Api, session_id: int) -> list[dict[str, Any]]:
    return (await api.session(session_id))["commands"]


# ---- idempotence and retries ----------------------------------------------------------------


async def test_notifying_a_device_that_already_started_does_not_send_again(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    session_id = await api.start_session()

    first = await notify(api, session_id)
    second = await notify(api, session_id)

    assert first[0] == second[0] == 200
    assert second[1]["command"]["state"] == "acked"
    assert second[1]["command"]["attempts"] == 1
    assert second[1]["esp32_response"] == first[1]["esp32_response"]
    assert device.paths("POST") == ["/start_collection"]
    [command] = await ledger(api, session_id)
    assert (command["state"], command["attempts"]) == ("acked", 1)


async def test_start_data_collection_does_not_restart_a_device_already_notified(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    await api.join("test_group", DEVICE_CODE)
    session_id = await api.start_session("test_group")
    await notify(api, session_id)

    collecting = await api.start_collection(session_id)

    assert [d["state"] for d in collecting["devices"]] == ["acked"]
    assert device.paths("POST") == ["/start_collection"]


async def test_concurrent_notifies_of_one_device_send_one_command(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device(behaviour="slow", delay=0.2)
    await api.register(DEVICE_CODE, device.address)
    session_id = await api.start_session()

    results = await asyncio.gather(*(notify(api, session_id) for _ in range(5)))

    assert [status for status, _ in results] == [200] * 5
    assert device.paths("POST") == ["/start_collection"]


async def test_refused_device_is_tried_once_more_than_the_retry_setting(
    api: Api, refusing_address: str
) -> None:
    await api.register(DEVICE_CODE, refusing_address)
    session_id = await api.start_session()

    status, body = await notify(api, session_id)

    assert status == 502
    assert body["attempts"] == 2  # command_retries=1 in the test settings
    [command] = await ledger(api, session_id)
    assert (command["state"], command["failure"], command["attempts"]) == (
        "failed",
        "unreachable",
        2,
    )
    assert "refused" in command["last_error"]


@pytest.mark.parametrize(("behaviour", "http_status"), [("reject", 400), ("error", 500)])
async def test_device_that_answers_with_an_error_is_not_retried(
    api: Api, start_device: StartDevice, behaviour: str, http_status: int
) -> None:
    device = await start_device(behaviour=behaviour)
    await api.register(DEVICE_CODE, device.address)
    session_id = await api.start_session()

    status, body = await notify(api, session_id)

    assert status == 502
    assert len(device.received) == 1
    [command] = await ledger(api, session_id)
    assert (command["state"], command["failure"], command["attempts"]) == (
        "failed",
        "rejected",
        1,
    )
    assert command["http_status"] == http_status


async def test_failed_command_succeeds_when_the_device_comes_back(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    session_id = await api.start_session()
    await device.stop()

    status, _ = await notify(api, session_id)
    assert status == 502
    await device.start()
    status, body = await notify(api, session_id)

    assert status == 200, body
    assert body["command"]["state"] == "acked"
    assert body["command"]["attempts"] == 3  # two refused, one answered
    assert device.paths("POST") == ["/start_collection"]
    [command] = await ledger(api, session_id)
    assert (command["state"], command["failure"], command["last_error"]) == ("acked", None, None)
    results = [e["result"] for e in (await api.session(session_id))["events"]]
    assert results[-2:] == ["failed", "acked"]


# ---- concurrency: a silent device never delays a healthy one --------------------------------


async def test_silent_devices_do_not_delay_a_healthy_one(
    start_station: StartStation,
    start_device: StartDevice,
    start_silent: StartSilent,
    http: aiohttp.ClientSession,
) -> None:
    station = await start_station(read_timeout=2.0)
    api = Api(http, station.url)
    silent = [await start_silent() for _ in range(3)]
    for n, device in enumerate(silent):
        await api.register(f"A{n}", device.address)  # sorted before the healthy one
        await api.join("lab", f"A{n}")
    healthy = await start_device("Z9")
    await api.register("Z9", healthy.address)
    await api.join("lab", "Z9")
    session_id = await api.start_session("lab")

    sent_at = time.monotonic()
    collecting = await api.start_collection(session_id)
    answered_at = time.monotonic()

    [arrival] = [r.at for r in healthy.received]
    assert arrival - sent_at < 1.5  # well before the silent devices' 2 s read timeout ran out
    assert answered_at - sent_at >= 2.0  # the reply waited for the silent devices' timeouts
    states = {d["device_code"]: (d["state"], d["failure"]) for d in collecting["devices"]}
    assert states == {
        "A0": ("failed", "timeout"),
        "A1": ("failed", "timeout"),
        "A2": ("failed", "timeout"),
        "Z9": ("acked", None),
    }
    assert (collecting["devices_total"], collecting["devices_acked"]) == (4, 1)
    assert collecting["devices_failed"] == 3
    assert all(len(device.arrivals) == 1 for device in silent)


async def test_session_detail_shows_each_devices_start_and_stop(
    api: Api, start_device: StartDevice, refusing_address: str
) -> None:
    good = await start_device("G1")
    await api.register("G1", good.address)
    await api.register("R1", refusing_address)
    for code in ("G1", "R1"):
        await api.join("lab", code)
    session_id = await api.start_session("lab")
    await api.start_collection(session_id)
    await api.end_session(session_id)

    detail = await api.session(session_id)

    rows = {row["device_code"]: row for row in detail["devices"]}
    assert rows["G1"]["start"]["state"] == "acked"
    assert rows["G1"]["stop"]["state"] == "acked"
    assert rows["G1"]["address"] == good.address
    assert rows["R1"]["start"]["state"] == "failed"
    assert rows["R1"]["start"]["failure"] == "unreachable"
    assert rows["R1"]["stop"] is None  # a device that never started is not told to stop
    assert detail["session"]["status"] == "stopping"
    assert [(c["device_code"], c["kind"]) for c in detail["commands"]] == [
        ("G1", "start"),
        ("R1", "start"),
        ("G1", "stop"),
    ]
    messages = [e["message"] for e in detail["events"] if e["action"].startswith("command.")]
    assert len(messages) == 3
    assert any("refused" in m for m in messages)
    # R1 never started, so it recorded nothing and the session does not wait for its upload.
    completed = await api.upload_complete(session_id, "G1")
    assert completed["session_status"] == "completed"


# ---- both reply dialects --------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["firmware", "seed"])
async def test_both_reply_dialects_are_acknowledgements(
    api: Api, start_device: StartDevice, dialect: str
) -> None:
    device = await start_device(dialect=dialect)
    await api.register(DEVICE_CODE, device.address)
    await api.join("test_group", DEVICE_CODE)
    session_id = await api.start_session("test_group")

    collecting = await api.start_collection(session_id)
    ended = await api.end_session(session_id)

    assert [d["state"] for d in collecting["devices"]] == ["acked"]
    assert [d["state"] for d in ended["devices"]] == ["acked"]
    assert ended["status"] == "stopping"
    assert (await api.upload_complete(session_id))["session_status"] == "completed"
    commands = await ledger(api, session_id)
    expected = "Collection started" if dialect == "seed" else "collection_started"
    assert expected in commands[0]["reply"]


# ---- get_device_status and notify_device_stop ------------------------------------------------


@pytest.mark.parametrize("dialect", ["firmware", "seed"])
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_device_status_answers_the_devices_own_json(
    api: Api, start_device: StartDevice, dialect: str, method: str
) -> None:
    device = await start_device(dialect=dialect)
    await api.register(DEVICE_CODE, device.address)
    fields = {"device_code": DEVICE_CODE}
    kwargs: dict[str, Any] = {"data": fields} if method == "POST" else {"params": fields}

    body = await api.ok(method, "/wxapp/get_device_status/", **kwargs)

    assert body["device_code"] == DEVICE_CODE
    assert body["esp32_ip"] == device.address
    assert body["connection_status"] == "connected"
    assert body["liveness"] == "online"
    assert body["last_seen"]
    status = body["status"]
    assert status["device_code"] == DEVICE_CODE
    assert status["session_id"] == 0
    if dialect == "firmware":
        assert status["is_collecting"] is False
        assert status["signal_strength"] == -61
    else:
        assert status["status"] == "idle"
    assert device.paths() == ["/status"]


async def test_device_status_of_a_refusing_device_is_502(api: Api, refusing_address: str) -> None:
    await api.register(DEVICE_CODE, refusing_address)

    status, body = await api.post("/wxapp/get_device_status/", data={"device_code": DEVICE_CODE})

    assert status == 502
    assert body["failure"] == "unreachable"
    assert isinstance(body["error"], str)


async def test_device_status_of_a_failing_device_is_502(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device(behaviour="error")
    await api.register(DEVICE_CODE, device.address)

    status, body = await api.post("/wxapp/get_device_status/", data={"device_code": DEVICE_CODE})

    assert status == 502
    assert (body["failure"], body["http_status"]) == ("rejected", 500)


async def test_device_status_of_a_silent_device_is_504(api: Api, start_silent: StartSilent) -> None:
    device = await start_silent()
    await api.register(DEVICE_CODE, device.address)

    status, body = await api.post("/wxapp/get_device_status/", data={"device_code": DEVICE_CODE})

    assert status == 504
    assert body["failure"] == "timeout"


async def test_notify_device_stop_without_session_id_stops_the_devices_current_session(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    session_id = await api.start_session()
    await notify(api, session_id)

    body = await api.ok("POST", "/wxapp/notify_device_stop/", data={"device_code": DEVICE_CODE})

    assert body["msg"] == "Device 2025001 notified to stop collection"
    assert body["session_id"] == session_id
    assert body["esp32_ip"] == device.address
    assert body["command"]["state"] == "acked"
    [stop] = [r for r in device.commands() if r.path == "/stop_collection"]
    assert stop.content_type == FORM
    assert stop.fields == {"command": "STOP_COLLECTION", "device_code": DEVICE_CODE}
    assert (await api.session(session_id))["session"]["status"] == "calibrating"


async def test_notify_device_stop_with_session_id_is_sent_once(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)
    session_id = await api.start_session()
    await notify(api, session_id)
    fields = {"device_code": DEVICE_CODE, "session_id": str(session_id)}

    first = await api.ok("POST", "/wxapp/notify_device_stop/", data=fields)
    again = await api.ok("POST", "/wxapp/notify_device_stop/", data=fields)

    assert first["session_id"] == again["session_id"] == session_id
    assert device.paths("POST") == ["/start_collection", "/stop_collection"]


async def test_notify_device_stop_of_an_idle_device_still_reaches_it(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)

    body = await api.ok("POST", "/wxapp/notify_device_stop/", data={"device_code": DEVICE_CODE})

    assert body["session_id"] is None
    assert device.paths("POST") == ["/stop_collection"]


async def test_notify_device_stop_for_an_unknown_session_is_404(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()
    await api.register(DEVICE_CODE, device.address)

    status, body = await api.post(
        "/wxapp/notify_device_stop/", data={"device_code": DEVICE_CODE, "session_id": "424242"}
    )

    assert status == 404, body
    assert device.received == []


# ---- shutdown in the middle of a command ------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint", ["notify_device_start", "notify_device_stop", "start_data_collection"]
)
async def test_station_stops_promptly_while_a_device_holds_a_command_open(
    start_station: StartStation,
    start_silent: StartSilent,
    http: aiohttp.ClientSession,
    endpoint: str,
) -> None:
    station = await start_station(read_timeout=30, reply_wait=30)
    api = Api(http, station.url)
    device = await start_silent()
    await api.register(DEVICE_CODE, device.address)
    await api.join("test_group", DEVICE_CODE)
    session_id = await api.start_session()
    fields = {"device_code": DEVICE_CODE}
    if endpoint != "notify_device_stop":
        fields["session_id"] = str(session_id)
    pending = asyncio.ensure_future(api.post(f"/wxapp/{endpoint}/", data=fields))
    await asyncio.wait_for(device.arrived.wait(), 5)

    started = time.monotonic()
    await station.stop()
    took = time.monotonic() - started

    assert took < 2.0
    # The waiting client is answered in JSON before the server closes, not cut off.
    status, body = await pending
    if endpoint == "start_data_collection":
        assert status == 200, body
        assert [(d["device_code"], d["state"]) for d in body["devices"]] == [(DEVICE_CODE, "sent")]
    else:
        assert status == 504, body
