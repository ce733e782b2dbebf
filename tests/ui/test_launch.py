"""`station --demo` as a user runs it: a real process, shut down with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_demo_window_starts_the_fleet_and_ctrl_c_shuts_down_cleanly(tmp_path: Path) -> None:
    # XDG_CONFIG_HOME keeps the saved window geometry out of the real user config.
    env = os.environ | {"QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    command = [sys.executable, "-m", "station", "--demo", "--host", "127.0.0.1"]
    command += ["--data-dir", str(tmp_path)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log_file = tmp_path / "logs" / "station.log"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if log_file.exists() and "demo fleet of 8 devices" in log_file.read_text():
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the demo fleet did not come up")

        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, output
    assert "Traceback" not in output
    assert "Event loop is closed" not in output
    assert "station stopped" in log_file.read_text()
