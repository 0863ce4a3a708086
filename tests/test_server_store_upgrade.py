"""A data folder written by sdwebui before the typed job payloads (`tests/data/store-v1`, made by that version's
own code: see its README) opens with today's code: the history still shows, finished jobs still read, and the two
jobs it left queued are upgraded and run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_api_support import LiveServer, wait_for_job

from sdwebui.server.payloads import GenerationPayload, LoadModelPayload, load_payload, upgrade_v1
from sdwebui.server.store import DB_FILE_NAME, Store

OLD = Path(__file__).resolve().parent / "data" / "store-v1"


@pytest.fixture
def old_data(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(OLD / DB_FILE_NAME, data / DB_FILE_NAME)
    shutil.copytree(OLD / "outputs", data / "outputs")
    return data


def test_every_stored_payload_reads_as_its_type(old_data):
    store = Store(old_data / DB_FILE_NAME)
    rows = store.jobs(limit=100, newest_first=False)
    store.close()
    assert [row["kind"] for row in rows] == ["txt2img", "txt2img", "img2img", "img2img", "extras", "txt2img",
                                             "load_model", "txt2img", "img2img", "txt2img"]
    payloads = [load_payload(row["kind"], row["params"]) for row in rows]
    first = payloads[0]
    assert isinstance(first, GenerationPayload) and first.kind == "txt2img"
    assert (first.params.prompt, first.params.seed, first.params.sampler) == (
        "a red circle on the left, blue background", 1234, "Euler a")
    assert first.params.clip_skip == 2  # the setting it was queued with (CLIP_stop_at_last_layers = 2)
    assert first.params.rng == "gpu" and first.params.eta_noise_seed_delta == 0  # moved into the parameters
    assert first.output.folder == "txt2img-images" and first.output.filename_pattern == "[seed]-[steps]"
    hires = payloads[1]
    assert hires.params.enable_hr and hires.params.hr_scale == 1.5 and hires.client == "a1111"
    inpaint = payloads[3]
    assert inpaint.kind == "img2img" and inpaint.mask and len(inpaint.init_images) == 1
    assert inpaint.params.inpainting_fill == 2 and not hasattr(inpaint.params, "enable_hr")
    assert payloads[4].params.upscaler_1 == "Lanczos" and payloads[4].output.folder == "extras-images"
    assert isinstance(payloads[6], LoadModelPayload)
    # The demo checkpoint's path was where that checkout had it; a payload finds this install's copy.
    queued = payloads[7]
    assert Path(queued.checkpoint).is_file() and Path(queued.checkpoint).name.startswith("sdwebui-demo")
    # Upgrading is idempotent: an upgraded payload written back reads the same.
    assert load_payload("txt2img", first.to_json()) == first
    assert upgrade_v1("txt2img", rows[0]["params"])["schema"] == 2


def test_the_old_data_folder_serves_its_history_and_runs_its_queued_jobs(old_data):
    with LiveServer(old_data, ui=False) as live, live.client() as client:
        jobs = client.get("/api/v1/jobs", params={"limit": 100}).json()
        assert len(jobs) == 10
        # The two jobs left queued were re-queued at start-up, upgraded, and run with the demo model (the worker
        # may have finished them already: they are found by what they asked for, not by their status).
        queued_prompts = {"a queued red square", "a queued img2img"}
        recovered = [view["id"] for view in jobs if _prompt(live, view["id"]) in queued_prompts]
        assert len(recovered) == 2
        for job_id in recovered:
            view = wait_for_job(client, job_id, timeout=300)
            assert view["status"] == "done", view["error"]
            assert len(view["result"]["images"]) == 1  # recovered jobs always save their images
        statuses = sorted(view["status"] for view in client.get("/api/v1/jobs", params={"limit": 100}).json())
        assert statuses.count("failed") == 1 and statuses.count("cancelled") == 1 and statuses.count("done") == 8
        finished = [view for view in jobs if view["status"] == "done" and view["kind"] == "txt2img"
                    and view["id"] not in recovered]
        assert finished and all(view["result"]["infotexts"] for view in finished)
        # The history: the six old images and the two new ones, every file served.
        images = client.get("/api/v1/images").json()
        assert len(images) == 8
        for record in images:
            response = client.get(record["url"])
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        # A new job next to the old ones.
        response = client.post("/api/v1/jobs", json={"prompt": "a new one", "steps": 2, "seed": 3})
        assert response.status_code == 202
        assert wait_for_job(client, response.json()["id"], timeout=300)["status"] == "done"


def _prompt(live, job_id: str) -> str | None:
    """The prompt a stored job asked for (read from its payload, whichever schema it was written in)."""
    record = live.services.store.job(job_id)
    return (record["params"].get("params") or {}).get("prompt")
