"""The sampling engine: what txt2img, img2img, hires fix, the refiner and scripts share, under public names.

    the job       `JobSeeds` (A1111's seed / variation-seed lists), `batch_prompts` (a batch's per-image prompts
                  after the scripts' `before_batch`), `run_batches` (A1111's batch loop with interrupt / skip)
    conditioning  `BatchDenoisers.for_batch`: the batch's prompts with their extra networks applied
                  (`NetworkScope`) -> the prompt schedule -> a CFG denoiser (`scheduled_denoiser`) over the model's
                  UNet (`make_denoiser`, wrapped by the scripts' `wrap_model_call`)
    other models  `OtherModels` (hires checkpoint, refiner: loaded once per job), `Refiner` (A1111's refiner switch)
    noise         `batch_rng`: A1111's per-image seeds, variation seed, resize-seed, RNG source and ENSD
    sampler loop  `sample_batch` (from noise) and `denoise_batch` (from an init latent, `InitLatents`): a
                  `SamplerPlan` (the registry's sampler, `schedule_sigmas`, `sampler_options`), with
                  `step_callback` reporting progress and previews and stopping on interrupt / skip (A1111 keeps
                  the latest x0 estimate of a stopped batch)
    finishing     `FinishedBatches.add`: NaN check, VAE decode, the scripts' `after_batch`, A1111's infotext
                  (`create_infotext`, one per image with its own prompt), then `ctx.on_images` (the server saves
                  there, before the next batch starts); `FinishedBatches.result` -> `GenerationResult`

References: A1111 `processing.py` (`process_images_inner`, `create_infotext`), `sd_samplers_kdiffusion.py`
(sampler options, schedule settings), `sd_samplers_common.py` (the refiner switch), `scripts.py` (`process_batch`,
`postprocess_batch`, `postprocess_image`: where the scripts' hooks run).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor

from sdwebui import __version__
from sdwebui.core import noise as core_noise
from sdwebui.core.denoiser import CFGConditioning, CFGDenoiser, DiscreteSchedule, ModelDenoiser
from sdwebui.core.samplers import ResolvedSampling, SamplerSpec
from sdwebui.core.schedules import find_schedule
from sdwebui.models.embeddings import ti_hashes
from sdwebui.models.fp8 import fp8_infotext
from sdwebui.models.memory import call_with_memory_retry
from sdwebui.models.sd_model import SDModel
from sdwebui.models.text_encoding import Conditioning
from sdwebui.models.tiling import circular_padding
from sdwebui.models.token_merging import token_merging
from sdwebui.pipelines.conditioning import BatchConditioning, build_conditioning, uses_emphasis
from sdwebui.pipelines.context import (
    BatchImages,
    BatchPrompts,
    FinishedImages,
    GenerationContext,
    GenerationHooks,
    GenerationStopped,
    IntermediateImages,
    NetworkActivation,
    StepProgress,
)
from sdwebui.pipelines.denoise import denoise_latents
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.infotext import build_infotext
from sdwebui.pipelines.output import BEFORE_FACE_RESTORATION
from sdwebui.pipelines.params import GenerationParams, Txt2ImgParams, infotext_labels, spec_of
from sdwebui.pipelines.vae_decode import decode_latents
from sdwebui.prompts.extra_networks import ExtraNetworkCall, parse_prompts

INFOTEXT_VERSION = f"sdwebui-{__version__}"
LABELS = infotext_labels(Txt2ImgParams, Img2ImgParams)
"""Parameter name -> infotext key, from the declarations (the same table pasting an infotext reads)."""


class GenerationError(RuntimeError):
    """A generation failed in a way the user should hear about (NaNs, a model that cannot do this, ...)."""


@dataclass
class GenerationResult:
    params: GenerationParams
    """The parameters as run: the seed is resolved (never -1)."""
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    latents: torch.Tensor
    """Final latents of every image (CPU, float32), before VAE decoding."""
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    """Each image's prompt as encoded (after the scripts' `before_batch`), as A1111's `all_prompts`."""
    negative_prompts: list[str] = field(default_factory=list)


# ---- the job and its batches ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSeeds:
    """A1111 fixes both seeds up front; with a variation strength every image shares the seed and the variation
    seed increments instead. Image i of the job uses `seeds[i]` / `subseeds[i]`."""

    params: GenerationParams
    """The job's parameters with both seeds resolved (never -1)."""
    seeds: list[int]
    subseeds: list[int]

    @classmethod
    def of(cls, params: GenerationParams) -> "JobSeeds":
        seed, subseed = core_noise.fix_seed(params.seed), core_noise.fix_seed(params.subseed)
        params = params.replace(seed=seed, subseed=subseed)
        varies = params.subseed_strength > 0
        count = params.image_count
        return cls(params, [seed + (0 if varies else i) for i in range(count)], [subseed + i for i in range(count)])

    def batch(self, index: int) -> slice:
        """The images of batch `index` (A1111's `n_iter` index) in the job's per-image lists."""
        size = self.params.batch_size
        return slice(index * size, (index + 1) * size)


def batch_prompts(ctx: GenerationContext, job: JobSeeds, batch_index: int) -> BatchPrompts:
    """Batch `batch_index`'s seeds and per-image prompts (A1111's `all_prompts[batch]`: the job's prompt for every
    image), after the scripts' `before_batch` (A1111's `process_batch`), which may edit the prompt lists in place.
    """
    params, images = job.params, job.batch(batch_index)
    seeds, subseeds = job.seeds[images], job.subseeds[images]
    batch = BatchPrompts(batch_index, list(seeds), list(subseeds), [params.prompt] * len(seeds),
                         [params.negative_prompt] * len(seeds))
    if ctx.hooks is not None:
        ctx.hooks.before_batch(batch)
    return batch


def run_batches(ctx: GenerationContext, batch_count: int, run_batch: Callable[[int], bool]) -> bool:
    """A1111's batch loop: `run_batch(i)` for each batch until the job is interrupted (before a batch starts, or
    `run_batch` returns True because its batch was). Skip only ever abandons the batch it was pressed in, so the
    flag is cleared before each batch. Returns whether the job was interrupted."""
    for batch_index in range(batch_count):
        if ctx.stop.interrupted.is_set():
            return True
        ctx.stop.skipped.clear()
        if run_batch(batch_index):
            return True
    return False


# ---- the denoiser ----------------------------------------------------------------------------------------------


def make_denoiser(model: SDModel, hooks: GenerationHooks | None = None) -> ModelDenoiser:
    """The model as a k-diffusion denoiser that also takes an inpainting model's image conditioning.

    `c_concat` (mask + masked-image latents, [B, 5, h, w] for SD inpainting models) is concatenated to the
    latent on the channel axis before the UNet, as diffusers' `StableDiffusionInpaintPipeline` and A1111's
    `c_concat` do. `hooks` (the job's scripts) may wrap the UNet call (`wrap_model_call`, e.g. ControlNet adding
    its residuals, which it passes on as extra UNet keyword arguments); without hooks the call is the UNet's.
    `cond_mark` ([rows], 1 for a conditional row, 0 for an unconditional one; `scheduled_denoiser` adds it, as
    A1111 marks the prompts for sd-webui-controlnet) is for the hooks and never reaches the UNet."""
    unet = model.unet
    cuda_graphs = model.unet_cuda_graphs

    def call_unet(x: Tensor, t: Tensor, encoder_hidden_states, added_cond_kwargs=None, c_concat=None,
                  cond_mark=None, **unet_extra):
        if c_concat is not None:
            x = torch.cat([x, c_concat.to(x.device, x.dtype)], dim=1)

        def unet_output() -> Tensor:
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = unet(x.to(model.dtype), t, encoder_hidden_states=encoder_hidden_states,
                       added_cond_kwargs=added_cond_kwargs, return_dict=False, **unet_extra)[0]
            # A replayed CUDA graph's output is overwritten by the next replay, and the samplers keep outputs across
            # calls (a split CFG batch, DPM++'s history): copy it (one latent's worth).
            return out.clone() if cuda_graphs else out

        # Out of device memory: the call is made again, same inputs, in lowvram (`models.memory`).
        what = f"the UNet at {x.shape[-1] * 8}x{x.shape[-2] * 8}, {x.shape[0]} latents a call"
        return call_with_memory_retry(model, unet_output, what)

    model_fn = hooks.wrap_model_call(model, call_unet) if hooks is not None else call_unet
    return ModelDenoiser(model_fn, DiscreteSchedule(model.alphas_cumprod), model.prediction_type)


def unet_condition(model: SDModel, conditioning: Conditioning, width: int, height: int) -> dict:
    """The keyword arguments the UNet needs besides (x, t): SDXL adds pooled text and size/crop ids."""
    cond: dict = {"encoder_hidden_states": conditioning.cross_attn}
    if model.family.spec.is_sdxl:
        batch = conditioning.cross_attn.shape[0]
        # SDXL micro-conditioning: original size, crop top-left, then target size (base) or the aesthetic
        # score (refiner). A1111 and diffusers both use the generated size and no crop by default.
        if model.family.value == "sdxl-refiner":
            ids = [height, width, 0, 0, 6.0]
        else:
            ids = [height, width, 0, 0, height, width]
        time_ids = torch.tensor([ids], dtype=conditioning.cross_attn.dtype, device=conditioning.cross_attn.device)
        cond["added_cond_kwargs"] = {"text_embeds": conditioning.pooled, "time_ids": time_ids.repeat(batch, 1)}
    return cond


def refiner_negative_condition(model: SDModel, uncond: dict, width: int, height: int) -> dict:
    """The refiner's negative branch is conditioned on A1111's negative aesthetic score (2.5)."""
    if model.family.value != "sdxl-refiner":
        return uncond
    time_ids = uncond["added_cond_kwargs"]["time_ids"].clone()
    time_ids[:, 4] = 2.5
    return {**uncond, "added_cond_kwargs": {**uncond["added_cond_kwargs"], "time_ids": time_ids}}


def marked(kwargs: dict, mark: float) -> dict:
    """UNet keyword arguments with `cond_mark`: which rows of the CFG batch are conditional (1) or not (0)."""
    rows = kwargs["encoder_hidden_states"].shape[0]
    return {**kwargs, "cond_mark": torch.full((rows,), mark, device=kwargs["encoder_hidden_states"].device)}


def scheduled_denoiser(
    model: SDModel, inner: ModelDenoiser, conditioning: BatchConditioning, width: int, height: int, cfg_scale: float
) -> CFGDenoiser:
    """A CFG denoiser that reads `conditioning` at every call (prompt editing, alternation, AND weights).

    The UNet keyword arguments are built once per distinct combination of schedule entries, not per call.
    """
    weights = conditioning.weights
    built: dict[tuple, CFGConditioning] = {}

    def at(step: int) -> CFGConditioning:
        key = conditioning.selection(step)
        found = built.get(key)
        if found is None:
            cond, uncond = conditioning.at_step(step)
            uncond_kwargs = refiner_negative_condition(
                model, unet_condition(model, uncond, width, height), width, height
            )
            cond_kwargs = unet_condition(model, cond, width, height)
            found = built[key] = CFGConditioning(marked(cond_kwargs, 1.0), marked(uncond_kwargs, 0.0), weights)
        return found

    return CFGDenoiser.scheduled(inner, at, cfg_scale)


class NetworkScope:
    """Keeps the extra networks of the current batch applied (`ctx.extra_networks`, on `ctx.model`) until a batch
    asks for others, and re-applies only then, as A1111's `activate` per batch with unchanged networks costs
    nothing. The networks stay applied until the job's `stack` closes."""

    def __init__(self, ctx: GenerationContext, stack: ExitStack):
        self.ctx = ctx
        self.stack = stack
        self.active: tuple[str, ...] | None = None
        """The tags applied now (None: none asked for yet)."""
        self.inner: ExitStack | None = None
        self.activation = NetworkActivation()

    def activate(self, calls: Sequence[ExtraNetworkCall]) -> NetworkActivation:
        tags = tuple(call.tag for call in calls)
        if tags == self.active:
            return self.activation
        if self.inner is not None:
            self.inner.close()
        self.active = tags
        hook = self.ctx.extra_networks
        if hook is None:
            notes = [f"extra networks are not available here; ignored: {' '.join(tags)}"] if tags else []
            self.activation = NetworkActivation(notes=notes)
            self.inner = None
            return self.activation
        self.inner = self.stack.enter_context(ExitStack())
        self.activation = self.inner.enter_context(hook(self.ctx.model, calls))
        return self.activation


DenoiserWrap = Callable[[CFGDenoiser, list[str], list[str]], object]
"""(CFG denoiser, prompts, negative prompts) -> the denoiser to sample with (the refiner's switch around it)."""


class BatchDenoisers:
    """The CFG denoiser for each batch of a job (txt2img and img2img alike): the batch's extra networks are
    activated (their notes collected), and its conditioning is built once per distinct (prompts, negative
    prompts, networks) and reused by the next batch that asks for the same, as A1111 caches its conds.
    `wrap(denoiser, prompts, negative_prompts)` lets the caller put something around it (the refiner)."""

    def __init__(self, ctx: GenerationContext, model: SDModel, inner: ModelDenoiser, networks: NetworkScope,
                 params: GenerationParams, schedule_steps: int, wrap: DenoiserWrap | None = None):
        self.ctx, self.model, self.inner, self.networks = ctx, model, inner, networks
        self.params, self.schedule_steps, self.wrap = params, schedule_steps, wrap
        self._cached: tuple[tuple, object, dict[str, object]] | None = None

    def for_batch(self, prompts_with_tags: list[str], negative_prompts: list[str], notes: list[str]):
        """(prompts without their `<lora:...>` tags, the denoiser reset for a new run, the batch's infotext
        entries: networks' hashes, TI hashes, emphasis). Notes of the networks are added to `notes`."""
        params = self.params
        prompts, calls = parse_prompts(prompts_with_tags)
        activation = self.networks.activate(calls)
        notes.extend(note for note in activation.notes if note not in notes)
        key = (tuple(prompts), tuple(negative_prompts), self.networks.active)
        if self._cached is None or self._cached[0] != key:
            conditioning = build_conditioning(
                self.model.text_encoder, prompts, negative_prompts, self.schedule_steps,
                clip_skip=params.clip_skip, emphasis=params.emphasis, embeddings=self.ctx.embeddings,
            )
            denoiser = scheduled_denoiser(
                self.model, self.inner, conditioning, params.width, params.height, float(params.cfg_scale)
            )
            if self.wrap is not None:
                denoiser = self.wrap(denoiser, prompts, negative_prompts)
            self._cached = (key, denoiser, {**activation.infotext, **prompt_infotext(params, conditioning)})
        denoiser, extra = self._cached[1], self._cached[2]
        denoiser.reset()
        return prompts, denoiser, extra


# ---- other checkpoints of a job: hires checkpoint, refiner (`pipelines.refiner`) -----------------------------


def short_title(model: SDModel) -> str:
    """A1111's `CheckpointInfo.short_title`: "name [short hash]" (infotext "Hires checkpoint", "Refiner")."""
    return f"{model.info.name} [{model.info.short_hash}]"


class OtherModels:
    """Checkpoints a job uses besides `ctx.model` (hires checkpoint, refiner), loaded once per job; with tiling,
    their convolutions pad circularly too for the rest of the job."""

    def __init__(self, ctx: GenerationContext, stack: ExitStack, tiling: bool):
        self.ctx = ctx
        self.stack = stack
        self.tiling = tiling
        self.loaded: dict[str, SDModel] = {}

    def load(self, name: str) -> SDModel:
        if name not in self.loaded:
            if self.ctx.load_model is None:
                raise GenerationError(f"cannot load checkpoint {name!r} here (no model loader)")
            model = self.ctx.load_model(name)
            if model is not self.ctx.model:
                self.stack.enter_context(circular_padding(model.unet, model.vae, enabled=self.tiling))
            self.loaded[name] = model
        return self.loaded[name]


# ---- noise, the sampler loop, progress ----------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerPlan:
    """One sampling pass's sampler: the registry entry, the sigmas it runs down and its keyword options."""

    sampler: SamplerSpec
    sigmas: Tensor
    options: dict

    @property
    def steps(self) -> int:
        """Sampler steps of the pass (one per sigma interval)."""
        return len(self.sigmas) - 1


def batch_rng(ctx: GenerationContext, params: GenerationParams, latent_shape: Sequence[int], seeds: list[int],
              subseeds: list[int], model: SDModel | None = None) -> core_noise.ImageRNG:
    """A batch's seeded noise as A1111 makes it: per-image seeds, variation seed, resize-seed, and the job's RNG
    source and ENSD (`params.rng`, `params.eta_noise_seed_delta`), on `model`'s device (default `ctx.model`)."""
    resize_from = params.seed_resize_from
    return core_noise.ImageRNG(
        tuple(latent_shape),
        seeds,
        device=(model or ctx.model).device,
        rng=params.rng,
        subseeds=subseeds,
        subseed_strength=params.subseed_strength,
        # A1111 gives the size in pixels; the noise lives in latent space (height, width).
        seed_resize_from=(resize_from[1] // 8, resize_from[0] // 8) if resize_from else None,
        eta_noise_seed_delta=params.eta_noise_seed_delta,
    )


def step_callback(ctx: GenerationContext, params: GenerationParams, batch_index: int, total_steps: int,
                  last_denoised: list, steps_before: int = 0) -> Callable[[dict], None]:
    """The sampler callback: reports progress (with the x0 estimate for previews), keeps the latest estimate
    in `last_denoised` and stops the sampler when the job is interrupted or the batch skipped. `steps_before`:
    steps of the batch already done (the hires pass reports after the first pass's, on one bar, as A1111)."""

    def callback(info: dict) -> None:
        last_denoised[:] = [info["denoised"]]
        if ctx.on_step is not None:
            ctx.on_step(StepProgress(steps_before + info["i"] + 1, total_steps, batch_index, params.batch_count,
                                     info["denoised"]))
        if ctx.stop.interrupted.is_set() or ctx.stop.skipped.is_set():
            raise GenerationStopped()

    return callback


def sample_batch(ctx: GenerationContext, params: GenerationParams, plan: SamplerPlan, denoiser, batch: BatchPrompts,
                 latent_shape: Sequence[int], *, more_steps: int = 0) -> tuple[Tensor, bool]:
    """One batch sampled from its seeded noise (txt2img's first pass): (latents, stopped). `more_steps`: steps
    still to come for the batch (the hires pass), counted in the progress total as A1111's progress bar does."""
    rng = batch_rng(ctx, params, latent_shape, batch.seeds, batch.subseeds)
    x = rng.first().to(ctx.model.device, torch.float32) * plan.sigmas[0]
    last_denoised: list[Tensor] = []
    callback = step_callback(ctx, params, batch.batch_index, plan.steps + more_steps, last_denoised)
    try:
        with token_merging(ctx.model.unet, params.token_merging_ratio):
            latents = plan.sampler.sample(denoiser, x, plan.sigmas, callback=callback,
                                          noise_sampler=rng.noise_sampler(), **plan.options)
        return latents, False
    except GenerationStopped:
        # A1111 keeps what the sampler had so far: the latest x0 estimate.
        return (last_denoised[0] if last_denoised else x), True


@dataclass
class InitLatents:
    """What img2img (and the hires pass) start each batch from: the init latent, the latent mask (1 = keep) and an
    inpainting model's image conditioning; each holds one entry for the whole batch or one per image."""

    latents: Tensor
    keep_mask: Tensor | None = None
    image_conditioning: Tensor | None = None
    noise_multiplier: float = 1.0
    """A1111's `initial_noise_multiplier`: scales the noise added to the init latent."""

    def for_batch(self, size: int) -> tuple[Tensor, Tensor | None]:
        """(init latents, image conditioning) with one entry per image of a batch of `size`."""
        init = self.latents if self.latents.shape[0] == size else self.latents[:1].expand(size, -1, -1, -1)
        cond = self.image_conditioning
        if cond is not None and cond.shape[0] != size:
            cond = cond[:1].expand(size, -1, -1, -1)
        return init, cond


def denoise_batch(ctx: GenerationContext, params: GenerationParams, plan: SamplerPlan, denoiser, batch: BatchPrompts,
                  start: InitLatents, *, model: SDModel | None = None, steps_before: int = 0,
                  token_merging_ratio: float | None = None) -> tuple[Tensor, bool]:
    """One batch denoised from `start` down `plan.sigmas` (img2img's strength tail, the hires pass): (latents,
    stopped). The noise is the images' seeded noise at the latent's size, on `model`'s device (default
    `ctx.model`). `steps_before`: steps of the batch already run (the hires pass after the first pass).
    `token_merging_ratio`: ToMe's ratio for this pass (default `params.token_merging_ratio`)."""
    model = model or ctx.model
    ratio = params.token_merging_ratio if token_merging_ratio is None else token_merging_ratio
    init, cond = start.for_batch(len(batch.seeds))
    rng = batch_rng(ctx, params, init.shape[1:], batch.seeds, batch.subseeds, model)
    noise = rng.first().to(model.device, torch.float32)
    last_denoised: list[Tensor] = []
    callback = step_callback(ctx, params, batch.batch_index, steps_before + plan.steps, last_denoised, steps_before)
    try:
        with token_merging(model.unet, ratio):
            latents = denoise_latents(
                plan.sampler, denoiser, init, noise, plan.sigmas, noise_multiplier=start.noise_multiplier,
                mask=start.keep_mask, image_conditioning=cond, callback=callback, noise_sampler=rng.noise_sampler(),
                **plan.options,
            )
        return latents, False
    except GenerationStopped:
        if not last_denoised:
            return init.clone(), True
        latest = last_denoised[0]
        if start.keep_mask is not None:  # what is kept stays the init latent, as at the end of a full run
            latest = latest * (1.0 - start.keep_mask) + init * start.keep_mask
        return latest, True


def was_skipped(ctx: GenerationContext, stopped: bool) -> bool:
    """A batch stopped by Skip (not by Interrupt): the job goes on with the next batch, without this one."""
    return stopped and ctx.stop.skipped.is_set() and not ctx.stop.interrupted.is_set()


# ---- finishing batches ------------------------------------------------------------------------------------------


FinishStep = Callable[[list[Image.Image], list[IntermediateImages]], list[Image.Image]]
"""`FinishedBatches.add`'s `finish`: (decoded images, the batch's intermediate copies so far) -> images."""


class FinishedBatches:
    """The job's kept batches: each is NaN-checked, decoded, handed to the scripts' `after_batch`, given its
    infotexts and handed to `ctx.on_images` as soon as it is sampled (as A1111 saves each image before the next
    batch), then kept for the result.

    `infotext_entries(batch entries) -> entries`: the job's entries around a batch's own (sampler options,
    schedule settings, img2img's mask settings, the refiner), in A1111's order; the scripts' `after_batch`
    entries come after them (A1111 scripts add to `extra_generation_params` last)."""

    def __init__(self, ctx: GenerationContext, params: GenerationParams, sampling: ResolvedSampling,
                 notes: list[str], infotext_entries: Callable[[dict[str, object]], dict[str, object]]):
        self.ctx = ctx
        self.params = params
        self.sampling = sampling
        self.notes = notes
        self.infotext_entries = infotext_entries
        self.images: list[Image.Image] = []
        self.seeds: list[int] = []
        self.subseeds: list[int] = []
        self.prompts: list[str] = []
        self.negative_prompts: list[str] = []
        self.infotexts: list[str] = []
        self.latents: list[torch.Tensor] = []

    def add(self, decode_model: SDModel, latents: torch.Tensor, batch: BatchPrompts, extra: dict[str, object],
            finish: FinishStep | None = None) -> None:
        """Finish one batch: `extra` are its infotext entries; `finish` (images, copies -> images) runs after
        decoding and before the scripts (img2img's color correction and overlays), and may add intermediate copies
        (`IntermediateImages`) to `copies`."""
        if self.ctx.nan_check and torch.isnan(latents).any():
            raise GenerationError(
                "the model produced NaN latents; try full precision (--no-half) or another checkpoint"
            )
        images, decode_notes = decode_latents(decode_model, latents, self.ctx.vae_tiling)
        self._note(decode_notes)
        copies: list[IntermediateImages] = []
        restored: dict[str, object] = {}
        if getattr(self.params, "restore_faces", False):
            if self.ctx.face_restoration is None:
                raise GenerationError("face restoration is not available here")
            if self.ctx.wants(BEFORE_FACE_RESTORATION):
                copies.append(IntermediateImages(BEFORE_FACE_RESTORATION, list(images)))
            images, restored, restore_notes = self.ctx.face_restoration.restore_batch(list(images), self.params)
            self._note(restore_notes)
        if finish is not None:
            images = finish(images, copies)
        decoded = BatchImages(batch.batch_index, self.params, list(images), list(batch.seeds), list(batch.prompts),
                              dict(restored), [])
        if self.ctx.hooks is not None:
            self.ctx.hooks.after_batch(decoded)
        self._note(decoded.notes)
        infotexts = self.batch_infotexts(batch, {**self.infotext_entries(extra), **decoded.infotext})
        self._keep(decoded.images, batch, infotexts, latents)
        if self.ctx.on_images is not None:
            self.ctx.on_images(FinishedImages(self.params, list(decoded.images), list(batch.seeds), infotexts,
                                              list(batch.prompts), tuple(copies)))

    def batch_infotexts(self, batch: BatchPrompts, entries: dict[str, object]) -> list[str]:
        """The infotext of each image of `batch`, with the job's and the batch's `entries`."""
        return [
            create_infotext(self.ctx.model, self.params, self.sampling, seed, subseed, entries, prompt, negative)
            for seed, subseed, prompt, negative in zip(batch.seeds, batch.subseeds, batch.prompts,
                                                       batch.negative_prompts)
        ]

    def early_infotexts(self, batch: BatchPrompts, extra: dict[str, object]) -> list[str]:
        """The infotexts of a batch not finished yet (hires fix's first pass, for its intermediate copy), as A1111
        writes them then: the entries known so far, with `Face restoration` for a job that will restore faces
        (A1111's infotext says so from the job's `restore_faces`); the scripts' `after_batch` entries are not
        there yet."""
        entries = self.infotext_entries(extra)
        if getattr(self.params, "restore_faces", False) and self.ctx.face_restoration is not None:
            name, _ = self.ctx.face_restoration.pick(getattr(self.params, "face_restoration_model", "CodeFormer"))
            entries = {**entries, "Face restoration": name}
        return self.batch_infotexts(batch, entries)

    def _keep(self, images: list[Image.Image], batch: BatchPrompts, infotexts: list[str], latents: Tensor) -> None:
        self.images.extend(images)
        self.seeds.extend(batch.seeds)
        self.subseeds.extend(batch.subseeds)
        self.prompts.extend(batch.prompts)
        self.negative_prompts.extend(batch.negative_prompts)
        self.infotexts.extend(infotexts)
        self.latents.append(latents.float().cpu())

    def _note(self, notes: Sequence[str]) -> None:
        self.notes.extend(note for note in notes if note not in self.notes)

    def result(self, latent_shape: Sequence[int], interrupted: bool) -> GenerationResult:
        if not self.latents:
            return GenerationResult(self.params, [], [], [], torch.zeros((0, *latent_shape)), self.notes,
                                    interrupted=True)
        return GenerationResult(self.params, self.images, self.seeds, self.infotexts, torch.cat(self.latents),
                                self.notes, interrupted, self.subseeds, self.prompts, self.negative_prompts)


# ---- sampler options, schedules, infotext -------------------------------------------------------------------


def prompt_infotext(params: GenerationParams, conditioning: BatchConditioning) -> dict[str, object]:
    """What encoding the prompts adds to the infotext (A1111 `sd_hijack_clip`): `TI hashes` of the embeddings
    used, and a non-default emphasis mode when some encoded text has brackets."""
    values: dict[str, object] = {}
    hashes = ti_hashes(conditioning.embeddings_used)
    if hashes:
        values["TI hashes"] = hashes  # quoted by the infotext writer, as A1111
    if params.emphasis != "Original" and any(uses_emphasis(t) for t in conditioning.texts_encoded):
        values[LABELS["emphasis"]] = params.emphasis
    return values


# A1111's infotext names for the sampler options (`sd_samplers_kdiffusion.KDiffusionSampler.initialize`).
ETA_DDIM_LABEL = next(label for label, setting in spec_of(Txt2ImgParams, "eta").setting_pairs if setting == "eta_ddim")
"""Timestep samplers (DDIM, default eta 0) have their own eta key in A1111 ("Eta DDIM")."""
SAMPLER_OPTION_LABELS = {name: LABELS[name] for name in ("s_churn", "s_tmin", "s_tmax", "s_noise")}


def sampler_options(sampling: ResolvedSampling, params: GenerationParams) -> tuple[dict, dict]:
    """The options the chosen sampler accepts, and the infotext entries A1111 writes for non-default ones."""
    accepted = inspect.signature(sampling.sampler.function).parameters
    defaults = sampling.sampler.options
    kwargs: dict[str, float] = {}
    infotext: dict[str, object] = {}
    if params.eta is not None and "eta" in accepted:
        kwargs["eta"] = float(params.eta)
        default_eta = defaults.get("eta", 1.0)
        if float(params.eta) != default_eta:
            # Timestep samplers (DDIM, default eta 0) have their own key in A1111.
            infotext[ETA_DDIM_LABEL if default_eta == 0.0 else LABELS["eta"]] = params.eta
    for name, label in SAMPLER_OPTION_LABELS.items():
        value = getattr(params, name)
        if value is not None and name in accepted:
            kwargs[name] = float(value)
            if float(value) != defaults.get(name, {"s_tmax": float("inf"), "s_noise": 1.0}.get(name, 0.0)):
                infotext[label] = value
    return kwargs, infotext


def schedule_sigmas(sampling: ResolvedSampling, params: GenerationParams, denoiser,
                    steps: int | None = None) -> tuple[torch.Tensor, dict]:
    """The `steps`-step sigma schedule (default: the job's steps) with A1111's schedule settings applied, and
    the infotext entries they add. `steps` is not checked against the parameters' bounds: img2img's and the hires
    pass's "exact steps" schedule is longer than the steps asked for."""
    spec = sampling.sampler
    schedule = find_schedule(sampling.schedule_used)
    sigmas = spec.sigmas(
        params.steps if steps is None else steps, denoiser, sampling.schedule_label,
        sigma_min=params.sigma_min or None, sigma_max=params.sigma_max or None, rho=params.rho or None,
        discard_penultimate_sigma=params.discard_penultimate_sigma,
    )
    infotext: dict[str, object] = {}
    if params.sigma_min:
        infotext[LABELS["sigma_min"]] = params.sigma_min
    if params.sigma_max:
        infotext[LABELS["sigma_max"]] = params.sigma_max
    if params.rho and schedule.default_rho is not None and params.rho != schedule.default_rho:
        infotext[LABELS["rho"]] = params.rho
    if params.discard_penultimate_sigma and not spec.discard_penultimate_sigma:
        infotext[LABELS["discard_penultimate_sigma"]] = True
    return sigmas, infotext


def create_infotext(
    model: SDModel,
    params: GenerationParams,
    sampling: ResolvedSampling,
    seed: int,
    subseed: int,
    extra: dict[str, object],
    prompt: str | None = None,
    negative_prompt: str | None = None,
) -> str:
    """A1111's infotext for one image (`processing.create_infotext`, same keys and order), with the image's own
    prompt and negative prompt (A1111's `all_prompts[index]`; default: the job's)."""
    vae = model.vae_info
    varies = params.subseed_strength > 0
    resize_from = params.seed_resize_from
    ensd = params.eta_noise_seed_delta
    values: dict[str, object] = {
        LABELS["steps"]: params.steps,
        LABELS["sampler"]: sampling.sampler.name,
        LABELS["scheduler"]: sampling.infotext_schedule,
        LABELS["cfg_scale"]: params.cfg_scale,
        LABELS["seed"]: seed,
        LABELS["width"]: f"{params.width}x{params.height}",
        "Model hash": model.info.short_hash,
        "Model": model.info.name,
        **fp8_infotext(model),  # A1111: "FP8 weight", "Cache FP16 weight for LoRA" when the model is stored in fp8
        "VAE hash": vae.short_hash if vae else None,
        "VAE": vae.path.name if vae else None,
        LABELS["subseed"]: subseed if varies else None,
        LABELS["subseed_strength"]: params.subseed_strength if varies else None,
        LABELS["seed_resize_from_w"]: f"{resize_from[0]}x{resize_from[1]}" if resize_from else None,
        # A1111 lists these here even though they come from `extra_generation_params` (img2img, hires fix).
        LABELS["denoising_strength"]: extra.get(LABELS["denoising_strength"]),
        LABELS["inpainting_mask_weight"]: extra.get(LABELS["inpainting_mask_weight"]),
        LABELS["clip_skip"]: params.clip_skip if params.clip_skip > 1 else None,
        LABELS["eta_noise_seed_delta"]: ensd if ensd and sampling.sampler.uses_ensd else None,
        # A1111 writes both only when not 0; the hires one (the hires pass's ratio, else the first pass's) only
        # with hires fix on.
        LABELS["token_merging_ratio"]: params.token_merging_ratio or None,
        LABELS["token_merging_ratio_hr"]: (params.hires_token_merging_ratio or None)
        if getattr(params, "enable_hr", False) else None,
        LABELS["rng"]: {"cpu": "CPU", "nv": "NV"}.get(params.rng),
        LABELS["tiling"]: True if params.tiling else None,
        **extra,
        "Version": INFOTEXT_VERSION,
    }
    return build_infotext(params.prompt if prompt is None else prompt,
                          params.negative_prompt if negative_prompt is None else negative_prompt, values)


__all__ = [
    "GenerationError", "GenerationResult", "JobSeeds", "batch_prompts", "run_batches", "make_denoiser",
    "unet_condition", "refiner_negative_condition", "scheduled_denoiser", "NetworkScope", "DenoiserWrap",
    "BatchDenoisers", "short_title", "OtherModels", "SamplerPlan", "batch_rng", "step_callback",
    "sample_batch", "InitLatents", "denoise_batch", "was_skipped", "FinishedBatches", "prompt_infotext",
    "SAMPLER_OPTION_LABELS", "sampler_options", "schedule_sigmas", "create_infotext", "INFOTEXT_VERSION",
]
