"""What is installed and what is loaded, as A1111 lists it: samplers, schedulers, upscalers, checkpoints, VAEs,
LoRAs, embeddings, styles, the refresh / unload / reload routes, and memory use."""

from __future__ import annotations

import os
import sys
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import HTTPException

from sdwebui.core.errors import ParamError
from sdwebui.core.upscale_modes import LATENT_UPSCALE_MODES
from sdwebui.prompts.styles import StyleFileError
from sdwebui.server import catalog, extra_networks
from sdwebui.server.a1111.progress import raise_for_failure
from sdwebui.server.a1111.schemas import (
    MemoryResponse,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    SDVaeItem,
    UpscalerItem,
)
from sdwebui.server.services import Services


def build_router(services: Services) -> APIRouter:
    router = APIRouter()
    _listing_routes(router, services)
    _loading_routes(router, services)
    return router


def _listing_routes(router: APIRouter, services: Services) -> None:
    """What is installed: samplers, schedulers, upscalers, checkpoints, VAEs, LoRAs, embeddings, styles, memory."""

    @router.get("/samplers", response_model=list[SamplerItem])
    def get_samplers():
        from sdwebui.core.samplers import SAMPLERS  # the registry imports torch: not at start-up

        return [{"name": spec.name, "aliases": list(spec.aliases), "options": sampler_options(spec)}
                for spec in SAMPLERS.values()]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def get_schedulers():
        from sdwebui.core.schedules import SCHEDULES  # torch

        return [
            {"name": spec.name, "label": spec.label, "aliases": list(spec.aliases) or None,
             "default_rho": spec.default_rho if spec.default_rho is not None else -1,
             "need_inner_model": spec.needs_model_schedule}
            for spec in SCHEDULES.values()
        ]

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def get_upscalers():
        return [entry.a1111() for entry in services.upscalers.entries()]

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

        try:
            styles = services.styles().styles.values()
        except StyleFileError as error:
            raise HTTPException(500, str(error)) from None
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles]

    @router.get("/hypernetworks")
    def get_hypernetworks():
        # A1111's items (name, path); listed for clients and the Extra Networks cards, not applied yet
        return [{"name": name, "path": str(path)} for name, path in extra_networks.hypernetworks(services).items()]

    @router.get("/face-restorers")
    def get_face_restorers():
        # A1111's `FaceRestorerItem`s (name, cmd_dir): the restorers whose model file is installed
        from sdwebui.models.face_restorers import find_face_restorers  # torch: not at start-up

        return [entry.a1111() for entry in find_face_restorers(services.paths.models_dir)]

    @router.get("/realesrgan-models")
    def get_realesrgan_models():
        # A1111's `RealesrganItem`s (name, path, scale): here the files in models/RealESRGAN (A1111 also lists
        # the ones it would download)
        return [{"name": entry.name, "path": str(entry.path), "scale": entry.scale}
                for entry in services.upscalers.entries() if entry.family == "RealESRGAN"]

    @router.get("/memory", response_model=MemoryResponse)
    def get_memory():
        return {"ram": ram_stats(), "cuda": cuda_stats()}


def _loading_routes(router: APIRouter, services: Services) -> None:
    """Refreshing the listings, unloading and reloading the checkpoint."""

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
        def submit():  # the settings are read, and the job written, off the event loop
            options = services.options.all()
            return services.generation.load_model(options.get("sd_model_checkpoint"),
                                                  options.get("sd_vae", "Automatic"))

        try:
            job = await run_in_threadpool(submit)
        except ParamError as error:
            raise HTTPException(404, error.message) from None
        await job.wait()
        raise_for_failure(job, "loading the checkpoint")
        return {}


def sampler_options(spec) -> dict:
    """A1111's per-sampler `options` dict (`sd_samplers_kdiffusion.samplers_k_diffusion`)."""
    from sdwebui.core.schedules import find_schedule  # torch

    options: dict[str, Any] = {}
    if spec.default_schedule not in ("Uniform", "DDIM", "SGM Uniform"):
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
    torch = sys.modules.get("torch")  # never import torch just to say it is not in use
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


__all__ = ["build_router", "sampler_options"]
