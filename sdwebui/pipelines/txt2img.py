"""txt2img: prompt -> conditioning -> seeded noise -> sampler over a CFG denoiser -> VAE decode.

The composition follows A1111's `process_images` (seeds seed+i per image, conditioning computed once per job and
prompt schedule, one sampler run per batch), through the sampling engine's public names (`pipelines.sampling`).
Per batch, as A1111: the scripts may change the prompts (`before_batch`), extra-network tags are taken out of the
prompts and handed to `ctx.extra_networks`, the prompt language becomes a schedule the CFG denoiser reads per call,
the scripts see the decoded images (`after_batch`), and each image's infotext keeps its prompt as typed (or as the
scripts changed it). Hires fix (`pipelines.hires`) and the SDXL refiner (`refiner.Refiner`) take over the batch
where A1111's do: the refiner in the only pass, or in the hires pass when there is one (A1111's default).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from sdwebui.core.samplers import ResolvedSampling, resolve_sampling
from sdwebui.models.tiling import circular_padding
from sdwebui.pipelines.context import BatchPrompts, FinishedImages, GenerationContext
from sdwebui.pipelines.hires import HiresFix, plan_hires
from sdwebui.pipelines.output import BEFORE_HIGHRES_FIX
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.refiner import Refiner
from sdwebui.pipelines.sampling import (
    BatchDenoisers,
    DenoiserWrap,
    FinishedBatches,
    GenerationResult,
    JobSeeds,
    NetworkScope,
    OtherModels,
    SamplerPlan,
    batch_prompts,
    make_denoiser,
    run_batches,
    sample_batch,
    sampler_options,
    schedule_sigmas,
    was_skipped,
)


def txt2img(ctx: GenerationContext, params: Txt2ImgParams) -> GenerationResult:
    """Generate `params.image_count` images from the prompt (A1111 `/sdapi/v1/txt2img`); raises `ParamError` for
    unknown sampler, schedule or upscaler names and `GenerationError` when the model fails (NaN latents)."""
    sampling = resolve_sampling(params.sampler, params.scheduler)
    with torch.inference_mode(), ExitStack() as stack:
        run = _prepare(ctx, params, sampling, stack)
        interrupted = run_batches(ctx, run.params.batch_count, lambda index: _run_batch(run, index))
        return run.finished.result(run.latent_shape, interrupted)


@dataclass
class _Txt2ImgRun:
    """One txt2img job's fixed parts, made once before its batches."""

    ctx: GenerationContext
    params: Txt2ImgParams
    """The job's parameters with the seeds resolved."""
    job_seeds: JobSeeds
    latent_shape: tuple[int, int, int]
    sampler: SamplerPlan
    denoisers: BatchDenoisers
    networks: NetworkScope
    finished: FinishedBatches
    refiner: Refiner | None
    hires: HiresFix | None
    notes: list[str]


def _prepare(ctx: GenerationContext, params: Txt2ImgParams, sampling: ResolvedSampling,
             stack: ExitStack) -> _Txt2ImgRun:
    model = ctx.model
    job_seeds = JobSeeds.of(params)
    params = job_seeds.params
    stack.enter_context(circular_padding(model.unet, model.vae, enabled=params.tiling))
    models = OtherModels(ctx, stack, params.tiling)
    inner = make_denoiser(model, ctx.hooks)
    sigmas, schedule_infotext = schedule_sigmas(sampling, params, inner)
    options, sampler_infotext = sampler_options(sampling, params)
    networks = NetworkScope(ctx, stack)
    refiner = Refiner(ctx, params, models) if params.refiner_checkpoint else None
    hires = _hires_fix(ctx, params, sampling, models, refiner) if params.enable_hr else None
    notes: list[str] = []

    def infotext_entries(batch_extra: dict[str, object]) -> dict[str, object]:
        refiner_infotext = refiner.infotext if refiner is not None else {}
        return {**batch_extra, **sampler_infotext, **schedule_infotext, **refiner_infotext}

    wrap: DenoiserWrap | None = None
    if refiner is not None and hires is None:
        def wrap(denoiser, prompts, negative_prompts):
            return refiner.wrap(denoiser, model, prompts, negative_prompts, params.width, params.height)
    # A1111 lays prompt schedules out over the denoiser calls the sampler plans (2 per step if second order).
    denoisers = BatchDenoisers(ctx, model, inner, networks, params, sampling.sampler.total_steps(params.steps), wrap)
    return _Txt2ImgRun(
        ctx, params, job_seeds, latent_shape=(model.latent_channels, params.height // 8, params.width // 8),
        sampler=SamplerPlan(sampling.sampler, sigmas.to(model.device), options), denoisers=denoisers,
        networks=networks, finished=FinishedBatches(ctx, params, sampling, notes, infotext_entries), refiner=refiner,
        hires=hires, notes=notes,
    )


def _hires_fix(ctx: GenerationContext, params: Txt2ImgParams, sampling: ResolvedSampling, models: OtherModels,
               refiner: Refiner | None) -> HiresFix:
    plan = plan_hires(ctx, params, sampling, models.load)
    wrap: DenoiserWrap | None = None
    if refiner is not None:  # A1111's default "second pass": the refiner acts in the hires pass only
        width, height = params.hires_target[:2]

        def wrap(denoiser, prompts, negative_prompts):
            return refiner.wrap(denoiser, plan.model, prompts, negative_prompts, width, height, hires=True)
    return HiresFix(ctx, plan, wrap)


def _run_batch(run: _Txt2ImgRun, batch_index: int) -> bool:
    """Sample one batch (and its hires pass), keep it unless it was skipped; True when the job must stop."""
    ctx = run.ctx
    batch = batch_prompts(ctx, run.job_seeds, batch_index)
    _, denoiser, batch_extra = run.denoisers.for_batch(batch.prompts, batch.negative_prompts, run.notes)
    more_steps = run.hires.step_count if run.hires is not None else 0
    latents, stopped = sample_batch(ctx, run.params, run.sampler, denoiser, batch, run.latent_shape,
                                    more_steps=more_steps)
    if was_skipped(ctx, stopped):
        return False
    decode_model = run.refiner.model_after(denoiser, ctx.model) if run.refiner is not None else ctx.model
    hires = run.hires
    if hires is not None and not stopped:
        latents, stopped = hires.run(decode_model, latents, batch, steps_before=run.sampler.steps,
                                     networks=run.networks, first_pass=_first_pass_saver(run, batch, batch_extra))
        run.notes.extend(note for note in hires.notes if note not in run.notes)
        if was_skipped(ctx, stopped):
            return False
        decode_model = hires.plan.model
        if run.refiner is not None:
            decode_model = run.refiner.model_after(hires.last_denoiser, decode_model)
        batch_extra = {**hires.plan.infotext, **batch_extra, **hires.extra_infotext}
    run.finished.add(decode_model, latents, batch, batch_extra)
    return stopped


def _first_pass_saver(run: _Txt2ImgRun, batch: BatchPrompts,
                      batch_extra: dict[str, object]) -> Callable[[list], None] | None:
    """Hands the hires fix's first pass to `ctx.on_intermediate` when the caller saves it (A1111's
    `save_images_before_highres_fix`), with the infotext A1111 gives it then (the hires entries included)."""
    ctx, hires = run.ctx, run.hires
    if hires is None or ctx.on_intermediate is None or not ctx.wants(BEFORE_HIGHRES_FIX):
        return None

    def first_pass(images: list) -> None:
        infotexts = run.finished.early_infotexts(batch, {**hires.plan.infotext, **batch_extra})
        ctx.on_intermediate(BEFORE_HIGHRES_FIX, FinishedImages(run.params, list(images), list(batch.seeds),
                                                               infotexts, list(batch.prompts)))

    return first_pass


__all__ = ["txt2img"]
