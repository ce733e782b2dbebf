"""A guard against Qt bindings that leak references: PySide6 6.12.0 on Python 3.11 aborted the
process (Fatal Python error: none_dealloc) after a few thousand Qt calls, which a qasync server
makes on every request. Thousands of requests with the window up must leave the process alive."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REQUESTS = 8000  # 6.12.0 on Python 3.11 died here between 4,000 and 6,000

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from pathlib import Path
    import httpx, qasync
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication
    from station.config import Settings
    from station.ui.application import StationApp
    from station.ui.log_view import BufferHandler
    from station.ui.main_window import MainWindow

    async def main(data_dir, requests):
        app = StationApp(Path(data_dir), Settings(host="127.0.0.1", port=0))
        await app.start()
        window = MainWindow(app, BufferHandler(), QSettings(data_dir + "/w.ini",
                                                            QSettings.Format.IniFormat))
        window.show()
        ok = 0
        async with httpx.AsyncClient(base_url=app.station.url) as client:
            for i in range(requests):
                reply = await client.post("/wxapp/esp32/heartbeat/",
                                          data={"device_code": f"D{i % 20}", "status": "idle"})
                ok += reply.status_code == 200
        window.close()
        await app.stop()
        print(ok)

    qt = QApplication([])
    qt.setQuitOnLastWindowClosed(False)  # closing the window must not stop the loop here
    loop = qasync.QEventLoop(qt)
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def test_thousands_of_requests_with_the_window_up_leave_the_process_alive(
    tmp_path: Path,
) -> None:
    # Its own process: a fatal error in the bindings aborts the interpreter, not just a test.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRIPT,
        str(tmp_path),
        str(REQUESTS),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)

    assert process.returncode == 0, err.decode()[-2000:]
    assert json.loads(out.decode().strip().splitlines()[-1]) == REQUESTS
    assert b"Fatal Python error" not in err
