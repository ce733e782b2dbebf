"""The station's own read API (/healthz, /api/v1/...) and device groups: a session started for a
group includes its members, and starting collection tells them all."""

from __future__ import annotations

from tests.backend.conftest import Api, StartDevice


async def test_healthz_reports_version_schema_and_device_counts(api: Api) -> None:
    await api.register("2025001", "192.168.1.100")

    health = await api.ok("GET", "/healthz")

    assert health["status"] == "ok"
    assert isinstance(health["version"], str) and health["version"]
    assert isinstance(health["schema_version"], int) and health["schema_version"] >= 1
    assert health["uptime_s"] >= 0
    assert health["devices"] == 1
    assert health["devices_online"] == 1


async def test_device_list_shows_each_registered_device(api: Api) -> None:
    await api.register("2025002", "192.168.1.101")
    await api.register("2025001", "192.168.1.100:8080")

    body = await api.ok("GET", "/api/v1/devices")

    assert [d["device_code"] for d in body["devices"]] == ["2025001", "2025002"]
    first = body["devices"][0]
    assert first["address"] == "192.168.1.100:8080"
    assert first["groups"] == []
    assert first["registered_at"] and first["last_seen"]
    assert first["liveness"] == "online"


async def test_session_list_is_newest_first_and_filters_by_limit_and_status(api: Api) -> None:
    ids = [await api.start_session(f"g{n}") for n in range(4)]
    await api.start_collection(ids[1])
    await api.ok("POST", f"/api/v1/sessions/{ids[2]}/abort")

    everything = await api.sessions()
    newest_two = await api.sessions("?limit=2")
    collecting = await api.sessions("?status=collecting")
    calibrating = await api.sessions("?status=calibrating&limit=1")
    none = await api.sessions("?status=completed")

    assert [s["session_id"] for s in everything] == list(reversed(ids))
    assert [s["session_id"] for s in newest_two] == [ids[3], ids[2]]
    assert [s["session_id"] for s in collecting] == [ids[1]]
    assert [s["session_id"] for s in calibrating] == [ids[3]]
    assert none == []
    assert everything[0]["group_code"] == "g3"
    assert everything[0]["openid"] == "test_user"
    assert everything[0]["started_by"] == "miniprogram:test_user"


async def test_session_list_refuses_a_malformed_limit(api: Api) -> None:
    for limit in ("abc", "-1", "0"):
        status, body = await api.get("/api/v1/sessions", params={"limit": limit})
        assert status == 400, body
        assert isinstance(body["error"], str)


async def test_group_membership_is_added_listed_and_removed(api: Api) -> None:
    await api.register("2025001", "192.168.1.100")
    await api.register("2025002", "192.168.1.101")

    joined = await api.join("lab", "2025001")
    await api.join("lab", "2025002")
    await api.join("other", "2025001")

    assert joined["device"]["groups"] == ["lab"]
    groups = {
        g["group_code"]: g["device_codes"] for g in (await api.get("/api/v1/groups"))[1]["groups"]
    }
    assert groups == {"lab": ["2025001", "2025002"], "other": ["2025001"]}
    assert (await api.devices())["2025001"]["groups"] == ["lab", "other"]

    left = await api.ok("DELETE", "/api/v1/groups/lab/devices/2025001")

    assert left["device"]["groups"] == ["other"]
    groups = {
        g["group_code"]: g["device_codes"] for g in (await api.get("/api/v1/groups"))[1]["groups"]
    }
    assert groups == {"lab": ["2025002"], "other": ["2025001"]}
    detail = await api.ok("GET", "/api/v1/devices/2025001")
    assert [e["action"] for e in detail["events"]].count("group.member") == 3


async def test_joining_a_group_twice_keeps_one_membership(api: Api) -> None:
    await api.register("2025001", "192.168.1.100")

    await api.join("lab", "2025001")
    again = await api.join("lab", "2025001")

    assert again["device"]["groups"] == ["lab"]


async def test_unknown_device_cannot_join_a_group(api: Api) -> None:
    status, body = await api.post("/api/v1/groups/lab/devices", data={"device_code": "nope"})

    assert status == 404, body
    assert (await api.get("/api/v1/groups"))[1]["groups"] == []


async def test_session_for_a_group_includes_its_members_and_starts_them_all(
    api: Api, start_device: StartDevice
) -> None:
    members = [await start_device(code) for code in ("D1", "D2", "D3")]
    outsider = await start_device("D4")
    for device in [*members, outsider]:
        await api.register(device.device_code, device.address)
    for device in members:
        await api.join("lab", device.device_code)

    started = await api.ok(
        "POST", "/wxapp/start_session/", data={"openid": "u", "device_group_code": "lab"}
    )
    session_id = started["session_id"]
    collecting = await api.start_collection(session_id)

    assert started["device_codes"] == ["D1", "D2", "D3"]
    assert started["device_group_code"] == "lab"
    assert started["calibration_command"] == "CALIBRATE_lab"
    assert [(d["device_code"], d["state"]) for d in collecting["devices"]] == [
        ("D1", "acked"),
        ("D2", "acked"),
        ("D3", "acked"),
    ]
    for device in members:
        [start] = device.commands()
        assert start.fields == {"session_id": str(session_id), "device_code": device.device_code}
    assert outsider.received == []
    assert (await api.session(session_id))["session"]["device_codes"] == ["D1", "D2", "D3"]


async def test_session_lists_its_devices_explicitly_when_asked(
    api: Api, start_device: StartDevice
) -> None:
    chosen = await start_device("D1")
    other = await start_device("D2")
    for device in (chosen, other):
        await api.register(device.device_code, device.address)
        await api.join("lab", device.device_code)

    started = await api.ok(
        "POST",
        "/wxapp/start_session/",
        json={"openid": "u", "device_group_code": "lab", "device_codes": ["D1"]},
    )
    await api.start_collection(started["session_id"])

    assert started["device_codes"] == ["D1"]
    assert chosen.paths("POST") == ["/start_collection"]
    assert other.received == []


async def test_start_data_collection_with_a_device_code_adds_that_device(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device("D1")
    await api.register("D1", device.address)
    session_id = await api.start_session("empty")

    collecting = await api.ok(
        "POST",
        "/wxapp/start_data_collection/",
        data={"session_id": str(session_id), "device_code": "D1"},
    )

    assert [d["device_code"] for d in collecting["devices"]] == ["D1"]
    assert device.paths("POST") == ["/start_collection"]
    assert (await api.session(session_id))["session"]["device_codes"] == ["D1"]


async def test_group_named_after_a_device_code_reaches_that_device(
    api: Api, start_device: StartDevice
) -> None:
    device = await start_device("2025001")
    await api.register("2025001", device.address)

    started = await api.ok(
        "POST", "/wxapp/start_session/", data={"openid": "u", "device_group_code": "2025001"}
    )

    assert started["device_codes"] == ["2025001"]


async def test_device_code_on_start_session_takes_part_besides_the_group(
    api: Api,
) -> None:
    """The HEAD-era `device_code` field (a WebSocket target there) names a registered device
    that takes part in the session besides the explicit device list or the group's members."""
    for code, address in (("D1", "192.168.1.101"), ("D2", "192.168.1.102")):
        await api.register(code, address)
    await api.join("lab", "D1")

    extended = await api.ok(
        "POST",
        "/wxapp/start_session/",
        data={"openid": "u", "device_group_code": "lab", "device_codes": "D1", "device_code": "D2"},
    )
    with_group = await api.ok(
        "POST",
        "/wxapp/start_session/",
        data={"openid": "u", "device_group_code": "lab", "device_code": "D2"},
    )

    assert extended["device_codes"] == ["D1", "D2"]
    assert with_group["device_codes"] == ["D1", "D2"]
