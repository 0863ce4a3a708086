"""The job queue and its workers: jobs run one at a time per device, in submission order.

- `JobQueue` is the in-memory view of the store's `queued` jobs (the store is the truth: a job is written
  there before anyone hears its id, and re-queued from there after a restart). Any thread may submit, cancel or
  look a job up; workers `take()` the next job (a job is claimed under the queue lock and marked `running` in
  the store in the same step, so two workers never claim the same job and a cancel never races a start).
- `Worker` is a thread per device. It runs the job's kind through a runner (`runners[kind](job)`), records
  the outcome, and goes on whatever happened: an exception fails that job alone; an out-of-memory error
  (`torch.cuda.OutOfMemoryError` or an allocator's "out of memory") also calls `on_out_of_memory` (the app
  unloads the model and releases the freed memory) before the next job.
- `JobHandle` is a job while it is queued or running: its stop flags (interrupt / skip), live progress with
  an ETA and a preview image every N steps, and, once finished, its result and the images in memory (the
  A1111 routes answer with them even when nothing is saved to disk). Async and sync callers can wait on it.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sdwebui.core.errors import ParamError
from sdwebui.server.store import Store

log = logging.getLogger(__name__)

Runner = Callable[["JobHandle"], dict]
"""Runs one job; returns its JSON-able result. May set `job.images` / `job.interrupted` / `job.status_hint`."""
PayloadLoader = Callable[[str, Mapping[str, Any]], Any]
"""(kind, stored JSON) -> the payload as its type (`server.payloads.load_payload`)."""


class QueueFull(RuntimeError):
    pass


@dataclass
class Progress:
    """Live progress of a running job, in A1111's terms (job_no / job_count = batch, sampling_step / steps)."""

    started: float | None = None
    step: int = 0
    total_steps: int = 0
    batch_index: int = 0
    batch_count: int = 1
    preview_png: bytes | None = None
    preview_step: int = 0
    """Global step (across batches) the preview was made at; 0 = none yet."""
    textinfo: str | None = None

    @property
    def fraction(self) -> float:
        if self.total_steps <= 0:
            return 0.0
        return min(1.0, (self.batch_index + self.step / self.total_steps) / max(1, self.batch_count))

    @property
    def global_step(self) -> int:
        return self.batch_index * self.total_steps + self.step

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left, extrapolated from the time spent so far (None before the first step)."""
        fraction = self.fraction
        if self.started is None or fraction <= 0:
            return None
        elapsed = (now or time.time()) - self.started
        return max(0.0, elapsed / fraction - elapsed)

    def as_dict(self) -> dict:
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "batch_index": self.batch_index,
            "batch_count": self.batch_count,
            "fraction": round(self.fraction, 4),
            "eta": None if self.eta() is None else round(self.eta(), 3),
            "preview_step": self.preview_step,
        }


@dataclass
class JobHandle:
    id: str
    kind: str
    payload: Any
    """The job's typed payload (`server.payloads`), or a dict for kinds that have no type (tests' own)."""
    created: float = field(default_factory=time.time)
    status: str = "queued"
    stop: Any = None
    """`sdwebui.pipelines.context.StopFlags`, made when the job starts (that module imports torch, which the
    server only loads once there is work)."""
    progress: Progress = field(default_factory=Progress)
    result: dict | None = None
    error: str | None = None
    exception: BaseException | None = None
    """What a failed job raised (for in-process callers such as the CLI, which report it as they would their own)."""
    images: list = field(default_factory=list)
    """PIL images of a finished job (kept in memory for the request that waits for it)."""
    interrupted: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    _waiters: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def interrupt(self) -> bool:
        if self.stop is None:
            return False
        self.stop.interrupt()
        return True

    def skip(self) -> bool:
        if self.stop is None:
            return False
        self.stop.skip()
        return True

    # ---- waiting --------------------------------------------------------------------------------------------
    async def wait(self) -> "JobHandle":
        """Wait without blocking the event loop (no thread is parked per waiting request)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self.finished.is_set():
                return self
            self._waiters.append((loop, future))
        await future
        return self

    def wait_sync(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def _finish(self) -> None:
        with self._lock:
            self.finished.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed: its request is gone
                pass

    # ---- progress (called from the worker thread) ---------------------------------------------------------
    def report_step(self, step: int, total_steps: int, batch_index: int, batch_count: int,
                    preview: Callable[[], bytes | None] | None = None) -> None:
        p = self.progress
        p.step, p.total_steps, p.batch_index, p.batch_count = step, total_steps, batch_index, batch_count
        if preview is not None:
            png = preview()
            if png is not None:
                p.preview_png, p.preview_step = png, p.global_step


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class JobQueue:
    """Queued jobs in submission order, backed by the store."""

    def __init__(self, store: Store, *, max_size: int | Callable[[], int] = 1000,
                 load_payload: PayloadLoader | None = None):
        self.store = store
        self._max_size = max_size
        self._load_payload = load_payload
        self._pending: collections.OrderedDict[str, JobHandle] = collections.OrderedDict()
        self._running: dict[str, JobHandle] = {}
        self._cond = threading.Condition()
        self._closed = False

    @property
    def max_size(self) -> int:
        return self._max_size() if callable(self._max_size) else self._max_size

    def submit(self, kind: str, payload: Any) -> JobHandle:
        """Store and queue a job; `payload` is a typed payload (with `to_json`) or a JSON-able dict."""
        stored = payload.to_json() if hasattr(payload, "to_json") else dict(payload)
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._pending) >= self.max_size:
                raise QueueFull(f"the queue is full ({len(self._pending)} jobs waiting)")
            row = self.store.add_job(kind, stored)
            handle = JobHandle(row["id"], kind, payload if hasattr(payload, "to_json") else stored,
                               created=row["created"])
            self._pending[handle.id] = handle
            self._cond.notify()
        return handle

    def restore(self, rows: list[dict]) -> list[JobHandle]:
        """Re-queue jobs the store handed back after a restart (upgrading payloads an older version stored).
        Their original requesters are gone, so their images are always saved (the only way anyone will see
        them). A payload that cannot be read fails its job, with the reason; the others are re-queued."""
        handles = []
        with self._cond:
            for row in rows:
                try:
                    payload = self._recovered_payload(row["kind"], row["params"])
                except Exception as error:  # noqa: BLE001 - one unreadable job must not stop the start-up
                    log.error("cannot re-queue job %s: %s", row["id"], error)
                    self.store.finish_job(row["id"], "failed", error=f"cannot read the stored job: {error}")
                    continue
                handle = JobHandle(row["id"], row["kind"], payload, created=row["created"])
                self._pending[handle.id] = handle
                handles.append(handle)
            self._cond.notify_all()
        return handles

    def _recovered_payload(self, kind: str, stored: Mapping[str, Any]) -> Any:
        payload = self._load_payload(kind, stored) if self._load_payload is not None else dict(stored)
        if hasattr(payload, "recovered"):
            return payload.recovered()
        return {**payload, "save_images": True, "recovered": True}

    def take(self, timeout: float | None = None) -> JobHandle | None:
        """The next job, marked running (None on timeout or when closed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                while self._pending:
                    job_id, handle = self._pending.popitem(last=False)
                    if self.store.start_job(job_id):
                        from sdwebui.pipelines.context import StopFlags

                        handle.stop = StopFlags()
                        handle.status = "running"
                        handle.progress.started = time.time()
                        self._running[job_id] = handle
                        return handle
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def done(self, handle: JobHandle) -> None:
        with self._cond:
            self._running.pop(handle.id, None)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job; False when it is not queued (running jobs are interrupted instead)."""
        with self._cond:
            handle = self._pending.pop(job_id, None)
            if handle is None:
                return False
            self.store.cancel_job(job_id)
            handle.status = "cancelled"
            handle.error = "cancelled before it started"
        handle._finish()
        return True

    def get(self, job_id: str) -> JobHandle | None:
        with self._cond:
            return self._pending.get(job_id) or self._running.get(job_id)

    def running(self) -> list[JobHandle]:
        with self._cond:
            return list(self._running.values())

    def pending(self) -> list[JobHandle]:
        with self._cond:
            return list(self._pending.values())

    def position(self, job_id: str) -> int | None:
        with self._cond:
            for index, key in enumerate(self._pending):
                if key == job_id:
                    return index
        return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def is_out_of_memory(error: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or another backend's allocator failure (MPS, ROCm, CPU)."""
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(error, (RuntimeError, MemoryError)) and (
        isinstance(error, MemoryError) or "out of memory" in str(error).lower()
    )


class Worker:
    """One thread per device running queued jobs in order."""

    def __init__(
        self,
        queue: JobQueue,
        runners: Mapping[str, Runner],
        *,
        name: str = "worker",
        on_out_of_memory: Callable[[], None] | None = None,
        warmup: Callable[[], None] | None = None,
        progress_interval: float = 1.0,
    ):
        self.queue = queue
        self.store = queue.store
        self.runners = dict(runners)
        self.name = name
        self.on_out_of_memory = on_out_of_memory
        self.warmup = warmup
        self.progress_interval = progress_interval
        self.current: JobHandle | None = None
        self.last_finished: JobHandle | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, kind: str, runner: Runner) -> None:
        self.runners[kind] = runner

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"sdwebui-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current job; the running job is interrupted (it keeps what it made so far)."""
        self._stopping.set()
        self.queue.close()
        current = self.current
        if current is not None:
            current.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        if self.warmup is not None:
            try:
                self.warmup()
            except Exception:  # noqa: BLE001 - a failed warm-up only costs time later
                log.exception("warm-up failed")
        while not self._stopping.is_set():
            job = self.queue.take(timeout=0.5)
            if job is None:
                continue
            self.current = job
            try:
                self._run(job)
            finally:
                self.current = None
                self.last_finished = job
                self.queue.done(job)
                job._finish()

    def _run(self, job: JobHandle) -> None:
        runner = self.runners.get(job.kind)
        status, error, result = "failed", None, None
        try:
            if runner is None:
                raise LookupError(f"unknown job kind {job.kind!r}")
            result = runner(job)
            status = "interrupted" if job.interrupted else "done"
        except Exception as exc:  # noqa: BLE001 - a job fails alone; the worker goes on
            error = describe_failure(exc)
            job.exception = exc
            if is_out_of_memory(exc):
                error = f"out of memory: {exc}".strip()
                log.error("job %s ran out of memory; releasing models", job.id)
                if self.on_out_of_memory is not None:
                    try:
                        self.on_out_of_memory()
                    except Exception:  # noqa: BLE001
                        log.exception("releasing memory after an out-of-memory error failed")
            else:
                log.error("job %s failed:\n%s", job.id, "".join(traceback.format_exception(exc)))
        job.status, job.error, job.result = status, error, result
        try:
            self.store.finish_job(job.id, status, error=error, result=result, progress=job.progress.as_dict())
        except Exception:  # noqa: BLE001 - e.g. a result that is not JSON: keep the worker alive
            log.exception("could not record the outcome of job %s", job.id)
            self.store.finish_job(job.id, "failed", error="internal error while recording the result")
            job.status = "failed"

    def progress_saver(self, job: JobHandle) -> Callable[[], None]:
        """A callable for runners: writes the job's progress to the store at most every `progress_interval`."""
        last = [0.0]

        def save() -> None:
            now = time.monotonic()
            if now - last[0] >= self.progress_interval:
                last[0] = now
                try:
                    self.store.set_progress(job.id, job.progress.as_dict())
                except Exception:  # noqa: BLE001 - progress is best effort
                    log.debug("could not save progress", exc_info=True)

        return save


def describe_failure(error: BaseException) -> str:
    """One line for the job record and API responses: the message of errors meant for users, the type and
    message otherwise (the traceback goes to the log, never to a client)."""
    if isinstance(error, ParamError):
        return str(error)
    name = type(error).__name__
    text = str(error.args[0]) if isinstance(error, LookupError) and error.args else str(error)
    return f"{name}: {text}" if text else name


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["JobQueue", "JobHandle", "Worker", "Progress", "QueueFull", "is_out_of_memory", "describe_failure"]
