"""`rag api` started as a user starts it: it says how it serves (no keys: loopback only), answers,
stops on Ctrl-C with status 0, and exits 1 saying why when its port is taken."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, ctrl_c_works
from tests.fixtures.openai_server import free_port

pytestmark = pytest.mark.slow


def start(data: Path, port: int) -> subprocess.Popen:
    env = {"RAG_DATA_DIR": str(data), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        [sys.executable, "-m", "rag", "api", "--port", str(port)],
        cwd=data.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_works,
    )


def test_rag_api_serves_loopback_without_keys_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    proc = start(tmp_path / "data", port)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
                time.sleep(0.2)
        assert health.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").json() == {"object": "list", "data": []}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "no API keys: serving 127.0.0.1 only" in err and f"http://127.0.0.1:{port}/v1" in err


def test_rag_api_exits_1_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = start(tmp_path / "data", taken.getsockname()[1])
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "address already in use" in err.lower()
