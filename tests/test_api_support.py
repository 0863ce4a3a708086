"""Helpers for the API tests (no tests here): a real uvicorn server on 127.0.0.1 in a thread, on a socket
bound to a free port, serving a data folder that holds the tiny SD1 checkpoint."""

from __future__ import annotations

import base64
import io
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx

from sdwebui.config import Paths
from sdwebui.server.config import ServerConfig

FAST = {"width": 64, "height": 64, "steps": 2}
"""Request fields for a job that takes a fraction of a second with the tiny model."""
SLOW = {"width": 64, "height": 64, "steps": 1000, "sampler_name": "Euler"}
"""A job long enough (~20 s on this CPU) to be interrupted, skipped or watched while it runs."""


def make_data_dir(root: Path, checkpoint: Path, *names: str) -> Path:
    """`root` laid out like an A1111 folder with copies of `checkpoint` (as `names`, default its own name)."""
    ckpt_dir = root / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for name in names or (checkpoint.name,):
        shutil.copyfile(checkpoint, ckpt_dir / name)
    return root


class LiveServer:
    def __init__(self, data_dir: Path, scripts=(), paths: Paths | None = None, **config):
        from sdwebui.app import build_app

        self.config = ServerConfig(paths=paths or Paths.from_flags(data_dir=data_dir), **config)
        self.app = build_app(self.config, scripts=scripts)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.thread = None

    @property
    def services(self):
        return self.app.state.services

    def start(self) -> "LiveServer":
        import uvicorn

        from sdwebui.app import uvicorn_options

        # As `sdwebui serve` runs it (forwarded headers believed only from --forwarded-allow-ips).
        self.server = uvicorn.Server(uvicorn.Config(self.app, lifespan="on", **uvicorn_options(self.config)))
        self.services.control.attach(self.server)  # as `sdwebui serve` does (/sdapi/v1/server-stop ends it)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(60)
        self.socket.close()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


def decode_png(b64: str):
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    assert image.format == "PNG"
    return image


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting for a condition")


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict:
    def finished():
        view = client.get(f"/api/v1/jobs/{job_id}").json()
        return view if view["status"] in ("done", "failed", "cancelled", "interrupted") else None

    return wait_until(finished, timeout, 0.05)
