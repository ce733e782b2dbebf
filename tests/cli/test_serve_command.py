"""`station serve` as a lab would run it: a real process, stopped by a signal."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

LISTENING = re.compile(r"station listening on http://127\.0\.0\.1:(\d+)/wxapp/")


def start_serve(data_dir: Path) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "station",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        match = LISTENING.search(line)
        if match:
            return process, int(match.group(1))
        if not line and process.poll() is not None:
            break
    process.kill()
    pytest.fail("station serve did not report its address")


def post(port: int, path: str, form: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=form.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_on_signal_and_keeps_its_data(tmp_path: Path, signum: int) -> None:
    process, port = start_serve(tmp_path)
    registered = post(
        port, "/wxapp/register_device_ip/", "device_code=2025001&ip_address=127.0.0.9:9"
    )
    assert registered["msg"] == "Device 2025001 IP registered successfully"
    session = post(port, "/wxapp/start_session/", "openid=test_user&device_group_code=test_group")

    process.send_signal(signum)
    _out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in err
    assert "stopped" in err

    again, port = start_serve(tmp_path)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/devices", timeout=10) as r:
            devices = json.load(r)["devices"]
        assert [d["device_code"] for d in devices] == ["2025001"]
        newer = post(port, "/wxapp/start_session/", "openid=test_user&device_group_code=g")
        assert newer["session_id"] > session["session_id"]
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=10)


def test_serve_explains_a_port_already_in_use(tmp_path: Path) -> None:
    first, port = start_serve(tmp_path / "a")
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "station",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "b"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode != 0
        assert "cannot listen on 127.0.0.1" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=10)
