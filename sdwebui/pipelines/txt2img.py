"""txt2img: prompt -> conditioning -> seeded noise -> sampler over a CFG denoiser -> VAE decode.

The composition follows A1111's `process_images` (seeds seed+i per image, conditioning computed once per job and
prompt schedule, one sampler run per batch), through the sampling engine's public names (`pipelines.sampling`).
Per batch, as A1111: the scripts may change the prompts, extra-network tags are taken out of the prompts and
handed to `ctx.extra_networks`, the prompt language becomes a schedule the CFG denoiser reads per call, and the
infotext keeps each image's prompt as typed. Hires fix (`pipelines.hires`) and the SDXL refiner take over the
batch where A1111's do.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from sdwebui.core.samplers import ResolvedSampling
from sdwebui.models.tiling import circular_padding
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.hires import HiresFix, plan_hires
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.sampling import (
    BatchDenoisers,
    FinishedBatches,
    GenerationError,
    GenerationResult,
    JobSeeds,
    NetworkScope,
    OtherModels,
    Refiner,
    batch_prompts,
    create_infotext,
    make_denoiser,
    refiner_negative_condition,
    resolve_sampling,
    sample_batch,
    sampler_options,
    schedule_sigmas,
    scheduled_denoiser,
    unet_condition,
    was_skipped,
)


@dataclass
class Txt2ImgRun:
    """One txt2img job's fixed parts, made once before its batches."""

    ctx: GenerationContext
    params: Txt2ImgParams
    sampling: ResolvedSampling
    job_seeds: JobSeeds
    latent_shape: tuple[int, int, int]
    sigmas: torch.Tensor
    sampler_kwargs: dict
    denoisers: BatchDenoisers
    networks: NetworkScope
    finished: FinishedBatches
    refiner: Refiner | None
    hires: HiresFix | None
    notes: list[str]


def txt2img(ctx: GenerationContext, params: Txt2ImgParams) -> GenerationResult:
    sampling = resolve_sampling(params.sampler, params.scheduler)
    with torch.inference_mode(), ExitStack() as stack:
        run = _prepare(ctx, params, sampling, stack)
        interrupted = False
        for batch_index in range(run.params.batch_count):
            if ctx.stop.interrupted.is_set():
                interrupted = True
                break
            ctx.stop.skipped.clear()
            if _run_batch(run, batch_index):
                interrupted = True
                break
        return run.finished.result(run.latent_shape, interrupted)


def _prepare(ctx: GenerationContext, params: Txt2ImgParams, sampling: ResolvedSampling,
             stack: ExitStack) -> Txt2ImgRun:
    model = ctx.model
    job_seeds = JobSeeds.of(params)
    params = job_seeds.params
    stack.enter_context(circular_padding(model.unet, model.vae, enabled=params.tiling))
    models = OtherModels(ctx, stack, params.tiling)
    inner = make_denoiser(model, ctx.hooks)
    sigmas, schedule_infotext = schedule_sigmas(sampling, params, inner)
    sampler_kwargs, sampler_infotext = sampler_options(sampling, params)
    networks = NetworkScope(ctx, stack)
    refiner = Refiner(ctx, params, models) if params.refiner_checkpoint else None
    hires = _hires(ctx, params, sampling, models, refiner) if params.enable_hr else None
    notes: list[str] = []

    def make_infotext(image_seed, image_subseed, batch_extra, prompt, negative_prompt):
        refiner_infotext = refiner.infotext if refiner is not None else {}
        return create_infotext(model, params, sampling, image_seed, image_subseed,
                               {**batch_extra, **sampler_infotext, **schedule_infotext, **refiner_infotext},
                               prompt, negative_prompt)

    wrap = None
    if refiner is not None and hires is None:
        def wrap(denoiser, prompts, negative_prompts):
            return refiner.wrap(denoiser, model, prompts, negative_prompts, params.width, params.height)
    # A1111 lays prompt schedules out over the denoiser calls the sampler plans (2 per step if second order).
    denoisers = BatchDenoisers(ctx, model, inner, networks, params, sampling.sampler.total_steps(params.steps), wrap)
    latent_shape = (model.latent_channels, params.height // 8, params.width // 8)
    return Txt2ImgRun(ctx, params, sampling, job_seeds, latent_shape, sigmas.to(model.device), sampler_kwargs,
                      denoisers, networks, FinishedBatches(ctx, params, notes, make_infotext), refiner, hires, notes)


def _hires(ctx, params, sampling, models: OtherModels, refiner: Refiner | None) -> HiresFix:
    plan = plan_hires(ctx, params, sampling, models.load)
    wrap = None
    if refiner is not None:  # A1111's default "second pass": the refiner acts in the hires pass only
        size = params.hires_target[:2]
        wrap = lambda d, p: refiner.wrap(d, plan.model, p["prompts"], p["negative_prompts"], *size, hires=True)  # noqa: E731
    return HiresFix(ctx, plan, wrap)


def _run_batch(run: Txt2ImgRun, batch_index: int) -> bool:
    """Sample one batch (and its hires pass), keep it unless it was skipped; True when the job must stop."""
    ctx, params = run.ctx, run.params
    batch = run.job_seeds.batch(batch_index)
    prompts = batch_prompts(ctx, params, batch_index, run.job_seeds.seeds[batch], run.job_seeds.subseeds[batch])
    _, denoiser, batch_extra = run.denoisers.for_batch(prompts.prompts, prompts.negative_prompts, run.notes)
    latents, stopped = sample_batch(
        ctx, run.sampling.sampler, denoiser, run.sigmas, prompts.seeds, prompts.subseeds, run.latent_shape, params,
        batch_index, run.sampler_kwargs, more_steps=run.hires.step_count if run.hires is not None else 0,
    )
    switched = getattr(denoiser, "switched_at_call", None) is not None
    decode_model = run.refiner.model if switched else ctx.model
    if was_skipped(ctx, stopped):
        return False
    hires = run.hires
    if hires is not None and not stopped:
        latents, stopped = hires.run(decode_model, latents, prompts.seeds, prompts.subseeds, batch_index,
                                     steps_before=len(run.sigmas) - 1, networks=run.networks)
        run.notes.extend(note for note in hires.notes if note not in run.notes)
        switched = getattr(hires.last_denoiser, "switched_at_call", None) is not None
        decode_model = run.refiner.model if switched else hires.plan.model
        batch_extra = {**hires.plan.infotext, **batch_extra, **hires.extra_infotext}
        if was_skipped(ctx, stopped):
            return False
    run.finished.add(decode_model, latents, prompts, batch_extra)
    return stopped


__all__ = [
    "txt2img", "GenerationResult", "GenerationError", "resolve_sampling", "make_denoiser", "unet_condition",
    "refiner_negative_condition", "scheduled_denoiser",
]
