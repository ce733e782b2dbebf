"""The seed-era flow end to end: register → start_session → start_data_collection →
notify_device_start → the device's own POST /start_collection, in every encoding clients use."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.backend.conftest import DEVICE_CODE, FORM, Api, FakeDevice, StartDevice

WXAPP_ENDPOINTS = (
    "register_device_ip",
    "start_session",
    "start_data_collection",
    "notify_device_start",
    "notify_device_stop",
    "end_session",
    "get_device_status",
    "esp32/heartbeat",
)


def is_json_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def curl(api: Api, path: str, payload: str) -> tuple[int, dict[str, Any]]:
    """What `curl -X POST URL -d payload` sends."""
    return await api.post(path, data=payload.encode(), headers={"Content-Type": FORM})


def assert_device_was_told_to_start(device: FakeDevice, session_id: int) -> None:
    [start] = device.commands()
    assert (start.method, start.path, start.content_type) == ("POST", "/start_collection", FORM)
    assert start.fields == {"session_id": str(session_id), "device_code": DEVICE_CODE}


async def test_seed_curl_commands_start_the_device_with_the_documented_replies(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()

    status, registered = await curl(
        api,
        "/wxapp/register_device_ip/",
        f"device_code=2025001&ip_address={device.address}",
    )
    assert status == 200
    assert registered["msg"] == "Device 2025001 IP registered successfully"
    assert registered["device_code"] == "2025001"
    assert registered["ip_address"] == device.address

    status, started = await curl(
        api, "/wxapp/start_session/", "openid=test_user&device_group_code=test_group"
    )
    assert status == 200
    assert started["msg"] == "session started"
    assert started["status"] == "calibrating"
    session_id = started["session_id"]
    assert is_json_int(session_id) and session_id > 0

    status, collecting = await curl(
        api, "/wxapp/start_data_collection/", f"session_id={session_id}"
    )
    assert status == 200
    assert collecting["msg"] == "Data collection started"
    assert collecting["status"] == "collecting"
    assert is_json_int(collecting["session_id"]) and collecting["session_id"] == session_id

    status, notified = await curl(
        api, "/wxapp/notify_device_start/", f"session_id={session_id}&device_code=2025001"
    )
    assert status == 200
    assert notified["msg"] == "Device 2025001 notified to start collection"
    assert notified["device_code"] == "2025001"
    assert is_json_int(notified["session_id"]) and notified["session_id"] == session_id
    assert notified["esp32_ip"] == device.address
    assert '"status":"collection_started"' in notified["esp32_response"]
    assert notified["command"]["state"] == "acked"

    assert_device_was_told_to_start(device, session_id)


def encode(encoding: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Request keyword arguments that carry fields the way one kind of client does."""
    if encoding == "json":
        return {"json": fields}
    if encoding == "multipart":
        form = aiohttp.FormData(default_to_multipart=True)
        for name, value in fields.items():
            form.add_field(name, str(value))
        return {"data": form}
    if encoding == "query":
        return {"params": {name: str(value) for name, value in fields.items()}}
    return {"data": {name: str(value) for name, value in fields.items()}}


@pytest.mark.parametrize(
    ("encoding", "session_id_as_text"),
    [
        ("json", False),
        ("json", True),
        ("multipart", True),
        ("query", True),
    ],
)
async def test_seed_flow_accepts_json_multipart_and_query_string_parameters(
    api: Api, start_device: StartDevice, encoding: str, session_id_as_text: bool
) -> None:
    device = await start_device()

    async def call(endpoint: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await api.ok("POST", f"/wxapp/{endpoint}/", **encode(encoding, fields))

    registered = await call(
        "register_device_ip", {"device_code": DEVICE_CODE, "ip_address": device.address}
    )
    started = await call("start_session", {"openid": "test_user", "device_group_code": "g"})
    session_id = started["session_id"]
    sent_id: int | str = str(session_id) if session_id_as_text else session_id
    collecting = await call("start_data_collection", {"session_id": sent_id})
    notified = await call(
        "notify_device_start", {"session_id": sent_id, "device_code": DEVICE_CODE}
    )

    assert registered["msg"] == "Device 2025001 IP registered successfully"
    assert is_json_int(session_id)
    assert (collecting["status"], collecting["session_id"]) == ("collecting", session_id)
    assert notified["msg"] == "Device 2025001 notified to start collection"
    assert notified["session_id"] == session_id
    assert_device_was_told_to_start(device, session_id)


@pytest.mark.parametrize("prefix", ["/wxapp", "/api"])
@pytest.mark.parametrize("slash", ["/", ""])
async def test_seed_flow_works_under_both_prefixes_with_or_without_trailing_slash(
    api: Api, start_device: StartDevice, prefix: str, slash: str
) -> None:
    device = await start_device()

    async def call(endpoint: str, fields: dict[str, str]) -> dict[str, Any]:
        status, body = await api.post(f"{prefix}/{endpoint}{slash}", data=fields)
        assert status == 200, body
        return body

    await call("register_device_ip", {"device_code": DEVICE_CODE, "ip_address": device.address})
    session_id = (await call("start_session", {"openid": "u", "device_group_code": "g"}))[
        "session_id"
    ]
    await call("start_data_collection", {"session_id": str(session_id)})
    await call("notify_device_start", {"session_id": str(session_id), "device_code": DEVICE_CODE})

    assert_device_was_told_to_start(device, session_id)


@pytest.mark.parametrize("endpoint", WXAPP_ENDPOINTS)
async def test_every_endpoint_answers_with_and_without_slash_under_both_prefixes_unredirected(
    api: Api, endpoint: str
) -> None:
    for prefix in ("/wxapp", "/api"):
        for slash in ("/", ""):
            path = f"{prefix}/{endpoint}{slash}"
            for method in ("GET", "POST"):
                status, body = await api.request(method, path, allow_redirects=False)

                assert not 300 <= status < 400, (method, path, status)
                assert status in (200, 400), (method, path, status, body)
                assert isinstance(body, dict)
                if status == 400:
                    assert isinstance(body["error"], str) and body["error"]


@pytest.mark.parametrize(
    ("endpoint", "required"),
    [
        ("register_device_ip", ["device_code"]),
        ("start_session", ["openid", "device_group_code"]),
        ("start_data_collection", ["session_id"]),
        ("notify_device_start", ["session_id", "device_code"]),
        ("notify_device_stop", ["device_code"]),
        ("end_session", ["session_id"]),
        ("esp32/heartbeat", ["device_code"]),
    ],
)
async def test_get_on_a_post_endpoint_answers_its_usage(
    api: Api, endpoint: str, required: list[str]
) -> None:
    status, usage = await api.get(f"/wxapp/{endpoint}/")

    assert status == 200
    assert usage["method"] == "POST"
    assert usage["required_params"] == required
    assert isinstance(usage["optional_params"], list)
    assert set(usage["example"]) == set(required)
    assert endpoint in usage["msg"]


async def test_get_on_a_post_endpoint_creates_nothing(api: Api) -> None:
    await api.ok("GET", "/wxapp/start_session/", params={"openid": "u", "device_group_code": "g"})
    await api.ok("GET", "/wxapp/register_device_ip/", params={"device_code": "2025001"})

    assert await api.sessions() == []
    assert await api.devices() == {}
