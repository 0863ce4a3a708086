"""The server's SQLite store: jobs (the persistent queue), image history and settings.

One database file in the data directory (`<data-dir>/sdwebui.db`). WAL journal, so readers never wait for the
worker's writes; `PRAGMA user_version` numbers the schema and `MIGRATIONS` brings an older file up to date on
open (each step in one transaction). One connection guarded by a lock: every statement here is short, and a
single connection keeps the write order obvious.

Crash semantics (`open_store` / `Store.recover`): a job found `running` when the store opens was cut short by a
crash or `kill -9`: it becomes `interrupted` with an error saying so (it is not re-run silently: it may have had
side effects, e.g. images already saved). `queued` jobs stay queued and are handed back, in order, to be
re-queued. Nothing is silently lost.

Rows are plain dicts; JSON columns (`params`, `progress`, `result`, settings values) are decoded on the way
out.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DB_FILE_NAME = "sdwebui.db"

JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED_STATUSES = frozenset({"done", "failed", "cancelled", "interrupted"})

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, images, settings
    """
    CREATE TABLE jobs (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        id        TEXT NOT NULL UNIQUE,
        kind      TEXT NOT NULL,
        status    TEXT NOT NULL CHECK (status IN ('queued','running','done','failed','cancelled','interrupted')),
        params    TEXT NOT NULL,
        created   REAL NOT NULL,
        started   REAL,
        finished  REAL,
        error     TEXT,
        progress  TEXT,
        result    TEXT
    );
    CREATE INDEX jobs_by_status ON jobs (status, seq);
    CREATE TABLE images (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id           TEXT REFERENCES jobs (id) ON DELETE SET NULL,
        path             TEXT NOT NULL,
        seed             INTEGER,
        prompt           TEXT,
        negative_prompt  TEXT,
        infotext         TEXT,
        params           TEXT,
        model_name       TEXT,
        model_hash       TEXT,
        width            INTEGER,
        height           INTEGER,
        created          REAL NOT NULL
    );
    CREATE INDEX images_by_job ON images (job_id);
    CREATE TABLE settings (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    """,
)
"""Schema steps; `user_version` = how many have been applied. Append, never edit a released step."""

_JSON_COLUMNS = ("params", "progress", "result")


class StoreError(RuntimeError):
    pass


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # check_same_thread=False: the lock serialises use from the worker and the request threads.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()

    # ---- lifecycle ------------------------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this sdwebui ({len(MIGRATIONS)}): "
                "upgrade sdwebui or point --data-dir elsewhere"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits first; the BEGIN..COMMIT inside makes the step atomic with its version.
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def recover(self) -> list[dict]:
        """After a crash: `running` jobs become `interrupted`; return the `queued` jobs in submission order."""
        now = time.time()
        with self._lock, self._transaction():
            self._db.execute(
                "UPDATE jobs SET status='interrupted', finished=?, "
                "error='the server stopped while this job was running (crash or kill); it was not re-run' "
                "WHERE status='running'",
                (now,),
            )
            rows = self._db.execute("SELECT * FROM jobs WHERE status='queued' ORDER BY seq").fetchall()
        return [_job(row) for row in rows]

    # ---- jobs -----------------------------------------------------------------------------------------------
    def add_job(self, kind: str, params: Mapping[str, Any], *, job_id: str | None = None) -> dict:
        job_id = job_id or uuid.uuid4().hex
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, status, params, created) VALUES (?, ?, 'queued', ?, ?)",
                (job_id, kind, _dumps(params), time.time()),
            )
        return self.job(job_id)

    def job(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, *, status: str | Iterable[str] | None = None, limit: int = 100, offset: int = 0,
             newest_first: bool = True) -> list[dict]:
        where, args = "", []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where = f"WHERE status IN ({','.join('?' * len(statuses))})"
            args.extend(statuses)
        order = "DESC" if newest_first else "ASC"
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY seq {order} LIMIT ? OFFSET ?", (*args, limit, offset)
            ).fetchall()
        return [_job(row) for row in rows]

    def start_job(self, job_id: str) -> bool:
        """queued -> running. False when the job is no longer queued (cancelled meanwhile)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status='running', started=? WHERE id=? AND status='queued'", (time.time(), job_id)
            )
        return cursor.rowcount == 1

    def cancel_job(self, job_id: str) -> bool:
        """queued -> cancelled. False when it is not queued (already running or finished)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status='cancelled', finished=? WHERE id=? AND status='queued'", (time.time(), job_id)
            )
        return cursor.rowcount == 1

    def set_progress(self, job_id: str, progress: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET progress=? WHERE id=?", (_dumps(progress), job_id))

    def finish_job(self, job_id: str, status: str, *, error: str | None = None,
                   result: Mapping[str, Any] | None = None, progress: Mapping[str, Any] | None = None) -> None:
        if status not in FINISHED_STATUSES:
            raise ValueError(f"not a final job status: {status!r}")
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status=?, finished=?, error=?, result=?, progress=COALESCE(?, progress) WHERE id=?",
                (status, time.time(), error, _dumps(result) if result is not None else None,
                 _dumps(progress) if progress is not None else None, job_id),
            )

    def queue_position(self, job_id: str) -> int | None:
        """0-based position among queued jobs, None when the job is not queued."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM jobs WHERE id=? AND status='queued'", (job_id,)).fetchone()
            if row is None:
                return None
            return int(self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status='queued' AND seq < ?", (row[0],)
            ).fetchone()[0])

    def count_jobs(self, status: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (status,)).fetchone()[0])

    # ---- images ---------------------------------------------------------------------------------------------
    def add_image(self, *, job_id: str | None, path: str, seed: int | None = None, prompt: str = "",
                  negative_prompt: str = "", infotext: str = "", params: Mapping[str, Any] | None = None,
                  model_name: str | None = None, model_hash: str | None = None, width: int | None = None,
                  height: int | None = None) -> int:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO images (job_id, path, seed, prompt, negative_prompt, infotext, params, model_name, "
                "model_hash, width, height, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, path, seed, prompt, negative_prompt, infotext, _dumps(params or {}), model_name,
                 model_hash, width, height, time.time()),
            )
        return int(cursor.lastrowid)

    def image(self, image_id: int) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM images WHERE id=?", (image_id,)).fetchone()
        return _row(row) if row else None

    def images(self, *, job_id: str | None = None, limit: int = 100, offset: int = 0) -> list[dict]:
        where, args = ("WHERE job_id=?", [job_id]) if job_id is not None else ("", [])
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM images {where} ORDER BY id DESC LIMIT ? OFFSET ?", (*args, limit, offset)
            ).fetchall()
        return [_row(row) for row in rows]

    def delete_image(self, image_id: int) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM images WHERE id=?", (image_id,)).rowcount == 1

    # ---- settings -------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM settings").fetchall()
        return {row["key"]: json.loads(row["value"]) for row in rows}

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_settings(self, values: Mapping[str, Any]) -> None:
        """Write several settings atomically."""
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                [(key, _dumps(value)) for key, value in values.items()],
            )

    # ---- helpers --------------------------------------------------------------------------------------------
    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _row(row: sqlite3.Row) -> dict:
    out = dict(row)
    for column in _JSON_COLUMNS:
        if out.get(column) is not None:
            out[column] = json.loads(out[column])
    return out


def _job(row: sqlite3.Row) -> dict:
    return _row(row)


def open_store(data_dir: str | Path) -> tuple[Store, list[dict]]:
    """Open (or create) the store in `data_dir` and run crash recovery; returns the store and the jobs to
    re-queue.

    A file that is not a readable SQLite database is moved aside (`sdwebui.db.corrupt-<time>`, with its WAL
    files) and a fresh store is created, so a damaged file never stops the server from starting."""
    path = Path(data_dir) / DB_FILE_NAME
    try:
        store = Store(path)
        return store, store.recover()
    except sqlite3.DatabaseError as error:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            part = path.with_name(path.name + suffix)
            if part.exists():
                part.rename(part.with_name(f"{path.name}.corrupt-{stamp}{suffix}"))
        log.error("%s is not a readable database (%s); moved it aside and started a new one", path, error)
        store = Store(path)
    return store, store.recover()


__all__ = ["Store", "StoreError", "open_store", "DB_FILE_NAME", "JOB_STATUSES", "FINISHED_STATUSES", "MIGRATIONS"]
