"""The native API, `/api/v1`: jobs with ids, live progress (server-sent events), image history, models.

    POST   /api/v1/jobs                  queue a job -> 202 {"id", "status", "queue_position"}
                                         (txt2img, img2img, extras; merge: the Checkpoint Merger;
                                         convert, extract_lora, bake_lora: the model tools;
                                         create_embedding, train_embedding, train_hypernetwork: training)
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
    GET    /api/v1/health                "ok", or "degraded" with the reasons (the only route open without credentials)
    GET    /api/v1/workers               what runs the jobs: the worker thread, or each Ray worker (`--ray`): id, node,
                                         device, models held, current job, jobs done

A job or image record the store cannot write now (disk full, database locked by another process) is a 503 with
`Retry-After`; the event loop never waits on the database (store calls run in the thread pool).

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
from sdwebui.core.errors import ParamError
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.params import Txt2ImgParams, param_specs
from sdwebui.server import catalog
from sdwebui.server.errors import FieldError
from sdwebui.server.extras import ExtrasJob, native_extras_request
from sdwebui.server.images import decode_base64_image
from sdwebui.server.model_tools import TOOL_JOBS, MergeJob, submit_merge, submit_tool
from sdwebui.server.training import TRAINING_JOBS, submit_training
from sdwebui.server.queue import QueueFull
from sdwebui.server.schemas import params_model
from sdwebui.server.security import confine
from sdwebui.server.service import GenerationRequest
from sdwebui.server.services import Services
from sdwebui.server.store import FINISHED_STATUSES

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
SAFE_FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'"}


class _JobFields(BaseModel):
    """What a generation job takes besides its parameters (those come from `pipelines.params`)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="checkpoint name, title or hash; default: the current one")
    vae: str | None = Field(None, description='"Automatic", "None" or a VAE file name; default: the setting')
    styles: list[str] = Field(default_factory=list, max_length=100, description="styles applied to the prompts")
    save_images: bool = True
    script_name: str | None = Field(None, max_length=200, description="a selectable script (GET /sdapi/v1/scripts)")
    script_args: list = Field(default_factory=list, max_length=1000, description="its arguments, in order")
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict,
                                             description='always-on scripts\' arguments: {"name": {"args": [...]}}')


class _Txt2ImgFields(_JobFields):
    type: Literal["txt2img"] = "txt2img"


class _Img2ImgFields(_JobFields):
    type: Literal["img2img"] = "img2img"
    init_images: list[str] = Field(..., min_length=1, max_length=64, description="base64 images")
    mask: str | None = Field(None, description="base64 mask, white = repaint; same size as the first image")


Txt2ImgJob = params_model(
    "Txt2ImgJob", Txt2ImgParams, _Txt2ImgFields,
    doc="A txt2img job. Parameters left out come from the settings (clip skip, eta, ...), then their defaults; "
        "width and height from the checkpoint's native size.")
Img2ImgJob = params_model(
    "Img2ImgJob", Img2ImgParams, _Img2ImgFields,
    doc="An img2img / inpainting job: the images plus A1111's img2img parameters (engine defaults: masked content "
        "\"original\", whole picture, padding 32, as A1111's UI).")
JOB_MODELS = {"txt2img": Txt2ImgJob, "img2img": Img2ImgJob, "extras": ExtrasJob, "merge": MergeJob, **TOOL_JOBS,
              **TRAINING_JOBS}


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
            {"title": "MergeJob", **MergeJob.model_json_schema()},
            *({"title": model.__name__, **model.model_json_schema()} for model in TOOL_JOBS.values()),
            *({"title": model.__name__, **model.model_json_schema()} for model in TRAINING_JOBS.values()),
        ]}}},
    }
}


def build_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["native API"])
    _job_routes(router, services)
    _image_routes(router, services)
    _model_routes(router, services)
    return router


def _job_routes(router: APIRouter, services: Services) -> None:
    """Health, then jobs: create, list, get, cancel, interrupt, skip, preview, server-sent events."""

    @router.get("/health")
    async def health():
        # On the event loop, reading flags only: it answers even when every worker thread waits on the database.
        return {"version": __version__, **services.health()}

    @router.get("/workers")
    async def workers():
        # Flags and counters only (no store call): on the event loop like health.
        return {"workers": services.workers()}

    # ---- jobs -----------------------------------------------------------------------------------------------
    @router.post("/jobs", status_code=202, response_model=JobCreated, openapi_extra=_JOB_BODY_SCHEMA)
    async def create_job(body: Annotated[dict[str, Any], Body(description="a Txt2ImgJob, an Img2ImgJob, an ExtrasJob or a MergeJob")]):
        job = _parse_job(body)
        try:
            if isinstance(job, ExtrasJob):
                handle = await run_in_threadpool(
                    lambda: services.generation.submit_extras(native_extras_request(services, job)))
            elif isinstance(job, MergeJob):  # the Checkpoint Merger (`server.model_tools`)
                handle = await run_in_threadpool(submit_merge, services, job)
            elif isinstance(job, tuple(TOOL_JOBS.values())):  # convert, extract_lora, bake_lora
                handle = await run_in_threadpool(submit_tool, services, job)
            elif isinstance(job, tuple(TRAINING_JOBS.values())):  # textual inversion, hypernetworks (`server.training`)
                handle = await run_in_threadpool(submit_training, services, job)
            else:
                request = await run_in_threadpool(generation_request, job)
                handle = await run_in_threadpool(services.generation.submit, request)
        except ParamError as error:
            raise FieldError(NATIVE_NAMES.get(error.loc, error.loc), error.message) from None
        except QueueFull as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "10"}) from None
        # "queued": what the job was when it was accepted (the worker may have taken it since).
        return {"id": handle.id, "status": "queued", "queue_position": services.generation.position(handle.id)}

    @router.get("/jobs")
    def list_jobs(status: str | None = Query(None, pattern="^(queued|running|done|failed|cancelled|interrupted)$"),
                  limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)):
        return [services.generation.view(row["id"]) for row in services.store.jobs(status=status, limit=limit, offset=offset)]

    @router.get("/jobs/{job_id}")
    def get_job(job_id: str):
        return _job_or_404(services, job_id)

    @router.delete("/jobs/{job_id}")
    def cancel_job(job_id: str):
        view = _job_or_404(services, job_id)
        status = services.generation.cancel(job_id)
        if status is None:
            raise HTTPException(409, f"job {job_id} is already {view['status']}")
        return {"id": job_id, "status": status}

    @router.post("/jobs/{job_id}/interrupt")
    def interrupt_job(job_id: str):
        return _stop(services, job_id, "interrupt")

    @router.post("/jobs/{job_id}/skip")
    def skip_job(job_id: str):
        return _stop(services, job_id, "skip")

    @router.get("/jobs/{job_id}/preview", responses={200: {"content": {"image/png": {}}}})
    def job_preview(job_id: str):
        _job_or_404(services, job_id)
        preview = services.generation.preview(job_id)
        if preview is None:
            raise HTTPException(404, "no preview for this job (yet)")
        return Response(preview, media_type="image/png", headers=SAFE_FILE_HEADERS)

    @router.get("/jobs/{job_id}/events")
    async def job_events(job_id: str):
        if await run_in_threadpool(services.store.job, job_id) is None:
            raise HTTPException(404, f"no job {job_id}")
        return StreamingResponse(_events(services, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})



def _image_routes(router: APIRouter, services: Services) -> None:
    """The image history and the files under the outputs folder."""

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



def _model_routes(router: APIRouter, services: Services) -> None:
    @router.get("/models")
    def list_models():
        return _models(services)

    @router.post("/models/refresh")
    def refresh_models():
        return _models(services)


def _parse_job(body: dict[str, Any]) -> "Txt2ImgJob":
    """The body as the job its `type` names (txt2img when absent); errors located under `body` as FastAPI's."""
    model = JOB_MODELS.get(body.get("type"), Txt2ImgJob)
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise RequestValidationError(
            [{**entry, "loc": ("body", *entry["loc"])} for entry in error.errors(include_url=False)]
        ) from None


NATIVE_NAMES = {("checkpoint",): ("model",), ("override_settings", "sd_model_checkpoint"): ("model",),
                ("override_settings", "sd_vae"): ("vae",)}
"""The request fields a `ParamError` names, where the native API calls them otherwise."""


def generation_request(job: BaseModel) -> GenerationRequest:
    """A native job -> the service's request (the images decoded and checked here: 422 naming the field)."""
    names = {spec.name for spec in param_specs(Txt2ImgParams if job.type == "txt2img" else Img2ImgParams)}
    images, mask = [], None
    if job.type == "img2img":
        images = [decode_base64_image(text, ("init_images", i)) for i, text in enumerate(job.init_images)]
        mask = decode_base64_image(job.mask, ("mask",)) if job.mask else None
    return GenerationRequest(
        kind=job.type,
        values={name: getattr(job, name) for name in job.model_fields_set & names},
        styles=tuple(job.styles), checkpoint=job.model, vae=job.vae, save_images=job.save_images,
        script_name=job.script_name, script_args=tuple(job.script_args), alwayson_scripts=job.alwayson_scripts,
        init_images=tuple(images), mask=mask, client="native",
    )


def _job_or_404(services: Services, job_id: str) -> dict:
    view = services.generation.view(job_id)
    if view is None:
        raise HTTPException(404, f"no job {job_id}")
    return view


def _stop(services: Services, job_id: str, how: str) -> dict:
    view = _job_or_404(services, job_id)
    handle = services.generation.job(job_id)
    if handle is None or handle.status != "running":
        raise HTTPException(409, f"job {job_id} is {view['status']}, not running")
    getattr(services.generation, how)(job_id)
    return {"id": job_id, "status": "interrupting" if how == "interrupt" else "skipping"}


async def _events(services: Services, job_id: str):
    """Server-sent events: a `progress` event whenever the status or progress changes, then `done`."""
    last: Any = None
    while True:
        handle = services.generation.job(job_id)
        if handle is not None:
            data = {"id": job_id, "status": handle.status, "queue_position": services.generation.position(job_id),
                    "progress": handle.progress.as_dict() if handle.status == "running" else None}
        else:
            data = await run_in_threadpool(services.generation.view, job_id)
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
    """An image record: its job's status (`job_status`), and `interrupted` when that job was cut short (an
    interrupt, a crash, a kill: the batches it finished were saved, as A1111 keeps them)."""
    return {**record, "interrupted": record.get("job_status") == "interrupted",
            "url": f"/api/v1/images/{record['id']}/file"}


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
    loaded = services.loaded_model()
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
