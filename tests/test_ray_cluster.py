"""`sdwebui serve --ray`: the API node leases jobs to Ray worker actors (`server.cluster`). A local Ray cluster
(one session for the module: Ray starts slowly on 2 cores) with two CPU actors, the tiny SD1 model, and a real
uvicorn server: jobs from concurrent clients finish on the actors with their seeds, a job goes to the actor that
holds its checkpoint, a job that fails because of its input fails once, an actor killed mid-job (its process, by
pid) costs nothing (the job runs again on another actor, its images written and recorded once), interrupt and
progress reach the actor, and the API node restarted mid-queue resumes its queue on the actors."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch
from test_api_support import LiveServer, decode_png, make_data_dir, wait_for_job, wait_until

from sdwebui.app import build_services
from sdwebui.config import Paths
from sdwebui.server.config import ServerConfig
from sdwebui.server.service import GenerationRequest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
# One Ray session for the module: under `-n 2` the tests stay on one worker (`--dist loadfile`, pyproject's addopts)
# rather than starting a second session and two more actors on the other.

FAST = {"width": 64, "height": 64, "steps": 2, "sampler": "Euler"}
ENGINE_FAST = {"width": 64, "height": 64, "steps": 2, "sampler": "Euler", "prompt": "left in the queue"}


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray session for the module, sized for this machine; the servers below join it (`--ray local`
    uses a session the process already has)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024 * 1024, logging_level="WARNING",
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("ray"), tiny_sd1_path, "a.safetensors", "b.safetensors")
    torch.save({"not_a_unet": torch.ones(2)}, data / "models" / "Stable-diffusion" / "zz-not-sd.ckpt")
    return data


@pytest.fixture(scope="module")
def leftover_queue(data_dir) -> list[str]:
    """What an API node that died mid-queue leaves in the store: a job it was running and three queued ones (its
    services built and closed without their worker ever starting, one job marked running as a worker does)."""
    services = build_services(ServerConfig(paths=Paths.from_flags(data_dir=data_dir), preload=False))
    ids = [services.generation.submit(GenerationRequest("txt2img", {**ENGINE_FAST, "seed": 40 + i},
                                                        checkpoint="a")).id for i in range(4)]
    assert services.store.start_job(ids[0])
    services.store.close()
    return ids


@pytest.fixture(scope="module")
def server(ray_session, data_dir, leftover_queue):
    with LiveServer(data_dir, ray_address="local", ray_workers=2, threads=1, ui=False) as live:
        with live.client() as client:
            wait_until(lambda: len(ready_workers(client)) == 2, timeout=180, interval=0.2)
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def ready_workers(client) -> list[dict]:
    return [worker for worker in client.get("/api/v1/workers").json()["workers"] if worker["state"] == "ready"]


def submit(client, **fields) -> str:
    response = client.post("/api/v1/jobs", json={**FAST, **fields})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def finish_idle(client) -> None:
    wait_until(lambda: all(worker["current_job"] is None for worker in ready_workers(client))
               and not client.get("/api/v1/jobs", params={"status": "queued"}).json(), timeout=120, interval=0.1)


def test_jobs_from_concurrent_clients_finish_on_both_actors_with_their_seeds(server, client):
    workers = ready_workers(client)
    assert {worker["id"] for worker in workers} == {"ray-0", "ray-1"}
    assert len({worker["pid"] for worker in workers}) == 2 and all(w["pid"] != os.getpid() for w in workers)
    ids: dict[int, str] = {}

    def post(seed: int) -> None:
        with server.client() as own:
            # Long enough (steps) that the jobs overlap: one actor alone would not keep up.
            ids[seed] = submit(own, prompt=f"job {seed}", seed=seed, model="a", steps=25)

    threads = [threading.Thread(target=post, args=(1000 + i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ran_on = set()
    for seed, job_id in ids.items():
        view = wait_for_job(client, job_id, timeout=180)
        assert view["status"] == "done", view["error"]
        assert view["result"]["seeds"] == [seed]
        ran_on.add(view["result"]["worker"]["id"])
        # The run on the actor lies within the job's time on the API node (the lease).
        assert 0 < view["result"]["worker"]["seconds"] <= view["finished"] - view["started"]
        # Written by the API node into its outputs folder and recorded once, under the path the result names.
        records = client.get("/api/v1/images", params={"job_id": job_id}).json()
        assert [record["path"] for record in records] == [image["path"] for image in view["result"]["images"]]
        assert records[0]["id"] == view["result"]["images"][0]["id"] and records[0]["seed"] == seed
        assert (server.config.paths.outputs_dir / records[0]["path"]).is_file()
        assert ".ray-pending" not in records[0]["path"]
    assert ran_on == {"ray-0", "ray-1"}


def test_a_job_goes_to_the_actor_that_holds_its_checkpoint(client):
    finish_idle(client)
    first = wait_for_job(client, submit(client, model="b", seed=1), timeout=120)
    holder_b = first["result"]["worker"]["id"]
    workers = {worker["id"]: worker for worker in ready_workers(client)}
    assert workers[holder_b]["models"] == ["b.safetensors"]
    holder_a = next(worker_id for worker_id in workers if worker_id != holder_b)
    if workers[holder_a]["models"] != ["a.safetensors"]:  # (the first test ran elsewhere: give it model a)
        wait_for_job(client, submit(client, model="a", seed=1), timeout=120)
    for model, holder in (("a", holder_a), ("b", holder_b), ("b", holder_b), ("a", holder_a)):
        view = wait_for_job(client, submit(client, model=model, seed=7), timeout=120)
        assert view["status"] == "done", view["error"]
        assert view["result"]["worker"]["id"] == holder, (model, view["result"]["worker"])
    workers = {worker["id"]: worker for worker in ready_workers(client)}
    assert workers[holder_a]["models"] == ["a.safetensors"] and workers[holder_b]["models"] == ["b.safetensors"]


def test_the_scheduler_prefers_the_checkpoint_then_the_loras_then_an_empty_worker():
    from types import SimpleNamespace

    from sdwebui.server.cluster import RayScheduler, Slot
    from sdwebui.server.queue import JobHandle

    def job(checkpoint, prompt="a cat"):
        payload = SimpleNamespace(checkpoint=checkpoint, params=SimpleNamespace(prompt=prompt))
        return JobHandle("j", "txt2img", payload)

    a_plain = Slot("w0", None, models=["/m/a.safetensors"], jobs_done=1)
    a_style = Slot("w1", None, models=["/m/a.safetensors"], networks=frozenset({"lora:style"}), jobs_done=5)
    empty = Slot("w2", None)
    b = Slot("w3", None, models=["/m/b.safetensors"])
    idle = [a_plain, a_style, empty, b]
    assert RayScheduler.choose(idle, job("/m/b.safetensors")) is b
    assert RayScheduler.choose(idle, job("/m/a.safetensors")) is a_plain  # fewer jobs done
    assert RayScheduler.choose(idle, job("/m/a.safetensors", "a cat <lora:style:0.7>")) is a_style
    assert RayScheduler.choose(idle, job("/m/c.safetensors")) is empty  # evicts nobody's model
    assert RayScheduler.choose([a_style, b], job("/m/c.safetensors")) is b
    assert RayScheduler.choose([], job("/m/a.safetensors")) is None


def test_the_settings_page_shows_the_workers(server, client):
    from sdwebui.ui.settings import workers_html  # gradio: seconds to import

    finish_idle(client)
    wait_for_job(client, submit(client, model="a", seed=2), timeout=120)
    page = workers_html(server.services)
    assert page.count("<tr>") == 3 and "ray-0" in page and "ray-1" in page and "a.safetensors" in page


def test_a_job_that_fails_because_of_its_input_fails_once_and_does_not_hop(client):
    finish_idle(client)
    before = {worker["id"]: worker["jobs_done"] for worker in ready_workers(client)}
    view = wait_for_job(client, submit(client, model="zz-not-sd", seed=1), timeout=120)
    assert view["status"] == "failed" and "zz-not-sd.ckpt" in view["error"]
    after = {worker["id"]: worker["jobs_done"] for worker in ready_workers(client)}
    assert set(after) == set(before)  # no worker was lost over it
    assert sum(after.values()) == sum(before.values()) + 1


def test_an_actor_killed_mid_job_costs_nothing_the_job_runs_again_and_its_images_are_written_once(server, client):
    finish_idle(client)
    outputs = server.config.paths.outputs_dir
    files_before = set(outputs.rglob("*.png"))
    job_id = submit(client, prompt="killed", seed=500, model="a", batch_count=2, steps=100)

    def first_image_written():
        view = client.get(f"/api/v1/jobs/{job_id}").json()
        return view["status"] == "running" and (view["progress"] or {}).get("batch_index", 0) >= 1

    wait_until(first_image_written, timeout=120, interval=0.05)
    victim = next(worker for worker in ready_workers(client) if worker["current_job"] == job_id)
    os.kill(victim["pid"], signal.SIGKILL)

    view = wait_for_job(client, job_id, timeout=180)
    assert view["status"] == "done", view["error"]
    assert view["result"]["seeds"] == [500, 501]
    assert view["result"]["worker"]["id"] != victim["id"]
    records = client.get("/api/v1/images", params={"job_id": job_id}).json()
    assert sorted(record["path"] for record in records) == sorted(image["path"] for image in view["result"]["images"])
    assert len(records) == 2
    # Every file once: the two images (the first written before the kill, not again by the re-run) and the grid.
    new_files = set(outputs.rglob("*.png")) - files_before
    assert sorted(path.relative_to(outputs).as_posix() for path in new_files) == sorted(
        [*(record["path"] for record in records), view["result"]["grid"]["path"]])
    # The lost actor is replaced (a new one is starting or ready): two workers again, the victim gone.
    workers = client.get("/api/v1/workers").json()["workers"]
    assert len(workers) == 2 and victim["id"] not in {worker["id"] for worker in workers}
    assert client.get("/api/v1/health").json()["status"] == "ok"


def test_an_actor_that_stops_answering_loses_its_lease_and_is_fenced(server, client):
    """No heartbeat (a frozen process, a node cut off): after the lease timeout the job runs on another actor and
    the silent one is killed, so it cannot go on with the job as well."""
    finish_idle(client)
    scheduler = server.services.worker
    scheduler.heartbeat_timeout, scheduler.lease_timeout = 0.5, 2.0
    try:
        wait_until(lambda: len(ready_workers(client)) == 2, timeout=180, interval=0.2)
        job_id = submit(client, prompt="frozen", seed=600, model="a", steps=150)
        wait_until(lambda: (client.get(f"/api/v1/jobs/{job_id}").json()["progress"] or {}).get("step", 0) >= 1,
                   timeout=120, interval=0.05)
        victim = next(worker for worker in ready_workers(client) if worker["current_job"] == job_id)
        os.kill(victim["pid"], signal.SIGSTOP)
        view = wait_for_job(client, job_id, timeout=180)
        assert view["status"] == "done" and view["result"]["worker"]["id"] != victim["id"]
        assert view["result"]["seeds"] == [600]
        wait_until(lambda: not _alive(victim["pid"]), timeout=60, interval=0.2)
    finally:
        scheduler.heartbeat_timeout, scheduler.lease_timeout = 10.0, 60.0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_ray_flags_are_checked_before_anything_starts(capsys):
    from sdwebui.cli import main
    from sdwebui.server.config import ConfigError

    paths = Paths.from_flags(data_dir=".")
    with pytest.raises(ConfigError, match="need --ray"):
        ServerConfig(paths=paths, ray_workers=2).check()
    with pytest.raises(ConfigError, match="expected auto, local"):
        ServerConfig(paths=paths, ray_address="somewhere").check()
    with pytest.raises(ConfigError, match="at least 1"):
        ServerConfig(paths=paths, ray_address="local", ray_workers=0).check()
    ServerConfig(paths=paths, ray_address="ray://head:10001", ray_workers=2, ray_gpus_per_worker=0.5).check()
    assert main(["serve", "--ray-gpus-per-worker", "1", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "sdwebui: error: --ray-workers and --ray-gpus-per-worker need --ray ADDRESS (or --ray local)")


def test_progress_preview_skip_and_interrupt_reach_the_actor(client):
    finish_idle(client)
    job_id = submit(client, prompt="long", seed=3, model="a", steps=1000, batch_count=2)

    def previewing():
        progress = client.get("/sdapi/v1/progress").json()
        return progress if progress["state"]["sampling_step"] >= 10 and progress["current_image"] else None

    progress = wait_until(previewing, timeout=120, interval=0.05)  # a live preview every 10 steps (the setting)
    assert 0 < progress["progress"] < 0.5 and progress["state"]["sampling_steps"] == 1000
    assert decode_png(progress["current_image"]).size == (64, 64)
    assert client.post("/sdapi/v1/skip").status_code == 200  # the first batch is abandoned, the second begins
    wait_until(lambda: client.get(f"/api/v1/jobs/{job_id}").json()["progress"]["batch_index"] == 1, timeout=120,
               interval=0.05)
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    view = wait_for_job(client, job_id, timeout=120)
    assert view["status"] == "interrupted" and view["result"]["worker"]["id"].startswith("ray-")
    assert view["progress"]["batch_index"] == 1 and view["progress"]["step"] < 1000
    # The skipped batch made no image; the interrupted one keeps what it made (seed 3 + 1).
    assert view["result"]["seeds"] == [4]


def test_the_api_node_restarted_mid_queue_resumes_on_the_actors(client, leftover_queue):
    """The queue the last run of the API node left (`leftover_queue`): the job it was running is interrupted, as
    without Ray; the queued ones run on the actors, with their seeds."""
    running, *queued = leftover_queue
    view = wait_for_job(client, running, timeout=30)
    assert view["status"] == "interrupted" and "not re-run" in view["error"]
    for i, job_id in enumerate(queued, start=1):
        view = wait_for_job(client, job_id, timeout=180)
        assert view["status"] == "done", view["error"]
        assert view["result"]["seeds"] == [40 + i] and view["result"]["worker"]["id"].startswith("ray-")
        assert len(client.get("/api/v1/images", params={"job_id": job_id}).json()) == 1
