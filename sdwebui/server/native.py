"""The native API, `/api/v1`: jobs with ids, live progress (server-sent events), image history, models.

    POST   /api/v1/jobs                  queue a job -> 202 {"id", "status", "queue_position"}
    GET    /api/v1/jobs                  recent jobs (?status=queued&limit=50&offset=0)
    GET    /api/v1/jobs/{id}             status, progress (step, total, ETA), result, error
    GET    /api/v1/jobs/{id}/events      server-sent events: `progress` while it runs, then one `done`
    GET    /api/v1/jobs/{id}/preview     the latest live preview (PNG)
    POST   /api/v1/jobs/{id}/interrupt   stop after the current step, keep what was made
    POST   /api/v1/jobs/{id}/skip        abandon the current batch, go on with the next
    DELETE /api/v1/jobs/{id}             cancel a queued job (interrupts a running one)
    GET    /api/v1/images                image history (?job_id=...)
    GET    /api/v1/images/{id}           one image's record (prompt, seed, parameters, infotext, model hash)
    GET    /api/v1/images/{id}/file      the PNG
    DELETE /api/v1/images/{id}           delete the file and its record
    GET    /api/v1/outputs/{path}        a file under the outputs folder (images only)
    GET    /api/v1/models                checkpoints; POST /api/v1/models/refresh
    GET    /api/v1/health                liveness (the only route open without credentials)

Parameter names are the engine's (`sampler`, `batch_count`, ...; see `Txt2ImgParams`); unknown keys are an
error here (a new API can afford to be strict, and a typo never silently falls back to a default).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdwebui import __version__
from sdwebui.pipelines.params import MAX_SIDE, MAX_STEPS, ParamError
from sdwebui.server import catalog
from sdwebui.server.errors import FieldError
from sdwebui.server.extras import ExtrasJob, native_extras_payload
from sdwebui.server.queue import QueueFull
from sdwebui.server.security import confine
from sdwebui.server.services import Services
from sdwebui.server.store import FINISHED_STATUSES

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
SAFE_FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'"}


def _float(default, *, ge=None, le=None):
    return Field(default, ge=ge, le=le, allow_inf_nan=False)


class Txt2ImgJob(BaseModel):
    """A txt2img job. Settings not given here (VAE, RNG source, clip skip, ...) come from the options."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    type: Literal["txt2img"] = "txt2img"
    prompt: str = Field("", max_length=65536)
    negative_prompt: str = Field("", max_length=65536)
    width: int = Field(512, ge=8, le=MAX_SIDE, multiple_of=8)
    height: int = Field(512, ge=8, le=MAX_SIDE, multiple_of=8)
    steps: int = Field(20, ge=1, le=MAX_STEPS)
    cfg_scale: float = _float(7.0, ge=0.0, le=100.0)
    sampler: str = Field("DPM++ 2M", max_length=200)
    scheduler: str = Field("Automatic", max_length=200)
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    batch_size: int = Field(1, ge=1, le=64)
    batch_count: int = Field(1, ge=1, le=10_000)
    clip_skip: int | None = Field(None, ge=1, le=12)
    subseed: int = Field(-1, ge=-1, le=2**32 - 1)
    subseed_strength: float = _float(0.0, ge=0.0, le=1.0)
    seed_resize_from_w: int = Field(0, ge=0, le=MAX_SIDE)
    seed_resize_from_h: int = Field(0, ge=0, le=MAX_SIDE)
    eta: float | None = _float(None, ge=0.0, le=10.0)
    s_churn: float | None = _float(None, ge=0.0, le=100.0)
    s_tmin: float | None = _float(None, ge=0.0, le=1000.0)
    s_tmax: float | None = _float(None, ge=0.0)
    s_noise: float | None = _float(None, ge=0.0, le=10.0)
    tiling: bool = False
    enable_hr: bool = False
    denoising_strength: float = _float(0.7, ge=0.0, le=1.0)
    hr_scale: float = _float(2.0, ge=1.0, le=16.0)
    hr_upscaler: str = Field("Latent", max_length=500, description="a latent mode or an upscaler's name")
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS)
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_checkpoint: str | None = Field(None, max_length=500, description="default: the job's checkpoint")
    hr_sampler: str | None = Field(None, max_length=200)
    hr_scheduler: str | None = Field(None, max_length=200)
    hr_prompt: str = Field("", max_length=65536)
    hr_negative_prompt: str = Field("", max_length=65536)
    refiner_checkpoint: str | None = Field(None, max_length=500)
    refiner_switch_at: float = _float(0.8, ge=0.0, le=1.0)
    model: str | None = Field(None, description="checkpoint name, title or hash; default: the current one")
    vae: str | None = Field(None, description='"Automatic", "None" or a VAE file name; default: the setting')
    save_images: bool = True


class Img2ImgJob(Txt2ImgJob):
    """An img2img / inpainting job: txt2img's fields plus the images and A1111's img2img options (engine
    defaults: masked content "original", whole picture, padding 32, as A1111's UI)."""

    type: Literal["img2img"] = "img2img"
    init_images: list[str] = Field(..., min_length=1, max_length=64, description="base64 images")
    mask: str | None = Field(None, description="base64 mask, white = repaint; same size as the first image")
    denoising_strength: float = _float(0.75, ge=0.0, le=1.0)
    resize_mode: int = Field(0, ge=0, le=3)
    initial_noise_multiplier: float | None = _float(None, ge=0.0, le=10.0)
    mask_blur_x: int = Field(4, ge=0, le=256)
    mask_blur_y: int = Field(4, ge=0, le=256)
    inpainting_fill: int = Field(1, ge=0, le=3)
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = Field(32, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: bool = False
    fix_steps: bool | None = Field(None, description="do exactly `steps` steps; default: the setting")


class JobCreated(BaseModel):
    id: str
    status: str
    queue_position: int | None


# The body is validated by `_parse_job` (by `type`, with errors located as FastAPI's); the schema says so.
_JOB_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [
            {"title": "Txt2ImgJob", **Txt2ImgJob.model_json_schema()},
            {"title": "Img2ImgJob", **Img2ImgJob.model_json_schema()},
            {"title": "ExtrasJob", **ExtrasJob.model_json_schema()},
        ]}}},
    }
}


def build_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["native API"])

    @router.get("/health")
    def health():
        return {"status": "ok", "version": __version__, "worker_alive": services.worker.alive}

    # ---- jobs -----------------------------------------------------------------------------------------------
    @router.post("/jobs", status_code=202, response_model=JobCreated, openapi_extra=_JOB_BODY_SCHEMA)
    async def create_job(body: Annotated[dict[str, Any], Body(description="a Txt2ImgJob, an Img2ImgJob or an ExtrasJob")]):
        job = _parse_job(body)
        if isinstance(job, ExtrasJob):
            payload = await run_in_threadpool(native_extras_payload, services, job)
        else:
            payload = await run_in_threadpool(_txt2img_payload, services, job)
        try:
            handle = services.submit(job.type, payload)
        except QueueFull as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "10"}) from None
        return {"id": handle.id, "status": handle.status, "queue_position": services.queue.position(handle.id)}

    @router.get("/jobs")
    def list_jobs(status: str | None = Query(None, pattern="^(queued|running|done|failed|cancelled|interrupted)$"),
                  limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)):
        return [services.job_view(row["id"]) for row in services.store.jobs(status=status, limit=limit, offset=offset)]

    @router.get("/jobs/{job_id}")
    def get_job(job_id: str):
        return _job_or_404(services, job_id)

    @router.delete("/jobs/{job_id}")
    def cancel_job(job_id: str):
        view = _job_or_404(services, job_id)
        if services.queue.cancel(job_id):
            return {"id": job_id, "status": "cancelled"}
        handle = services.queue.get(job_id)
        if handle is not None and handle.interrupt():
            return {"id": job_id, "status": "interrupting"}
        raise HTTPException(409, f"job {job_id} is already {view['status']}")

    @router.post("/jobs/{job_id}/interrupt")
    def interrupt_job(job_id: str):
        return _stop(services, job_id, "interrupt")

    @router.post("/jobs/{job_id}/skip")
    def skip_job(job_id: str):
        return _stop(services, job_id, "skip")

    @router.get("/jobs/{job_id}/preview", responses={200: {"content": {"image/png": {}}}})
    def job_preview(job_id: str):
        _job_or_404(services, job_id)
        handle = services.queue.get(job_id)
        if handle is None or handle.progress.preview_png is None:
            raise HTTPException(404, "no preview for this job (yet)")
        return Response(handle.progress.preview_png, media_type="image/png", headers=SAFE_FILE_HEADERS)

    @router.get("/jobs/{job_id}/events")
    async def job_events(job_id: str):
        if services.store.job(job_id) is None:
            raise HTTPException(404, f"no job {job_id}")
        return StreamingResponse(_events(services, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ---- images ---------------------------------------------------------------------------------------------
    @router.get("/images")
    def list_images(job_id: str | None = None, limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)):
        return [_image_view(row) for row in services.store.images(job_id=job_id, limit=limit, offset=offset)]

    @router.get("/images/{image_id}")
    def get_image(image_id: int):
        return _image_view(_image_or_404(services, image_id))

    @router.get("/images/{image_id}/file", responses={200: {"content": {"image/png": {}}}})
    def get_image_file(image_id: int):
        record = _image_or_404(services, image_id)
        return _serve(services, record["path"])

    @router.delete("/images/{image_id}")
    def delete_image(image_id: int):
        record = _image_or_404(services, image_id)
        path = confine(services.paths.outputs_dir, record["path"])
        if path is not None and path.is_file():
            path.unlink()
        services.store.delete_image(image_id)
        return {"id": image_id, "deleted": True}

    @router.get("/outputs/{file_path:path}", responses={200: {"content": {"image/png": {}}}})
    def get_output(file_path: str):
        return _serve(services, file_path)

    # ---- models ---------------------------------------------------------------------------------------------
    @router.get("/models")
    def list_models():
        return _models(services)

    @router.post("/models/refresh")
    def refresh_models():
        return _models(services)

    return router


def _parse_job(body: dict[str, Any]) -> "Txt2ImgJob":
    """The body as the job its `type` names (txt2img when absent); errors located under `body` as FastAPI's."""
    model = {"img2img": Img2ImgJob, "extras": ExtrasJob}.get(body.get("type"), Txt2ImgJob)
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise RequestValidationError(
            [{**entry, "loc": ("body", *entry["loc"])} for entry in error.errors(include_url=False)]
        ) from None


def _txt2img_payload(services: Services, job: Txt2ImgJob) -> dict:
    """The payload of a txt2img or img2img job (the images decoded and checked here: 422 naming the field)."""
    from sdwebui.server.a1111 import decode_base64_image, png_base64
    from sdwebui.server.generation import make_payload

    values = job.model_dump(exclude={"type", "model", "vae", "save_images", "init_images", "mask"})
    extra = None
    if isinstance(job, Img2ImgJob):
        images = [decode_base64_image(text.strip(), ("init_images", i)) for i, text in enumerate(job.init_images)]
        mask = decode_base64_image(job.mask.strip(), ("mask",)) if job.mask else None
        if mask is not None and mask.size != images[0].size:
            raise FieldError(("mask",), f"the mask is {mask.width}x{mask.height}, the first image "
                             f"{images[0].width}x{images[0].height}; they must be the same size")
        extra = {"init_images": png_base64(images), "mask": png_base64([mask])[0] if mask is not None else None}
        if values["fix_steps"] is None:
            del values["fix_steps"]
    for key in ("clip_skip",):
        if values[key] is None:
            del values[key]
    try:
        return make_payload(services, values, checkpoint=job.model, vae=job.vae, save_images=job.save_images,
                            extra=extra, kind=job.type)
    except ParamError as error:
        raise FieldError((error.field,), error.message) from None
    except LookupError as error:
        message = str(error.args[0]) if error.args else str(error)
        raise FieldError(("vae",) if message.startswith("VAE") else ("model",), message) from None


def _job_or_404(services: Services, job_id: str) -> dict:
    view = services.job_view(job_id)
    if view is None:
        raise HTTPException(404, f"no job {job_id}")
    return view


def _stop(services: Services, job_id: str, how: str) -> dict:
    view = _job_or_404(services, job_id)
    handle = services.queue.get(job_id)
    if handle is None or handle.status != "running":
        raise HTTPException(409, f"job {job_id} is {view['status']}, not running")
    getattr(handle, how)()
    return {"id": job_id, "status": "interrupting" if how == "interrupt" else "skipping"}


async def _events(services: Services, job_id: str):
    """Server-sent events: a `progress` event whenever the status or progress changes, then `done`."""
    last: Any = None
    while True:
        handle = services.queue.get(job_id)
        if handle is not None:
            data = {"id": job_id, "status": handle.status, "queue_position": services.queue.position(job_id),
                    "progress": handle.progress.as_dict() if handle.status == "running" else None}
        else:
            data = await run_in_threadpool(services.job_view, job_id)
            if data is None:
                return
        if data["status"] in FINISHED_STATUSES:
            yield f"event: done\ndata: {json.dumps(data)}\n\n"
            return
        if data != last:
            last = data
            yield f"event: progress\ndata: {json.dumps(data)}\n\n"
        await asyncio.sleep(0.1)


def _image_view(record: dict) -> dict:
    return {**record, "url": f"/api/v1/images/{record['id']}/file"}


def _image_or_404(services: Services, image_id: int) -> dict:
    record = services.store.image(image_id)
    if record is None:
        raise HTTPException(404, f"no image {image_id}")
    return record


def _serve(services: Services, relative: str) -> FileResponse:
    """A file from the outputs folder: inside it after resolving symlinks, an image type, or 404."""
    path = confine(services.paths.outputs_dir, relative)
    media_type = IMAGE_TYPES.get(path.suffix.lower()) if path is not None else None
    if path is None or media_type is None or not path.is_file():
        raise HTTPException(404, "no such image")
    return FileResponse(path, media_type=media_type, headers=SAFE_FILE_HEADERS)


def _models(services: Services) -> list[dict]:
    loaded = services.models.loaded if services._models is not None else None
    return [
        {
            "title": entry.title,
            "name": entry.name,
            "hash": entry.short_hash,
            "sha256": entry.sha256,
            "filename": str(entry.path),
            "loaded": loaded is not None and loaded.info.path == entry.path,
        }
        for entry in catalog.checkpoints(services.paths)
    ]


__all__ = ["build_router", "Txt2ImgJob", "Img2ImgJob"]
