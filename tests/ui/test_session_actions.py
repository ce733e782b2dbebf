"""The Sessions tab's upload figures and its Finish and Export actions, against a real embedded
station and a device on loopback that acknowledges commands but never uploads."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from station.backend.models import SessionStatus
from station.ui.application import StationApp
from station.ui.main_window import MainWindow
from station.ui.sessions import SessionsView
from tests.ui.conftest import eventually

SILENT = "SILENT1"


class SilentDevice:
    """Answers start, stop and status as the firmware does, and never uploads anything."""

    def __init__(self, device_code: str, host: str) -> None:
        self.device_code = device_code
        self.host = host
        self.port = 0
        self.session_id = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/start_collection", self._start)
        app.router.add_post("/stop_collection", self._stop)
        app.router.add_get("/status", self._status)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _start(self, request: web.Request) -> web.Response:
        fields = await request.post()
        self.session_id = int(str(fields["session_id"]))
        return web.json_response(
            {
                "status": "collection_started",
                "session_id": self.session_id,
                "device_code": self.device_code,
            }
        )

    async def _stop(self, request: web.Request) -> web.Response:
        self.session_id = 0
        return web.json_response(
            {"status": "collection_stopped", "device_code": self.device_code, "total_uploads": 0}
        )

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "device_code": self.device_code,
                "is_collecting": bool(self.session_id),
                "session_id": self.session_id,
            }
        )


@pytest.fixture
async def silent_device(station_app: StationApp) -> AsyncIterator[SilentDevice]:
    device = SilentDevice(SILENT, "127.0.0.61")
    await device.start()
    assert station_app.service is not None
    await station_app.service.register_device(SILENT, f"{device.host}:{device.port}", "test")
    yield device
    await device.stop()


def uploads_row(sessions: SessionsView, device_code: str) -> list[str] | None:
    table = sessions.uploads_table
    for row in range(table.rowCount()):
        cells = [table.item(row, c).text() if table.item(row, c) else "" for c in range(6)]
        if cells[0] == device_code:
            return cells
    return None


async def shown_session(window: MainWindow, session_id: int) -> SessionsView:
    sessions = window.sessions
    window.tabs.setCurrentWidget(sessions)
    await eventually(lambda: sessions.model.row_of(session_id) is not None, what="session row")
    sessions.select(session_id)
    return sessions


async def test_finish_completes_a_stopping_session_whose_device_never_uploaded(
    window: MainWindow, station_app: StationApp, silent_device: SilentDevice
) -> None:
    service = station_app.service
    assert service is not None
    session = await service.start_session("quiet", "staff", device_codes=[SILENT])
    await service.start_collection(session.session_id, "staff")
    assert silent_device.session_id == session.session_id
    outcome = await service.end_session(session.session_id, "staff")
    assert outcome.session.status == SessionStatus.STOPPING  # waits for an upload that never comes
    sessions = await shown_session(window, session.session_id)
    await eventually(lambda: uploads_row(sessions, SILENT), what="device listed")
    assert uploads_row(sessions, SILENT)[1:] == ["0", "", "", "", "pending"]
    assert sessions.finish_action.isEnabled()

    sessions.finish_action.trigger()

    await eventually(
        lambda: sessions.selected_session().status == SessionStatus.COMPLETED, what="completed"
    )
    message = await eventually(
        lambda: "finished" in (m := window.statusBar().currentMessage()) and m, what="message"
    )
    assert f"no upload reported by {SILENT}" in message
    assert not sessions.finish_action.isEnabled()
    await eventually(
        lambda: any(
            "finished by staff" in sessions.events_table.item(r, 3).text()
            for r in range(sessions.events_table.rowCount())
        ),
        what="finish in the event log",
    )


async def test_session_detail_shows_what_each_device_uploaded_as_samples_arrive(
    window: MainWindow, station_app: StationApp, silent_device: SilentDevice
) -> None:
    assert station_app.service is not None and station_app.station is not None
    session = await station_app.service.start_session("quiet", "staff", device_codes=[SILENT])
    sessions = await shown_session(window, session.session_id)
    await eventually(lambda: uploads_row(sessions, SILENT), what="device listed")
    first = int(time.time() * 1000) - 1000
    batch = [
        {"acc": [0, 0, 9.8], "gyro": [0, 0, 0], "angle": [0, 0, 0], "timestamp": first + 10 * i}
        for i in range(120)
    ]

    async with httpx.AsyncClient(base_url=station_app.station.url) as client:
        for sensor in ("waist", "wrist"):
            response = await client.post(
                "/wxapp/esp32/batch_upload/",
                data={
                    "device_code": SILENT,
                    "sensor_type": sensor,
                    "session_id": str(session.session_id),
                    "batch_data": json.dumps(batch),
                },
            )
            assert response.status_code == 200, response.text
        cells = await eventually(
            lambda: (row := uploads_row(sessions, SILENT)) and row[1] == "240" and row,
            within=3,
            what="samples counted within about a second",
        )
        assert cells[2] == "waist, wrist" and cells[3] and cells[4] and cells[5] == "pending"

        response = await client.post(
            "/wxapp/esp32/mark_upload_complete/",
            data={"device_code": SILENT, "session_id": str(session.session_id)},
        )
        assert response.status_code == 200, response.text
    await eventually(
        lambda: uploads_row(sessions, SILENT)[5] == "complete", what="upload complete shown"
    )


async def test_export_writes_the_session_to_the_chosen_folder(
    window: MainWindow, station_app: StationApp, tmp_path: Path
) -> None:
    pytest.importorskip("station.export")
    assert station_app.service is not None
    session = await station_app.service.start_session("export", "staff", device_codes=[])
    sessions = await shown_session(window, session.session_id)
    await eventually(sessions.export_action.isEnabled, what="export offered")
    out = tmp_path / "exports"
    out.mkdir()

    sessions.export_action.trigger()
    dialog = await eventually(lambda: sessions.export_dialog, what="folder dialog")
    assert dialog.isVisible()  # shown with open(): no nested event loop
    dialog.fileSelected.emit(str(out))  # as if staff chose the folder and pressed Export here
    dialog.close()

    message = await eventually(
        lambda: "exported to" in (m := window.statusBar().currentMessage()) and m, what="done"
    )
    written = out / f"session_{session.session_id}"
    assert str(written) in message
    assert (written / "manifest.json").is_file()


async def test_a_failed_export_is_reported_in_plain_words(
    window: MainWindow, station_app: StationApp, tmp_path: Path
) -> None:
    pytest.importorskip("station.export")
    assert station_app.service is not None
    session = await station_app.service.start_session("export", "staff", device_codes=[])
    sessions = await shown_session(window, session.session_id)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the folder should be")

    sessions.export_to(session.session_id, blocked)

    message = await eventually(
        lambda: "Could not export" in (m := window.statusBar().currentMessage()) and m,
        what="failure shown",
    )
    assert f"session {session.session_id}" in message and "Traceback" not in message
