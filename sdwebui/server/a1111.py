"""The A1111-compatible API: `/sdapi/v1/...` with A1111's routes, field names, defaults and response shapes
(A1111 v1.10 `modules/api/api.py`), so existing clients work unmodified.

Where we differ, on purpose:
- Requests are queued jobs (with ids, stored in the database), not calls serialised by a lock; many clients can
  wait at once and each gets its own result. Settings a job depends on are fixed when it is queued, so a later
  `/options` change never alters a waiting job.
- Bad input is a 422 naming the field before any model work (A1111 floors sizes silently, answers 404 for an
  unknown sampler, and 500 for most other mistakes).
- Features that do not exist yet (face restoration, scripts) are refused with a 422 naming the field rather
  than silently ignored, so a client never gets an image made differently from what it asked for.
- No image grid is returned: `images` holds the images only (`index_of_first_image` is 0).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Body, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse

from sdwebui import __version__
from sdwebui.pipelines.params import ParamError
from sdwebui.server import catalog
from sdwebui.server.a1111_models import (
    MemoryResponse,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    SDVaeItem,
    TextToImageResponse,
    Img2ImgRequest,
    ImageToImageResponse,
    Txt2ImgRequest,
    UpscalerItem,
)
from sdwebui.server.errors import FieldError
from sdwebui.server.extras import (
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    extras_params,
    html_info,
    make_extras_payload,
)
from sdwebui.server.options import OPTIONS, OptionError
from sdwebui.server.queue import QueueFull
from sdwebui.server.services import Services

log = logging.getLogger(__name__)

VERSION = f"sdwebui-{__version__}"

# Txt2ImgParams field -> the A1111 request field that carries it (for 422 field names).
PARAM_TO_FIELD = {
    "batch_count": ("n_iter",),
    "clip_skip": ("override_settings", "CLIP_stop_at_last_layers"),
    "sampler": ("sampler_name",),
    "hr_checkpoint": ("hr_checkpoint_name",),
    "hr_sampler": ("hr_sampler_name",),
}

# Infotext label -> (request field, type); A1111 `infotext_utils.paste_fields["txt2img"]`.
INFOTEXT_FIELDS = {
    "Prompt": ("prompt", str),
    "Negative prompt": ("negative_prompt", str),
    "Steps": ("steps", int),
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Seed resize from-1": ("seed_resize_from_w", int),
    "Seed resize from-2": ("seed_resize_from_h", int),
    "Denoising strength": ("denoising_strength", float),
    "Hires upscale": ("hr_scale", float),
    "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str),
    "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int),
    "Hires sampler": ("hr_sampler_name", str),
    "Hires schedule type": ("hr_scheduler", str),
    "Hires prompt": ("hr_prompt", str),
    "Hires negative prompt": ("hr_negative_prompt", str),
    "Refiner switch at": ("refiner_switch_at", float),
    # Checkpoints appear as "name [short hash]", which `resolve_checkpoint` takes.
    "Hires checkpoint": ("hr_checkpoint_name", str),
    "Refiner": ("refiner_checkpoint", str),
}
HIRES_INFOTEXT_KEYS = ("Hires upscale", "Hires upscaler", "Hires resize-1")
"""A1111 turns hires fix on for a pasted infotext with "Denoising strength" and one of these."""
# Infotext label -> option (A1111 `infotext_utils.infotext_to_setting_name_mapping`).
INFOTEXT_SETTINGS = {
    "Clip skip": ("CLIP_stop_at_last_layers", int),
    "ENSD": ("eta_noise_seed_delta", int),
    "RNG": ("randn_source", str),
    "Schedule min sigma": ("sigma_min", float),
    "Schedule max sigma": ("sigma_max", float),
    "Schedule rho": ("rho", float),
    "Eta": ("eta_ancestral", float),
    "Eta DDIM": ("eta_ddim", float),
    "Sigma churn": ("s_churn", float),
    "Sigma tmin": ("s_tmin", float),
    "Sigma tmax": ("s_tmax", float),
    "Sigma noise": ("s_noise", float),
}

LATENT_UPSCALE_MODES = [
    "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
    "Latent (nearest-exact)",
]
SECRET_FLAGS = ("api_auth", "api_auth_file", "gradio_auth", "gradio_auth_path", "tls_keyfile")
IGNORED_INFO_KEYS = {
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background", "timestamp",
    "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop",
}
MAX_DECODED_PIXELS = 8192 * 8192


def build_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["A1111-compatible API"])

    # ---- generation -----------------------------------------------------------------------------------------
    @router.post("/txt2img", response_model=TextToImageResponse)
    async def text2imgapi(request: Txt2ImgRequest):
        return await generate(services, "txt2img", request, prepare_txt2img)

    @router.post("/img2img", response_model=ImageToImageResponse)
    async def img2imgapi(request: Img2ImgRequest):
        return await generate(services, "img2img", request, prepare_img2img)

    @router.get("/progress", response_model=ProgressResponse)
    def progressapi(skip_current_image: bool = Query(False)):
        return progress_response(services, skip_current_image)

    @router.post("/interrupt")
    def interruptapi():
        for job in services.queue.running():
            job.interrupt()
        return {}

    @router.post("/skip")
    def skip():
        for job in services.queue.running():
            job.skip()

    # ---- options --------------------------------------------------------------------------------------------
    @router.get("/options")
    def get_config():
        return current_options(services)

    @router.post("/options")
    def set_config(req: dict[str, Any] = Body(...)):
        set_options(services, req)

    @router.get("/cmd-flags")
    def get_cmd_flags():
        flags = dict(services.config.flags)
        for key in SECRET_FLAGS:
            if flags.get(key):
                flags[key] = "<redacted>"
        return flags

    # ---- lists ----------------------------------------------------------------------------------------------
    @router.get("/samplers", response_model=list[SamplerItem])
    def get_samplers():
        from sdwebui.core.samplers import SAMPLERS

        return [{"name": spec.name, "aliases": list(spec.aliases), "options": sampler_options(spec)}
                for spec in SAMPLERS.values()]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def get_schedulers():
        from sdwebui.core.schedules import SCHEDULES

        return [
            {"name": spec.name, "label": spec.label, "aliases": list(spec.aliases) or None,
             "default_rho": spec.default_rho if spec.default_rho is not None else -1,
             "need_inner_model": spec.needs_model_schedule}
            for spec in SCHEDULES.values()
        ]

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def get_upscalers():
        return [entry.a1111() for entry in services.upscalers.entries()]

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extras_single_image_api(req: ExtrasSingleImageRequest):
        def prepare():  # decoding and the first use of the upscaler modules (torch) stay off the event loop
            params = extras_params(req)
            image = decode_base64_image(req.image.strip(), ("image",))
            return make_extras_payload(services, params, [(("image",), image)], [""])

        payload = await run_in_threadpool(prepare)
        job = await _run_extras(services, payload)
        info = job.result["infotexts"][0] if job.result and job.result["infotexts"] else ""
        images = await run_in_threadpool(encode_images, job.images)
        return {"image": images[0] if images else None, "html_info": html_info(info)}

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extras_batch_images_api(req: ExtrasBatchImagesRequest):
        def prepare():
            params = extras_params(req)
            decoded = [
                (("imageList", i, "data"), decode_base64_image(item.data.strip(), ("imageList", i, "data")))
                for i, item in enumerate(req.imageList)
            ]
            return make_extras_payload(services, params, decoded, [item.name for item in req.imageList])

        payload = await run_in_threadpool(prepare)
        job = await _run_extras(services, payload)
        infotexts = job.result["infotexts"] if job.result else []
        images = await run_in_threadpool(encode_images, job.images)
        return {"images": images, "html_info": html_info(infotexts[0] if infotexts else "")}

    @router.get("/latent-upscale-modes")
    def get_latent_upscale_modes():
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.get("/sd-models", response_model=list[SDModelItem])
    def get_sd_models():
        return [entry.a1111() for entry in catalog.checkpoints(services.paths)]

    @router.get("/sd-vae", response_model=list[SDVaeItem])
    def get_sd_vaes():
        return catalog.vaes(services.paths)

    @router.get("/loras")
    def get_loras():
        return services.loras.a1111_listing()

    @router.get("/embeddings")
    def get_embeddings():
        # Usable vs skipped depends on the loaded model's text encoders (A1111 always has one loaded; without
        # one, every readable embedding is listed as loaded).
        model = services.loaded_model()
        towers = model.text_encoder.tower_widths if model is not None else None
        return services.embeddings.a1111_listing(towers)

    @router.get("/prompt-styles")
    def get_prompt_styles():
        from sdwebui.prompts.styles import StyleFileError

        try:
            styles = services.styles().styles.values()
        except StyleFileError as error:
            raise HTTPException(500, str(error)) from None
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles]

    @router.get("/hypernetworks")
    def get_hypernetworks():
        return []

    @router.get("/face-restorers")
    def get_face_restorers():
        return []

    @router.get("/realesrgan-models")
    def get_realesrgan_models():
        return []

    @router.get("/scripts")
    def get_scripts_list():
        return {"txt2img": [], "img2img": []}

    @router.get("/script-info")
    def get_script_info():
        return []

    @router.get("/extensions")
    def get_extensions_list():
        return []

    @router.get("/memory", response_model=MemoryResponse)
    def get_memory():
        return {"ram": ram_stats(), "cuda": cuda_stats()}

    # ---- refresh / load -------------------------------------------------------------------------------------
    # Listings are read from disk on every request, so refreshing has nothing to drop; the routes exist because
    # clients call them after copying files in.
    @router.post("/refresh-checkpoints")
    def refresh_checkpoints():
        return None

    @router.post("/refresh-vae")
    def refresh_vae():
        return None

    @router.post("/refresh-loras")
    def refresh_loras():
        return None

    @router.post("/refresh-embeddings")
    def refresh_embeddings():
        services.embeddings.refresh(force=True)
        return None

    @router.post("/unload-checkpoint")
    def unloadapi():
        services.release_memory()
        return {}

    @router.post("/reload-checkpoint")
    async def reloadapi():
        options = services.options.all()
        try:
            payload = await run_in_threadpool(
                lambda: {"checkpoint": str(services.resolve_checkpoint(options.get("sd_model_checkpoint"))),
                         "vae": options.get("sd_vae", "Automatic")}
            )
        except LookupError as error:
            raise HTTPException(404, _lookup_message(error)) from None
        job = services.submit("load_model", payload)
        await job.wait()
        if job.status == "failed":
            raise HTTPException(500, f"loading the checkpoint failed: {job.error}")
        return {}

    # ---- PNG info -------------------------------------------------------------------------------------------
    @router.post("/png-info", response_model=PNGInfoResponse)
    def pnginfoapi(req: PNGInfoRequest):
        from sdwebui.pipelines.infotext import parse_infotext
        from sdwebui.pipelines.output import read_infotext_from_png

        image = decode_base64_image(req.image.strip(), ("image",))
        info = read_infotext_from_png(image) or ""
        items = {
            key: value for key, value in image.info.items()
            if isinstance(key, str) and key != "parameters" and key not in IGNORED_INFO_KEYS
            and isinstance(value, (str, int, float))
        }
        try:
            parameters = parse_infotext(info) if info else {}
        except Exception:  # noqa: BLE001 - an odd text is still returned as is
            parameters = {}
        return {"info": info, "items": items, "parameters": parameters}

    return router


# ---- extras -------------------------------------------------------------------------------------------------


async def _run_extras(services: Services, payload: dict):
    try:
        job = services.submit("extras", payload)
    except QueueFull as error:
        raise HTTPException(503, str(error), headers={"Retry-After": "10"}) from None
    await job.wait()
    if job.status == "failed":
        raise HTTPException(500, f"upscaling failed: {job.error}")
    if job.status == "cancelled":
        raise HTTPException(409, "the job was cancelled before it started")
    return job


# ---- txt2img / img2img --------------------------------------------------------------------------------------


async def generate(services: Services, kind: str, request: Txt2ImgRequest, prepare) -> JSONResponse:
    """Queue a generation job for an A1111 request, wait for it, and answer as A1111 does."""
    warnings = [f"ignored unknown field {key!r}" for key in (request.model_extra or {})]
    # Validation may import the sampler registry (torch) on first use: keep it off the event loop.
    payload = await run_in_threadpool(prepare, services, request, warnings)
    try:
        job = services.submit(kind, payload)
    except QueueFull as error:
        raise HTTPException(503, str(error), headers={"Retry-After": "10"}) from None
    await job.wait()
    if job.status == "failed":
        raise HTTPException(500, f"generation failed: {job.error}")
    if job.status == "cancelled":
        raise HTTPException(409, "the job was cancelled before it started")
    images = await run_in_threadpool(encode_images, job.images) if request.send_images else []
    info = processed_info(request, job, payload)
    parameters = request.model_dump(exclude=set(request.model_extra or {}))
    if kind == "img2img" and not getattr(request, "include_init_images", False):
        # A1111 drops the (large) input images from the echoed parameters unless asked for them.
        parameters["init_images"] = None
        parameters["mask"] = None
    body: dict[str, Any] = {"images": images, "parameters": parameters, "info": json.dumps(info)}
    if warnings:
        body["warnings"] = warnings
    return JSONResponse(body)



def prepare_txt2img(services: Services, req: Txt2ImgRequest, warnings: list[str]) -> dict:
    """A1111 request -> job payload, or a FieldError naming the A1111 field."""
    return prepare_generation(services, req, warnings, "txt2img")


def prepare_generation(
    services: Services,
    req: Txt2ImgRequest,
    warnings: list[str],
    kind: str,
    more_values: dict[str, Any] | None = None,
    more_payload: dict[str, Any] | None = None,
) -> dict:
    """The request handling txt2img and img2img share: infotext, styles, overrides, the common fields, and
    the payload; `more_values` / `more_payload` are the kind's own parameters and payload entries."""
    from sdwebui.models.files import ModelFileError
    from sdwebui.server.generation import make_payload

    apply_infotext(services, req)
    refuse_unavailable(req)
    prompt, negative_prompt = styled_prompts(services, req)
    overrides, ignored = _checked_overrides(services, req.override_settings or {})
    warnings.extend(f"ignored unknown setting override_settings.{key}" for key in ignored)
    default_size_to_native(services, req, overrides)
    sampler_field = "sampler_name" if req.sampler_name else "sampler_index"
    values: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "width": req.width,
        "height": req.height,
        "steps": req.steps,
        "cfg_scale": float(req.cfg_scale),
        "sampler": req.sampler_name or req.sampler_index,
        "scheduler": req.scheduler or "Automatic",
        "seed": req.seed,
        "subseed": req.subseed,
        "subseed_strength": float(req.subseed_strength),
        "seed_resize_from_w": max(0, req.seed_resize_from_w),
        "seed_resize_from_h": max(0, req.seed_resize_from_h),
        "batch_size": req.batch_size,
        "batch_count": req.n_iter,
        "eta": req.eta,
        "s_churn": req.s_churn,
        "s_tmin": req.s_tmin,
        "s_tmax": req.s_tmax or None,  # A1111: 0 means infinity
        "s_noise": req.s_noise,
        **hires_values(req),
    }
    if "CLIP_stop_at_last_layers" in overrides:
        values["clip_skip"] = overrides["CLIP_stop_at_last_layers"]
    values.update(more_values or {})  # settings (img2img_fix_steps, ...) come from `overrides` in make_payload
    try:
        return make_payload(
            services, values,
            checkpoint=overrides.get("sd_model_checkpoint"),
            vae=overrides.get("sd_vae"),
            save_images=req.save_images,
            client="a1111",
            overrides=overrides,
            extra={"styles": list(req.styles or []), "task_id": req.force_task_id, **(more_payload or {})},
            kind=kind,
        )
    except ParamError as error:
        loc = PARAM_TO_FIELD.get(error.field, (error.field,))
        if error.field == "sampler":
            loc = (sampler_field,)
        raise FieldError(loc, error.message) from None
    except ModelFileError as error:
        raise FieldError(("override_settings", "sd_model_checkpoint"), str(error)) from None
    except LookupError as error:
        key = "sd_vae" if "VAE" in _lookup_message(error) else "sd_model_checkpoint"
        if key == "sd_model_checkpoint" and "sd_model_checkpoint" not in overrides:
            raise HTTPException(404, _lookup_message(error)) from None
        raise FieldError(("override_settings", key), _lookup_message(error)) from None


def prepare_img2img(services: Services, req: Img2ImgRequest, warnings: list[str]) -> dict:
    """A1111 img2img request -> job payload: the images are decoded and checked here (a 422 naming
    `init_images.<i>` or `mask`), and stored in the payload as PNG."""
    if not req.init_images:
        raise FieldError(("init_images",), "at least one init image is needed")
    if len(req.init_images) > req.batch_size and req.batch_size > 0 and len(req.init_images) > 1:
        raise FieldError(("init_images",), f"{len(req.init_images)} init images for a batch size of {req.batch_size}; "
                         "give one image, or at most batch size images")
    images = [decode_base64_image(text.strip(), ("init_images", i)) for i, text in enumerate(req.init_images)]
    mask = decode_base64_image(req.mask.strip(), ("mask",)) if req.mask else None
    if mask is not None and mask.size != images[0].size:
        raise FieldError(("mask",), f"the mask is {mask.width}x{mask.height}, the init image "
                         f"{images[0].width}x{images[0].height}; they must be the same size")
    if req.latent_mask:
        warnings.append("ignored latent_mask (not supported; the mask is used)")
    if req.image_cfg_scale is not None:
        warnings.append("image_cfg_scale only applies to instruct-pix2pix models; ignored")
    blur_x, blur_y = (req.mask_blur, req.mask_blur) if req.mask_blur is not None else (req.mask_blur_x, req.mask_blur_y)
    more_values = {
        "denoising_strength": 0.75 if req.denoising_strength is None else float(req.denoising_strength),
        "resize_mode": req.resize_mode,
        "initial_noise_multiplier": req.initial_noise_multiplier,
        "image_cfg_scale": req.image_cfg_scale,
        "mask_blur_x": blur_x,
        "mask_blur_y": blur_y,
        "mask_round": req.mask_round,
        "inpainting_fill": req.inpainting_fill,
        "inpaint_full_res": bool(req.inpaint_full_res),
        "inpaint_full_res_padding": req.inpaint_full_res_padding,
        "inpainting_mask_invert": bool(req.inpainting_mask_invert),
    }
    if req.enable_hr:
        warnings.append("ignored enable_hr (hires fix is a txt2img field)")
        more_values["enable_hr"] = False
    more_payload = {"init_images": png_base64(images), "mask": png_base64([mask])[0] if mask is not None else None}
    return prepare_generation(services, req, warnings, "img2img", more_values, more_payload)


def png_base64(images) -> list[str]:
    """Images as base64 PNG (how a job's payload carries them; PNG keeps every pixel and the alpha)."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def default_size_to_native(services: Services, req: Txt2ImgRequest, overrides: dict[str, Any]) -> None:
    """A request that leaves out width / height gets the checkpoint's native size (SDXL 1024, the demo model
    64), as the UI and CLI do; A1111's API always uses 512, which is wrong for SDXL and for our demo model.
    Sizes a client sends, or an infotext gives, are kept."""
    missing = [name for name in ("width", "height") if name not in req.model_fields_set]
    if missing:
        size = services.native_size(overrides.get("sd_model_checkpoint") or services.options.get("sd_model_checkpoint"))
        for name in missing:
            setattr(req, name, size)


def styled_prompts(services: Services, req: Txt2ImgRequest) -> tuple[str, str]:
    """The prompt and negative prompt with the request's `styles` applied (A1111 applies them to the prompts
    before generating, so the infotext carries the styled text). An unknown style is a 422 on `styles`."""
    from sdwebui.prompts.styles import StyleFileError, UnknownStyleError

    names = [name for name in req.styles or [] if name]
    if not names:
        return req.prompt, req.negative_prompt
    try:
        return services.styles().apply(req.prompt, req.negative_prompt, names)
    except (UnknownStyleError, StyleFileError) as error:
        raise FieldError(("styles",), str(error)) from None


def hires_values(req: Txt2ImgRequest) -> dict[str, Any]:
    """A1111's hires fix, refiner and tiling fields -> Txt2ImgParams fields ("Use same ..." and "None" are
    none; a missing `hr_upscaler` is A1111's default latent mode, "Latent"; a missing `refiner_switch_at` is
    the UI's 0.8)."""
    def same(value, *defaults):
        return None if value in (None, "", *defaults) else value

    values: dict[str, Any] = {
        "tiling": bool(req.tiling),
        "enable_hr": bool(req.enable_hr),
        "hr_scale": float(req.hr_scale),
        "hr_upscaler": req.hr_upscaler or "Latent",
        "hr_second_pass_steps": req.hr_second_pass_steps,
        "hr_resize_x": req.hr_resize_x,
        "hr_resize_y": req.hr_resize_y,
        "hr_checkpoint": same(req.hr_checkpoint_name, "Use same checkpoint"),
        "hr_sampler": same(req.hr_sampler_name, "Use same sampler"),
        "hr_scheduler": same(req.hr_scheduler, "Use same scheduler"),
        "hr_prompt": req.hr_prompt,
        "hr_negative_prompt": req.hr_negative_prompt,
        "refiner_checkpoint": same(req.refiner_checkpoint, "None"),
        "refiner_switch_at": 0.8 if req.refiner_switch_at is None else float(req.refiner_switch_at),
    }
    if req.enable_hr:
        values["denoising_strength"] = 0.7 if req.denoising_strength is None else float(req.denoising_strength)
    if values["hr_sampler"] is not None or values["hr_scheduler"] is not None:
        from sdwebui.server.generation import check_sampling

        try:
            sampler, scheduler = check_sampling(values["hr_sampler"] or req.sampler_name or req.sampler_index,
                                                values["hr_scheduler"] or "Automatic")
        except ParamError as error:
            field = "hr_scheduler" if error.field == "scheduler" else "hr_sampler_name"
            raise FieldError((field,), error.message) from None
        if values["hr_sampler"] is not None:
            values["hr_sampler"] = sampler
    return values


def refuse_unavailable(req: Txt2ImgRequest) -> None:
    if req.restore_faces:
        raise FieldError(("restore_faces",), "face restoration is not available in this server yet")
    if req.script_name:
        raise FieldError(("script_name",), f"Script '{req.script_name}' not found")
    for name in req.alwayson_scripts or {}:
        raise FieldError(("alwayson_scripts", name), f"always on script {name} not found")


def _checked_overrides(services: Services, overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    try:
        accepted, ignored = services.options.validate(overrides, from_api=True)
    except OptionError as error:
        raise FieldError(("override_settings", error.key), error.message) from None
    return accepted, ignored


def settings_from_infotext(services: Services, params: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """The settings a parsed infotext names (A1111's `infotext_to_setting_name_mapping`: Clip skip, ENSD, RNG,
    the schedule and sampler parameters), typed, and the checkpoint its `Model hash` (else its `Model`) names
    when that file is in the model folders. A value that cannot be read is a FieldError when `strict`, else left out."""
    settings: dict[str, Any] = {}
    for label, (key, kind) in INFOTEXT_SETTINGS.items():
        if label not in params:
            continue
        try:
            value = kind(params[label])
        except (TypeError, ValueError):
            if strict:
                raise FieldError(("infotext",), f"cannot read {label!r} from the infotext: {params[label]!r}") from None
            continue
        settings[key] = str(value).upper() if key == "randn_source" else value
    model_hash, model_name = params.get("Model hash"), params.get("Model")
    if model_hash or model_name:
        entries = catalog.checkpoints(services.paths)
        # By hash when the file's hash is known (hashed once it was loaded), else by A1111's model name.
        by_hash = [e for e in entries if model_hash and e.sha256 and e.sha256.startswith(str(model_hash).lower())]
        by_name = [e for e in entries if model_name and e.model_name == str(model_name)]
        if by_hash or by_name:
            settings["sd_model_checkpoint"] = (by_hash or by_name)[0].title
    return settings


def apply_infotext(services: Services, req: Txt2ImgRequest) -> None:
    """A1111 `Api.apply_infotext`: fields the request did not set are taken from the infotext; settings named
    in it become `override_settings` unless the request overrides them itself."""
    if not req.infotext:
        return
    from sdwebui.pipelines.infotext import parse_infotext

    params = parse_infotext(req.infotext)
    explicit = set(req.model_fields_set)
    for label, (name, kind) in INFOTEXT_FIELDS.items():
        if label not in params or name in explicit:
            continue
        try:
            value = kind(params[label]) if kind is not float else float(params[label])
        except (TypeError, ValueError):
            raise FieldError(("infotext",), f"cannot read {label!r} from the infotext: {params[label]!r}") from None
        setattr(req, name, value)
    if "enable_hr" not in explicit and "Denoising strength" in params and any(k in params for k in HIRES_INFOTEXT_KEYS):
        req.enable_hr = True
    overrides = dict(req.override_settings or {})
    for key, value in settings_from_infotext(services, params).items():
        if key not in overrides and (key == "sd_model_checkpoint" or value != OPTIONS[key].default):
            overrides[key] = value
    if overrides:
        req.override_settings = overrides
    # Re-validate what the infotext put in (a pasted "Size: 1000x1000" must fail like a typed one would).
    try:
        type(req).model_validate(req.model_dump())
    except Exception as error:  # noqa: BLE001 - pydantic.ValidationError
        errors = getattr(error, "errors", lambda: [])()
        loc = tuple(errors[0]["loc"]) if errors else ("infotext",)
        message = errors[0]["msg"] if errors else str(error)
        raise FieldError(loc, f"{message} (from the infotext)") from None


def encode_images(images) -> list[str]:
    """base64 PNGs with the infotext in their `parameters` chunk (A1111 `encode_pil_to_base64`)."""
    from PIL import PngImagePlugin

    out = []
    for image in images:
        info = PngImagePlugin.PngInfo()
        for key, value in image.info.items():
            if isinstance(key, str) and isinstance(value, str):
                info.add_text(key, value)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


STANDARD_INFOTEXT_KEYS = {
    "Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Clip skip", "ENSD", "RNG", "Version",
    "Face restoration",
}


def processed_info(req: Txt2ImgRequest, job, payload: dict) -> dict:
    """A1111 `Processed.js()`: the `info` of a txt2img response."""
    from sdwebui.pipelines.infotext import parse_params_line, split_infotext

    result = job.result or {}
    params = result.get("params") or payload["params"]
    seeds = result.get("seeds") or []
    subseeds = result.get("subseeds") or []
    infotexts = result.get("infotexts") or []
    model = result.get("model") or {}
    count = len(seeds)
    extra: dict[str, Any] = {}
    if infotexts:
        line = split_infotext(infotexts[0])[2]
        extra = {k: v for k, v in parse_params_line(line).items()
                 if k.rsplit("-", 1)[0] not in STANDARD_INFOTEXT_KEYS}
    started = job.progress.started or time.time()
    return {
        "prompt": params["prompt"],
        "all_prompts": [params["prompt"]] * count,
        "negative_prompt": params["negative_prompt"],
        "all_negative_prompts": [params["negative_prompt"]] * count,
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
        "restore_faces": bool(req.restore_faces),
        "face_restoration_model": None,
        "sd_model_name": model.get("name"),
        "sd_model_hash": model.get("hash"),
        "sd_vae_name": model.get("vae_name"),
        "sd_vae_hash": model.get("vae_hash"),
        "seed_resize_from_w": req.seed_resize_from_w,
        "seed_resize_from_h": req.seed_resize_from_h,
        "denoising_strength": req.denoising_strength,
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": list(req.styles or []),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
        "clip_skip": params["clip_skip"],
        "is_using_inpainting_conditioning": "Conditional mask weight" in extra,
        "version": VERSION,
    }


# ---- progress -----------------------------------------------------------------------------------------------


def progress_response(services: Services, skip_current_image: bool) -> dict:
    """A1111 `progressapi`: progress 0..1 over the job's batches and steps, ETA extrapolated from time spent."""
    running = services.queue.running()
    job = running[0] if running else None
    if job is None:
        state = _state(None)
        return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None,
                "current_task": None}
    p = job.progress
    # A1111 starts at 0.01 so that the ETA is defined from the first poll.
    progress = 0.01 + p.batch_index / max(1, p.batch_count)
    if p.total_steps > 0:
        progress += p.step / p.total_steps / max(1, p.batch_count)
    elapsed = time.time() - (p.started or time.time())
    eta_relative = elapsed / progress - elapsed
    current_image = None
    if p.preview_png is not None and not skip_current_image:
        current_image = base64.b64encode(p.preview_png).decode("ascii")
    return {
        "progress": min(progress, 1.0),
        "eta_relative": eta_relative,
        "state": _state(job),
        "current_image": current_image,
        "textinfo": p.textinfo,
        "current_task": job.payload.get("task_id") or job.id,
    }


def _state(job) -> dict:
    """A1111 `State.dict()`."""
    if job is None:
        return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
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


# ---- options ------------------------------------------------------------------------------------------------


def current_options(services: Services) -> dict:
    options = services.options.all()
    if not options.get("sd_model_checkpoint"):
        entries = catalog.checkpoints(services.paths)
        options["sd_model_checkpoint"] = entries[0].title if entries else None
    loaded = services.models.loaded if services._models is not None else None
    options["sd_checkpoint_hash"] = loaded.info.sha256 if loaded is not None else ""
    return options


def set_options(services: Services, values: dict[str, Any]) -> None:
    try:
        accepted, ignored = services.options.validate(values, from_api=True)
    except OptionError as error:
        raise FieldError((error.key,), error.message) from None
    if ignored:
        log.info("ignored unknown options: %s", ", ".join(sorted(ignored)))
    switch = None
    if "sd_model_checkpoint" in accepted:
        name = accepted["sd_model_checkpoint"]
        try:
            path = services.resolve_checkpoint(name)
        except LookupError as error:
            raise FieldError(("sd_model_checkpoint",), _lookup_message(error)) from None
        accepted["sd_model_checkpoint"] = catalog.entry_for(services.paths, path).title
        switch = str(path)
    if "sd_vae" in accepted:
        try:
            services.resolve_vae(accepted["sd_vae"])
        except LookupError as error:
            raise FieldError(("sd_vae",), _lookup_message(error)) from None
    services.options.update(accepted)
    if switch is not None:
        # Load in queue order (A1111 loads at once, under its lock): the next job finds the model ready.
        try:
            services.submit("load_model", {"checkpoint": switch, "vae": services.options.get("sd_vae")})
        except QueueFull:
            pass


# ---- helpers ------------------------------------------------------------------------------------------------


def sampler_options(spec) -> dict:
    """A1111's per-sampler `options` dict (`sd_samplers_kdiffusion.samplers_k_diffusion`)."""
    options: dict[str, Any] = {}
    if spec.default_schedule not in ("Uniform", "DDIM", "SGM Uniform"):
        from sdwebui.core.schedules import find_schedule

        options["scheduler"] = find_schedule(spec.default_schedule).name
    if spec.uses_ensd:
        options["uses_ensd"] = True
    if spec.second_order:
        options["second_order"] = True
    if spec.brownian_noise:
        options["brownian_noise"] = True
    if spec.discard_penultimate_sigma:
        options["discard_next_to_last_sigma"] = True
    if "solver_type" in spec.options:
        options["solver_type"] = spec.options["solver_type"]
    return options


def decode_base64_image(text: str, loc: tuple):
    """A base64 image (optionally a `data:image/...;base64,` URL) -> PIL image, or a 422 naming `loc`."""
    from PIL import Image

    if text.startswith("data:"):
        text = text.split(",", 1)[1] if "," in text else ""
    if text.startswith(("http://", "https://")):
        raise FieldError(loc, "image URLs are not fetched; send the image as base64")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(loc, "not valid base64") from None
    if not data:
        raise FieldError(loc, "empty image")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_DECODED_PIXELS:
            raise FieldError(loc, f"image too large ({image.width}x{image.height})", status=413)
        image.load()
    except FieldError:
        raise
    except Image.DecompressionBombError:
        raise FieldError(loc, "image too large", status=413) from None
    except Exception:  # noqa: BLE001 - PIL raises many types for bad data
        raise FieldError(loc, "not a readable image") from None
    return image


def ram_stats() -> dict:
    """A1111's `ram`: this process's RSS as `used`, the machine's memory as `total`."""
    try:
        with open("/proc/self/statm") as file:
            rss = int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return {"free": total - rss, "used": rss, "total": total}
    except (OSError, ValueError, AttributeError) as error:
        return {"error": str(error)}


def cuda_stats() -> dict:
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return {"error": "unavailable"}
        free, total = torch.cuda.mem_get_info()
        s = dict(torch.cuda.memory_stats())
        pick = lambda name: {"current": s.get(f"{name}.all.current", 0), "peak": s.get(f"{name}.all.peak", 0)}  # noqa: E731
        return {
            "system": {"free": free, "used": total - free, "total": total},
            "active": pick("active_bytes"),
            "allocated": pick("allocated_bytes"),
            "reserved": pick("reserved_bytes"),
            "inactive": pick("inactive_split_bytes"),
            "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)},
        }
    except Exception as error:  # noqa: BLE001
        return {"error": str(error)}


def _lookup_message(error: Exception) -> str:
    return str(error.args[0]) if error.args else str(error)


__all__ = ["build_router"]
