"""The server's SQLite store: jobs (the persistent queue), image history and settings.

One database file in the data directory (`<data-dir>/sdwebui.db`). WAL journal, so readers never wait for the
worker's writes; `PRAGMA user_version` numbers the schema and `MIGRATIONS` brings an older file up to date on
open (each step in one transaction). One connection guarded by a lock: every statement here is short, and a
single connection keeps the write order obvious.

Crash semantics (`open_store` / `Store.recover`): a job found `running` when the store opens was cut short by a
crash or `kill -9`: it becomes `interrupted` with an error saying so (it is not re-run silently: it may have had
side effects, e.g. images already saved). `queued` jobs stay queued and are handed back, in order, to be
re-queued. Nothing is silently lost.

Faults (`StoreUnavailable`): a write that fails because the disk is full, another process holds the write lock
past `busy_timeout`, the file is read-only or the disk fails raises `StoreUnavailable` (transient: the same write
may succeed later) and sets `Store.fault` (the reason, for `/api/v1/health`) until a write succeeds again;
`probe()` tries a small real write. Reads have a connection of their own: in WAL mode they never wait for a
writer, so answering a client never waits on a write stuck behind another process's lock.

Opening (`open_store`): a database another process holds locked is not a corrupt one: after a bounded wait the
open fails with `StoreLocked`, naming the holder when the system says who it is; only a file that is not a
database, or that fails SQLite's integrity check, is moved aside (and the user is told where it is and how to
recover it, `Store.notices`).

Rows are plain dicts; JSON columns (`params`, `progress`, `result`, settings values) are decoded on the way
out. Image records carry their job's status (`job_status`), so history can tell images of an interrupted job.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DB_FILE_NAME = "sdwebui.db"
BUSY_TIMEOUT = 30.0
"""Seconds a write waits for another connection's (or process's) write lock before it fails."""
SQLITE_INT_RANGE = range(-(2**63), 2**63)
"""What an INTEGER column can hold: an id outside it names no row (sqlite3 would raise OverflowError)."""
_PROBE_KEY = "\x00sdwebui-probe"

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


class StoreUnavailable(StoreError):
    """The database cannot be written now (disk full, locked by another process, read-only, I/O error). Nothing
    was written; the same write may succeed later. The message names the reason, never the file's path (it
    reaches API clients)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"the server cannot write its database now ({reason}); try again later")


class StoreLocked(StoreError):
    """Another process holds the database's write lock (at start-up, after a bounded wait)."""


def describe_sqlite_error(error: BaseException) -> str:
    """A short reason for a failed write, in words a user can act on."""
    text = str(error.args[0]) if getattr(error, "args", None) else str(error)
    lower = text.lower()
    if "locked" in lower or "busy" in lower:
        return "the database is locked by another process"
    if "readonly" in lower or "read-only" in lower:
        return "the database file is read-only"
    return text or type(error).__name__


def is_storage_fault(error: BaseException | None) -> bool:
    """A failure of the disk or the database rather than of the job: a full or read-only disk, an I/O error, a
    database that cannot be written now."""
    if error is None:
        return False
    if isinstance(error, (StoreUnavailable, sqlite3.OperationalError)):
        return True
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _is_write_fault(error: BaseException) -> bool:
    # OperationalError: full, locked, read-only, I/O; a bare DatabaseError: a damaged page. Not IntegrityError
    # or ProgrammingError (those are bugs, not faults of the disk).
    return isinstance(error, sqlite3.OperationalError) or type(error) is sqlite3.DatabaseError


class Store:
    def __init__(self, path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT):
        self.path = Path(path)
        in_memory = str(path) == ":memory:"
        if not in_memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = busy_timeout
        self.fault: str | None = None
        """Why the last write failed (None once a write succeeds again)."""
        self.notices: list[str] = []
        """What the user should be told at start-up (a damaged database moved aside)."""
        self._lock = threading.RLock()
        # check_same_thread=False: the locks serialise use from the worker and the request threads.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
        self._db.row_factory = sqlite3.Row
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
                self._db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
            if in_memory:  # one database per connection: reads share the writer's
                self._read_db, self._read_lock = self._db, self._lock
            else:
                self._read_db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                                timeout=busy_timeout)
                self._read_db.row_factory = sqlite3.Row
                self._read_db.execute("PRAGMA query_only=ON")
                self._read_lock = threading.RLock()
        except BaseException:
            self._db.close()
            raise

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
            if self._read_db is not self._db:
                with self._read_lock:
                    self._read_db.close()
            self._db.close()

    def recover(self) -> list[dict]:
        """After a crash: `running` jobs become `interrupted`; return the `queued` jobs in submission order."""
        now = time.time()
        with self._writing(transaction=True) as db:
            db.execute(
                "UPDATE jobs SET status='interrupted', finished=?, "
                "error='the server stopped while this job was running (crash or kill); it was not re-run' "
                "WHERE status='running'",
                (now,),
            )
            rows = db.execute("SELECT * FROM jobs WHERE status='queued' ORDER BY seq").fetchall()
        return [_job(row) for row in rows]

    # ---- faults ---------------------------------------------------------------------------------------------
    @contextmanager
    def _writing(self, *, transaction: bool = False) -> Iterator[sqlite3.Connection]:
        """The write connection, for one statement or (`transaction`) one atomic group. A fault of the disk or
        the database becomes `StoreUnavailable` (and `fault`); success clears `fault`. Waits at most
        `busy_timeout` for the connection, so a write stuck behind another process's lock never queues the
        others for longer than that."""
        if not self._lock.acquire(timeout=self.busy_timeout if self.busy_timeout > 0 else -1):
            raise self._unavailable("the database is busy (another write is waiting for its lock)")
        try:
            try:
                if transaction:
                    self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    if transaction:
                        self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        try:
                            self._db.execute("ROLLBACK")
                        except sqlite3.Error:  # SQLite may have rolled back already (a full disk does)
                            pass
                    raise
            except sqlite3.Error as error:
                if _is_write_fault(error):
                    raise self._unavailable(describe_sqlite_error(error)) from error
                raise
            if self.fault is not None:
                log.warning("the database can be written again (it could not: %s)", self.fault)
                self.fault = None
        finally:
            self._lock.release()

    def _unavailable(self, reason: str) -> StoreUnavailable:
        if self.fault != reason:
            log.error("cannot write the database %s: %s", self.path, reason)
        self.fault = reason
        return StoreUnavailable(reason)

    def probe(self) -> bool:
        """Try a small real write (a row added and removed in one transaction, so the pages reach the disk);
        True when it worked, which also clears `fault`."""
        try:
            with self._writing(transaction=True) as db:
                db.execute("INSERT INTO settings (key, value) VALUES (?, 'null') ON CONFLICT(key) DO NOTHING",
                           (_PROBE_KEY,))
                db.execute("DELETE FROM settings WHERE key=?", (_PROBE_KEY,))
        except StoreUnavailable:
            return False
        return True

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            yield self._read_db

    # ---- jobs -----------------------------------------------------------------------------------------------
    def add_job(self, kind: str, params: Mapping[str, Any], *, job_id: str | None = None) -> dict:
        job_id = job_id or uuid.uuid4().hex
        text = _dumps(params)  # a payload that is not JSON is the caller's error, not the store's
        with self._writing() as db:
            db.execute(
                "INSERT INTO jobs (id, kind, status, params, created) VALUES (?, ?, 'queued', ?, ?)",
                (job_id, kind, text, time.time()),
            )
        return self.job(job_id)

    def job(self, job_id: str) -> dict | None:
        with self._reading() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, *, status: str | Iterable[str] | None = None, limit: int = 100, offset: int = 0,
             newest_first: bool = True) -> list[dict]:
        where, args = "", []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where = f"WHERE status IN ({','.join('?' * len(statuses))})"
            args.extend(statuses)
        order = "DESC" if newest_first else "ASC"
        with self._reading() as db:
            rows = db.execute(
                f"SELECT * FROM jobs {where} ORDER BY seq {order} LIMIT ? OFFSET ?", (*args, limit, offset)
            ).fetchall()
        return [_job(row) for row in rows]

    def start_job(self, job_id: str) -> bool:
        """queued -> running. False when the job is no longer queued (cancelled meanwhile)."""
        with self._writing() as db:
            cursor = db.execute(
                "UPDATE jobs SET status='running', started=? WHERE id=? AND status='queued'", (time.time(), job_id)
            )
        return cursor.rowcount == 1

    def requeue_job(self, job_id: str) -> bool:
        """running -> queued (its worker was lost before it finished: a Ray actor that died); it keeps its place
        (`seq`). False when it is not running."""
        with self._writing() as db:
            cursor = db.execute(
                "UPDATE jobs SET status='queued', started=NULL, progress=NULL WHERE id=? AND status='running'",
                (job_id,))
        return cursor.rowcount == 1

    def cancel_job(self, job_id: str) -> bool:
        """queued -> cancelled. False when it is not queued (already running or finished)."""
        with self._writing() as db:
            cursor = db.execute(
                "UPDATE jobs SET status='cancelled', finished=? WHERE id=? AND status='queued'", (time.time(), job_id)
            )
        return cursor.rowcount == 1

    def set_progress(self, job_id: str, progress: Mapping[str, Any]) -> None:
        """The progress of a running job (a late write never overwrites a finished job's final progress)."""
        with self._writing() as db:
            db.execute("UPDATE jobs SET progress=? WHERE id=? AND status='running'", (_dumps(progress), job_id))

    def finish_job(self, job_id: str, status: str, *, error: str | None = None,
                   result: Mapping[str, Any] | None = None, progress: Mapping[str, Any] | None = None,
                   images: Sequence[Mapping[str, Any]] = ()) -> None:
        """Record a job's outcome, with the records of its saved images that the store could not take while the
        job ran (`images`, `add_image`'s arguments): all in one transaction, their ids filled into the result's
        `images` entries (`{"id": None, "path": ...}`) of the same path."""
        if status not in FINISHED_STATUSES:
            raise ValueError(f"not a final job status: {status!r}")
        with self._writing(transaction=bool(images)) as db:
            ids = {record["path"]: self._insert_image(db, job_id, record) for record in images}
            if ids and result is not None:
                result = {**result, "images": [
                    {**entry, "id": ids.get(entry.get("path"), entry.get("id"))} if isinstance(entry, Mapping)
                    else entry for entry in result.get("images", ())]}
            values = (status, time.time(), error, _dumps(result) if result is not None else None,
                      _dumps(progress) if progress is not None else None, job_id)
            db.execute(
                "UPDATE jobs SET status=?, finished=?, error=?, result=?, progress=COALESCE(?, progress) WHERE id=?",
                values,
            )

    def queue_position(self, job_id: str) -> int | None:
        """0-based position among queued jobs, None when the job is not queued."""
        with self._reading() as db:
            row = db.execute("SELECT seq FROM jobs WHERE id=? AND status='queued'", (job_id,)).fetchone()
            if row is None:
                return None
            return int(db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status='queued' AND seq < ?", (row[0],)
            ).fetchone()[0])

    def count_jobs(self, status: str) -> int:
        with self._reading() as db:
            return int(db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (status,)).fetchone()[0])

    # ---- images ---------------------------------------------------------------------------------------------
    def add_image(self, *, job_id: str | None, path: str, seed: int | None = None, prompt: str = "",
                  negative_prompt: str = "", infotext: str = "", params: Mapping[str, Any] | None = None,
                  model_name: str | None = None, model_hash: str | None = None, width: int | None = None,
                  height: int | None = None) -> int:
        record = {"path": path, "seed": seed, "prompt": prompt, "negative_prompt": negative_prompt,
                  "infotext": infotext, "params": params, "model_name": model_name, "model_hash": model_hash,
                  "width": width, "height": height}
        with self._writing() as db:
            return self._insert_image(db, job_id, record)

    @staticmethod
    def _insert_image(db: sqlite3.Connection, job_id: str | None, record: Mapping[str, Any]) -> int:
        values = (job_id, record["path"], record.get("seed"), record.get("prompt", ""),
                  record.get("negative_prompt", ""), record.get("infotext", ""), _dumps(record.get("params") or {}),
                  record.get("model_name"), record.get("model_hash"), record.get("width"), record.get("height"),
                  record.get("created") or time.time())
        cursor = db.execute(
            "INSERT INTO images (job_id, path, seed, prompt, negative_prompt, infotext, params, model_name, "
            "model_hash, width, height, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
        return int(cursor.lastrowid)

    def image(self, image_id: int) -> dict | None:
        """One image record with its job's status (`job_status`; None when the job's record is gone)."""
        if image_id not in SQLITE_INT_RANGE:
            return None
        with self._reading() as db:
            row = db.execute(f"{_IMAGES_SELECT} WHERE images.id=?", (image_id,)).fetchone()
        return _row(row) if row else None

    def images(self, *, job_id: str | None = None, limit: int = 100, offset: int = 0) -> list[dict]:
        where, args = ("WHERE images.job_id=?", [job_id]) if job_id is not None else ("", [])
        with self._reading() as db:
            rows = db.execute(
                f"{_IMAGES_SELECT} {where} ORDER BY images.id DESC LIMIT ? OFFSET ?", (*args, limit, offset)
            ).fetchall()
        return [_row(row) for row in rows]

    def delete_image(self, image_id: int) -> bool:
        if image_id not in SQLITE_INT_RANGE:
            return False
        with self._writing() as db:
            return db.execute("DELETE FROM images WHERE id=?", (image_id,)).rowcount == 1

    # ---- settings -------------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        with self._reading() as db:
            rows = db.execute("SELECT key, value FROM settings").fetchall()
        return {row["key"]: json.loads(row["value"]) for row in rows if row["key"] != _PROBE_KEY}

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._reading() as db:
            row = db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_settings(self, values: Mapping[str, Any]) -> None:
        """Write several settings atomically."""
        rows = [(key, _dumps(value)) for key, value in values.items()]
        with self._writing(transaction=True) as db:
            db.executemany(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                rows,
            )


_IMAGES_SELECT = "SELECT images.*, jobs.status AS job_status FROM images LEFT JOIN jobs ON jobs.id = images.job_id"


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


def open_store(data_dir: str | Path, *, lock_wait: float = BUSY_TIMEOUT) -> tuple[Store, list[dict]]:
    """Open (or create) the store in `data_dir` and run crash recovery; returns the store and the jobs to
    re-queue.

    - Another process holding the database's write lock (another sdwebui on the same data folder, a backup
      tool, `sqlite3` in a shell): wait up to `lock_wait` seconds, then `StoreLocked` naming the holder when
      the system tells who it is. The file is not touched.
    - A file that is not a database, or one that fails SQLite's integrity check: moved aside
      (`sdwebui.db.corrupt-<time>`, with its WAL files; nothing is deleted) and a new store is started, so a
      damaged file never stops the server; `store.notices` says where the old file is and how to recover it.
    - Anything else (a read-only folder, a full disk): `StoreError` with the reason; nothing is moved.

    `lock_wait` is also the store's `busy_timeout` afterwards."""
    path = Path(data_dir) / DB_FILE_NAME
    try:
        return _open(path, lock_wait)
    except StoreError as error:
        cause = error.__cause__ if isinstance(error, StoreUnavailable) else None
        if cause is None:
            raise
        failure: BaseException = cause
    except sqlite3.DatabaseError as error:
        failure = error
    if _is_locked(failure):
        raise StoreLocked(_locked_message(path, lock_wait)) from None
    damage = _damage(path, failure)
    if damage is None:
        reason = describe_sqlite_error(failure)
        if _read_only(path.parent):
            reason += " (the data folder is on a read-only file system or not writable: point --data-dir elsewhere)"
        raise StoreError(f"cannot open the database {path}: {reason}") from None
    aside = _move_aside(path)
    notice = (
        f"the database {path} is damaged ({damage}); it was moved to {aside} and a new, empty one was started "
        "(the images in the outputs folder are untouched). To get its jobs, history and settings back, stop "
        f"sdwebui and run: sqlite3 '{aside}' .recover > recovered.sql && sqlite3 '{path}.recovered' < "
        f"recovered.sql, then check it and move it to {path}."
    )
    log.error("%s", notice)
    store, recovered = _open(path, lock_wait)
    store.notices.append(notice)
    return store, recovered


def _open(path: Path, lock_wait: float) -> tuple[Store, list[dict]]:
    store = Store(path, busy_timeout=lock_wait)
    try:
        recovered = store.recover()
    except BaseException:
        store.close()
        raise
    return store, recovered


def _is_locked(error: BaseException) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


def _damage(path: Path, error: BaseException) -> str | None:
    """Why the file is damaged, or None when it is not (the open failed for another reason): it is not a
    database, or SQLite's integrity check finds a fault. The check runs on a connection of its own, read-only."""
    text = str(error).lower()
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return describe_sqlite_error(error)
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1) as check:
            rows = [row[0] for row in check.execute("PRAGMA integrity_check(5)").fetchall()]
    except sqlite3.DatabaseError as check_error:
        check_text = str(check_error).lower()
        if "not a database" in check_text or "malformed" in check_text or "corrupt" in check_text:
            return describe_sqlite_error(check_error)
        return None
    if rows and rows != ["ok"]:
        return "integrity check: " + "; ".join(rows)
    return None


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY) or not os.access(folder, os.W_OK)
    except (OSError, AttributeError):
        return False


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(part.with_name(f"{aside.name}{suffix}"))
    return aside


def _locked_message(path: Path, waited: float) -> str:
    holders = lock_holders(path)
    who = f" ({', '.join(holders)})" if holders else ""
    return (f"the database {path} is locked by another process{who}; waited {waited:g} s. Is another sdwebui "
            "using this data folder? Stop it, or start this one with another --data-dir.")


def lock_holders(path: Path) -> list[str]:
    """The other processes that hold a lock on the database or its WAL files, as "pid N (command)", from
    Linux's /proc/locks (best effort: empty elsewhere, or when the system does not say)."""
    try:
        wanted = set()
        for suffix in ("", "-wal", "-shm"):
            part = path.with_name(path.name + suffix)
            if part.exists():
                st = part.stat()
                wanted.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
        pids: list[int] = []
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                fields = line.replace("->", " ").split()
                if len(fields) < 6:
                    continue
                try:
                    pid = int(fields[4])
                    major, minor, inode = fields[5].split(":")
                    key = (int(major, 16), int(minor, 16), int(inode))
                except ValueError:
                    continue
                if key in wanted and pid > 0 and pid != os.getpid() and pid not in pids:
                    pids.append(pid)
        return [f"pid {pid} ({_command(pid)})" for pid in pids]
    except OSError:
        return []


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            words = file.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(" ".join(word.decode(errors="replace").split()) for word in words if word)
    return text[:120] or "?"


__all__ = ["Store", "StoreError", "StoreUnavailable", "StoreLocked", "open_store", "is_storage_fault",
           "describe_sqlite_error", "lock_holders", "DB_FILE_NAME", "JOB_STATUSES", "FINISHED_STATUSES", "MIGRATIONS"]
