"""The start-up load (A1111 loads its checkpoint when it starts; `--skip-load-model-at-start` turns it off): the
server answers while the worker loads, the first job reuses the loaded model, and a checkpoint that cannot be
loaded is logged and leaves the server running."""

from __future__ import annotations

import logging
import threading

from test_api_support import LiveServer, make_data_dir, wait_for_job, wait_until

import sdwebui.models.loader as loader
from sdwebui.app import config_from_args
from sdwebui.cli import build_parser, paths_from

FAST = {"width": 64, "height": 64, "steps": 2, "sampler": "Euler"}


def test_serve_loads_the_model_at_start_unless_skipped():
    args = build_parser().parse_args(["serve"])
    assert config_from_args(args, paths_from(args)).load_model_at_start is True
    args = build_parser().parse_args(["serve", "--skip-load-model-at-start"])
    assert config_from_args(args, paths_from(args)).load_model_at_start is False


def test_the_server_answers_while_the_model_loads_and_the_first_job_reuses_it(tmp_path, tiny_sd1_path, monkeypatch):
    data = make_data_dir(tmp_path, tiny_sd1_path, "tiny-sd1.safetensors")
    real_load = loader.load_checkpoint
    release = threading.Event()
    loads = []

    def held_load(path, **kwargs):
        loads.append(str(path))
        assert release.wait(60), "the test never released the load"
        return real_load(path, **kwargs)

    monkeypatch.setattr(loader, "load_checkpoint", held_load)
    with LiveServer(data, ui=False, load_model_at_start=True) as live, live.client() as client:
        wait_until(lambda: loads, timeout=60)  # the worker is loading at start-up ...
        assert live.services.loaded_model() is None
        # ... and the server answers meanwhile: health, the settings, and a job is queued behind the load.
        assert client.get("/api/v1/health").json()["status"] == "ok"
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd1.safetensors")
        job = client.post("/api/v1/jobs", json=FAST)
        assert job.status_code == 202
        release.set()
        record = wait_for_job(client, job.json()["id"], timeout=120)
        assert record["status"] == "done", record
        model = live.services.loaded_model()
        assert model is not None and model.info.name == "tiny-sd1"
        assert loads == [str((data / "models" / "Stable-diffusion" / "tiny-sd1.safetensors").resolve())]


def test_a_checkpoint_that_cannot_be_loaded_is_logged_and_the_server_goes_on(tmp_path, tiny_sd1_path, caplog):
    data = make_data_dir(tmp_path, tiny_sd1_path, "tiny-sd1.safetensors")
    # The header is whole (the file is listed and chosen as the default), the tensors are cut off: only loading
    # finds out.
    path = data / "models" / "Stable-diffusion" / "tiny-sd1.safetensors"
    content = path.read_bytes()
    header = 8 + int.from_bytes(content[:8], "little")
    path.write_bytes(content[: header + 100])
    caplog.set_level(logging.ERROR, logger="sdwebui")
    with LiveServer(data, ui=False, load_model_at_start=True) as live, live.client() as client:
        wait_until(lambda: any("at start-up" in r.getMessage() for r in caplog.records), timeout=60)
        message = next(r.getMessage() for r in caplog.records if "at start-up" in r.getMessage())
        assert "could not load the checkpoint" in message and "tiny-sd1" in message, message
        assert live.services.worker.alive
        assert client.get("/api/v1/health").json()["status"] == "ok"
        assert live.services.loaded_model() is None
        # The file is fixed: the next job loads it.
        path.write_bytes(content)
        job = client.post("/api/v1/jobs", json=FAST)
        assert wait_for_job(client, job.json()["id"], timeout=120)["status"] == "done"
