"""The SQLite store against a real file: schema, jobs, images, settings, and crash recovery."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from sdwebui.server.store import DB_FILE_NAME, MIGRATIONS, Store, StoreError, open_store


def test_new_store_is_wal_with_current_schema(tmp_path):
    store, requeue = open_store(tmp_path)
    assert requeue == []
    assert store.schema_version == len(MIGRATIONS)
    with sqlite3.connect(tmp_path / DB_FILE_NAME) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "images", "settings"} <= tables
    store.close()


def test_job_lifecycle_and_order(tmp_path):
    store = Store(tmp_path / DB_FILE_NAME)
    first = store.add_job("txt2img", {"prompt": "a", "steps": 2})
    second = store.add_job("txt2img", {"prompt": "b"})
    assert first["status"] == "queued" and first["params"] == {"prompt": "a", "steps": 2}
    assert store.queue_position(second["id"]) == 1
    assert store.start_job(first["id"])
    assert not store.start_job(first["id"]), "a running job cannot be started twice"
    assert not store.cancel_job(first["id"]), "cancel only applies to queued jobs"
    assert store.queue_position(second["id"]) == 0
    store.set_progress(first["id"], {"step": 1, "total": 2})
    store.finish_job(first["id"], "done", result={"seeds": [1]})
    job = store.job(first["id"])
    assert job["status"] == "done" and job["result"] == {"seeds": [1]} and job["progress"]["step"] == 1
    assert job["started"] <= job["finished"]
    assert store.cancel_job(second["id"])
    assert store.job(second["id"])["status"] == "cancelled"
    assert [j["id"] for j in store.jobs(newest_first=False)] == [first["id"], second["id"]]
    assert [j["id"] for j in store.jobs(status="cancelled")] == [second["id"]]
    with pytest.raises(ValueError):
        store.finish_job(first["id"], "running")
    store.close()


def test_images_and_settings_persist(tmp_path):
    store = Store(tmp_path / DB_FILE_NAME)
    job = store.add_job("txt2img", {})
    image_id = store.add_image(job_id=job["id"], path="txt2img-images/x.png", seed=5, prompt="p",
                               infotext="p\nSteps: 2", params={"steps": 2}, model_hash="abc", width=64, height=64)
    store.set_settings({"sd_model_checkpoint": "tiny [abc]", "show_progress_every_n_steps": 3})
    store.close()

    store = Store(tmp_path / DB_FILE_NAME)
    image = store.image(image_id)
    assert image["seed"] == 5 and image["params"] == {"steps": 2} and image["job_id"] == job["id"]
    assert [i["id"] for i in store.images(job_id=job["id"])] == [image_id]
    assert store.settings() == {"sd_model_checkpoint": "tiny [abc]", "show_progress_every_n_steps": 3}
    assert store.get_setting("missing", 7) == 7
    assert store.delete_image(image_id) and store.image(image_id) is None
    store.close()


def test_crash_leaves_running_interrupted_and_requeues_queued(tmp_path):
    """A separate process writes a running and two queued jobs, then dies with os._exit (no close, no commit
    hooks): the next open marks the running job interrupted and hands the queued ones back in order."""
    script = textwrap.dedent(f"""
        import os
        from sdwebui.server.store import Store
        store = Store({str(tmp_path / DB_FILE_NAME)!r})
        running = store.add_job("txt2img", {{"prompt": "running"}}, job_id="j1")
        store.add_job("txt2img", {{"prompt": "q1"}}, job_id="j2")
        store.add_job("txt2img", {{"prompt": "q2"}}, job_id="j3")
        store.start_job("j1")
        os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr

    store, requeue = open_store(tmp_path)
    assert [job["id"] for job in requeue] == ["j2", "j3"]
    assert [job["params"]["prompt"] for job in requeue] == ["q1", "q2"]
    interrupted = store.job("j1")
    assert interrupted["status"] == "interrupted" and "not re-run" in interrupted["error"]
    store.close()
    # Recovery is idempotent: opening again changes nothing.
    store, again = open_store(tmp_path)
    assert [job["id"] for job in again] == ["j2", "j3"] and store.job("j1")["status"] == "interrupted"
    store.close()


def test_corrupt_database_is_moved_aside(tmp_path):
    (tmp_path / DB_FILE_NAME).write_bytes(b"this is not sqlite" * 100)
    store, requeue = open_store(tmp_path)
    assert requeue == [] and store.schema_version == len(MIGRATIONS)
    assert len(list(tmp_path.glob(f"{DB_FILE_NAME}.corrupt-*"))) == 1
    store.close()


def test_newer_schema_is_refused(tmp_path):
    with sqlite3.connect(tmp_path / DB_FILE_NAME) as raw:
        raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path / DB_FILE_NAME)
