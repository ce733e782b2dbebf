"""register_device_ip: which addresses a device may report, and what re-registering does.

Non-loopback addresses here are data only: the station in these tests runs without its liveness
monitor and no test sends a command to them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.backend.conftest import DEVICE_CODE, Api, StartDevice


async def register(api: Api, **fields: str) -> tuple[int, dict[str, Any]]:
    return await api.post("/wxapp/register_device_ip/", data=fields)


@pytest.mark.parametrize(
    ("ip_address", "host", "port", "address"),
    [
        ("192.168.1.100", "192.168.1.100", 80, "192.168.1.100"),
        ("192.168.1.100:8080", "192.168.1.100", 8080, "192.168.1.100:8080"),
        (" 10.0.0.7 ", "10.0.0.7", 80, "10.0.0.7"),
        ("169.254.3.4:81", "169.254.3.4", 81, "169.254.3.4:81"),
        ("fe80::1", "fe80::1", 80, "[fe80::1]"),
        ("fd00::5", "fd00::5", 80, "[fd00::5]"),
        ("[fd00::5]:8080", "fd00::5", 8080, "[fd00::5]:8080"),
        ("[fd00::5]", "fd00::5", 80, "[fd00::5]"),
        ("[::ffff:192.168.1.9]:81", "192.168.1.9", 81, "192.168.1.9:81"),
        ("127.0.0.1:9", "127.0.0.1", 9, "127.0.0.1:9"),
    ],
)
async def test_device_registers_ipv4_and_ipv6_addresses_with_or_without_port(
    api: Api, ip_address: str, host: str, port: int, address: str
) -> None:
    status, body = await register(api, device_code=DEVICE_CODE, ip_address=ip_address)

    assert status == 200, body
    assert body["msg"] == "Device 2025001 IP registered successfully"
    assert body["ip_address"] == ip_address.strip()
    assert body["address"] == address
    assert body["previous_address"] is None
    assert body["moved_device"] is None
    device = (await api.devices())[DEVICE_CODE]
    assert (device["host"], device["port"], device["address"]) == (host, port, address)
    assert device["moved_to"] is None


@pytest.mark.parametrize("fields", [{}, {"ip_address": ""}])
async def test_missing_ip_address_registers_the_peer_address(
    api: Api, fields: dict[str, str]
) -> None:
    status, body = await register(api, device_code=DEVICE_CODE, **fields)

    assert status == 200, body
    assert body["ip_address"] == "127.0.0.1"
    device = (await api.devices())[DEVICE_CODE]
    assert (device["host"], device["port"]) == ("127.0.0.1", 80)


@pytest.mark.parametrize(
    "ip_address",
    [
        "esp32.local",
        "garbage",
        "192.168.1",
        "192.168.1.300",
        "192.168.1.100:0",
        "192.168.1.100:70000",
        "192.168.1.100:-1",
        "192.168.1.100:abc",
        "192.168.1.100:",
        "http://192.168.1.100/",
        "[fd00::5",
        "[fd00::5]x",
        "8.8.8.8",
        "1.1.1.1:80",
        "2001:4860:4860::8888",
        "0.0.0.0",
        "::",
        "255.255.255.255",
        "224.0.0.1",
    ],
)
async def test_unusable_address_is_refused_and_nothing_is_registered(
    api: Api, ip_address: str
) -> None:
    status, body = await register(api, device_code=DEVICE_CODE, ip_address=ip_address)

    assert status == 400, body
    assert isinstance(body["error"], str) and "ip_address" in body["error"]
    assert body["ip_address"] == ip_address.strip()
    assert await api.devices() == {}


async def test_reregistration_updates_the_address_and_logs_an_event(api: Api) -> None:
    await api.register(DEVICE_CODE, "192.168.1.100")

    again = await api.register(DEVICE_CODE, "192.168.1.101:8080")

    assert again["previous_address"] == "192.168.1.100"
    assert again["address"] == "192.168.1.101:8080"
    detail = await api.ok("GET", f"/api/v1/devices/{DEVICE_CODE}")
    assert detail["device"]["address"] == "192.168.1.101:8080"
    registrations = [e for e in detail["events"] if e["action"] == "device.register"]
    assert [e["data"] for e in registrations] == [
        {"address": "192.168.1.100", "previous_address": None},
        {"address": "192.168.1.101:8080", "previous_address": "192.168.1.100"},
    ]
    assert "192.168.1.100" in registrations[1]["message"]
    assert "192.168.1.101:8080" in registrations[1]["message"]


async def test_registering_the_same_address_again_changes_nothing_but_is_logged(
    api: Api,
) -> None:
    await api.register(DEVICE_CODE, "192.168.1.100")

    again = await api.register(DEVICE_CODE, "192.168.1.100")

    assert again["previous_address"] == "192.168.1.100"
    assert again["moved_device"] is None
    devices = await api.devices()
    assert devices[DEVICE_CODE]["address"] == "192.168.1.100"
    detail = await api.ok("GET", f"/api/v1/devices/{DEVICE_CODE}")
    assert [e["action"] for e in detail["events"]].count("device.register") == 2


async def test_device_taking_another_devices_address_marks_the_older_one_moved(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device()
    await api.register("2025001", device.address)
    session_id = await api.start_session()

    taken = await api.register("2025002", device.address)

    assert taken["moved_device"] == "2025001"
    devices = await api.devices()
    assert devices["2025001"]["moved_to"] == "2025002"
    assert devices["2025002"]["moved_to"] is None
    detail = await api.ok("GET", "/api/v1/devices/2025001")
    assert any(e["action"] == "device.moved" for e in detail["events"])

    commands = [
        ("notify_device_start", {"session_id": str(session_id), "device_code": "2025001"}),
        ("notify_device_stop", {"device_code": "2025001"}),
        ("get_device_status", {"device_code": "2025001"}),
    ]
    for endpoint, fields in commands:
        status, body = await api.post(f"/wxapp/{endpoint}/", data=fields)
        assert status == 409, (endpoint, body)
        assert body["moved_to"] == "2025002"
        assert isinstance(body["error"], str)
    assert device.received == []


async def test_same_host_on_another_port_is_not_a_move(api: Api) -> None:
    await api.register("2025001", "192.168.1.100:8080")

    other = await api.register("2025002", "192.168.1.100:8081")

    assert other["moved_device"] is None
    assert (await api.devices())["2025001"]["moved_to"] is None


async def test_moved_device_registering_a_new_address_is_usable_again(
    api: Api, start_device: StartDevice
) -> None:
    first = await start_device("2025001")
    second = await start_device("2025001")
    await api.register("2025001", first.address)
    await api.register("2025002", first.address)

    await api.register("2025001", second.address)

    assert (await api.devices())["2025001"]["moved_to"] is None
    session_id = await api.start_session()
    await api.ok(
        "POST",
        "/wxapp/notify_device_start/",
        data={"session_id": str(session_id), "device_code": "2025001"},
    )
    assert [r.path for r in second.received] == ["/start_collection"]
    assert first.received == []
