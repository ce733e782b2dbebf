"""Exporting a session: the files a lab takes away, from a real station's database on loopback."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from station import __version__
from station.backend.runtime import Station
from station.cli import main
from station.config import Settings
from station.export import SAMPLE_COLUMNS, ExportError, export_session, export_session_sync

T0 = 1_760_000_000_000  # a Unix time in ms, as a device with a wall clock sends it


def sample(ts: int | None = None, seq: int | None = None, value: float = 1.0) -> dict[str, Any]:
    item: dict[str, Any] = {
        "acc": [value, 0.5, 9.81],
        "gyro": [0.01, -0.02, 0.03],
        "angle": [10.5, -3.25, 0.0],
    }
    if ts is not None:
        item["timestamp"] = ts
    if seq is not None:
        item["seq"] = seq
    return item


class Lab:
    """A running station and the calls devices and the mini-program make to it."""

    def __init__(self, station: Station, http: aiohttp.ClientSession) -> None:
        self.station = station
        self.http = http

    async def post(self, path: str, **fields: Any) -> dict[str, Any]:
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        async with self.http.post(self.station.url + path, data=form) as response:
            body = await response.json()
            assert response.status == 200, body
            return body

    async def session(self, group: str = "court_1") -> int:
        started = await self.post("/wxapp/start_session/", openid="o1", device_group_code=group)
        return started["session_id"]

    async def batch(self, session_id: int | None, device: str, sensor: str, items: list) -> None:
        fields: dict[str, Any] = {"device_code": device, "sensor_type": sensor}
        if session_id is not None:
            fields["session_id"] = str(session_id)
        await self.post("/wxapp/esp32/batch_upload/", batch_data=items, **fields)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "station"


@pytest.fixture
async def lab(data_dir: Path) -> AsyncIterator[Lab]:
    station = Station(data_dir, Settings(host="127.0.0.1", port=0))
    await station.start(serve=True, monitor=False)
    try:
        async with aiohttp.ClientSession() as http:
            yield Lab(station, http)
    finally:
        await station.stop()


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---- contents ----------------------------------------------------------------------------------


async def test_export_has_a_csv_per_device_and_sensor_and_a_manifest(
    lab: Lab, tmp_path: Path
) -> None:
    session_id = await lab.session()
    await lab.batch(session_id, "D1", "waist", [sample(T0 + 10, 0), sample(T0 + 20, 1)])
    await lab.batch(session_id, "D1", "wrist", [sample(T0 + 15, 0, value=-2.5)])
    await lab.post(
        "/wxapp/esp32/upload/",
        device_code="D2",
        sensor_type="shoulder",
        data=sample(),
        session_id=str(session_id),
        timestamp="abc",  # kept as sent, parsed to nothing
    )
    await lab.batch(None, "D1", "waist", [sample(T0, 7)])  # no session: not exported
    other = await lab.session("court_2")
    await lab.batch(other, "D1", "waist", [sample(T0, 8)])  # another session: not exported
    await lab.post(
        "/wxapp/esp32/mark_upload_complete/",
        session_id=str(session_id),
        device_code="D1",
        upload_stats={"total_data_points": 3, "sensor_types": ["waist", "wrist"]},
    )

    result = await export_session(lab.station.store, session_id, tmp_path / "out")

    folder = tmp_path / "out" / f"session_{session_id}"
    assert result.folder == folder
    assert result.samples == 4
    assert sorted(p.name for p in folder.iterdir()) == [
        "D1_waist.csv",
        "D1_wrist.csv",
        "D2_shoulder.csv",
        "manifest.json",
    ]

    header, waist = read_csv(folder / "D1_waist.csv")
    assert tuple(header) == SAMPLE_COLUMNS
    assert [(r["seq"], r["device_time"]) for r in waist] == [
        ("0", str(T0 + 10)),
        ("1", str(T0 + 20)),
    ]
    assert waist[0]["device_time_iso"] == "2025-10-09T08:53:20.010Z"
    assert waist[0]["received_at_iso"].endswith("Z")
    assert [waist[0][c] for c in SAMPLE_COLUMNS[5:]] == [
        "1.0", "0.5", "9.81", "0.01", "-0.02", "0.03", "10.5", "-3.25", "0.0"
    ]  # fmt: skip
    assert int(waist[0]["sample_id"]) < int(waist[1]["sample_id"])
    _, shoulder = read_csv(folder / "D2_shoulder.csv")
    assert [(r["seq"], r["device_time"], r["device_time_iso"]) for r in shoulder] == [
        ("", "abc", "")
    ]

    manifest = read_manifest(folder)
    assert manifest["format"] == "station-session-export"
    assert manifest["station_version"] == __version__
    assert manifest["exported_at"].endswith("Z")
    assert manifest["session"]["session_id"] == session_id
    assert manifest["session"]["group_code"] == "court_1"
    assert manifest["session"]["status"] == "calibrating"
    devices = {d["device_code"]: d for d in manifest["devices"]}
    assert devices["D1"]["samples"] == 3
    assert devices["D1"]["sensors"] == {"waist": 2, "wrist": 1}
    assert devices["D1"]["upload"] == "complete"
    assert devices["D1"]["reported_stats"]["total_data_points"] == 3
    assert devices["D2"]["upload"] == "pending"
    actions = [e["action"] for e in manifest["events"]]
    assert actions[0] == "session.start" and "upload.complete" in actions
    assert manifest["commands"] == []
    assert manifest["raw_uploads"] == 0
    for entry in manifest["files"]:
        path = folder / entry["name"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["bytes"] == path.stat().st_size
        assert entry["rows"] == len(read_csv(path)[1])
    assert [(f["device_code"], f["sensor_type"], f["rows"]) for f in manifest["files"]] == [
        ("D1", "waist", 2),
        ("D1", "wrist", 1),
        ("D2", "shoulder", 1),
    ]


async def test_rows_are_ordered_by_device_time_then_seq_then_arrival(
    lab: Lab, tmp_path: Path
) -> None:
    session_id = await lab.session()
    await lab.batch(
        session_id,
        "D1",
        "waist",
        [sample(None, None), sample(None, 4), sample(T0 + 30, 1), sample(None, 2)],
    )
    await lab.batch(session_id, "D1", "waist", [sample(T0 + 10, 9), sample(None, 2), sample()])

    result = await export_session(lab.station.store, session_id, tmp_path)

    _, rows = read_csv(result.folder / "D1_waist.csv")
    ids = [int(r["sample_id"]) for r in rows]
    assert [(r["device_time"], r["seq"]) for r in rows] == [
        (str(T0 + 10), "9"),
        (str(T0 + 30), "1"),
        ("", "2"),
        ("", "2"),
        ("", "4"),
        ("", ""),
        ("", ""),
    ]
    assert ids[2] < ids[3] and ids[5] < ids[6]


async def test_legacy_raw_uploads_go_to_their_own_file(lab: Lab, tmp_path: Path) -> None:
    session_id = await lab.session()
    await lab.post(
        "/wxapp/upload_sensor_data/",
        device_code="OLD1",
        sensor_type="elbow",
        data="free text, kept as sent",
        session_id=str(session_id),
    )

    result = await export_session(lab.station.store, session_id, tmp_path)

    header, rows = read_csv(result.folder / "raw_uploads.csv")
    assert header == ["upload_id", "device_code", "sensor_type", "received_at", "data"]
    assert [(r["device_code"], r["sensor_type"], r["data"]) for r in rows] == [
        ("OLD1", "elbow", "free text, kept as sent")
    ]
    manifest = read_manifest(result.folder)
    assert manifest["raw_uploads"] == 1
    assert [f["name"] for f in manifest["files"]] == ["raw_uploads.csv"]
    assert result.samples == 0


async def test_unsafe_characters_in_codes_do_not_escape_the_folder(
    lab: Lab, tmp_path: Path
) -> None:
    session_id = await lab.session()
    await lab.batch(session_id, "../D 1", "waist", [sample(T0, 0)])

    result = await export_session(lab.station.store, session_id, tmp_path / "out")

    assert sorted(p.name for p in result.folder.iterdir()) == ["___D_1_waist.csv", "manifest.json"]
    assert read_manifest(result.folder)["files"][0]["device_code"] == "../D 1"


async def test_a_session_without_samples_exports_only_its_manifest(
    lab: Lab, tmp_path: Path
) -> None:
    session_id = await lab.session()

    result = await export_session(lab.station.store, session_id, tmp_path)

    assert [p.name for p in result.folder.iterdir()] == ["manifest.json"]
    assert read_manifest(result.folder)["devices"] == []


# ---- never overwriting -------------------------------------------------------------------------


async def test_exporting_again_makes_a_new_folder_and_leaves_the_first_as_it_was(
    lab: Lab, tmp_path: Path
) -> None:
    session_id = await lab.session()
    await lab.batch(session_id, "D1", "waist", [sample(T0, 0)])
    first = await export_session(lab.station.store, session_id, tmp_path)
    before = tree(first.folder)

    await lab.batch(session_id, "D1", "waist", [sample(T0 + 10, 1)])
    second = await export_session(lab.station.store, session_id, tmp_path)
    third = await export_session(lab.station.store, session_id, tmp_path)

    assert first.folder.name == f"session_{session_id}"
    assert second.folder.name == f"session_{session_id}_2"
    assert third.folder.name == f"session_{session_id}_3"
    assert tree(first.folder) == before
    assert (first.samples, second.samples) == (1, 2)


async def test_an_unknown_session_is_refused_without_creating_anything(
    lab: Lab, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="session 999 not found"):
        await export_session(lab.station.store, 999, tmp_path / "out")

    assert not (tmp_path / "out" / "session_999").exists()


# ---- command line ------------------------------------------------------------------------------


async def test_cli_exports_while_the_station_is_serving(
    lab: Lab, data_dir: Path, tmp_path: Path
) -> None:
    session_id = await lab.session()
    await lab.batch(session_id, "D1", "waist", [sample(T0, 0), sample(T0 + 10, 1)])
    out = tmp_path / "out"
    args = ["export", str(session_id), "--out", str(out), "--data-dir", str(data_dir)]

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    folder = out / f"session_{session_id}"
    assert result.output == f"exported session {session_id}: 2 samples in 1 files to {folder}\n"
    assert len(read_csv(folder / "D1_waist.csv")[1]) == 2

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0
    assert str(out / f"session_{session_id}_2") in again.output


def test_cli_unknown_session_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "station"
    export_db = data_dir / "station.db"
    data_dir.mkdir()
    _make_empty_station_db(export_db)

    result = CliRunner().invoke(
        main, ["export", "42", "--out", str(tmp_path / "out"), "--data-dir", str(data_dir)]
    )

    assert result.exit_code == 1
    assert f"Error: session 42 not found in {export_db}" in result.output
    assert not (tmp_path / "out" / "session_42").exists()


def test_cli_without_a_database_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["export", "1", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path)]
    )

    assert result.exit_code == 1
    assert f"Error: no station database at {tmp_path / 'station.db'}" in result.output


@pytest.mark.parametrize("session_id", ["abc", "0"])
def test_cli_refuses_a_session_id_that_is_not_a_positive_integer(
    tmp_path: Path, session_id: str
) -> None:
    result = CliRunner().invoke(main, ["export", session_id, "--out", str(tmp_path)])

    assert result.exit_code == 2
    assert "SESSION_ID" in result.output


def test_sync_export_of_a_file_that_is_not_a_station_database(tmp_path: Path) -> None:
    bogus = tmp_path / "station.db"
    bogus.write_text("not sqlite")

    with pytest.raises(ExportError, match="cannot read session 1"):
        export_session_sync(bogus, 1, tmp_path / "out")


def _make_empty_station_db(path: Path) -> None:
    """A station database with its schema and no sessions, as a fresh install leaves it."""
    from station.backend.store import Store

    Store(path.parent).close()
