"""The job queue and its workers: jobs run one at a time per device, in submission order.

- `JobQueue` is the in-memory view of the store's `queued` jobs (the store is the truth: a job is written
  there before anyone hears its id, and re-queued from there after a restart). Any thread may submit, cancel or
  look a job up; workers `take()` the next job (a job is claimed under the queue lock and marked `running` in
  the store in the same step, so two workers never claim the same job and a cancel never races a start).
- `Worker` is a thread per device. It runs the job's kind through a runner (`runners[kind](job)`), records
  the outcome, and goes on whatever happened: an exception fails that job alone; an out-of-memory error
  (`torch.cuda.OutOfMemoryError` or an allocator's "out of memory") also calls `on_out_of_memory` (the app
  unloads the model and releases the freed memory) before the next job. The thread survives any exception,
  the store's included: when the database cannot be written (full disk, another process's lock) the job's
  outcome is kept in memory and written when the store can take it again, a job that cannot be started stays
  queued and is tried again, and `fault` says why the worker cannot make progress meanwhile (the health
  route reports it). Progress goes to the store from a thread of its own, at a bounded rate, so neither the
  worker nor a request ever waits on a progress write.
- `JobHandle` is a job while it is queued or running: its stop flags (interrupt / skip), live progress with
  an ETA and a preview image every N steps, and, once finished, its result and the images in memory (the
  A1111 routes answer with them even when nothing is saved to disk). Async and sync callers can wait on it.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sdwebui.core.errors import ParamError
from sdwebui.server.store import Store, StoreUnavailable, describe_sqlite_error, is_storage_fault

log = logging.getLogger(__name__)

Runner = Callable[["JobHandle"], dict]
"""Runs one job; returns its JSON-able result. May set `job.images` / `job.interrupted` / `job.status_hint`."""
PayloadLoader = Callable[[str, Mapping[str, Any]], Any]
"""(kind, stored JSON) -> the payload as its type (`server.payloads.load_payload`)."""


ETA_WINDOW_STEPS, ETA_MAX_WINDOW_STEPS = 10, 150
"""The ETA follows the pace of the recent steps (a batch's worth, at least 10, at most 150): the first step also
waited for the model and the text encoder, and each batch ends with a VAE decode, so the average since the start
overestimates at first and jumps at each batch."""
ETA_EASING = 0.3
"""How much of a new estimate the ETA takes at each step."""


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
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=ETA_MAX_WINDOW_STEPS + 1))
    """(time, fraction) at the job's last steps: the pace the ETA extrapolates."""
    estimate: tuple[float, float] | None = None
    """(seconds left, the time it was estimated at), made at each step once two steps are done."""

    @property
    def fraction(self) -> float:
        if self.total_steps <= 0:
            return 0.0
        return min(1.0, (self.batch_index + self.step / self.total_steps) / max(1, self.batch_count))

    @property
    def global_step(self) -> int:
        return self.batch_index * self.total_steps + self.step

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left (None before the first step): the smoothed estimate made at the last step, less the time
        since; from the time spent since the start until two steps are done."""
        fraction = self.fraction
        if self.started is None or fraction <= 0:
            return None
        now = time.time() if now is None else now
        if fraction >= 1:
            return 0.0
        if self.estimate is not None:
            left, at = self.estimate
            return max(0.0, left - (now - at))
        elapsed = now - self.started
        return max(0.0, elapsed / fraction - elapsed)

    def mark_step(self, now: float) -> None:
        """Record a step's time and update the estimate: the work left at the pace of the last batch of steps
        (so a batch's VAE decode is counted once per batch, not when it happens), eased in so that learning
        the decode's cost moves the ETA over a few steps instead of at once."""
        self.recent.append((now, self.fraction))
        window = list(self.recent)[-(max(ETA_WINDOW_STEPS, self.total_steps) + 1):]
        (first_time, first_fraction), (last_time, last_fraction) = window[0], window[-1]
        if last_fraction <= first_fraction or last_time <= first_time:
            return
        pace = (last_time - first_time) / (last_fraction - first_fraction)  # seconds per unit of work
        estimate = (1 - last_fraction) * pace
        if self.estimate is not None:
            left, at = self.estimate
            estimate = ETA_EASING * estimate + (1 - ETA_EASING) * max(0.0, left - (now - at))
        self.estimate = (estimate, now)

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
    unrecorded_images: list = field(default_factory=list)
    """Records (`Store.add_image`'s arguments) of images saved while the store could not take them: written with
    the job's outcome (`Outcome.images`)."""
    interrupted: bool = False
    defer_image_records: bool = False
    """Keep image records with the job (`unrecorded_images`) instead of writing each to the store: a job run on a
    Ray worker (`server.cluster`), whose records reach the API node's store with its outcome, once."""
    attempts: int = 0
    """Times the job was handed to a worker that was lost before it finished (Ray: `server.cluster`)."""
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
                    preview: Callable[[], bytes | None] | None = None, *, now: float | None = None) -> None:
        p = self.progress
        p.step, p.total_steps, p.batch_index, p.batch_count = step, total_steps, batch_index, batch_count
        p.mark_step(time.time() if now is None else now)
        if preview is not None:
            png = preview()
            if png is not None:
                p.preview_png, p.preview_step = png, p.global_step


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class JobQueue:
    """Queued jobs in submission order, backed by the store.

    `_cond` guards the in-memory lists only and is never held across a store call: the event loop reads them
    (`get`, `position`), and a store write may wait on another process's lock. The store decides the races a
    write can lose (a cancel against a start: `UPDATE ... WHERE status='queued'`)."""

    def __init__(self, store: Store, *, max_size: int | Callable[[], int] = 1000,
                 load_payload: PayloadLoader | None = None):
        self.store = store
        self._max_size = max_size
        self._load_payload = load_payload
        self._pending: collections.OrderedDict[str, JobHandle] = collections.OrderedDict()
        self._starting: dict[str, JobHandle] = {}
        self._running: dict[str, JobHandle] = {}
        self._cond = threading.Condition()
        self._submit_lock = threading.Lock()
        """Serialises submissions, so the store's order and the queue's are the same."""
        self._closed = False

    @property
    def max_size(self) -> int:
        return self._max_size() if callable(self._max_size) else self._max_size

    def submit(self, kind: str, payload: Any) -> JobHandle:
        """Store and queue a job; `payload` is a typed payload (with `to_json`) or a JSON-able dict. QueueFull
        when the queue is full or closing; StoreUnavailable when the store cannot take it (nothing is queued)."""
        stored = payload.to_json() if hasattr(payload, "to_json") else dict(payload)
        with self._submit_lock:
            limit = self.max_size
            with self._cond:
                if self._closed:
                    raise QueueFull("the server is shutting down")
                if len(self._pending) >= limit:
                    raise QueueFull(f"the queue is full ({len(self._pending)} jobs waiting)")
            row = self.store.add_job(kind, stored)
            handle = JobHandle(row["id"], kind, payload if hasattr(payload, "to_json") else stored,
                               created=row["created"])
            with self._cond:
                self._pending[handle.id] = handle
                self._cond.notify()
        return handle

    def restore(self, rows: list[dict]) -> list[JobHandle]:
        """Re-queue jobs the store handed back after a restart (upgrading payloads an older version stored).
        Their original requesters are gone, so their images are always saved (the only way anyone will see
        them). A payload that cannot be read fails its job, with the reason; the others are re-queued."""
        handles = []
        for row in rows:
            try:
                payload = self._recovered_payload(row["kind"], row["params"])
            except Exception as error:  # noqa: BLE001 - one unreadable job must not stop the start-up
                log.error("cannot re-queue job %s: %s", row["id"], error)
                try:
                    self.store.finish_job(row["id"], "failed", error=f"cannot read the stored job: {error}")
                except StoreUnavailable:  # it stays queued in the store; the next start tries again
                    pass
                continue
            handles.append(JobHandle(row["id"], row["kind"], payload, created=row["created"]))
        with self._cond:
            for handle in handles:
                self._pending[handle.id] = handle
            self._cond.notify_all()
        return handles

    def _recovered_payload(self, kind: str, stored: Mapping[str, Any]) -> Any:
        payload = self._load_payload(kind, stored) if self._load_payload is not None else dict(stored)
        if hasattr(payload, "recovered"):
            return payload.recovered()
        return {**payload, "save_images": True, "recovered": True}

    def take(self, timeout: float | None = None) -> JobHandle | None:
        """The next job, marked running (None on timeout or when closed). When the store cannot mark it
        (StoreUnavailable), the job goes back to the head of the queue and the error is raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while not self._pending:
                    if self._closed:
                        return None
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._cond.wait(remaining)
                job_id, handle = self._pending.popitem(last=False)
                self._starting[job_id] = handle
            try:
                started = self.store.start_job(job_id)
            except BaseException:
                with self._cond:
                    self._starting.pop(job_id, None)
                    if handle.status == "queued":  # not cancelled meanwhile: first in line again
                        self._pending[job_id] = handle
                        self._pending.move_to_end(job_id, last=False)
                raise
            with self._cond:
                self._starting.pop(job_id, None)
                if started:
                    from sdwebui.pipelines.context import StopFlags

                    handle.stop = StopFlags()
                    handle.status = "running"
                    handle.progress.started = time.time()
                    self._running[job_id] = handle
                    return handle
            # Not queued in the store any more (cancelled meanwhile): the next one.

    def done(self, handle: JobHandle) -> None:
        with self._cond:
            self._running.pop(handle.id, None)

    def requeue(self, handle: JobHandle) -> None:
        """A running job whose worker was lost (a Ray actor that died): queued again, first in line, in the
        store and here. StoreUnavailable when the store cannot take it (it stays running meanwhile)."""
        self.store.requeue_job(handle.id)
        with self._cond:
            self._running.pop(handle.id, None)
            handle.status, handle.stop, handle.progress = "queued", None, Progress()
            self._pending[handle.id] = handle
            self._pending.move_to_end(handle.id, last=False)
            self._cond.notify()

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job; False when it is not queued (running jobs are interrupted instead).
        StoreUnavailable when the store cannot record it (the job stays queued)."""
        with self._cond:
            handle = self._pending.get(job_id)
        if handle is None or not self.store.cancel_job(job_id):
            return False
        with self._cond:
            self._pending.pop(job_id, None)
            handle.status = "cancelled"
            handle.error = "cancelled before it started"
        handle._finish()
        return True

    def get(self, job_id: str) -> JobHandle | None:
        with self._cond:
            return self._pending.get(job_id) or self._starting.get(job_id) or self._running.get(job_id)

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


@dataclass
class Outcome:
    """A finished job's record, kept in memory until the store has taken it."""

    job_id: str
    status: str
    error: str | None
    result: dict | None
    progress: dict
    finished: float = field(default_factory=time.time)
    images: list = field(default_factory=list)
    """The job's image records the store could not take while it ran (`JobHandle.unrecorded_images`)."""


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
        retry_interval: float = 2.0,
        answer_after: float = 1.0,
    ):
        self.queue = queue
        self.store = queue.store
        self.runners = dict(runners)
        self.name = name
        self.on_out_of_memory = on_out_of_memory
        self.warmup = warmup
        self.progress_interval = progress_interval
        self.retry_interval = retry_interval
        self.current: JobHandle | None = None
        self.last_finished: JobHandle | None = None
        self.jobs_done = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.answer_after = answer_after
        self._unrecorded: collections.OrderedDict[str, Outcome] = collections.OrderedDict()
        """Outcomes the store could not take (retried until it does)."""
        self._recording: dict[str, Outcome] = {}
        """The outcome being written now."""
        self._unrecorded_lock = threading.Lock()
        self._start_fault: str | None = None
        self._progress = ProgressWriter(self.store, name=f"sdwebui-{name}-progress")

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
        self._progress.stop()
        if self._unrecorded:
            self._record_unrecorded()  # a last try; what is still left is `running` in the store: a restart
            # marks it interrupted

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def fault(self) -> str | None:
        """Why the worker cannot make progress now (None when it can): outcomes it could not record, or a next
        job it could not start, because the store cannot be written."""
        with self._unrecorded_lock:
            waiting = len(self._unrecorded)
        if waiting:
            reason = self.store.fault or "the database cannot be written"
            return f"{waiting} finished job(s) not yet recorded: {reason}"
        return self._start_fault

    def unrecorded(self, job_id: str) -> Outcome | None:
        """The outcome of a finished job the store has not taken yet (being written, or waiting for a retry)."""
        with self._unrecorded_lock:
            return self._unrecorded.get(job_id) or self._recording.get(job_id)

    # ---- the thread -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        if self.warmup is not None:
            try:
                self.warmup()
            except Exception:  # noqa: BLE001 - a failed warm-up only costs time later
                log.exception("warm-up failed")
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:  # noqa: BLE001 - the worker never dies: log and go on after a pause
                log.exception("worker %s: unexpected error; going on", self.name)
                self._stopping.wait(self.retry_interval)

    def _step(self) -> None:
        if self._unrecorded and not self._record_unrecorded():
            self._stopping.wait(self.retry_interval)
            return
        if self._start_fault is None and self.store.fault is not None:
            # A write failed (a submission, a progress write): start nothing until the store can be written
            # again (starting a job is a write too), so health says why meanwhile, and "ok" once it can.
            self._start_fault = f"the database cannot be written: {self.store.fault}"
        if self._start_fault is not None:
            if not self.store.probe():
                self._stopping.wait(self.retry_interval)
                return
            log.warning("worker %s: the database can be written again; going on", self.name)
            self._start_fault = None
        try:
            job = self.queue.take(timeout=0.5)
        except StoreUnavailable as error:
            self._start_fault = f"cannot start the next job: {error.reason}"
            self._stopping.wait(self.retry_interval)
            return
        if job is None:
            return
        self.current = job
        outcome = None
        try:
            outcome = self._run(job)
        finally:
            self.current = None
            self.last_finished = job
            self.jobs_done += 1
            if outcome is not None:  # shown (job views) from now on, while it is written
                with self._unrecorded_lock:
                    self._recording[job.id] = outcome
            self.queue.done(job)
            # Whoever waits is answered once the outcome is recorded, or after `answer_after` seconds if the
            # store is slow to take it (another process's lock): the work is done, its images are in memory.
            timer = threading.Timer(self.answer_after, job._finish)
            timer.daemon = True
            timer.start()
            try:
                if outcome is not None:
                    self._record(job, outcome)
            finally:
                timer.cancel()
                with self._unrecorded_lock:
                    self._recording.pop(job.id, None)
                job._finish()

    def execute(self, job: JobHandle) -> Outcome:
        """Run a job taken elsewhere (a Ray worker runs the jobs its API node leases to it): its outcome, never
        an exception; nothing is recorded."""
        return self._run(job)

    def record(self, job: JobHandle, outcome: Outcome) -> None:
        """Record an outcome made elsewhere (a Ray worker's), kept and retried when the store cannot take it."""
        self._record(job, outcome)

    def record_waiting(self) -> bool:
        """Retry the outcomes the store could not take; True when none is left."""
        return not self._unrecorded or self._record_unrecorded()

    def _run(self, job: JobHandle) -> Outcome:
        """Run the job; its outcome (the job fails alone whatever it raised)."""
        runner = self.runners.get(job.kind)
        status, error, result = "failed", None, None
        try:
            if runner is None:
                raise LookupError(f"unknown job kind {job.kind!r}")
            result = runner(job)
            status = "interrupted" if job.interrupted else "done"
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a job fails alone; the worker goes on
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
            elif is_storage_fault(exc):
                log.error("job %s failed: %s", job.id, error)
            else:
                log.error("job %s failed:\n%s", job.id, "".join(traceback.format_exception(exc)))
        self._progress.forget(job.id)
        job.status, job.error, job.result = status, error, result
        return Outcome(job.id, status, error, result, job.progress.as_dict(), images=list(job.unrecorded_images))

    def _record(self, job: JobHandle, outcome: Outcome) -> None:
        """Write a finished job's outcome; when the store cannot take it now, keep it and retry (`fault`)."""
        try:
            self._write(outcome)
            return
        except StoreUnavailable as error:
            log.error("job %s finished (%s) but its outcome cannot be recorded now (%s); will retry",
                      job.id, outcome.status, error.reason)
        except Exception:  # noqa: BLE001 - e.g. a result that is not JSON: the job fails, the worker goes on
            log.exception("could not record the outcome of job %s", job.id)
            outcome = Outcome(job.id, "failed", "internal error while recording the result", None, outcome.progress,
                              images=outcome.images)
            job.status, job.error, job.result = outcome.status, outcome.error, None
            try:
                self._write(outcome)
                return
            except StoreUnavailable as error:
                log.error("cannot record job %s as failed now (%s); will retry", job.id, error.reason)
        with self._unrecorded_lock:
            self._unrecorded[outcome.job_id] = outcome

    def _write(self, outcome: Outcome) -> None:
        self.store.finish_job(outcome.job_id, outcome.status, error=outcome.error, result=outcome.result,
                              progress=outcome.progress, images=outcome.images)

    def _record_unrecorded(self) -> bool:
        """Retry the outcomes the store could not take, oldest first; True when none is left."""
        with self._unrecorded_lock:
            waiting = list(self._unrecorded.values())
        for outcome in waiting:
            try:
                self._write(outcome)
            except StoreUnavailable:
                return False
            with self._unrecorded_lock:
                self._unrecorded.pop(outcome.job_id, None)
            log.warning("recorded the outcome of job %s (%s) now that the database can be written",
                        outcome.job_id, outcome.status)
        return True

    def progress_saver(self, job: JobHandle) -> Callable[[], None]:
        """A callable for runners: hands the job's progress to the progress writer at most every
        `progress_interval` seconds (it never waits on the store)."""
        last = [0.0]

        def save() -> None:
            now = time.monotonic()
            if now - last[0] >= self.progress_interval:
                last[0] = now
                self._progress.put(job.id, job.progress.as_dict())

        return save


class ProgressWriter:
    """Writes running jobs' progress to the store from a thread of its own (started on first use): only the
    latest progress of each job is kept, so a store stuck behind a lock costs one pending write per job, and
    the worker never waits on it. Progress is best effort: a failed write is dropped (the next one replaces it)."""

    def __init__(self, store: Store, *, name: str = "sdwebui-progress"):
        self.store = store
        self.name = name
        self._latest: dict[str, dict] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def put(self, job_id: str, progress: dict) -> None:
        with self._cond:
            if self._stopping:
                return
            self._latest[job_id] = progress
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def forget(self, job_id: str) -> None:
        """The job has finished: its final progress goes with its outcome."""
        with self._cond:
            self._latest.pop(job_id, None)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._latest.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._latest and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                batch, self._latest = self._latest, {}
            for job_id, progress in batch.items():
                try:
                    self.store.set_progress(job_id, progress)
                except Exception:  # noqa: BLE001 - progress is best effort
                    log.debug("could not save the progress of job %s", job_id, exc_info=True)


def model_file_error(error: BaseException | None):
    """`error` when it is a `models.files.ModelFileError` (a model file that cannot be used), else None. Told
    without importing that module (it imports torch): an error of its type exists only once it is loaded."""
    files = sys.modules.get("sdwebui.models.files")
    return error if files is not None and isinstance(error, files.ModelFileError) else None


def describe_failure(error: BaseException) -> str:
    """One line for the job record and API responses: the message of errors meant for users, the type and
    message otherwise (the traceback goes to the log, never to a client). A model file is named by its file
    name only (the record and the answer reach clients; the folder is the server's business)."""
    if isinstance(error, ParamError):
        return str(error)
    if model_file_error(error) is not None:
        return f"cannot use the model file {error.path.name}: {error.reason}"
    if isinstance(error, StoreUnavailable):
        return str(error)
    if is_storage_fault(error):
        reason = describe_sqlite_error(error) if not isinstance(error, OSError) else (error.strerror or str(error))
        return f"the server's storage failed: {reason}"
    name = type(error).__name__
    text = str(error.args[0]) if isinstance(error, LookupError) and error.args else str(error)
    return f"{name}: {text}" if text else name


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["JobQueue", "JobHandle", "Worker", "Outcome", "ProgressWriter", "Progress", "QueueFull",
           "is_out_of_memory", "describe_failure"]
