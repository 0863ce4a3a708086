"""Storage faults (issue 24): a full disk, a database another process holds locked, a damaged database file.

The worker survives any of them, a finished job's outcome is kept until the store can take it, `/api/v1/health`
says `degraded` (with the reason) while the server cannot make progress and `ok` again after, submissions get a
503 naming the reason, the event loop never waits on SQLite, and only a damaged file is moved aside.

Faults are real where that is cheap (a second process holding the write lock with `BEGIN IMMEDIATE`, a damaged
file, a small tmpfs filled to the last byte when the tests run as root) and simulated otherwise: `FullDisk`
makes the store's writes fail exactly as SQLite does on a full disk."""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sdwebui.server.queue import JobQueue, Worker
from sdwebui.server.store import DB_FILE_NAME, Store, StoreError, StoreLocked, StoreUnavailable, open_store
from test_api_support import FAST, LiveServer, make_data_dir, wait_for_job, wait_until

FULL = "database or disk is full"


class FullDisk:
    """Stands in for the store's write connection: while `on`, the data statements `matches` selects fail as
    SQLite fails on a full disk (`sqlite3.OperationalError: database or disk is full`); reads have their own
    connection and go on."""

    def __init__(self, store: Store, matches=lambda sql: True):
        self.real = store._db
        self.matches = matches
        self.on = False
        self.failures = 0
        store._db = self

    def _check(self, sql: str) -> None:
        words = sql.lstrip().split(None, 1)
        if self.on and words and words[0].upper() in ("INSERT", "UPDATE", "DELETE") and self.matches(sql):
            self.failures += 1
            raise sqlite3.OperationalError(FULL)

    def execute(self, sql, *args):
        self._check(sql)
        return self.real.execute(sql, *args)

    def executemany(self, sql, *args):
        self._check(sql)
        return self.real.executemany(sql, *args)

    def __getattr__(self, name):
        return getattr(self.real, name)


LOCKER = textwrap.dedent("""
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    sys.stdin.readline()
    db.execute("COMMIT")
""")


class Locker:
    """A second process holding the database's write lock (`BEGIN IMMEDIATE`) until `release()`: the tests
    decide when it ends, so what they check happens while it is held, whatever the machine's speed."""

    def __init__(self, db_path: Path):
        self.process = subprocess.Popen([sys.executable, "-c", LOCKER, str(db_path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"

    def held(self) -> bool:
        return self.process.poll() is None

    def release(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("\n")
            self.process.stdin.close()
        self.process.wait(60)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(60)


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / DB_FILE_NAME)
    yield store
    store.close()


def start_worker(queue, runners, **kwargs):
    worker = Worker(queue, runners, retry_interval=0.1, **kwargs)
    worker.start()
    return worker


# ---- the worker survives -------------------------------------------------------------------------------------


def test_an_outcome_that_cannot_be_recorded_is_kept_and_written_when_space_returns(store):
    disk = FullDisk(store)
    queue = JobQueue(store)

    def runner(job):
        disk.on = True  # the disk fills while the job runs
        return {"seeds": [1]}

    worker = start_worker(queue, {"k": runner})
    try:
        job = queue.submit("k", {})
        assert job.wait_sync(10) and job.status == "done"  # the waiting client gets its result
        assert worker.alive and store.job(job.id)["status"] == "running"
        assert worker.fault == f"1 finished job(s) not yet recorded: {FULL}"
        assert worker.unrecorded(job.id).result == {"seeds": [1]}
        time.sleep(0.5)
        assert worker.alive and disk.failures >= 2, "it retried, and is still alive"
        disk.on = False
        wait_until(lambda: store.job(job.id)["status"] == "done", timeout=10)
        assert store.job(job.id)["result"] == {"seeds": [1]}
        wait_until(lambda: worker.fault is None and store.fault is None, timeout=10)
        after = queue.submit("k", {})
        disk.on = False
        assert after.wait_sync(10)
    finally:
        disk.on = False
        worker.stop()
    assert store.job(after.id)["status"] == "done"


def test_the_fallback_record_failing_too_does_not_kill_the_worker(store):
    """The fault of issue 24: a result the store cannot take (not JSON) on a full disk. Before, the fallback
    `finish_job(..., "failed")` raised out of the worker thread and it died."""
    disk = FullDisk(store)
    queue = JobQueue(store)

    def runner(job):
        disk.on = True
        return {"not json": {1, 2}}

    worker = start_worker(queue, {"k": runner})
    try:
        job = queue.submit("k", {})
        assert job.wait_sync(10) and job.status == "failed"
        time.sleep(0.3)
        assert worker.alive and worker.fault is not None
        disk.on = False
        wait_until(lambda: store.job(job.id)["status"] == "failed", timeout=10)
        assert store.job(job.id)["error"] == "internal error while recording the result"
    finally:
        disk.on = False
        worker.stop()


def test_a_job_that_cannot_be_started_stays_queued_and_runs_once_it_can(store):
    disk = FullDisk(store, matches=lambda sql: "status='running'" in sql)  # the start of a job only
    queue = JobQueue(store)
    ran = []
    job = queue.submit("k", {})
    disk.on = True
    worker = start_worker(queue, {"k": lambda j: ran.append(j.id) or {}})
    try:
        wait_until(lambda: worker.fault is not None, timeout=10)
        assert worker.fault == f"cannot start the next job: {FULL}"
        assert worker.alive and ran == [] and store.job(job.id)["status"] == "queued"
        assert queue.position(job.id) == 0 and queue.get(job.id) is job
        disk.on = False
        assert job.wait_sync(10) and ran == [job.id]
        wait_until(lambda: worker.fault is None, timeout=10)
    finally:
        disk.on = False
        worker.stop()
    assert store.job(job.id)["status"] == "done"


def test_any_exception_while_taking_a_job_keeps_the_worker_alive(store, monkeypatch):
    queue = JobQueue(store)
    real = store.start_job
    calls = []

    def flaky(job_id):
        calls.append(job_id)
        if len(calls) == 1:
            raise RuntimeError("something nobody expected")
        return real(job_id)

    monkeypatch.setattr(store, "start_job", flaky)
    job = queue.submit("k", {})
    worker = start_worker(queue, {"k": lambda j: {"ok": True}})
    try:
        assert job.wait_sync(10) and job.status == "done" and worker.alive
    finally:
        worker.stop()
    assert calls == [job.id, job.id] and store.job(job.id)["status"] == "done"


def test_a_cancel_the_store_cannot_record_leaves_the_job_queued(store):
    disk = FullDisk(store)
    queue = JobQueue(store)
    job = queue.submit("k", {})
    disk.on = True
    with pytest.raises(StoreUnavailable, match=FULL):
        queue.cancel(job.id)
    disk.on = False
    assert queue.position(job.id) == 0 and store.job(job.id)["status"] == "queued"
    assert queue.cancel(job.id) and store.job(job.id)["status"] == "cancelled"


def test_progress_writes_never_hold_up_the_worker(store, monkeypatch):
    """Progress is written by a thread of its own: a progress write stuck behind another process's lock costs
    the running job nothing (it ends while the write is still stuck), only the latest progress waits to be
    written, and a late write never overwrites a finished job's progress."""
    real = store.set_progress
    stuck, writes = threading.Event(), []

    def blocked(job_id, progress):
        stuck.wait(30)
        real(job_id, progress)
        writes.append(progress["step"])

    monkeypatch.setattr(store, "set_progress", blocked)
    queue = JobQueue(store)

    def runner(job):
        save = worker.progress_saver(job)
        for step in range(1, 201):
            job.report_step(step, 200, 0, 1)
            save()
            time.sleep(0.002)
        return {}

    worker = start_worker(queue, {"k": runner}, progress_interval=0.01)
    try:
        job = queue.submit("k", {})
        assert job.wait_sync(60) and job.status == "done"
        assert writes == [] and not stuck.is_set(), "the job ended while its first progress write was stuck"
        stuck.set()
        wait_until(lambda: writes, timeout=10)
        time.sleep(0.2)
    finally:
        stuck.set()
        worker.stop()
    record = store.job(job.id)
    assert record["status"] == "done" and record["progress"]["step"] == 200
    assert 1 <= len(writes) <= 2, f"only the latest progress is kept while a write is stuck: {writes}"


# ---- over HTTP -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("faults"), tiny_sd1_path, "tiny-sd1.safetensors")
    with LiveServer(data, ui=False) as live:
        live.services.worker.retry_interval = 0.2
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def _png_b64() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_submissions_while_the_store_cannot_write_get_503_and_health_says_why(server, client):
    store = server.services.store
    disk = FullDisk(store)
    try:
        assert client.get("/api/v1/health").json()["status"] == "ok"
        jobs_before = len(store.jobs(limit=1000))
        disk.on = True
        for path, body in (("/api/v1/jobs", FAST),
                           ("/sdapi/v1/txt2img", FAST),
                           ("/sdapi/v1/img2img", {**FAST, "init_images": [_png_b64()]}),
                           ("/sdapi/v1/extra-single-image", {"image": _png_b64(), "upscaler_1": "Lanczos",
                                                              "upscaling_resize": 2}),
                           ("/sdapi/v1/extra-batch-images", {"imageList": [{"data": _png_b64(), "name": "a"}],
                                                              "upscaler_1": "Lanczos", "upscaling_resize": 2})):
            response = client.post(path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"]
            assert response.json()["detail"] == f"the server cannot write its database now ({FULL}); try again later"
        health = client.get("/api/v1/health").json()
        assert health["status"] == "degraded" and health["worker_alive"]
        assert health["reasons"] == [f"the database cannot be written: {FULL}"]
        assert len(store.jobs(limit=1000)) == jobs_before
        disk.on = False
        # The worker tries a small write now and then: health is "ok" again without anyone submitting.
        wait_until(lambda: client.get("/api/v1/health").json()["status"] == "ok", timeout=10)
        response = client.post("/api/v1/jobs", json=FAST)
        assert response.status_code == 202
        assert wait_for_job(client, response.json()["id"], timeout=120)["status"] == "done"
    finally:
        server.services.store._db = disk.real


def test_a_job_whose_images_cannot_be_recorded_keeps_them_and_records_them_later(server, client):
    """The store refuses image records (its disk is full) while the PNGs can still be written: the A1111 client
    gets its image, the job waits to be recorded (health says so), and once the store takes writes again the
    job is recorded with its image, and the next job runs."""
    store = server.services.store
    disk = FullDisk(store, matches=lambda sql: "INTO images" in sql)
    disk.on = True
    try:
        response = client.post("/sdapi/v1/txt2img", json={**FAST, "save_images": True, "seed": 4})
        assert response.status_code == 200, response.text
        assert json.loads(response.json()["info"])["all_seeds"] == [4] and len(response.json()["images"]) == 1
        job = store.jobs(limit=1)[0]
        assert job["status"] == "running" and server.services.worker.unrecorded(job["id"]) is not None
        health = client.get("/api/v1/health").json()
        assert health["status"] == "degraded" and FULL in health["reasons"][0]
        assert server.services.worker.alive
        disk.on = False
        wait_until(lambda: store.job(job["id"])["status"] == "done", timeout=10)
        assert [record["seed"] for record in store.images(job_id=job["id"])] == [4]
        wait_until(lambda: client.get("/api/v1/health").json()["status"] == "ok", timeout=10)
        response = client.post("/sdapi/v1/txt2img", json={**FAST, "save_images": True, "seed": 5})
        assert response.status_code == 200
    finally:
        server.services.store._db = disk.real


def test_a_job_finished_but_not_yet_recorded_shows_its_outcome(server, client):
    store = server.services.store
    disk = FullDisk(store, matches=lambda sql: "SET status=?" in sql)  # finish_job only
    try:
        disk.on = True
        response = client.post("/api/v1/jobs", json={**FAST, "save_images": False, "seed": 8})
        job_id = response.json()["id"]
        wait_until(lambda: server.services.worker.unrecorded(job_id) is not None, timeout=120)
        view = client.get(f"/api/v1/jobs/{job_id}").json()
        assert view["status"] == "done" and view["recorded"] is False and view["result"]["seeds"] == [8]
        assert store.job(job_id)["status"] == "running"
        # `unrecorded` also answers while the first write is still being tried; health counts only the failed ones
        wait_until(lambda: client.get("/api/v1/health").json()["status"] == "degraded", timeout=30)
        health = client.get("/api/v1/health").json()
        assert health["reasons"] == [f"1 finished job(s) not yet recorded: {FULL}"]
        disk.on = False
        wait_until(lambda: store.job(job_id)["status"] == "done", timeout=10)
        view = client.get(f"/api/v1/jobs/{job_id}").json()
        assert "recorded" not in view and view["result"]["seeds"] == [8]
        wait_until(lambda: client.get("/api/v1/health").json()["status"] == "ok", timeout=10)
    finally:
        server.services.store._db = disk.real


def test_an_a1111_client_gets_its_images_although_the_outcome_cannot_be_recorded(server, client):
    """Issue 24: A1111 requests hung once an outcome could not be recorded (the worker thread had died). The
    images are in memory: the client gets them, the record follows when the disk has room again."""
    store = server.services.store
    disk = FullDisk(store, matches=lambda sql: "SET status=?" in sql)  # finish_job only
    try:
        disk.on = True
        response = client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 9})
        assert response.status_code == 200, response.text
        assert json.loads(response.json()["info"])["all_seeds"] == [9] and len(response.json()["images"]) == 1
        job_id = store.jobs(limit=1)[0]["id"]
        assert store.job(job_id)["status"] == "running" and server.services.worker.alive
        wait_until(lambda: client.get("/api/v1/health").json()["status"] == "degraded", timeout=30)
        disk.on = False
        wait_until(lambda: store.job(job_id)["status"] == "done", timeout=10)
        wait_until(lambda: client.get("/api/v1/health").json()["status"] == "ok", timeout=10)
    finally:
        server.services.store._db = disk.real


def test_the_ui_says_why_when_the_store_cannot_take_a_job(server):
    """The web UI's Generate shows the reason (its error line), not Gradio's generic "Error"."""
    from sdwebui.ui.fields import UIError, submit_txt2img

    store = server.services.store
    disk = FullDisk(store)
    try:
        disk.on = True
        with pytest.raises(UIError, match=r"^the server cannot write its database now \(database or disk is full\)"):
            submit_txt2img(server.services, {"prompt": "x", "width": 64, "height": 64, "steps": 1})
        disk.on = False
        wait_until(lambda: server.services.health()["status"] == "ok", timeout=10)
    finally:
        server.services.store._db = disk.real


def test_huge_image_ids_are_404(client):
    for method, path in (("GET", "/api/v1/images/99999999999999999999999"),
                         ("GET", "/api/v1/images/99999999999999999999999/file"),
                         ("DELETE", "/api/v1/images/99999999999999999999999"),
                         ("GET", "/api/v1/images/-99999999999999999999999")):
        response = client.request(method, path)
        assert response.status_code == 404, (path, response.text)


def test_images_of_an_interrupted_job_say_so(server, client):
    """A1111 keeps the images a job saved before it was stopped; the history marks them."""
    response = client.post("/api/v1/jobs", json={**FAST, "steps": 30, "batch_count": 50, "seed": 100})
    job_id = response.json()["id"]
    wait_until(lambda: client.get("/api/v1/images", params={"job_id": job_id}).json(), timeout=120, interval=0.05)
    client.post(f"/api/v1/jobs/{job_id}/interrupt")
    assert wait_for_job(client, job_id, timeout=120)["status"] == "interrupted"
    images = client.get("/api/v1/images", params={"job_id": job_id}).json()
    assert 1 <= len(images) < 50
    for image in images:
        assert image["job_status"] == "interrupted" and image["interrupted"] is True
        one = client.get(f"/api/v1/images/{image['id']}").json()
        assert one["job_status"] == "interrupted" and one["interrupted"] is True
    done = client.post("/api/v1/jobs", json={**FAST, "seed": 101}).json()["id"]
    wait_for_job(client, done, timeout=120)
    for image in client.get("/api/v1/images", params={"job_id": done}).json():
        assert image["job_status"] == "done" and image["interrupted"] is False


# ---- a database another process holds locked --------------------------------------------------------------


def test_the_event_loop_answers_while_another_process_holds_the_write_lock(server, client):
    """Issue 24: one locked write stalled `/api/v1/health` for 29 s and a 400-step job took 158 s instead of 20.
    With another process holding the write lock (until the test releases it): health, job views and the A1111
    progress route answer, the running job samples on and its A1111 client gets its images (its record waits
    for the lock, `"recorded": false` meanwhile); a submission waits for the lock and is accepted once it is
    released."""
    results = {}

    def a1111():
        with server.client() as other:
            results["a1111"] = other.post("/sdapi/v1/txt2img", json={**FAST, "steps": 150, "seed": 12})

    running = threading.Thread(target=a1111)
    running.start()
    wait_until(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] > 0, timeout=120,
               interval=0.02)
    (job_id,) = [job.id for job in server.services.queue.running()]
    locker = Locker(server.services.store.path)
    try:
        def submit():
            with server.client() as other:
                results["submit"] = other.post("/api/v1/jobs", json={**FAST, "seed": 13})

        submitting = threading.Thread(target=submit)
        steps = set()
        while running.is_alive():
            assert client.get("/api/v1/health").json()["worker_alive"]
            steps.add(client.get("/sdapi/v1/progress").json()["state"]["sampling_step"])
            view = client.get(f"/api/v1/jobs/{job_id}").json()
            assert view["id"] == job_id
            time.sleep(0.02)
            assert locker.held()
        assert locker.held(), "the job ended while the lock was held"
        submitting.start()
        assert len(steps - {0}) > 1, "the job sampled on while the lock was held"
        response = results["a1111"]
        assert response.status_code == 200, response.text
        assert json.loads(response.json()["info"])["all_seeds"] == [12] and len(response.json()["images"]) == 1
        view = wait_until(lambda: (v := client.get(f"/api/v1/jobs/{job_id}").json())["status"] == "done" and v,
                          timeout=30)
        assert view["recorded"] is False and server.services.store.job(job_id)["status"] == "running"
        time.sleep(0.5)
        assert submitting.is_alive() and "submit" not in results, "the submission waits for the lock"
        assert client.get("/api/v1/health").status_code == 200
    finally:
        locker.release()
    running.join(60)
    submitting.join(60)
    response = results["submit"]
    assert response.status_code == 202, response.text
    assert wait_for_job(client, response.json()["id"], timeout=120)["status"] == "done"
    wait_until(lambda: server.services.store.job(job_id)["status"] == "done", timeout=30)
    assert "recorded" not in client.get(f"/api/v1/jobs/{job_id}").json()


def test_a_lock_held_past_the_wait_is_a_503_naming_it(tmp_path, tiny_sd1_path):
    data = make_data_dir(tmp_path / "data", tiny_sd1_path)
    with LiveServer(data, ui=False, store_lock_wait=0.5) as live, live.client() as client:
        live.services.worker.retry_interval = 0.2
        locker = Locker(live.services.store.path)
        try:
            response = client.post("/api/v1/jobs", json=FAST)
            assert response.status_code == 503
            assert "the database is locked by another process" in response.json()["detail"]
            health = client.get("/api/v1/health").json()
            assert health["status"] == "degraded" and "locked by another process" in health["reasons"][0]
            assert locker.held()
        finally:
            locker.release()
        wait_until(lambda: client.get("/api/v1/health").json()["status"] == "ok", timeout=10)
        assert client.post("/api/v1/jobs", json=FAST).status_code == 202


def test_images_saved_while_the_lock_is_held_past_the_wait_are_recorded_with_the_job(tmp_path, tiny_sd1_path):
    """A job that saves its images while another process holds the lock past the store's wait does not fail:
    its PNGs are written, their records wait in memory, and once the lock is gone they are written with the
    job's outcome (ids in its result), so the history loses nothing."""
    data = make_data_dir(tmp_path / "data", tiny_sd1_path)
    with LiveServer(data, ui=False, store_lock_wait=0.5) as live, live.client() as client:
        live.services.worker.retry_interval = 0.2
        job_id = client.post("/api/v1/jobs", json={**FAST, "steps": 60, "batch_size": 2, "seed": 21,
                                                   "save_images": True}).json()["id"]
        wait_until(lambda: ((client.get(f"/api/v1/jobs/{job_id}").json()["progress"] or {}).get("step") or 0) > 0,
                   timeout=120)
        locker = Locker(live.services.store.path)
        try:
            view = wait_until(lambda: (v := client.get(f"/api/v1/jobs/{job_id}").json())["status"] != "running"
                              and v, timeout=120)
            assert view["status"] == "done", view
            assert view["recorded"] is False and locker.held()
            saved = sorted((data / "outputs" / "txt2img-images").rglob("*.png"))
            assert len(saved) == 2  # both PNGs are on disk while their records wait
        finally:
            locker.release()
        wait_until(lambda: live.services.store.job(job_id)["status"] == "done", timeout=30)
        records = live.services.store.images(job_id=job_id)
        assert sorted(record["seed"] for record in records) == [21, 22]
        result = live.services.store.job(job_id)["result"]
        assert sorted(entry["id"] for entry in result["images"]) == sorted(record["id"] for record in records)


def test_a_locked_database_is_not_moved_aside(tmp_path):
    store, _ = open_store(tmp_path)
    job = store.add_job("txt2img", {"prompt": "keep me"})
    store.set_settings({"sd_vae": "None"})
    store.close()
    locker = Locker(tmp_path / DB_FILE_NAME)
    try:
        with pytest.raises(StoreLocked) as error:
            open_store(tmp_path, lock_wait=0.5)
        assert locker.held(), "the wait is bounded: it gave up while the lock was still held"
        message = str(error.value)
        assert "locked by another process" in message and "--data-dir" in message
        if Path("/proc/locks").exists():
            assert f"pid {locker.process.pid} (" in message
    finally:
        locker.kill()
    assert not list(tmp_path.glob("*.corrupt-*"))
    store, requeue = open_store(tmp_path)
    assert [row["id"] for row in requeue] == [job["id"]] and store.get_setting("sd_vae") == "None"
    store.close()


def test_serve_exits_with_a_clear_message_when_the_database_is_locked(tmp_path, tiny_sd1_path, capsys):
    from sdwebui.app import serve
    from sdwebui.config import Paths
    from sdwebui.server.config import ServerConfig

    data = make_data_dir(tmp_path / "data", tiny_sd1_path)
    store, _ = open_store(data)
    store.close()
    locker = Locker(data / DB_FILE_NAME)
    try:
        config = ServerConfig(paths=Paths.from_flags(data_dir=data), port=0, ui=False, store_lock_wait=0.5)
        assert serve(config) == 2
        assert locker.held()
    finally:
        locker.kill()
    err = capsys.readouterr().err
    assert err.startswith("sdwebui: error: the database ") and "is locked by another process" in err
    assert "serving on" not in err and "Traceback" not in err


# ---- a damaged database ----------------------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_moved_aside_and_the_user_told_how_to_recover(tmp_path):
    (tmp_path / DB_FILE_NAME).write_bytes(b"this is not sqlite" * 100)
    store, requeue = open_store(tmp_path)
    try:
        (aside,) = tmp_path.glob(f"{DB_FILE_NAME}.corrupt-*")
        assert aside.read_bytes() == b"this is not sqlite" * 100, "kept as it was"
        (notice,) = store.notices
        assert str(aside) in notice and ".recover" in notice and "not a database" in notice
    finally:
        store.close()


def test_a_damaged_page_is_found_and_the_file_moved_aside(tmp_path):
    store, _ = open_store(tmp_path)
    for n in range(300):
        store.add_job("txt2img", {"prompt": f"job {n} " + "x" * 500})
    store.close()
    path = tmp_path / DB_FILE_NAME
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(2 * page, len(data), page):  # every page after the schema: garbage headers
        data[offset:offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    store, requeue = open_store(tmp_path)
    try:
        assert requeue == [] and len(list(tmp_path.glob(f"{DB_FILE_NAME}.corrupt-*"))) == 1
        assert "is damaged" in store.notices[0]
    finally:
        store.close()


# ---- a real full disk (a small tmpfs; needs root) ---------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the file system that holds `folder` to the last byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 1):
            try:
                while os.write(fd, b"\0" * size) == size:
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_read_only_file_system_is_not_called_damaged(small_disk):
    store, _ = open_store(small_disk)
    store.add_job("txt2img", {"prompt": "keep me"})
    store.close()
    before = sorted(p.name for p in small_disk.iterdir())
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(StoreError, match=r"^cannot open the database .*sdwebui.db: .*read-only") as error:
        open_store(small_disk, lock_wait=0.5)
    assert not isinstance(error.value, StoreLocked)
    assert sorted(p.name for p in small_disk.iterdir()) == before, "nothing moved aside"


def test_a_real_full_disk(small_disk, tmp_path, tiny_sd1_path):
    """The data folder (database and outputs) on a 4 MB tmpfs, filled to the last byte, then freed."""
    from sdwebui.config import Paths

    models = make_data_dir(tmp_path / "models-root", tiny_sd1_path) / "models"
    paths = Paths.from_flags(data_dir=small_disk / "data", models_dir=models)
    with LiveServer(small_disk / "data", ui=False, paths=paths) as live, live.client() as client:
        live.services.worker.retry_interval = 0.2
        filler = fill(small_disk)
        # Submissions: 503, nothing stored, health says why.
        jobs_before = len(live.services.store.jobs(limit=1000))
        for path in ("/api/v1/jobs", "/sdapi/v1/txt2img"):
            response = client.post(path, json=FAST)
            assert response.status_code == 503, response.text
            assert FULL in response.json()["detail"]
        assert len(live.services.store.jobs(limit=1000)) == jobs_before
        health = client.get("/api/v1/health").json()
        assert health["status"] == "degraded" and FULL in health["reasons"][0] and health["worker_alive"]
        filler.unlink()
        wait_until(lambda: client.get("/api/v1/health").json()["status"] == "ok", timeout=10)

        # The disk fills while a job runs: its images cannot be saved, nor its outcome recorded at first.
        running = client.post("/api/v1/jobs", json={**FAST, "steps": 40, "batch_count": 3, "seed": 1}).json()["id"]
        wait_until(lambda: client.get(f"/api/v1/jobs/{running}").json()["status"] == "running", timeout=120)
        filler = fill(small_disk)
        view = wait_for_job(client, running, timeout=120)
        # A PNG that cannot be written (ENOSPC), or its record (SQLITE_FULL): either way the storage, said so.
        assert view["status"] == "failed", view
        assert "the server's storage failed: No space left on device" in view["error"] or FULL in view["error"]
        assert view["recorded"] is False, "the outcome could not be written: it is kept"
        assert live.services.worker.alive
        health = client.get("/api/v1/health").json()
        assert health["status"] == "degraded" and health["reasons"] == [f"1 finished job(s) not yet recorded: {FULL}"]
        filler.unlink()
        wait_until(lambda: client.get("/api/v1/health").json()["status"] == "ok", timeout=10)
        recorded = live.services.store.job(running)
        assert recorded["status"] == "failed" and recorded["error"] == view["error"]
        response = client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 2})
        assert response.status_code == 200, response.text
