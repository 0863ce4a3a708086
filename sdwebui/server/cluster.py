"""Scale out on a Ray cluster (`sdwebui serve --ray ADDRESS`): one API node, many worker actors.

The API node keeps everything it has on one machine: the SQLite store, the persistent queue, auth, the UI, the
output folder and the image history. Only the running of jobs moves: `RayScheduler` takes the place of the one
worker thread (`queue.Worker`) and leases each job the queue hands it to a `ClusterWorker` actor, each with its own
services (model manager: RAM cache, memory mode) on its GPU, or on a CPU on a cluster without GPUs.

    queue.take() -> pick an idle actor (model affinity) -> actor.run(lease) ............ outcome -> store
                              \\-- every `poll_interval`: actor.poll(job, acked, stop) -> progress, preview,
                                   images to save (the heartbeat; interrupt and skip ride on it too)

- **Model affinity.** A job goes to an idle actor that already holds its checkpoint (loaded or in its RAM cache),
  else to one that holds none, else to the one that did least; the queue's order is kept.
- **Progress, previews, interrupt, skip.** The actor's job handle is mirrored into the API node's (`poll`), so
  `/sdapi/v1/progress`, the native job views, the UI's live preview and the progress saved in the store work
  as on one machine; interrupt and skip are sent at once and repeated with each poll until the actor has them.
- **Images are written once, by the API node.** The actor does not write files: `ImageOutbox` sends each image
  (lossless PNG and the arguments of `save_image`) to the API node, which writes it into its outputs folder as
  soon as a poll brings it, keyed by (job id, image index): a job re-run on another actor makes the same images
  (same seeds) and the ones already written are not written again; the actor is told their paths instead. The
  history's records travel with the outcome and are written with it, in one transaction: once.
- **Nothing lost.** An actor that dies (its process killed, its node lost, or no heartbeat for `lease_timeout`)
  loses its lease: the job goes back to the head of the queue and runs on another actor (a new actor replaces the
  lost one). A job that fails because of its input fails once, on the actor that ran it: only a lost actor moves
  a job, and at most `max_attempts` times (a job that kills every worker it runs on is failed, saying so). The API
  node restarting resumes the queue as without Ray: queued jobs are re-queued, a job that was running is marked
  interrupted (`Store.recover`).

Models reach the actors through a folder mounted at the same path on every node (NFS, an object-store mount):
a job's payload names its checkpoint by path, resolved by the API node at submit time. See docs/ray.md.

This module imports Ray at module level: only `--ray` imports it (`app.build_services`).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from PIL import Image
from ray.exceptions import GetTimeoutError, RayActorError

from sdwebui.pipelines.context import StopFlags
from sdwebui.pipelines.output import save_image
from sdwebui.prompts.extra_networks import parse_prompt
from sdwebui.server.config import ConfigError
from sdwebui.server.payloads import load_payload
from sdwebui.server.queue import JobHandle, Outcome, ProgressWriter, Worker, describe_failure
from sdwebui.server.store import StoreUnavailable

if TYPE_CHECKING:
    from sdwebui.server.services import Services

log = logging.getLogger(__name__)

PENDING_FOLDER = ".ray-pending"
"""Where an actor says an image is, until the API node has written it (never a real folder)."""
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
"""Ray's shared-memory object store for `--ray local` (Ray's default takes 30% of the RAM): leases and images
are small."""


# ---- connecting -----------------------------------------------------------------------------------------------


def connect(address: str, *, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address` (`auto`, `ray://host:port`, `host:port`) or start one in this process
    (`local`); a Ray session this process has already is used as it is. True when this call started it (and so
    `disconnect` ends it)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: never report usage
    common = {"include_dashboard": False, "logging_level": logging.WARNING, "configure_logging": False}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
        else:
            ray.init(address=address, **common)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"--ray {address}: cannot join the Ray cluster: {error}") from None
    return True


def plan_workers(requested: int | None, gpus_per_worker: float | None) -> tuple[int, float]:
    """(how many actors, GPUs each): `--ray-workers` / `--ray-gpus-per-worker`, else one actor per GPU of the
    cluster, or one per node of a cluster without GPUs (a CPU worker uses all its node's cores)."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus else 0.0
    if gpus_per_worker > 0 and gpus < gpus_per_worker:
        raise ConfigError(f"--ray-gpus-per-worker {gpus_per_worker:g}: the cluster has {gpus:g} GPU(s)")
    if requested is None:
        if gpus_per_worker > 0:
            requested = max(1, int(gpus // gpus_per_worker))
        else:
            requested = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    return requested, gpus_per_worker


# ---- the actor's side ---------------------------------------------------------------------------------------------


def placeholder(job_id: str, index: int) -> str:
    """The path an actor gives image `index` of a job until the API node has written it."""
    return f"{PENDING_FOLDER}/{job_id}/{index}.png"


class ImageOutbox:
    """The actor's `Services.write_image`: instead of writing a file, keeps the image for the API node (`poll`
    and `run` hand it over until the API node says it has it) and answers with a placeholder path. Images the API
    node has written in an earlier attempt at the job (`begin`'s `saved`) are not sent again: their paths are
    answered instead."""

    def __init__(self, outputs_dir: Path):
        self.outputs_dir = Path(outputs_dir)
        self._lock = threading.Lock()
        self.job_id: str | None = None
        self._next = 0
        self._saved: dict[int, str] = {}
        self._waiting: dict[int, dict] = {}

    def begin(self, job_id: str, saved: Mapping[int, str]) -> None:
        with self._lock:
            self.job_id, self._next = job_id, 0
            self._saved = {int(index): path for index, path in saved.items()}
            self._waiting = {}

    def write(self, image, outdir: Path, **options) -> Path:
        with self._lock:
            index, job_id = self._next, self.job_id
            self._next += 1
            if index in self._saved:
                return self.outputs_dir / self._saved[index]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        try:
            folder = Path(outdir).relative_to(self.outputs_dir).as_posix()
        except ValueError:
            folder = str(outdir)
        with self._lock:
            self._waiting[index] = {"index": index, "png": buffer.getvalue(), "folder": folder, "options": options}
        return self.outputs_dir / placeholder(job_id, index)

    def waiting(self, acked: list[int] = ()) -> list[dict]:
        """The images the API node has not acknowledged (those it has, `acked`, are dropped)."""
        with self._lock:
            for index in acked:
                self._waiting.pop(int(index), None)
            return list(self._waiting.values())


class ClusterWorker:
    """A Ray actor (`ray.remote(ClusterWorker)`) running the jobs the API node leases to it, one at a time, with
    services of its own (`build_services()`: an in-memory store, the model manager, the scripts). `poll`,
    `interrupt` and `skip` run beside `run` (the actor has a few threads)."""

    def __init__(self, worker_id: str, build_services: Callable[[], "Services"], threads: int | None = None):
        self.worker_id = worker_id
        self.threads = threads
        self.services = build_services()
        self.outbox = ImageOutbox(self.services.paths.outputs_dir)
        self.services.write_image = self.outbox.write
        self._lock = threading.Lock()
        self.job: JobHandle | None = None
        self.jobs_done = 0
        self._settings: dict = {}
        self._preview_sent: bytes | None = None
        self._skips = 0
        if self.services.worker.warmup is not None:
            self.services.worker.warmup()  # threads, the pipeline's import: before the first lease

    def describe(self) -> dict:
        context = ray.get_runtime_context()
        return {"id": self.worker_id, "node": context.get_node_id(), "host": socket.gethostname(), "pid": os.getpid(),
                "device": self.services.models.devices.describe(), "gpus": [str(g) for g in ray.get_gpu_ids()],
                "models": self.services.held_models()}

    def run(self, lease: dict) -> dict:
        """Run one leased job; its outcome (a job's own failure is an outcome too, never an exception)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)  # per thread with OpenMP: this is the thread that generates
        settings = lease.get("settings") or {}
        changed = {key: value for key, value in settings.items() if self._settings.get(key, object()) != value}
        if changed:
            self.services.options.update(changed)
            self._settings.update(changed)
        job = JobHandle(lease["id"], lease["kind"], load_payload(lease["kind"], lease["payload"]),
                        created=lease.get("created", time.time()))
        job.stop, job.status, job.defer_image_records = StopFlags(), "running", True
        job.progress.started = time.time()
        self.outbox.begin(job.id, lease.get("saved") or {})
        with self._lock:
            self.job, self._preview_sent, self._skips = job, None, 0
        started = time.perf_counter()
        try:
            outcome = self.services.worker.execute(job)
        finally:
            with self._lock:
                self.job = None
        self.jobs_done += 1
        return {"seconds": time.perf_counter() - started, "status": outcome.status, "error": outcome.error, "result": outcome.result,
                "progress": outcome.progress, "records": outcome.images,
                "images": [_encode(image) for image in job.images], "shipments": self.outbox.waiting(),
                "models": self.services.held_models()}

    def poll(self, job_id: str, acked: list[int], stop: tuple[bool, int] = (False, 0)) -> dict:
        """The heartbeat: the job's progress, a new preview, the images not yet acknowledged; applies the API
        node's interrupt and skips (`stop`: interrupted, skips asked so far)."""
        with self._lock:
            job = self.job
        shipments = self.outbox.waiting(acked) if self.outbox.job_id == job_id else []
        if job is None or job.id != job_id:
            return {"running": False, "shipments": shipments}
        self._apply_stop(job, *stop)
        progress = job.progress
        preview = None
        if progress.preview_png is not None and progress.preview_png is not self._preview_sent:
            preview = self._preview_sent = progress.preview_png
        return {"running": True, "progress": progress.as_dict(), "textinfo": progress.textinfo, "preview": preview,
                "shipments": shipments}

    def stop(self, job_id: str, interrupted: bool, skips: int) -> bool:
        with self._lock:
            job = self.job
        if job is None or job.id != job_id:
            return False
        self._apply_stop(job, interrupted, skips)
        return True

    def _apply_stop(self, job: JobHandle, interrupted: bool, skips: int) -> None:
        if interrupted:
            job.interrupt()
        with self._lock:
            new, self._skips = skips > self._skips, max(self._skips, skips)
        if new:
            job.skip()

    def ping(self) -> int:
        return os.getpid()


def _encode(image) -> tuple[bytes, dict]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), {key: value for key, value in image.info.items()
                               if isinstance(key, str) and isinstance(value, str)}


def _decode(item: tuple[bytes, dict]):
    data, info = item
    image = Image.open(io.BytesIO(data))
    image.load()
    image.info.update(info)
    return image


def substitute(value: Any, paths: Mapping[str, str]) -> Any:
    """`value` (a job's result or an image record) with each placeholder path replaced by the file's real one."""
    if isinstance(value, str):
        return paths.get(value, value)
    if isinstance(value, list):
        return [substitute(item, paths) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, paths) for key, item in value.items()}
    return value


# ---- the API node's side ----------------------------------------------------------------------------------------


class RemoteStop:
    """The API node's `StopFlags` of a leased job: interrupt and skip go to the actor at once, and again with each
    poll until it has them (a lease may not have started on the actor yet)."""

    def __init__(self, actor, job_id: str):
        self.actor, self.job_id = actor, job_id
        self.interrupted = threading.Event()
        self.skipped = threading.Event()
        self.skips = 0

    def interrupt(self) -> None:
        self.interrupted.set()
        self._send()

    def skip(self) -> None:
        self.skips += 1
        self.skipped.set()
        self._send()

    def state(self) -> tuple[bool, int]:
        return self.interrupted.is_set(), self.skips

    def _send(self) -> None:
        try:
            self.actor.stop.remote(self.job_id, *self.state())
        except Exception:  # noqa: BLE001 - the next poll repeats it
            log.debug("could not send a stop to the worker of job %s", self.job_id, exc_info=True)


@dataclass
class Slot:
    """One worker actor as the scheduler sees it."""

    id: str
    actor: Any
    state: str = "starting"
    """starting, ready or lost."""
    info: dict = field(default_factory=dict)
    job: JobHandle | None = None
    models: list[str] = field(default_factory=list)
    networks: frozenset[str] = frozenset()
    """The LoRAs of the last job it ran (`job_networks`): a LoRA library keeps the last set's patched weights."""
    jobs_done: int = 0
    error: str | None = None

    def view(self) -> dict:
        return {"id": self.id, "state": self.state, "node": self.info.get("node"), "host": self.info.get("host"),
                "pid": self.info.get("pid"), "device": self.info.get("device"), "gpus": self.info.get("gpus", []),
                "models": [Path(path).name for path in self.models],
                "loras": sorted(name.split(":", 1)[1] for name in self.networks),
                "current_job": self.job.id if self.job is not None else None, "jobs_done": self.jobs_done,
                "error": self.error}


class RayScheduler:
    """Leases the queue's jobs to Ray actors (see the module docstring); in `Services` it stands where the one
    worker thread does (`start`, `stop`, `alive`, `fault`, `unrecorded`, `workers`)."""

    def __init__(self, services: "Services", build_services: Callable[[], "Services"], *, address: str,
                 workers: int | None = None, gpus_per_worker: float | None = None, threads: int | None = None,
                 poll_interval: float = 0.2, heartbeat_timeout: float = 10.0, lease_timeout: float = 60.0,
                 max_attempts: int = 3, startup_timeout: float = 300.0):
        self.services = services
        self.queue = services.queue
        self.store = services.store
        self.build_services = build_services
        self.address = address
        self.requested_workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.threads = threads
        self.poll_interval = poll_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.lease_timeout = lease_timeout
        self.max_attempts = max_attempts
        self.startup_timeout = startup_timeout
        self.slots: list[Slot] = []
        self.jobs_done = 0
        self.warmup = None
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._leases: list[threading.Thread] = []
        self._saved: dict[str, dict[int, str]] = {}
        """Per job: image index -> the path the API node wrote it to (kept across attempts at the job)."""
        self._recorder = Worker(self.queue, {}, name="ray")
        """Records outcomes (and keeps and retries those the store cannot take now), as the local worker does."""
        self._progress = ProgressWriter(self.store, name="sdwebui-ray-progress")
        self._start_fault: str | None = None
        self._owns_ray = False
        self._connected = False
        self._count = 0
        self._gpus = 0.0
        self._remote = None

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Join (or start) the cluster and plan the actors; ConfigError with one line when it cannot."""
        if self._connected:
            return
        self._owns_ray = connect(self.address, num_cpus=self.requested_workers if self.address == "local" else None)
        self._count, self._gpus = plan_workers(self.requested_workers, self.gpus_per_worker)
        self._connected = True

    def start(self) -> None:
        if self._thread is not None:
            return
        self.connect()
        self._remote = ray.remote(ClusterWorker)
        for _ in range(self._count):
            self._spawn()
        self._thread = threading.Thread(target=self._loop, name="sdwebui-ray-scheduler", daemon=True)
        self._thread.start()
        log.warning("Ray: %d worker(s), %g GPU(s) each", self._count, self._gpus)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop leasing; running jobs are interrupted (they keep what they made), queued ones stay queued."""
        self._stopping.set()
        self.queue.close()
        with self._cond:
            running = [slot.job for slot in self.slots if slot.job is not None]
            self._cond.notify_all()
        for job in running:
            job.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        for thread in list(self._leases):
            thread.join(max(0.0, deadline - time.monotonic()))
        for slot in self.slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - gone already
                pass
        self._progress.stop()
        self._recorder.record_waiting()
        if self._owns_ray:
            ray.shutdown()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def fault(self) -> str | None:
        recorder = self._recorder.fault
        if recorder is not None:
            return recorder
        if self._start_fault is not None:
            return self._start_fault
        with self._cond:
            if self.slots and all(slot.state == "lost" for slot in self.slots):
                errors = [slot.error for slot in self.slots if slot.error]
                return "no Ray worker is running" + (f": {errors[-1]}" if errors else "")
        return None

    def unrecorded(self, job_id: str) -> Outcome | None:
        return self._recorder.unrecorded(job_id)

    def workers(self) -> list[dict]:
        with self._cond:
            return [slot.view() for slot in self.slots if slot.state != "lost"]

    # ---- actors -------------------------------------------------------------------------------------------------
    def _spawn(self) -> Slot:
        with self._cond:
            number = len(self.slots)
            slot_id = f"ray-{number}"
            actor = self._remote.options(
                num_cpus=1, num_gpus=self._gpus, max_concurrency=4, max_restarts=0,
            ).remote(slot_id, self.build_services, self.threads)
            slot = Slot(slot_id, actor)
            self.slots.append(slot)
        threading.Thread(target=self._await_ready, args=(slot,), name=f"sdwebui-{slot_id}-start", daemon=True).start()
        return slot

    def _await_ready(self, slot: Slot) -> None:
        try:
            info = ray.get(slot.actor.describe.remote(), timeout=self.startup_timeout)
        except Exception as error:  # noqa: BLE001 - reported by health and /workers
            if not self._stopping.is_set():
                log.error("Ray worker %s did not start: %s", slot.id, error)
            with self._cond:
                slot.state, slot.error = "lost", f"did not start: {_short(error)}"
                self._cond.notify_all()
            return
        with self._cond:
            if slot.state == "starting":
                slot.info, slot.models, slot.state = info, list(info.get("models") or ()), "ready"
            self._cond.notify_all()
        log.info("Ray worker %s ready on %s (%s)", slot.id, info.get("host"), info.get("device"))

    # ---- leasing ------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:  # noqa: BLE001 - the scheduler never dies: log and go on after a pause
                log.exception("Ray scheduler: unexpected error; going on")
                self._stopping.wait(1.0)

    def _step(self) -> None:
        if not self._recorder.record_waiting():
            self._stopping.wait(1.0)
            return
        with self._cond:
            if not any(slot.state == "ready" and slot.job is None for slot in self.slots):
                self._cond.wait(0.5)
                return
        try:
            job = self.queue.take(timeout=0.5)
        except StoreUnavailable as error:
            self._start_fault = f"cannot start the next job: {error.reason}"
            self._stopping.wait(1.0)
            return
        self._start_fault = None
        if job is None:
            return
        with self._cond:
            slot = self.choose([slot for slot in self.slots if slot.state == "ready" and slot.job is None], job)
            if slot is not None:
                slot.job = job
        if slot is None:  # the idle worker was lost meanwhile
            self._requeue(job)
            return
        thread = threading.Thread(target=self._lease, args=(slot, job), name=f"sdwebui-lease-{job.id[:8]}",
                                  daemon=True)
        self._leases = [lease for lease in self._leases if lease.is_alive()] + [thread]
        thread.start()

    @staticmethod
    def choose(idle: list[Slot], job: JobHandle) -> Slot | None:
        """Model affinity: an idle worker holding the job's checkpoint, else one holding no model (so another
        worker's model is not evicted), else the one that did least; among equals, one whose last job had the
        same LoRAs (their patched weights are still there)."""
        if not idle:
            return None
        checkpoint = getattr(job.payload, "checkpoint", None)
        networks = job_networks(job)

        def rank(slot: Slot) -> tuple:
            holds = checkpoint is not None and str(checkpoint) in slot.models
            same_networks = bool(networks) and networks == slot.networks
            return (0 if holds else 1 if not slot.models else 2, 0 if same_networks else 1, slot.jobs_done)

        return min(idle, key=rank)

    def _lease(self, slot: Slot, job: JobHandle) -> None:
        stop = RemoteStop(slot.actor, job.id)
        job.stop = stop
        saved = self._saved.setdefault(job.id, {})
        payload = job.payload.to_json() if hasattr(job.payload, "to_json") else dict(job.payload)
        lease = {"id": job.id, "kind": job.kind, "payload": payload, "created": job.created, "saved": dict(saved),
                 "settings": self.services.options.all()}
        last_beat, lost, reply = time.monotonic(), None, None
        last_saved = 0.0
        try:
            ref = slot.actor.run.remote(lease)
            while reply is None and lost is None:
                ready, _ = ray.wait([ref], timeout=self.poll_interval)
                if ready:
                    reply, lost = self._reply(ref)
                    break
                try:
                    update = ray.get(slot.actor.poll.remote(job.id, sorted(saved), stop.state()),
                                     timeout=self.heartbeat_timeout)
                except GetTimeoutError:
                    if time.monotonic() - last_beat > self.lease_timeout:
                        lost = f"no heartbeat for {self.lease_timeout:g} s"
                    continue
                except RayActorError as error:
                    ready, _ = ray.wait([ref], timeout=0)
                    reply, lost = self._reply(ref) if ready else (None, _short(error))
                    if reply is None and lost is None:
                        lost = _short(error)
                    continue
                last_beat = time.monotonic()
                self._mirror(job, update, saved)
                if time.monotonic() - last_saved >= 1.0:
                    last_saved = time.monotonic()
                    self._progress.put(job.id, job.progress.as_dict())
        except Exception as error:  # noqa: BLE001 - e.g. the lease could not be sent: the worker is not usable
            lost = lost or _short(error)
        if lost is not None:
            self._lose(slot, job, lost)
        else:
            self._finish(slot, job, reply, saved)

    @staticmethod
    def _reply(ref) -> tuple[dict | None, str | None]:
        """(the outcome, None), or (None, why the worker was lost)."""
        try:
            return ray.get(ref), None
        except RayActorError as error:
            return None, _short(error)
        except Exception as error:  # noqa: BLE001 - `run` itself failed (not the job): the job fails, once
            return {"status": "failed", "error": describe_failure(error), "result": None, "progress": {},
                    "records": [], "images": [], "shipments": [], "models": None}, None

    def _mirror(self, job: JobHandle, update: dict, saved: dict[int, str]) -> None:
        """A poll's news into the API node's job handle (what the progress routes read) and output folder."""
        self._write(job, update.get("shipments") or (), saved)
        progress = update.get("progress")
        if not progress:
            return
        p = job.progress
        if progress["batch_index"] != p.batch_index and isinstance(job.stop, RemoteStop):
            job.stop.skipped.clear()  # a skip ends with its batch (as the pipeline clears its own flag)
        p.step, p.total_steps = progress["step"], progress["total_steps"]
        p.batch_index, p.batch_count = progress["batch_index"], progress["batch_count"]
        p.preview_step = progress.get("preview_step", p.preview_step)
        p.textinfo = update.get("textinfo")
        if progress.get("eta") is not None:
            p.estimate = (float(progress["eta"]), time.time())
        if update.get("preview") is not None:
            p.preview_png = update["preview"]

    def _write(self, job: JobHandle, shipments, saved: dict[int, str]) -> None:
        """Write the images an actor sent, each (job, index) once."""
        outputs = self.services.paths.outputs_dir
        for item in shipments:
            index = int(item["index"])
            if index in saved:
                continue
            image = Image.open(io.BytesIO(item["png"]))
            image.load()
            folder = Path(item["folder"])
            path = save_image(image, folder if folder.is_absolute() else outputs / folder, **item["options"])
            try:
                saved[index] = path.relative_to(outputs).as_posix()
            except ValueError:
                saved[index] = str(path)

    def _finish(self, slot: Slot, job: JobHandle, reply: dict, saved: dict[int, str]) -> None:
        try:
            self._write(job, reply.get("shipments") or (), saved)
            paths = {placeholder(job.id, index): path for index, path in saved.items()}
            result = substitute(reply["result"], paths)
            if isinstance(result, dict):
                # `seconds`: the run on the worker; the job's started..finished less this is the lease's cost.
                result = {**result, "worker": {"id": slot.id, "node": slot.info.get("node"),
                                               "host": slot.info.get("host"), "seconds": reply.get("seconds")}}
            records = [substitute(record, paths) for record in reply.get("records") or ()]
            job.images = [_decode(item) for item in reply.get("images") or ()]
            status, error = reply["status"], reply["error"]
        except Exception as error:  # noqa: BLE001 - an image that cannot be written: the job fails, once
            log.exception("job %s: cannot take its outcome from Ray worker %s", job.id, slot.id)
            status, error, result, records = "failed", describe_failure(error), None, []
        job.interrupted = status == "interrupted"
        job.status, job.error, job.result = status, error, result
        with self._cond:
            slot.job = None
            slot.jobs_done += 1
            if reply.get("models") is not None:
                slot.models = list(reply["models"])
            slot.networks = job_networks(job)
            self._cond.notify_all()
        self.jobs_done += 1
        self._end(job, Outcome(job.id, status, error, result, reply.get("progress") or job.progress.as_dict(),
                               images=records))

    def _end(self, job: JobHandle, outcome: Outcome) -> None:
        self._progress.forget(job.id)
        self._saved.pop(job.id, None)
        try:
            self._recorder.record(job, outcome)
        finally:
            self.queue.done(job)
            job._finish()

    def _lose(self, slot: Slot, job: JobHandle, reason: str) -> None:
        """The worker running `job` is gone: the job runs again elsewhere (or fails after `max_attempts`)."""
        log.warning("Ray worker %s lost while running job %s (%s)", slot.id, job.id, reason)
        with self._cond:
            slot.state, slot.error, slot.job = "lost", reason, None
            self._cond.notify_all()
        try:
            ray.kill(slot.actor, no_restart=True)  # a worker only cut off must not go on writing as well
        except Exception:  # noqa: BLE001 - dead already
            pass
        self._progress.forget(job.id)
        job.attempts += 1
        stop = job.stop
        if stop is not None and stop.interrupted.is_set():
            job.interrupted, job.status = True, "interrupted"
            job.error = f"interrupted; its worker was lost meanwhile ({reason})"
            self._end(job, Outcome(job.id, "interrupted", job.error, None, job.progress.as_dict()))
        elif job.attempts >= self.max_attempts:
            job.status = "failed"
            job.error = f"its Ray worker was lost {job.attempts} times while running it (last: {reason})"
            self._end(job, Outcome(job.id, "failed", job.error, None, job.progress.as_dict()))
        else:
            self._requeue(job)
        if not self._stopping.is_set():
            self._spawn()

    def _requeue(self, job: JobHandle) -> None:
        while True:
            try:
                self.queue.requeue(job)
                return
            except StoreUnavailable as error:
                log.error("cannot re-queue job %s now (%s); retrying", job.id, error.reason)
                if self._stopping.wait(1.0):
                    return  # still `running` in the store: the next start marks it interrupted


def job_networks(job: JobHandle) -> frozenset[str]:
    """The LoRAs (`kind:name`) a generation job's prompt names; none for other jobs."""
    prompt = getattr(getattr(job.payload, "params", None), "prompt", None)
    if not isinstance(prompt, str):
        return frozenset()
    _, calls = parse_prompt(prompt)
    return frozenset(f"{call.kind}:{call.positional[0]}" for call in calls
                     if call.kind in ("lora", "lyco") and call.positional)


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


__all__ = ["RayScheduler", "ClusterWorker", "ImageOutbox", "connect", "plan_workers", "placeholder", "substitute"]
