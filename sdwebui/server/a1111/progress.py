"""`GET /sdapi/v1/progress`, `POST /interrupt` and `/skip`: A1111's view of the running job (one at a time in
A1111; here the first running one), its live preview and its `State.dict()`."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import HTTPException

from sdwebui.core.errors import ParamError
from sdwebui.server.a1111.schemas import ProgressResponse
from sdwebui.server.errors import RETRY_AFTER_SECONDS, FieldError
from sdwebui.server.queue import JobHandle, QueueFull, model_file_error
from sdwebui.server.services import Services
from sdwebui.server.store import is_storage_fault

IDLE_STATE = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
              "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}


async def submit_and_wait(submit: Callable[[], JobHandle], what: str) -> JobHandle:
    """A1111's routes answer when the work is done: queue it (off the event loop: checking may import torch, and
    the store may wait on a lock), wait for it, and answer a full queue or a store that cannot be written with
    503, a failed job as `raise_for_failure` does, a job cancelled before it started with 409."""
    try:
        job = await run_in_threadpool(submit)
    except QueueFull as error:
        raise HTTPException(503, str(error), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    await job.wait()
    raise_for_failure(job, what)
    if job.status == "cancelled":
        raise HTTPException(409, "the job was cancelled before it started")
    return job


def raise_for_failure(job: JobHandle, what: str) -> None:
    """A failed job as an HTTP error: 503 when the server's storage failed (disk full, database locked: the
    request may succeed later), 422 naming the file when a model file cannot be used, 500 naming `what` failed
    otherwise; a ParamError raised while it ran is a 422 naming its field."""
    if job.status != "failed":
        return
    if is_storage_fault(job.exception):
        raise HTTPException(503, f"{what} failed: {job.error}", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if model_file_error(job.exception) is not None:
        raise FieldError(("sd_model_checkpoint",), f"{what} failed: {job.error}")
    if isinstance(job.exception, ParamError):  # an argument only the loaded model could check (a ControlNet of
        # another family): a 422 naming it, as the checks before the job
        raise FieldError(job.exception.loc, f"{what} failed: {job.exception.message}")
    raise HTTPException(500, f"{what} failed: {job.error}")


def build_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.get("/progress", response_model=ProgressResponse)
    def progressapi(skip_current_image: bool = Query(False)):
        return progress_response(services, skip_current_image)

    @router.post("/interrupt")
    def interruptapi():
        services.generation.interrupt()
        return {}

    @router.post("/skip")
    def skip():
        services.generation.skip()

    return router


def progress_response(services: Services, skip_current_image: bool) -> dict:
    """A1111 `progressapi`: progress 0..1 over the job's batches and steps, and the ETA (`Progress.eta`)."""
    running = services.generation.running()
    job = running[0] if running else None
    if job is None:
        return {"progress": 0, "eta_relative": 0, "state": dict(IDLE_STATE), "current_image": None,
                "textinfo": None, "current_task": None}
    p = job.progress
    # A1111 starts at 0.01 so that the ETA is defined from the first poll.
    progress = 0.01 + p.batch_index / max(1, p.batch_count)
    if p.total_steps > 0:
        progress += p.step / p.total_steps / max(1, p.batch_count)
    now = time.time()
    elapsed = now - (p.started or now)
    eta = p.eta(now)  # the pace of the last steps (A1111 extrapolates the time since the start, which jumps)
    eta_relative = elapsed / progress - elapsed if eta is None else eta
    current_image = None
    if p.preview_png is not None and not skip_current_image:
        current_image = base64.b64encode(p.preview_png).decode("ascii")
    return {
        "progress": min(progress, 1.0),
        "eta_relative": eta_relative,
        "state": state(job),
        "current_image": current_image,
        "textinfo": p.textinfo,
        "current_task": getattr(job.payload, "task_id", None) or job.id,
    }


def state(job: JobHandle) -> dict:
    """A1111 `State.dict()` of a running job."""
    p = job.progress
    stop = job.stop
    return {
        "skipped": bool(stop is not None and stop.skipped.is_set()),
        "interrupted": bool(stop is not None and stop.interrupted.is_set()),
        "stopping_generation": False,
        "job": f"scripts_{job.kind}" if job.kind == "txt2img" else job.kind,
        "job_count": p.batch_count,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(p.started or time.time())),
        "job_no": p.batch_index,
        "sampling_step": p.step,
        "sampling_steps": p.total_steps,
    }


__all__ = ["build_router", "progress_response", "state", "submit_and_wait", "raise_for_failure"]
