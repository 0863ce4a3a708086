"""txt2img as a queued job: the payload a job stores, its validation before queueing, and the runner.

A job's payload is plain JSON (it lives in the store and must survive a restart):

    {"params": {<Txt2ImgParams fields>}, "checkpoint": "/abs/path.safetensors", "vae": "Automatic",
     "rng": "gpu", "eta_noise_seed_delta": 0, "save_images": true, "save_to_dirs": true,
     "outdir": "txt2img-images", "preview_every": 10, "styles": [], "client": "native"}

Everything that depends on settings (checkpoint, VAE, RNG source, preview period) is resolved when the job is
submitted, so changing a setting never changes a job that is already waiting (A1111 #5847).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.params import ParamError, Txt2ImgParams
from sdwebui.server.options import output_folder

if TYPE_CHECKING:
    from sdwebui.server.queue import JobHandle
    from sdwebui.server.services import Services

PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(Txt2ImgParams))
PARAMS_TYPES = {"txt2img": Txt2ImgParams, "img2img": Img2ImgParams}
OUTDIR_OPTIONS = {"txt2img": ("outdir_txt2img_samples", "txt2img-images"),
                  "img2img": ("outdir_img2img_samples", "img2img-images")}


def param_fields(kind: str) -> tuple[str, ...]:
    """The parameter names a job of this kind stores (Txt2ImgParams' for txt2img, Img2ImgParams' for img2img)."""
    return tuple(f.name for f in dataclasses.fields(PARAMS_TYPES[kind]))


def check_sampling(sampler: str, scheduler: str) -> tuple[str, str]:
    """Validate a sampler / schedule pair as `pipelines.txt2img.resolve_sampling` does (same errors), from the
    core registries only: the pipeline module pulls in diffusers, which a request should not wait for."""
    from sdwebui.core.samplers import find_sampler, parse_sampler_name
    from sdwebui.core.schedules import find_schedule

    try:
        find_schedule(scheduler or "Automatic")
    except KeyError as error:
        raise ParamError("scheduler", _message(error)) from None
    try:
        name, schedule = parse_sampler_name(sampler, scheduler or "Automatic")
        return find_sampler(name).name, schedule
    except KeyError as error:
        raise ParamError("sampler", _message(error)) from None


def _message(error: Exception) -> str:
    return error.args[0] if error.args and isinstance(error.args[0], str) else str(error)


def check_limits(params: Txt2ImgParams, options: Mapping[str, Any]) -> None:
    """The server's own limits (settings `api_max_*`), on top of what the parameters allow."""
    pixels = params.width * params.height * params.batch_size
    if pixels > options["api_max_pixels"]:
        raise ParamError(
            "width",
            f"width x height x batch size = {pixels} pixels is over this server's limit of "
            f"{options['api_max_pixels']} (setting api_max_pixels)",
        )
    if params.image_count > options["api_max_images"]:
        raise ParamError(
            "batch_count",
            f"batch size x batch count = {params.image_count} images is over this server's limit of "
            f"{options['api_max_images']} (setting api_max_images)",
        )
    if params.steps > options["api_max_steps"]:
        raise ParamError("steps", f"{params.steps} steps is over this server's limit of {options['api_max_steps']}")
    if getattr(params, "enable_hr", False):
        width, height = params.hires_size
        if width * height * params.batch_size > options["api_max_pixels"]:
            raise ParamError(
                "hr_scale",
                f"the hires size {width}x{height} x batch size is over this server's limit of "
                f"{options['api_max_pixels']} pixels (setting api_max_pixels)",
            )
        if params.hires_steps > options["api_max_steps"]:
            raise ParamError("hr_second_pass_steps", f"{params.hires_steps} steps is over this server's limit")


def resolve_other_models(services: "Services", params):
    """The hires checkpoint and refiner named by a request, as paths (ParamError naming the field when not
    found), and the hires upscaler checked against what is installed. A1111's "Use same checkpoint" and
    refiner "None" mean none."""
    from sdwebui.pipelines.upscale import is_latent_mode

    changes: dict[str, Any] = {}
    for name in ("hr_checkpoint", "refiner_checkpoint"):
        value = getattr(params, name, None)
        if value in (None, "", "None", "Use same checkpoint"):
            if value is not None:
                changes[name] = None
            continue
        try:
            changes[name] = str(services.resolve_checkpoint(value))
        except LookupError as error:
            raise ParamError(name, str(error.args[0]) if error.args else str(error)) from None
    if getattr(params, "enable_hr", False) and not is_latent_mode(params.hr_upscaler):
        try:
            services.upscalers.find(params.hr_upscaler)
        except LookupError as error:
            raise ParamError("hr_upscaler", str(error.args[0])) from None
    return params.replace(**changes) if changes else params


def preview_period(options: Mapping[str, Any]) -> int:
    return int(options["show_progress_every_n_steps"]) if options["live_previews_enable"] else 0


def make_payload(
    services: "Services",
    params: Mapping[str, Any],
    *,
    checkpoint: str | None = None,
    vae: str | None = None,
    save_images: bool = True,
    client: str = "native",
    overrides: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    kind: str = "txt2img",
) -> dict:
    """Validate everything a job needs (raises ParamError naming the field, or ModelNotFoundError) and return
    its payload. No model is loaded here. `kind` is "txt2img" or "img2img" (whose `extra` carries the images)."""
    options = {**services.options.all(), **(overrides or {})}
    values = dict(params)
    # Settings a request did not give (A1111 takes these from its options).
    values.setdefault("clip_skip", int(options["CLIP_stop_at_last_layers"]))
    values.setdefault("emphasis", str(options["emphasis"]))
    sampler = str(values.get("sampler", "DPM++ 2M"))
    scheduler = str(values.get("scheduler", "Automatic") or "Automatic")
    # Stored as resolved (A1111's API does the same): "DPM++ 2M Karras" -> sampler "DPM++ 2M", schedule "Karras".
    sampler_name, schedule = check_sampling(sampler, scheduler)
    values["sampler"], values["scheduler"] = sampler_name, schedule
    _apply_sampler_settings(values, sampler_name, options)
    if kind == "img2img":
        # A1111 takes these from its settings; a request's own value wins.
        values.setdefault("fix_steps", bool(options["img2img_fix_steps"]))
        if values.get("initial_noise_multiplier") is None:
            values["initial_noise_multiplier"] = float(options["initial_noise_multiplier"])
        values.setdefault("inpainting_mask_weight", float(options["inpainting_mask_weight"]))
    p = PARAMS_TYPES[kind](**values)
    check_limits(p, options)
    p = resolve_other_models(services, p)
    checkpoint_path = services.resolve_checkpoint(checkpoint or options.get("sd_model_checkpoint"))
    vae_name = vae if vae is not None else options.get("sd_vae", "Automatic")
    services.resolve_vae(vae_name)
    payload = {
        "params": {name: getattr(p, name) for name in param_fields(kind)},
        "checkpoint": str(checkpoint_path),
        "vae": vae_name or "Automatic",
        "rng": str(options["randn_source"]).lower(),
        "eta_noise_seed_delta": int(options["eta_noise_seed_delta"]),
        "save_images": bool(save_images),
        "save_to_dirs": bool(options["save_to_dirs"]),
        "outdir": output_folder(
            services.paths.outputs_dir,
            options["outdir_samples"] or options[OUTDIR_OPTIONS[kind][0]] or OUTDIR_OPTIONS[kind][1],
        ),
        "filename_pattern": str(options["samples_filename_pattern"] or "[seed]"),
        "nan_check": not options["disable_nan_check"],
        "upscale_tile": [int(options["ESRGAN_tile"]), int(options["ESRGAN_tile_overlap"])],
        "preview_every": preview_period(options),
        "client": client,
    }
    payload.update(extra or {})
    return payload


def _apply_sampler_settings(values: dict, sampler_name: str, options: Mapping[str, Any]) -> None:
    """A1111's sampler settings (eta, sigma churn/tmin/tmax/noise, schedule sigma range and rho) apply when the
    request leaves them out; values equal to the sampler's own defaults are left to the sampler."""
    from sdwebui.core.samplers import find_sampler

    defaults = find_sampler(sampler_name).options
    if values.get("eta") is None:
        default_eta = defaults.get("eta", 1.0)
        eta = options["eta_ddim"] if default_eta == 0.0 else options["eta_ancestral"]
        if "eta" in defaults and float(eta) != float(default_eta):
            values["eta"] = float(eta)
    for name, neutral in (("s_churn", 0.0), ("s_tmin", 0.0), ("s_noise", 1.0)):
        if values.get(name) is None and float(options[name]) != neutral:
            values[name] = float(options[name])
    if values.get("s_tmax") is None and float(options["s_tmax"]) > 0:
        values["s_tmax"] = float(options["s_tmax"])
    for name in ("sigma_min", "sigma_max", "rho"):
        if values.get(name) is None and float(options[name]) > 0:
            values[name] = float(options[name])
    if options["always_discard_next_to_last_sigma"]:
        values.setdefault("discard_penultimate_sigma", True)


def preview_png(denoised, family: str) -> bytes:
    from PIL import Image

    from sdwebui.core.latent_preview import latent_preview

    array = latent_preview(denoised[0], family)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def run_txt2img(job: "JobHandle", services: "Services") -> dict:
    """Generate, save (when asked) and record the images of one txt2img job."""
    return run_generation(job, services, "txt2img")


def run_img2img(job: "JobHandle", services: "Services") -> dict:
    """Generate, save (when asked) and record the images of one img2img / inpainting job."""
    return run_generation(job, services, "img2img")


def payload_images(payload: Mapping[str, Any]) -> tuple[list, Any]:
    """The init images and mask an img2img payload carries (base64 PNG, checked before queueing)."""
    import base64

    from PIL import Image

    def decode(text: str):
        image = Image.open(io.BytesIO(base64.b64decode(text)))
        image.load()
        return image

    mask = payload.get("mask")
    return [decode(text) for text in payload.get("init_images", [])], decode(mask) if mask else None


def _img2img_batch(ctx, params, batch: list[dict]):
    """A1111's img2img "Batch" (from a folder): every image (with its mask, if any) is a run of its own, with
    the same parameters; the results are put together. An interrupt ends the whole batch."""
    from sdwebui.pipelines.img2img import img2img

    combined = None
    for entry in batch:
        images, mask = payload_images({"init_images": [entry["image"]], "mask": entry.get("mask")})
        result = img2img(ctx, params, images, mask)
        if combined is None:
            combined = result
        else:
            combined.images.extend(result.images)
            combined.seeds.extend(result.seeds)
            combined.infotexts.extend(result.infotexts)
            combined.notes.extend(note for note in result.notes if note not in combined.notes)
            combined.interrupted = result.interrupted
        if result.interrupted or ctx.stop.interrupted.is_set():
            combined.interrupted = True
            break
    return combined


def run_generation(job: "JobHandle", services: "Services", kind: str) -> dict:
    from sdwebui.pipelines.context import FinishedImages, GenerationContext
    from sdwebui.pipelines.networks import LoraNetworks
    from sdwebui.pipelines.output import save_image

    payload = job.payload
    params = PARAMS_TYPES[kind](**payload["params"])
    fields = param_fields(kind)
    model = services.models.get(payload["checkpoint"], vae=payload.get("vae"))
    family = model.family.value
    every = int(payload.get("preview_every", 0))
    save_progress = services.worker.progress_saver(job)
    job.progress.textinfo = None

    def on_step(progress) -> None:
        at_end = progress.step == progress.total_steps
        wanted = every > 0 and progress.step % every == 0 or every == -1 and at_end
        make_preview = None
        if wanted and progress.denoised is not None:
            make_preview = lambda: preview_png(progress.denoised, family)  # noqa: E731
        job.report_step(progress.step, progress.total_steps, progress.batch_index, progress.batch_count,
                        make_preview)
        save_progress()

    saved: list[dict] = []
    outputs = services.paths.outputs_dir
    outdir = outputs / payload.get("outdir", OUTDIR_OPTIONS[kind][1])

    def on_images(batch: FinishedImages) -> None:
        """Each batch is saved as soon as it is decoded (as A1111 does): a job stopped later, or a server that
        dies, keeps the images already made."""
        for image, infotext in zip(batch.images, batch.infotexts):
            image.info["parameters"] = infotext  # the PNGs a client gets carry the infotext, as A1111's do
        if not payload.get("save_images", True):
            return
        resolved = batch.params
        filename_fields = {
            "prompt": resolved.prompt, "negative_prompt": resolved.negative_prompt, "steps": resolved.steps,
            "cfg_scale": resolved.cfg_scale, "width": resolved.width, "height": resolved.height,
            "sampler": resolved.sampler, "scheduler": resolved.scheduler, "clip_skip": resolved.clip_skip,
            "model_name": model.info.name, "model_hash": model.info.short_hash,
        }
        for image, seed, infotext in zip(batch.images, batch.seeds, batch.infotexts):
            path = save_image(image, outdir, seed=seed, infotext=infotext,
                              date_subdir=bool(payload.get("save_to_dirs", True)),
                              pattern=payload.get("filename_pattern", "[seed]"), fields=filename_fields)
            relative = path.relative_to(outputs).as_posix()
            image_id = services.store.add_image(
                job_id=job.id, path=relative, seed=seed, prompt=resolved.prompt,
                negative_prompt=resolved.negative_prompt, infotext=infotext,
                params={name: getattr(resolved, name) for name in fields},
                model_name=model.info.name, model_hash=model.info.short_hash,
                width=image.width, height=image.height,
            )
            saved.append({"id": image_id, "path": relative})

    ctx = GenerationContext(
        model=model,
        rng=payload.get("rng", "gpu"),
        eta_noise_seed_delta=int(payload.get("eta_noise_seed_delta", 0)),
        on_step=on_step,
        stop=job.stop,
        embeddings=services.embeddings,
        extra_networks=LoraNetworks(services.loras),
        nan_check=bool(payload.get("nan_check", True)),
        load_model=services.models.get_secondary,
        upscalers=services.upscalers,
        upscale_tile=tuple(payload.get("upscale_tile", (192, 8))),
        on_images=on_images,
    )
    if kind == "img2img":
        from sdwebui.pipelines.img2img import img2img

        if payload.get("batch"):
            result = _img2img_batch(ctx, params, payload["batch"])
        else:
            init_images, mask = payload_images(payload)
            result = img2img(ctx, params, init_images, mask)
    else:
        from sdwebui.pipelines.txt2img import txt2img

        result = txt2img(ctx, params)
    job.images = result.images
    job.interrupted = result.interrupted
    resolved = result.params
    count = len(result.images)
    return {
        "params": {name: getattr(resolved, name) for name in fields},
        "seeds": result.seeds,
        "subseeds": [resolved.subseed + i for i in range(count)],
        "infotexts": result.infotexts,
        "images": saved,
        "model": {
            "name": model.info.name,
            "hash": model.info.short_hash,
            "sha256": model.info.sha256,
            "vae_name": model.vae_info.path.name if model.vae_info else None,
            "vae_hash": model.vae_info.short_hash if model.vae_info else None,
        },
        "notes": list(result.notes),
        "interrupted": result.interrupted,
    }


__all__ = [
    "make_payload", "run_txt2img", "run_img2img", "run_generation", "param_fields", "payload_images",
    "check_sampling", "check_limits", "PARAM_FIELDS",
]
