"""A1111's `--api-server-stop` routes (`server.lifecycle`): `/sdapi/v1/server-stop` stops the server gracefully,
`server-restart` ends it with exit code 75 for `./webui.sh` to start it again (501 when nothing would),
`server-kill` exits at once after answering; without the flag none of them exists."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from test_api_support import LiveServer, wait_until
from test_server_security import free_port

from sdwebui.server.lifecycle import RESTART_EXIT_CODE, RESTARTABLE_ENV

ROOT = Path(__file__).resolve().parent.parent
ROUTES = ("/sdapi/v1/server-stop", "/sdapi/v1/server-restart", "/sdapi/v1/server-kill")


def test_the_routes_exist_only_with_the_flag(tmp_path):
    with LiveServer(tmp_path, ui=False) as live, live.client() as client:
        for route in ROUTES:
            assert client.post(route).status_code == 404, route
        assert live.thread.is_alive()


def test_server_stop_ends_the_server(tmp_path):
    with LiveServer(tmp_path, ui=False, api_server_stop=True) as live, live.client() as client:
        response = client.post("/sdapi/v1/server-stop")
        assert (response.status_code, response.text) == (200, "Stopping.")
        live.thread.join(60)
        assert not live.thread.is_alive(), "the server did not stop"
        assert live.services.control.exit_code() == 0


def test_server_restart_is_501_when_nothing_would_start_the_server_again(tmp_path, monkeypatch):
    monkeypatch.delenv(RESTARTABLE_ENV, raising=False)
    with LiveServer(tmp_path, ui=False, api_server_stop=True) as live, live.client() as client:
        assert client.post("/sdapi/v1/server-restart").status_code == 501
        assert client.get("/api/v1/health").status_code == 200 and live.thread.is_alive()


def test_server_kill_answers_then_exits_at_once(tmp_path):
    with LiveServer(tmp_path, ui=False, api_server_stop=True) as live, live.client() as client:
        exits = []
        live.services.control.exit_process = exits.append
        assert client.post("/sdapi/v1/server-kill").status_code == 200
        wait_until(lambda: exits, timeout=30)
        assert exits == [0]


def _wait_for_health(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the launcher exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not answer")


def test_webui_sh_starts_the_server_again_after_a_restart_and_a_stop_ends_it(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "launcher.log"
    env = {key: value for key, value in os.environ.items() if key != RESTARTABLE_ENV}
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [str(ROOT / "webui.sh"), "--api-server-stop", "--nowebui", "--no-preload", "--skip-load-model-at-start",
             "--port", str(port), "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_for_health(url, process)
        assert httpx.post(f"{url}/sdapi/v1/server-restart", timeout=30).text == "Restarting."
        wait_until(lambda: "restarting" in log.read_text(), timeout=60)
        _wait_for_health(url, process)
        assert httpx.post(f"{url}/sdapi/v1/server-stop", timeout=30).text == "Stopping."
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert log.read_text().count("sdwebui: serving on") == 2, log.read_text()


def test_serve_exits_with_the_restart_code_when_asked_to_restart(tmp_path):
    """What `./webui.sh` acts on: `sdwebui serve` run by something that restarts it ends with exit code 75."""
    port = free_port()
    env = {**os.environ, RESTARTABLE_ENV: "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sdwebui.cli", "serve", "--api-server-stop", "--nowebui",
         "--no-preload", "--skip-load-model-at-start", "--port", str(port), "--data-dir", str(tmp_path)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_health(f"http://127.0.0.1:{port}", process)
        assert httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/server-restart", timeout=30).status_code == 200
        assert process.wait(60) == RESTART_EXIT_CODE
    finally:
        if process.poll() is None:
            process.kill()
