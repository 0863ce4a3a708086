"""`POST /sdapi/v1/txt2img` and `/img2img`: an A1111 request is translated (`translate`), queued through the
generation service, waited for, and answered as A1111 answers (`images`, `parameters`, `info` as A1111's
`Processed.js()`).

Requests are queued jobs (with ids, stored in the database), not calls serialised by a lock: many clients can
wait at once and each gets its own result; settings a job depends on are fixed when it is queued.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from sdwebui import __version__
from sdwebui.core.errors import ParamError
from sdwebui.pipelines.infotext import parse_params_line, split_infotext
from sdwebui.server.a1111.progress import submit_and_wait
from sdwebui.server.a1111.schemas import ImageToImageResponse, Img2ImgRequest, TextToImageResponse, Txt2ImgRequest
from sdwebui.server.a1111.translate import field_error, to_generation_request
from sdwebui.server.images import encode_images
from sdwebui.server.queue import JobHandle
from sdwebui.server.services import Services

VERSION = f"sdwebui-{__version__}"
STANDARD_INFOTEXT_KEYS = {
    "Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Clip skip", "ENSD", "RNG", "Version",
    "Face restoration",
}
"""Infotext keys `Processed.js()` reports in fields of their own; the rest are `extra_generation_params`."""


def build_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.post("/txt2img", response_model=TextToImageResponse)
    async def text2imgapi(request: Txt2ImgRequest):
        return await generate(services, "txt2img", request)

    @router.post("/img2img", response_model=ImageToImageResponse)
    async def img2imgapi(request: Img2ImgRequest):
        return await generate(services, "img2img", request)

    return router


async def generate(services: Services, kind: str, request: BaseModel) -> JSONResponse:
    """Queue a generation job for an A1111 request, wait for it, and answer as A1111 does."""
    warnings = [f"ignored unknown field {key!r}" for key in (request.model_extra or {})]

    def submit() -> JobHandle:  # validation may import the sampler registry (torch): off the event loop
        generation_request = to_generation_request(services, request, kind, warnings)
        try:
            return services.generation.submit(generation_request)
        except ParamError as error:
            raise field_error(error, request, kind) from None

    job = await submit_and_wait(submit, "generation")
    images = await run_in_threadpool(encode_images, job.images) if request.send_images else []
    parameters = request.model_dump(exclude=set(request.model_extra or {}))
    if kind == "img2img" and not request.include_init_images:
        # A1111 drops the (large) input images from the echoed parameters unless asked for them.
        parameters["init_images"] = None
        parameters["mask"] = None
    body: dict[str, Any] = {"images": images, "parameters": parameters,
                            "info": json.dumps(processed_info(request, job))}
    if warnings:
        body["warnings"] = warnings
    return JSONResponse(body)


def processed_info(req: BaseModel, job: JobHandle) -> dict:
    """A1111 `Processed.js()`: the `info` of a txt2img / img2img response."""
    result = job.result or {}
    params = result.get("params") or job.payload.params.to_dict()
    seeds = result.get("seeds") or []
    subseeds = result.get("subseeds") or []
    infotexts = result.get("infotexts") or []
    prompts = result.get("prompts") or [params["prompt"]] * len(seeds)
    negative_prompts = result.get("negative_prompts") or [params["negative_prompt"]] * len(seeds)
    model = result.get("model") or {}
    extra: dict[str, Any] = {}
    if infotexts:
        line = split_infotext(infotexts[0])[2]
        extra = {k: v for k, v in parse_params_line(line).items()
                 if k.rsplit("-", 1)[0] not in STANDARD_INFOTEXT_KEYS}
    started = job.progress.started or time.time()
    return {
        "prompt": params["prompt"],
        "all_prompts": prompts,
        "negative_prompt": params["negative_prompt"],
        "all_negative_prompts": negative_prompts,
        "seed": seeds[0] if seeds else params["seed"],
        "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else params["subseed"],
        "all_subseeds": subseeds,
        "subseed_strength": params["subseed_strength"],
        "width": params["width"],
        "height": params["height"],
        "sampler_name": params["sampler"],
        "cfg_scale": params["cfg_scale"],
        "steps": params["steps"],
        "batch_size": params["batch_size"],
        "restore_faces": bool(params.get("restore_faces", req.restore_faces)),
        "face_restoration_model": params.get("face_restoration_model") if params.get("restore_faces") else None,
        "sd_model_name": model.get("name"),
        "sd_model_hash": model.get("hash"),
        "sd_vae_name": model.get("vae_name"),
        "sd_vae_hash": model.get("vae_hash"),
        "seed_resize_from_w": req.seed_resize_from_w,
        "seed_resize_from_h": req.seed_resize_from_h,
        "denoising_strength": req.denoising_strength,
        "extra_generation_params": extra,
        "index_of_first_image": int(result.get("extra_images") or 0),
        "infotexts": infotexts,
        "styles": list(req.styles or []),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
        "clip_skip": params["clip_skip"],
        "is_using_inpainting_conditioning": "Conditional mask weight" in extra,
        "version": VERSION,
    }


__all__ = ["build_router", "generate", "processed_info", "VERSION"]
