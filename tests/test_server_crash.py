"""Crash recovery over a real process: `sdwebui serve` is started as a subprocess with the tiny SD1 model, jobs are
queued, the process is killed with SIGKILL while one runs and others wait, and a new process on the same data
folder finishes the waiting jobs and reports the one that was running as interrupted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from test_api_support import make_data_dir, wait_for_job, wait_until

LONG = {"width": 64, "height": 64, "steps": 40, "sampler": "Euler", "batch_count": 100}
"""A minute or more of work on a CPU: it is still running when the process is killed, a few batches in."""
FAST = {"width": 64, "height": 64, "steps": 2, "sampler": "Euler"}

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ui_off_flags() -> list[str]:
    """`--nowebui` when this build has a web UI (the API is all this test needs; Gradio is slow to import)."""
    from sdwebui.cli import build_parser

    _, unknown = build_parser().parse_known_args(["serve", "--nowebui"])
    return [] if unknown else ["--nowebui"]


class ServerProcess:
    """`python -m sdwebui.cli serve` on a free port, its output in a log file."""

    def __init__(self, data_dir: Path, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sdwebui.cli", "serve", "--data-dir", str(data_dir), "--port", str(self.port),
             *ui_off_flags()],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.output()}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server did not answer within {timeout} s:\n{self.output()}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.log.close()
        return self.process.returncode

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]


def submit(client: httpx.Client, **fields) -> str:
    response = client.post("/api/v1/jobs", json=fields)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_kill_9_mid_queue_then_restart_finishes_the_queued_jobs(tmp_path, tiny_sd1_path):
    data = make_data_dir(tmp_path / "data", tiny_sd1_path)
    first = ServerProcess(data, tmp_path / "first.log")
    try:
        first.wait_ready()
        with first.client() as client:
            running = submit(client, **LONG, prompt="cut short", seed=1)
            # save_images=False here: after the restart they are saved all the same (their requesters are gone).
            queued = [submit(client, **FAST, prompt=f"waiting {n}", seed=100 + n, save_images=n != 1)
                      for n in range(3)]
            wait_until(lambda: (v := client.get(f"/api/v1/jobs/{running}").json())["status"] == "running"
                       and v["progress"]["batch_index"] >= 2, timeout=300, interval=0.1)
            statuses = [client.get(f"/api/v1/jobs/{job}").json()["status"] for job in queued]
            assert statuses == ["queued"] * 3
        first.kill()
        assert first.process.returncode == -signal.SIGKILL
    finally:
        first.stop()

    second = ServerProcess(data, tmp_path / "second.log")
    try:
        second.wait_ready()
        with second.client() as client:
            interrupted = client.get(f"/api/v1/jobs/{running}").json()
            assert interrupted["status"] == "interrupted"
            assert "crash or kill" in interrupted["error"] and interrupted["finished"] is not None
            # Each batch was saved when it was decoded: the batches finished before the kill are kept.
            kept = client.get("/api/v1/images", params={"job_id": running}).json()
            assert len(kept) >= 2 and sorted(image["seed"] for image in kept) == list(range(1, len(kept) + 1))
            for image in kept:
                assert "cut short" in Image.open(data / "outputs" / image["path"]).info["parameters"]
                # ... and marked in the history as made by a job that was cut short.
                assert image["job_status"] == "interrupted" and image["interrupted"] is True
            views = [wait_for_job(client, job, timeout=300) for job in queued]
            for n, view in enumerate(views):
                assert view["status"] == "done", (view, second.output())
                assert view["result"]["seeds"] == [100 + n]
                assert view["result"]["params"]["prompt"] == f"waiting {n}"
                images = client.get("/api/v1/images", params={"job_id": view["id"]}).json()
                assert [image["seed"] for image in images] == [100 + n]
                assert (data / "outputs" / images[0]["path"]).is_file()
            # In submission order, and the interrupted job was not re-run.
            assert [v["started"] for v in views] == sorted(v["started"] for v in views)
            assert client.get(f"/api/v1/jobs/{running}").json()["status"] == "interrupted"
            assert client.get("/api/v1/jobs", params={"status": "queued"}).json() == []
            assert client.get("/api/v1/jobs", params={"status": "running"}).json() == []
        code = second.stop()
        # uvicorn shuts down, then re-raises the signal it caught (so the exit status says "terminated").
        assert code in (0, -signal.SIGTERM), f"exit code {code} after SIGTERM:\n{second.output()}"
        assert "Traceback" not in second.output()
    finally:
        second.stop()
