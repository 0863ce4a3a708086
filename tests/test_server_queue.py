"""The job queue and worker with stand-in runners (no model): order, cancel, restore, failures, OOM, threads."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from sdwebui.server.queue import JobHandle, JobQueue, Progress, QueueFull, Worker, is_out_of_memory
from sdwebui.server.store import DB_FILE_NAME, Store, open_store


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / DB_FILE_NAME)
    yield store
    store.close()


def start_worker(queue, runners, **kwargs):
    worker = Worker(queue, runners, **kwargs)
    worker.start()
    return worker


def test_jobs_run_in_submission_order_and_results_are_stored(store):
    ran = []
    queue = JobQueue(store)
    handles = [queue.submit("echo", {"n": n}) for n in range(5)]
    assert [queue.position(h.id) for h in handles] == [0, 1, 2, 3, 4]
    worker = start_worker(queue, {"echo": lambda job: ran.append(job.payload["n"]) or {"n": job.payload["n"]}})
    try:
        for handle in handles:
            assert handle.wait_sync(10)
    finally:
        worker.stop()
    assert ran == [0, 1, 2, 3, 4]
    assert [store.job(h.id)["result"] for h in handles] == [{"n": n} for n in range(5)]
    assert all(store.job(h.id)["status"] == "done" for h in handles)


def test_a_failing_job_fails_alone(store):
    def runner(job):
        if job.payload["fail"]:
            raise ValueError("bad luck")
        return {"ok": True}

    queue = JobQueue(store)
    bad = queue.submit("job", {"fail": True})
    good = queue.submit("job", {"fail": False})
    unknown = queue.submit("nonexistent-kind", {})
    worker = start_worker(queue, {"job": runner})
    try:
        for handle in (bad, good, unknown):
            assert handle.wait_sync(10)
        assert worker.alive
    finally:
        worker.stop()
    assert store.job(bad.id)["status"] == "failed" and store.job(bad.id)["error"] == "ValueError: bad luck"
    assert store.job(good.id)["status"] == "done"
    assert store.job(unknown.id)["status"] == "failed" and "unknown job kind" in store.job(unknown.id)["error"]


def test_out_of_memory_releases_memory_and_the_worker_goes_on(store):
    released = []

    def runner(job):
        if job.payload.get("oom"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {}

    queue = JobQueue(store)
    oom = queue.submit("gen", {"oom": True})
    after = queue.submit("gen", {})
    worker = start_worker(queue, {"gen": runner}, on_out_of_memory=lambda: released.append(True))
    try:
        assert oom.wait_sync(10) and after.wait_sync(10)
    finally:
        worker.stop()
    assert released == [True]
    assert store.job(oom.id)["status"] == "failed" and store.job(oom.id)["error"].startswith("out of memory")
    assert store.job(after.id)["status"] == "done"
    assert is_out_of_memory(RuntimeError("MPS backend out of memory")) and not is_out_of_memory(ValueError("x"))


def test_cancel_queued_job_never_runs(store):
    gate = threading.Event()
    ran = []

    def runner(job):
        ran.append(job.id)
        gate.wait(10)
        return {}

    queue = JobQueue(store)
    first = queue.submit("job", {})
    second = queue.submit("job", {})
    worker = start_worker(queue, {"job": runner})
    try:
        deadline = time.monotonic() + 10
        while first.status != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queue.cancel(second.id)
        assert not queue.cancel(first.id), "a running job is interrupted, not cancelled"
        assert second.finished.is_set() and second.status == "cancelled"
        gate.set()
        assert first.wait_sync(10)
    finally:
        worker.stop()
    assert ran == [first.id]
    assert store.job(second.id)["status"] == "cancelled" and store.job(second.id)["started"] is None


def test_queue_limit(store):
    queue = JobQueue(store, max_size=2)
    queue.submit("job", {})
    queue.submit("job", {})
    with pytest.raises(QueueFull):
        queue.submit("job", {})


def test_many_threads_submitting_get_every_job_run_once(store):
    ran = []
    lock = threading.Lock()

    def runner(job):
        with lock:
            ran.append(job.payload["tag"])
        return {}

    queue = JobQueue(store)
    workers = [start_worker(queue, {"job": runner}, name=f"w{i}") for i in range(2)]
    handles = []

    def client(c):
        for i in range(10):
            handles.append(queue.submit("job", {"tag": f"{c}-{i}"}))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        for handle in handles:
            assert handle.wait_sync(10)
    finally:
        for worker in workers:
            worker.stop()
    assert sorted(ran) == sorted(f"{c}-{i}" for c in range(4) for i in range(10))
    assert store.count_jobs("done") == 40


def test_restore_after_crash_requeues_with_saving_on(tmp_path):
    store = Store(tmp_path / DB_FILE_NAME)
    queue = JobQueue(store)
    crashed = queue.submit("job", {"n": 0, "save_images": False})
    waiting = queue.submit("job", {"n": 1, "save_images": False})
    assert queue.take(timeout=1).id == crashed.id  # claimed, marked running... then the process dies
    store.close()

    store, rows = open_store(tmp_path)
    queue = JobQueue(store)
    restored = queue.restore(rows)
    assert [h.id for h in restored] == [waiting.id]
    assert restored[0].payload == {"n": 1, "save_images": True, "recovered": True}
    assert store.job(crashed.id)["status"] == "interrupted"
    seen = []
    worker = start_worker(queue, {"job": lambda job: seen.append(job.id) or {}})
    try:
        assert restored[0].wait_sync(10)
    finally:
        worker.stop()
    assert seen == [waiting.id] and store.job(waiting.id)["status"] == "done"
    store.close()


async def _wait(handle):
    return await handle.wait()


def test_async_wait_and_progress_eta(store):
    import asyncio

    queue = JobQueue(store)
    handle = queue.submit("job", {})

    def runner(job):
        job.report_step(1, 4, 0, 2)
        assert 0.1 < job.progress.fraction < 0.2
        return {}

    worker = start_worker(queue, {"job": runner})
    try:
        done = asyncio.run(asyncio.wait_for(_wait(handle), 10))
    finally:
        worker.stop()
    assert done.status == "done"
    progress = Progress(started=time.time() - 10, step=5, total_steps=10, batch_index=0, batch_count=1)
    assert progress.eta() == pytest.approx(10, abs=0.5)


def _steady_job(start: float, load_seconds: float, step_seconds: float, steps: int, batches: int,
                decode_seconds: float):
    """(time, ETA after that step) for a job whose first step waits for the model to load and whose batches end
    with a VAE decode: the times a real job reports its steps at."""
    handle = JobHandle(id="j", kind="job", payload={})
    handle.progress.started = start
    now, etas = start + load_seconds, []
    for batch in range(batches):
        for step in range(1, steps + 1):
            now += step_seconds
            handle.report_step(step, steps, batch, batches, now=now)
            etas.append((now, handle.progress.eta(now)))
        now += decode_seconds
    return etas


def test_eta_follows_the_recent_steps_not_the_model_load():
    """A job that waited 20 s for its model and then makes a step every 0.5 s: once a few steps are done, the ETA
    is the steps left at the recent pace, not the load time extrapolated over the whole job."""
    etas = _steady_job(start=1000.0, load_seconds=20, step_seconds=0.5, steps=20, batches=2, decode_seconds=0)
    now, eta = etas[9]  # 10 of 40 steps done
    assert eta == pytest.approx(30 * 0.5, rel=0.15)
    assert etas[-1][1] == 0


def test_eta_does_not_jump_at_a_batch_boundary():
    """A 2 s decode between batches of 0.5 s steps: from one step to the next the ETA differs from a plain
    countdown by less than 2 s (the average since the start moved it by 7.8 s), and it barely goes up."""
    etas = _steady_job(start=1000.0, load_seconds=2, step_seconds=0.5, steps=20, batches=3, decode_seconds=2)
    later = etas[5:]
    assert all(b <= a + 0.75 for (_, a), (_, b) in zip(later, later[1:])), later
    assert max(abs(b - (a - (tb - ta))) for (ta, a), (tb, b) in zip(later, later[1:])) < 2.0, later


def test_eta_between_steps_counts_down():
    handle = JobHandle(id="j", kind="job", payload={})
    handle.progress.started = 0.0
    for step in range(1, 11):
        handle.report_step(step, 20, 0, 1, now=float(step))
    assert handle.progress.eta(10.0) == pytest.approx(10.0, rel=0.1)
    assert handle.progress.eta(13.0) == pytest.approx(7.0, rel=0.15)
