"""The native API (`/api/v1`) against a real uvicorn server on 127.0.0.1 with the tiny SD1 model: jobs with ids,
status and progress, server-sent events, image history (records and files), models, cancel / interrupt / skip,
failures that stay with their job, validation, and the OpenAPI documents."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
from test_api_support import LiveServer, make_data_dir, wait_for_job, wait_until

FAST = {"width": 64, "height": 64, "steps": 2, "sampler": "Euler"}
LONG = {"width": 64, "height": 64, "steps": 1000, "sampler": "Euler"}
"""Long enough (seconds on a CPU) to be seen running, interrupted or skipped; always stopped by the test."""


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("native"), tiny_sd1_path, "tiny-sd1.safetensors")
    # Checkpoints that are listed but cannot be loaded: one whose header shows it at once (refused when a job
    # names it), one that only loading finds out (a job that picks it fails, alone).
    broken = data / "models" / "Stable-diffusion" / "zz-broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    torch.save({"not_a_unet": torch.ones(2)}, data / "models" / "Stable-diffusion" / "zz-not-sd.ckpt")
    with LiveServer(data) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def submit(client, **fields) -> str:
    response = client.post("/api/v1/jobs", json={**FAST, **fields})
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"id", "status", "queue_position"} and body["status"] == "queued"
    return body["id"]


def finish_idle(client) -> None:
    """Wait until nothing is queued or running (tests below assume an idle worker when they start)."""
    wait_until(lambda: not client.get("/api/v1/jobs", params={"status": "running"}).json()
               and not client.get("/api/v1/jobs", params={"status": "queued"}).json(), timeout=120, interval=0.1)


def read_events(client, job_id: str) -> list[tuple[str, dict]]:
    """The server-sent events of one job until its `done` event."""
    events, name = [], None
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
                if name == "done":
                    break
    return events


# ---- jobs ---------------------------------------------------------------------------------------------------


def test_health_is_open_and_reports_the_worker(client):
    body = client.get("/api/v1/health").json()
    assert body["status"] == "ok" and body["worker_alive"] is True and body["version"]


def test_workers_lists_the_one_worker_thread_without_ray(client):
    finish_idle(client)
    workers = client.get("/api/v1/workers").json()["workers"]
    assert [(w["id"], w["state"], w["node"], w["current_job"]) for w in workers] == [("worker-0", "ready", "local", None)]
    assert workers[0]["jobs_done"] >= 0 and isinstance(workers[0]["models"], list)


def test_submit_returns_an_id_and_the_job_record_has_status_progress_and_result(client):
    job_id = submit(client, prompt="a native job", seed=4242, batch_size=2)
    view = wait_for_job(client, job_id, timeout=120)
    assert view["id"] == job_id and view["kind"] == "txt2img"
    assert view["status"] == "done", view["error"]
    assert view["error"] is None and view["queue_position"] is None
    assert view["created"] <= view["started"] <= view["finished"]
    assert view["progress"]["step"] == view["progress"]["total_steps"] == 2
    result = view["result"]
    assert result["seeds"] == [4242, 4243]
    assert result["params"]["prompt"] == "a native job" and result["params"]["sampler"] == "Euler"
    assert result["model"]["name"] == "tiny-sd1" and len(result["model"]["hash"]) == 10
    assert len(result["images"]) == 2 and all("Seed: 424" in text for text in result["infotexts"])
    listed = client.get("/api/v1/jobs", params={"status": "done"}).json()
    assert job_id in [job["id"] for job in listed]
    assert client.get("/api/v1/jobs", params={"status": "bogus"}).status_code == 422
    missing = client.get("/api/v1/jobs/no-such-job")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_events_stream_progress_then_done(client, server):
    finish_idle(client)
    job_id = submit(client, prompt="watched", seed=7, steps=100)
    events = read_events(client, job_id)
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) <= {"progress"}
    assert events[-1][1]["id"] == job_id and events[-1][1]["status"] == "done"
    running = [data for name, data in events if name == "progress" and data["status"] == "running"]
    assert running, f"no progress event while the job ran: {events}"
    steps = [data["progress"]["step"] for data in running]
    assert steps == sorted(steps)
    # total_steps is 0 until the sampler reports its first step.
    assert {data["progress"]["total_steps"] for data in running} <= {0, 100}
    assert any(data["progress"]["total_steps"] == 100 and data["progress"]["eta"] is not None for data in running)
    # The stream of a finished job is just its `done` event; an unknown job is a 404.
    assert [name for name, _ in read_events(client, job_id)] == ["done"]
    assert client.get("/api/v1/jobs/nope/events").status_code == 404


def test_cancel_a_queued_job_and_interrupt_the_running_one_with_a_preview(client, server):
    finish_idle(client)
    assert client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 1}).status_code == 200
    try:
        first = submit(client, **LONG, seed=1, batch_count=3)
        second = submit(client, seed=2)
        wait_until(lambda: client.get(f"/api/v1/jobs/{first}").json()["status"] == "running", timeout=120)
        # The second job is still waiting behind the first: cancel it.
        assert client.get(f"/api/v1/jobs/{second}").json()["queue_position"] == 0
        response = client.delete(f"/api/v1/jobs/{second}")
        assert response.status_code == 200 and response.json() == {"id": second, "status": "cancelled"}
        # A live preview of the running job (the 8x8 latent preview of a 64x64 image, scaled to 64x64).
        preview = wait_until(lambda: (r := client.get(f"/api/v1/jobs/{first}/preview")).status_code == 200 and r,
                             timeout=120)
        assert preview.headers["content-type"] == "image/png"
        from PIL import Image

        assert Image.open(io.BytesIO(preview.content)).size == (64, 64)
        view = client.get(f"/api/v1/jobs/{first}").json()
        assert view["progress"]["total_steps"] == 1000 and view["progress"]["batch_count"] == 3
        response = client.post(f"/api/v1/jobs/{first}/interrupt")
        assert response.status_code == 200 and response.json()["status"] == "interrupting"
        view = wait_for_job(client, first, timeout=120)
        assert view["status"] == "interrupted"
        cancelled = client.get(f"/api/v1/jobs/{second}").json()
        assert cancelled["status"] == "cancelled" and cancelled["started"] is None and cancelled["result"] is None
        # Nothing left to cancel or stop.
        assert client.delete(f"/api/v1/jobs/{second}").status_code == 409
        assert client.post(f"/api/v1/jobs/{first}/interrupt").status_code == 409
        assert client.delete("/api/v1/jobs/no-such-job").status_code == 404
        assert client.get(f"/api/v1/jobs/{first}/preview").status_code == 404  # finished: no live preview
    finally:
        client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 10})


def test_delete_cancels_a_running_job_by_interrupting_it(client):
    finish_idle(client)
    job_id = submit(client, **LONG, seed=3)
    wait_until(lambda: client.get(f"/api/v1/jobs/{job_id}").json()["status"] == "running", timeout=120)
    response = client.delete(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200 and response.json()["status"] == "interrupting"
    assert wait_for_job(client, job_id, timeout=120)["status"] == "interrupted"


def test_skip_abandons_the_current_image_of_a_batch_count(client):
    finish_idle(client)
    job_id = submit(client, seed=50, steps=300, batch_count=2)
    wait_until(lambda: (v := client.get(f"/api/v1/jobs/{job_id}").json())["status"] == "running"
               and v["progress"]["step"] >= 1, timeout=120)
    assert client.post(f"/api/v1/jobs/{job_id}/skip").json()["status"] == "skipping"
    view = wait_for_job(client, job_id, timeout=120)
    assert view["status"] == "done" and view["result"]["seeds"] == [51], "batch 0 was skipped, batch 1 ran"


def test_a_full_queue_answers_503_with_retry_after(client, server):
    finish_idle(client)
    # An operator setting (command line, Settings tab): the API cannot change it.
    assert client.post("/sdapi/v1/options", json={"api_max_queue_size": 1}).status_code == 422
    server.services.options.update({"api_max_queue_size": 1})
    try:
        running = submit(client, **LONG, seed=1)
        wait_until(lambda: client.get(f"/api/v1/jobs/{running}").json()["status"] == "running", timeout=120)
        waiting = submit(client, seed=2)
        jobs_before = [job["id"] for job in server.services.store.jobs(limit=1000)]
        for path, body in (("/api/v1/jobs", FAST), ("/sdapi/v1/txt2img", {"steps": 2, "width": 64, "height": 64})):
            response = client.post(path, json=body)
            assert response.status_code == 503 and response.headers["retry-after"], response.text
            assert "queue is full" in response.json()["detail"]
        assert [job["id"] for job in server.services.store.jobs(limit=1000)] == jobs_before
        assert client.delete(f"/api/v1/jobs/{waiting}").json()["status"] == "cancelled"
        assert client.delete(f"/api/v1/jobs/{running}").json()["status"] == "interrupting"
        assert wait_for_job(client, running, timeout=120)["status"] == "interrupted"
    finally:
        server.services.options.update({"api_max_queue_size": 1000})


# ---- images -------------------------------------------------------------------------------------------------


def test_images_list_get_file_and_delete(client, server):
    from PIL import Image

    job_id = submit(client, prompt="history", negative_prompt="dull", seed=777, batch_size=2)
    assert wait_for_job(client, job_id, timeout=120)["status"] == "done"
    records = client.get("/api/v1/images", params={"job_id": job_id}).json()
    assert sorted(record["seed"] for record in records) == [777, 778]
    for record in records:
        assert record["job_id"] == job_id and record["prompt"] == "history" and record["negative_prompt"] == "dull"
        assert record["params"]["steps"] == 2 and record["params"]["seed"] == 777
        assert record["model_name"] == "tiny-sd1" and len(record["model_hash"]) == 10
        assert (record["width"], record["height"]) == (64, 64)
        assert f"Seed: {record['seed']}," in record["infotext"]
        assert record["url"] == f"/api/v1/images/{record['id']}/file"
    record = records[0]
    assert client.get(f"/api/v1/images/{record['id']}").json() == record
    file_response = client.get(record["url"])
    assert file_response.status_code == 200 and file_response.headers["content-type"] == "image/png"
    assert file_response.headers["x-content-type-options"] == "nosniff"
    image = Image.open(io.BytesIO(file_response.content))
    assert image.size == (64, 64) and image.info["parameters"] == record["infotext"]
    assert client.get(f"/api/v1/outputs/{record['path']}").content == file_response.content
    path = server.config.paths.outputs_dir / record["path"]
    assert path.is_file()

    response = client.delete(f"/api/v1/images/{record['id']}")
    assert response.status_code == 200 and response.json() == {"id": record["id"], "deleted": True}
    assert not path.exists()
    assert client.get(f"/api/v1/images/{record['id']}").status_code == 404
    assert client.get(record["url"]).status_code == 404
    assert client.get(f"/api/v1/outputs/{record['path']}").status_code == 404
    assert client.delete(f"/api/v1/images/{record['id']}").status_code == 404
    assert [r["id"] for r in client.get("/api/v1/images", params={"job_id": job_id}).json()] == [records[1]["id"]]
    assert client.get("/api/v1/images/not-a-number").status_code == 422


# ---- models -------------------------------------------------------------------------------------------------


def test_models_list_and_refresh(client, server, tiny_sd1_path):
    models = client.get("/api/v1/models").json()
    assert [m["name"] for m in models] == ["tiny-sd1.safetensors", "zz-broken.safetensors", "zz-not-sd.ckpt"]
    assert set(models[0]) == {"title", "name", "hash", "sha256", "filename", "loaded"}
    ckpt_dir = server.config.paths.ckpt_dir
    shutil.copyfile(tiny_sd1_path, ckpt_dir / "added.safetensors")
    try:
        refreshed = client.post("/api/v1/models/refresh")
        assert refreshed.status_code == 200
        assert [m["name"] for m in refreshed.json()][0] == "added.safetensors"
    finally:
        (ckpt_dir / "added.safetensors").unlink()
    assert "added.safetensors" not in [m["name"] for m in client.get("/api/v1/models").json()]


# ---- failures stay with their job ---------------------------------------------------------------------------


def test_a_job_that_fails_to_load_its_model_fails_alone(client, server):
    finish_idle(client)
    broken = submit(client, model="zz-not-sd", seed=1)
    after = submit(client, seed=2)
    view = wait_for_job(client, broken, timeout=120)
    assert view["status"] == "failed" and view["error"] and "Traceback" not in view["error"]
    # The file is named, its folder is not (the record reaches clients).
    assert "zz-not-sd.ckpt" in view["error"] and str(server.config.paths.data_dir) not in view["error"]
    assert view["result"] is None
    view = wait_for_job(client, after, timeout=120)
    assert view["status"] == "done" and view["result"]["seeds"] == [2]
    # The same over the A1111 API: a 422 naming the file (not a 500), and the next request works.
    response = client.post("/sdapi/v1/txt2img", json={"width": 64, "height": 64, "steps": 2,
                                                      "override_settings": {"sd_model_checkpoint": "zz-not-sd"}})
    assert response.status_code == 422 and response.json()["message"].startswith("generation failed")
    assert "zz-not-sd.ckpt" in response.text and str(server.config.paths.data_dir) not in response.text
    response = client.post("/sdapi/v1/txt2img", json={"width": 64, "height": 64, "steps": 2, "seed": 3})
    assert response.status_code == 200 and json.loads(response.json()["info"])["all_seeds"] == [3]


def test_a_model_file_whose_header_is_broken_is_refused_before_queueing(client, server):
    """A header that shows the file cannot be loaded: a 422 naming the file (only its name), nothing queued."""
    jobs_before = len(server.services.store.jobs(limit=1000))
    for path, body in (("/api/v1/jobs", {**FAST, "model": "zz-broken"}),
                       ("/sdapi/v1/txt2img", {"width": 64, "height": 64, "steps": 2,
                                              "override_settings": {"sd_model_checkpoint": "zz-broken"}}),
                       ("/sdapi/v1/options", {"sd_model_checkpoint": "zz-broken.safetensors"})):
        response = client.post(path, json=body)
        assert response.status_code == 422, response.text
        message = response.json()["message"]
        assert "zz-broken.safetensors cannot be loaded: not a safetensors file" in message
        assert str(server.config.paths.data_dir) not in response.text
    assert len(server.services.store.jobs(limit=1000)) == jobs_before


@pytest.mark.parametrize("error", [RuntimeError("boom"), torch.cuda.OutOfMemoryError("CUDA out of memory.")],
                         ids=["exception", "cuda-oom"])
def test_a_job_that_raises_fails_alone_and_oom_releases_the_model(client, server, error):
    """Fault injection at the runner (a CUDA OOM cannot happen on a CPU): the job whose prompt asks for it
    raises, the next one is generated normally."""
    finish_idle(client)
    worker = server.services.worker
    real = worker.runners["txt2img"]

    def faulty(job):
        if job.payload.params.prompt == "raise":
            server.services.models.get(job.payload.checkpoint)  # a model is loaded when it fails
            raise error
        return real(job)

    worker.runners["txt2img"] = faulty
    try:
        failing = submit(client, prompt="raise", seed=1)
        after = submit(client, prompt="fine", seed=9)
        view = wait_for_job(client, failing, timeout=120)
        assert view["status"] == "failed"
        if isinstance(error, torch.cuda.OutOfMemoryError):
            assert view["error"].startswith("out of memory")
        else:
            assert view["error"] == "RuntimeError: boom"
        view = wait_for_job(client, after, timeout=120)
        assert view["status"] == "done" and view["result"]["seeds"] == [9]
    finally:
        worker.runners["txt2img"] = real
    assert client.get("/api/v1/health").json()["worker_alive"] is True


def test_out_of_memory_unloads_the_model(client, server):
    """After an out-of-memory failure the worker released the model (the next job loads it again)."""
    finish_idle(client)
    worker = server.services.worker
    real = worker.runners["txt2img"]
    released = []

    def oom(job):
        server.services.models.get(job.payload.checkpoint)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    worker.runners["txt2img"] = oom
    try:
        job_id = submit(client, seed=1)
        wait_for_job(client, job_id, timeout=120)
        released.append(server.services.models.loaded)
    finally:
        worker.runners["txt2img"] = real
    assert released == [None]


# ---- validation ---------------------------------------------------------------------------------------------

NATIVE_BAD_INPUTS = [
    ({"width": 100}, "width"),
    ({"height": 12}, "height"),
    ({"width": 8200}, "width"),
    ({"width": None}, "width"),
    ({"height": -64}, "height"),
    ({"steps": 0}, "steps"),
    ({"steps": 1001}, "steps"),
    ({"steps": 1.5}, "steps"),
    ({"cfg_scale": -1}, "cfg_scale"),
    ({"cfg_scale": "nan"}, "cfg_scale"),
    ({"batch_size": 65}, "batch_size"),
    ({"batch_count": 0}, "batch_count"),
    ({"batch_size": 64, "batch_count": 100}, "batch_count"),  # over the api_max_images setting
    ({"width": 4096, "height": 4096, "batch_size": 2}, "width"),  # over the api_max_pixels setting
    ({"seed": -2}, "seed"),
    ({"subseed_strength": 1.5}, "subseed_strength"),
    ({"sampler": "Nope"}, "sampler"),
    ({"sampler": "DPM++ 2M", "scheduler": "Nope"}, "scheduler"),
    ({"model": "no-such-model"}, "model"),
    ({"model": "../../tiny-sd1.safetensors"}, "model"),
    ({"model": "/etc/passwd"}, "model"),
    ({"vae": "no-such-vae.safetensors"}, "vae"),
    ({"vae": "/etc/passwd"}, "vae"),
    ({"prompt": "x" * 65537}, "prompt"),
    ({"samplr": "Euler"}, "samplr"),  # unknown keys are an error in the native API
    ({"type": "inpaint"}, "type"),
]


@pytest.mark.parametrize("fields, field", NATIVE_BAD_INPUTS,
                         ids=[f"{f}-{i}" for i, (_, f) in enumerate(NATIVE_BAD_INPUTS)])
def test_bad_input_is_422_naming_the_field_and_queues_nothing(client, server, fields, field):
    jobs_before = server.services.store.jobs(limit=1000)
    response = client.post("/api/v1/jobs", json={**FAST, **fields})
    assert response.status_code == 422, response.text[:500]
    body = response.json()
    assert body["error"] == "validation_error" and body["field"] == field, body
    assert body["message"] and "Traceback" not in response.text
    assert server.services.store.jobs(limit=1000) == jobs_before


def test_a_checkpoint_outside_the_models_folder_cannot_be_chosen(client, server, tiny_sd1_path, tmp_path):
    """A valid checkpoint file elsewhere on disk, named by its path: refused on every route that picks a
    model (the manager itself accepts paths, for the command line)."""
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(tiny_sd1_path, outside)
    jobs_before = server.services.store.jobs(limit=1000)
    response = client.post("/api/v1/jobs", json={**FAST, "model": str(outside)})
    assert response.status_code == 422 and response.json()["field"] == "model"
    response = client.post("/sdapi/v1/txt2img", json={"steps": 2, "width": 64, "height": 64,
                                                      "override_settings": {"sd_model_checkpoint": str(outside)}})
    assert response.status_code == 422 and response.json()["field"] == "override_settings.sd_model_checkpoint"
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": str(outside)})
    assert response.status_code == 422 and response.json()["field"] == "sd_model_checkpoint"
    response = client.post("/sdapi/v1/options", json={"sd_vae": str(outside)})
    assert response.status_code == 422 and response.json()["field"] == "sd_vae"
    assert server.services.store.jobs(limit=1000) == jobs_before
    # A checkpoint in the folder may still be named by its full path.
    inside = server.config.paths.ckpt_dir / "tiny-sd1.safetensors"
    job_id = submit(client, model=str(inside), seed=5)
    assert wait_for_job(client, job_id, timeout=120)["status"] == "done"


# ---- OpenAPI ------------------------------------------------------------------------------------------------


def test_openapi_and_docs_are_served(client):
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == "sdwebui"
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events", "/api/v1/images",
                 "/api/v1/images/{image_id}", "/api/v1/models", "/api/v1/models/refresh", "/sdapi/v1/txt2img",
                 "/sdapi/v1/progress", "/sdapi/v1/options"):
        assert path in schema["paths"], path
    body_schema = schema["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    kinds = {entry["title"]: entry for entry in body_schema["oneOf"]}
    job_schema = kinds["Txt2ImgJob"]
    assert "init_images" in kinds["Img2ImgJob"]["required"]
    assert job_schema["properties"]["width"]["multipleOf"] == 8
    assert job_schema["additionalProperties"] is False
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "/openapi.json" in docs.text


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_work_offline(client, page):
    """Swagger UI and ReDoc load their scripts from this server, not from a CDN an offline machine cannot reach."""
    import re

    html = client.get(page).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and not [url for url in assets if "://" in url], assets
    for url in assets:
        response = client.get(url)
        assert response.status_code == 200 and len(response.content) > 1000, url
