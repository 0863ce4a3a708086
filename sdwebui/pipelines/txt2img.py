"""txt2img: prompt -> conditioning -> seeded noise -> sampler over a CFG denoiser -> VAE decode.

The composition follows A1111's `process_images` (seeds seed+i per image, conditioning computed once per
job and prompt schedule, one sampler run per batch) with the model-facing pieces from `sdwebui.models` and
the math from `sdwebui.core`. Per batch, as A1111: extra-network tags are taken out of the prompts and handed
to `ctx.extra_networks`; the prompt language (`[a:b:when]`, `[a|b]`, `AND`, emphasis) becomes a
`BatchConditioning` that the CFG denoiser reads per call; the infotext keeps the prompt as typed.
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from PIL import Image

from sdwebui import __version__
from sdwebui.core import noise as core_noise
from sdwebui.core.denoiser import CFGConditioning, CFGDenoiser, DiscreteSchedule, ModelDenoiser
from sdwebui.core.samplers import SamplerSpec, find_sampler, parse_sampler_name
from sdwebui.core.schedules import find_schedule
from sdwebui.models.embeddings import ti_hashes
from sdwebui.models.sd_model import SDModel
from sdwebui.models.text_encoding import Conditioning
from sdwebui.pipelines.conditioning import BatchConditioning, build_conditioning, uses_emphasis
from sdwebui.pipelines.context import (
    FinishedImages,
    GenerationContext,
    GenerationStopped,
    NetworkActivation,
    StepProgress,
)
from sdwebui.pipelines.denoise import make_denoiser
from sdwebui.pipelines.infotext import build_infotext
from sdwebui.pipelines.params import ParamError, Txt2ImgParams
from sdwebui.models.tiling import circular_padding
from sdwebui.pipelines.vae_decode import decode_latents
from sdwebui.prompts.extra_networks import ExtraNetworkCall, parse_prompts

INFOTEXT_VERSION = f"sdwebui-{__version__}"


class GenerationError(RuntimeError):
    """A generation failed in a way the user should hear about (NaNs, a model that cannot do this, ...)."""


@dataclass
class GenerationResult:
    params: Txt2ImgParams
    """The parameters as run: the seed is resolved (never -1)."""
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    latents: torch.Tensor
    """Final latents of every image (CPU, float32), before VAE decoding."""
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False


@dataclass(frozen=True)
class ResolvedSampling:
    sampler: SamplerSpec
    schedule_label: str
    """The schedule the user asked for ("Automatic" or a label such as "Karras")."""

    @property
    def schedule_used(self) -> str:
        if self.schedule_label == "Automatic":
            return self.sampler.default_schedule
        return self.schedule_label

    @property
    def infotext_schedule(self) -> str:
        """A1111 writes the schedule actually used when the sampler carries a default of its own (DPM++ 2M →
        Karras) and "Automatic" for samplers that just run the model's own discrete schedule (Euler, DDIM)."""
        if self.schedule_label == "Automatic" and self.sampler.default_schedule in MODEL_OWN_SCHEDULES:
            return "Automatic"
        return self.schedule_used


# Defaults that stand for "the model's own timesteps" in A1111 (k-diffusion samplers without a `scheduler`
# option, and the timestep samplers DDIM / PLMS / UniPC): their infotext says "Automatic".
MODEL_OWN_SCHEDULES = ("Uniform", "DDIM", "SGM Uniform")


def resolve_sampling(sampler: str, scheduler: str = "Automatic") -> ResolvedSampling:
    """Turn user-facing names (A1111 names, aliases, legacy "DPM++ 2M Karras") into registry entries."""
    try:
        find_schedule(scheduler or "Automatic")
    except KeyError as error:
        raise ParamError("scheduler", _message(error)) from None
    try:
        sampler_name, schedule_label = parse_sampler_name(sampler, scheduler or "Automatic")
    except KeyError as error:
        raise ParamError("sampler", _message(error)) from None
    return ResolvedSampling(find_sampler(sampler_name), schedule_label)


def _message(error: Exception) -> str:
    return error.args[0] if error.args and isinstance(error.args[0], str) else str(error)


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
            found = built[key] = CFGConditioning(unet_condition(model, cond, width, height), uncond_kwargs, weights)
        return found

    return CFGDenoiser.scheduled(inner, at, cfg_scale)


class BatchDenoisers:
    """The CFG denoiser for each batch of a job (txt2img and img2img alike): the batch's extra networks are
    activated (their notes collected), and its conditioning is built once per distinct (prompts, negative
    prompts, networks) and reused by the next batch that asks for the same, as A1111 caches its conds.
    `wrap(denoiser, prompts, negative_prompts)` lets the caller put something around it (the refiner)."""

    def __init__(self, ctx: GenerationContext, model: SDModel, inner: ModelDenoiser, networks: _NetworkScope,
                 params: Txt2ImgParams, schedule_steps: int, wrap=None):
        self.ctx, self.model, self.inner, self.networks = ctx, model, inner, networks
        self.params, self.schedule_steps, self.wrap = params, schedule_steps, wrap
        self._cached: tuple[tuple, CFGDenoiser, dict[str, object]] | None = None

    def for_batch(self, prompts_with_tags: list[str], negative_prompts: list[str], notes: list[str]):
        """(prompts without their `<lora:...>` tags, the denoiser reset for a new run, the batch's infotext)."""
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


class _NetworkScope:
    """Keeps the extra networks of the current batch applied; re-applies only when a batch asks for others."""

    def __init__(self, ctx: GenerationContext, stack: ExitStack):
        self.ctx = ctx
        self.stack = stack
        self.active: tuple[str, ...] | None = None
        self.inner: ExitStack | None = None
        self.activation = NetworkActivation()

    def activate(self, calls: list[ExtraNetworkCall]) -> NetworkActivation:
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


class FinishedBatches:
    """The job's kept batches: each is NaN-checked, decoded, given its infotexts and handed to `ctx.on_images`
    as soon as it is sampled (as A1111 saves each image before the next batch), then kept for the result."""

    def __init__(self, ctx: GenerationContext, params, notes: list[str], make_infotext):
        self.ctx = ctx
        self.params = params
        self.notes = notes
        self.make_infotext = make_infotext
        """(seed, subseed, the batch's infotext entries) -> the image's infotext."""
        self.images: list[Image.Image] = []
        self.seeds: list[int] = []
        self.infotexts: list[str] = []
        self.latents: list[torch.Tensor] = []

    def add(self, decode_model: SDModel, latents: torch.Tensor, seeds, subseeds, extra: dict, finish=None) -> None:
        """`finish`: images -> images, applied after decoding (img2img pastes its overlays there)."""
        if self.ctx.nan_check and torch.isnan(latents).any():
            raise GenerationError(
                "the model produced NaN latents; try full precision (--no-half) or another checkpoint"
            )
        images, decode_notes = decode_latents(decode_model, latents)
        self.notes.extend(note for note in decode_notes if note not in self.notes)
        if finish is not None:
            images = finish(images)
        infotexts = [self.make_infotext(seed, subseed, extra) for seed, subseed in zip(seeds, subseeds)]
        self.images.extend(images)
        self.seeds.extend(seeds)
        self.infotexts.extend(infotexts)
        self.latents.append(latents.float().cpu())
        if self.ctx.on_images is not None:
            self.ctx.on_images(FinishedImages(self.params, images, list(seeds), infotexts))

    def result(self, latent_shape: tuple[int, ...], interrupted: bool) -> GenerationResult:
        if not self.latents:
            return GenerationResult(self.params, [], [], [], torch.zeros((0, *latent_shape)), self.notes,
                                    interrupted=True)
        return GenerationResult(self.params, self.images, self.seeds, self.infotexts, torch.cat(self.latents),
                                self.notes, interrupted)


def txt2img(ctx: GenerationContext, params: Txt2ImgParams) -> GenerationResult:
    model = ctx.model
    sampling = resolve_sampling(params.sampler, params.scheduler)
    sampler = sampling.sampler
    # A1111 fixes both seeds up front; with a variation strength every image shares the seed and the
    # variation seed increments instead.
    seed = core_noise.fix_seed(params.seed)
    subseed = core_noise.fix_seed(params.subseed)
    params = params.replace(seed=seed, subseed=subseed)
    varies = params.subseed_strength > 0
    seeds = [seed + (0 if varies else i) for i in range(params.image_count)]
    subseeds = [subseed + i for i in range(params.image_count)]
    latent_shape = (model.latent_channels, params.height // 8, params.width // 8)
    sampler_kwargs, sampler_infotext = sampler_options(sampling, params)
    # One prompt per image, as A1111's `all_prompts` (the params carry one prompt for the whole job).
    all_prompts = [params.prompt] * params.image_count
    all_negative_prompts = [params.negative_prompt] * params.image_count
    # A1111 lays prompt schedules out over the denoiser calls the sampler plans (2 per step if second order).
    schedule_steps = sampler.total_steps(params.steps)

    with torch.inference_mode(), ExitStack() as stack:
        stack.enter_context(circular_padding(model.unet, model.vae, enabled=params.tiling))
        models = _OtherModels(ctx, stack, params.tiling)
        inner = make_denoiser(model)
        sigmas, schedule_infotext = schedule_sigmas(sampling, params, inner)
        sigmas = sigmas.to(model.device)
        networks = _NetworkScope(ctx, stack)
        refiner = _Refiner(ctx, params, models) if params.refiner_checkpoint else None
        hires = None
        if params.enable_hr:
            from sdwebui.pipelines.hires import HiresFix, plan_hires

            plan = plan_hires(ctx, params, sampling, models.load)
            wrap = None
            if refiner is not None:  # A1111's default "second pass": the refiner acts in the hires pass only
                size = params.hires_target[:2]
                wrap = lambda d, p: refiner.wrap(d, plan.model, p["prompts"], p["negative_prompts"], *size, hires=True)  # noqa: E731
            hires = HiresFix(ctx, plan, wrap)
        notes: list[str] = []

        def make_infotext(image_seed, image_subseed, batch_extra):
            refiner_infotext = refiner.infotext if refiner is not None else {}
            return create_infotext(model, params, sampling, ctx, image_seed, image_subseed,
                                   {**batch_extra, **sampler_infotext, **schedule_infotext, **refiner_infotext})

        finished = FinishedBatches(ctx, params, notes, make_infotext)
        interrupted = False
        wrap = None
        if refiner is not None and hires is None:
            def wrap(denoiser, prompts, negative_prompts):
                return refiner.wrap(denoiser, model, prompts, negative_prompts, params.width, params.height)
        denoisers = BatchDenoisers(ctx, model, inner, networks, params, schedule_steps, wrap)
        for batch_index in range(params.batch_count):
            if ctx.stop.interrupted.is_set():
                interrupted = True
                break
            ctx.stop.skipped.clear()
            batch = slice(batch_index * params.batch_size, (batch_index + 1) * params.batch_size)
            _, denoiser, batch_extra = denoisers.for_batch(all_prompts[batch], all_negative_prompts[batch], notes)
            batch_seeds = seeds[batch]
            latents, stopped = _sample_batch(
                ctx, sampler, denoiser, sigmas, batch_seeds, subseeds[batch], latent_shape, params, batch_index,
                sampler_kwargs, more_steps=hires.step_count if hires is not None else 0,
            )
            decode_model = refiner.model if getattr(denoiser, "switched_at_call", None) is not None else model
            if stopped and ctx.stop.skipped.is_set() and not ctx.stop.interrupted.is_set():
                continue
            if hires is not None and not stopped:
                latents, stopped = hires.run(decode_model, latents, batch_seeds, subseeds[batch], batch_index,
                                             steps_before=len(sigmas) - 1, networks=networks)
                notes.extend(note for note in hires.notes if note not in notes)
                switched = getattr(hires.last_denoiser, "switched_at_call", None) is not None
                decode_model = refiner.model if switched else hires.plan.model
                batch_extra = {**hires.plan.infotext, **batch_extra, **hires.extra_infotext}
                if stopped and ctx.stop.skipped.is_set() and not ctx.stop.interrupted.is_set():
                    continue
            finished.add(decode_model, latents, batch_seeds, subseeds[batch], batch_extra)
            if stopped:
                interrupted = True
                break
        return finished.result(latent_shape, interrupted)


class _OtherModels:
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


class _Refiner:
    """Builds refiner switches (`pipelines.refiner`) and remembers whether one switched (for the infotext)."""

    def __init__(self, ctx: GenerationContext, params: Txt2ImgParams, models: _OtherModels):
        self.ctx = ctx
        self.params = params
        self.models = models
        self.model = models.load(params.refiner_checkpoint)
        self.inner = make_denoiser(self.model)
        self.infotext: dict[str, object] = {}

    def wrap(self, base, base_model: SDModel, prompts, negative_prompts, width: int, height: int, hires: bool = False):
        from sdwebui.pipelines.refiner import RefinerSwitch

        if self.model.info.path == base_model.info.path:
            return base  # A1111: the refiner is the model already running; nothing to switch
        params = self.params
        if hires:  # the refiner's prompt schedule is laid out as the hires pass's
            first = resolve_sampling(params.sampler, params.scheduler).sampler.total_steps(params.steps)
            hr_sampler = resolve_sampling(params.hr_sampler or params.sampler, params.hr_scheduler or params.scheduler)
            steps, hires_steps = first, hr_sampler.sampler.total_steps(params.hires_steps)
        else:
            steps = resolve_sampling(params.sampler, params.scheduler).sampler.total_steps(params.steps)
            hires_steps = None

        def make():
            conditioning = build_conditioning(
                self.model.text_encoder, prompts, negative_prompts, steps, hires_steps=hires_steps,
                clip_skip=params.clip_skip, emphasis=params.emphasis, embeddings=self.ctx.embeddings,
            )
            return scheduled_denoiser(self.model, self.inner, conditioning, width, height, float(params.cfg_scale))

        def on_switch(_call: int) -> None:
            self.infotext = {"Refiner": _short_title(self.model), "Refiner switch at": params.refiner_switch_at}

        # A1111 measures the switch on the running model's own 1000 training sigmas.
        model_sigmas = DiscreteSchedule(base_model.alphas_cumprod).sigmas
        return RefinerSwitch(base, model_sigmas, params.refiner_switch_at, make, on_switch)


def _short_title(model: SDModel) -> str:
    return f"{model.info.name} [{model.info.short_hash}]"


def batch_rng(ctx: GenerationContext, params: Txt2ImgParams, latent_shape, batch_seeds, batch_subseeds):
    """A batch's seeded noise as A1111 makes it: per-image seeds, variation seed, resize-seed, RNG source, ENSD."""
    resize_from = params.seed_resize_from
    return core_noise.ImageRNG(
        latent_shape,
        batch_seeds,
        device=ctx.model.device,
        rng=ctx.rng,
        subseeds=batch_subseeds,
        subseed_strength=params.subseed_strength,
        # A1111 gives the size in pixels; the noise lives in latent space (height, width).
        seed_resize_from=(resize_from[1] // 8, resize_from[0] // 8) if resize_from else None,
        eta_noise_seed_delta=ctx.eta_noise_seed_delta,
    )


def step_callback(ctx: GenerationContext, params: Txt2ImgParams, batch_index: int, total_steps: int,
                  last_denoised: list):
    """The sampler callback: reports progress (with the x0 estimate for previews), keeps the latest estimate
    in `last_denoised` and stops the sampler when the job is interrupted or the batch skipped."""

    def callback(info: dict) -> None:
        last_denoised[:] = [info["denoised"]]
        if ctx.on_step is not None:
            ctx.on_step(StepProgress(info["i"] + 1, total_steps, batch_index, params.batch_count, info["denoised"]))
        if ctx.stop.interrupted.is_set() or ctx.stop.skipped.is_set():
            raise GenerationStopped()

    return callback


def _sample_batch(
    ctx, sampler, denoiser, sigmas, batch_seeds, batch_subseeds, latent_shape, params, batch_index, sampler_kwargs,
    more_steps: int = 0,
):
    """One batch's first pass. `more_steps`: steps still to come for the batch (the hires pass), counted in the
    progress total as A1111's progress bar does."""
    model = ctx.model
    rng = batch_rng(ctx, params, latent_shape, batch_seeds, batch_subseeds)
    x = rng.first().to(model.device, torch.float32) * sigmas[0]
    last_denoised: list[torch.Tensor] = []
    callback = step_callback(ctx, params, batch_index, len(sigmas) - 1 + more_steps, last_denoised)

    try:
        latents = sampler.sample(
            denoiser, x, sigmas, callback=callback, noise_sampler=rng.noise_sampler(), **sampler_kwargs
        )
        return latents, False
    except GenerationStopped:
        # A1111 keeps what the sampler had so far: the latest x0 estimate.
        return (last_denoised[0] if last_denoised else x), True


def prompt_infotext(params: Txt2ImgParams, conditioning: BatchConditioning) -> dict[str, object]:
    """What encoding the prompts adds to the infotext (A1111 `sd_hijack_clip`): `TI hashes` of the embeddings
    used, and a non-default emphasis mode when some encoded text has brackets."""
    values: dict[str, object] = {}
    hashes = ti_hashes(conditioning.embeddings_used)
    if hashes:
        values["TI hashes"] = hashes  # quoted by the infotext writer, as A1111
    if params.emphasis != "Original" and any(uses_emphasis(t) for t in conditioning.texts_encoded):
        values["Emphasis"] = params.emphasis
    return values


# A1111's infotext names for the sampler options (`sd_samplers_kdiffusion.KDiffusionSampler.initialize`).
SAMPLER_OPTION_LABELS = {"s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax", "s_noise": "Sigma noise"}


def sampler_options(sampling: ResolvedSampling, params: Txt2ImgParams) -> tuple[dict, dict]:
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
            infotext["Eta DDIM" if default_eta == 0.0 else "Eta"] = params.eta
    for name, label in SAMPLER_OPTION_LABELS.items():
        value = getattr(params, name)
        if value is not None and name in accepted:
            kwargs[name] = float(value)
            if float(value) != defaults.get(name, {"s_tmax": float("inf"), "s_noise": 1.0}.get(name, 0.0)):
                infotext[label] = value
    return kwargs, infotext


def schedule_sigmas(sampling: ResolvedSampling, params: Txt2ImgParams, denoiser) -> tuple[torch.Tensor, dict]:
    """The sigma schedule with A1111's schedule settings applied, and the infotext entries they add."""
    from sdwebui.core.schedules import find_schedule as find

    spec = sampling.sampler
    schedule = find(sampling.schedule_used)
    sigmas = spec.sigmas(
        params.steps, denoiser, sampling.schedule_label,
        sigma_min=params.sigma_min or None, sigma_max=params.sigma_max or None, rho=params.rho or None,
        discard_penultimate_sigma=params.discard_penultimate_sigma,
    )
    infotext: dict[str, object] = {}
    if params.sigma_min:
        infotext["Schedule min sigma"] = params.sigma_min
    if params.sigma_max:
        infotext["Schedule max sigma"] = params.sigma_max
    if params.rho and schedule.default_rho is not None and params.rho != schedule.default_rho:
        infotext["Schedule rho"] = params.rho
    if params.discard_penultimate_sigma and not spec.discard_penultimate_sigma:
        infotext["Discard penultimate sigma"] = True
    return sigmas, infotext


def create_infotext(
    model: SDModel,
    params: Txt2ImgParams,
    sampling: ResolvedSampling,
    ctx: GenerationContext,
    seed: int,
    subseed: int,
    extra: dict[str, object],
) -> str:
    """A1111's infotext for one image (`processing.create_infotext`, same keys and order)."""
    vae = model.vae_info
    varies = params.subseed_strength > 0
    resize_from = params.seed_resize_from
    values: dict[str, object] = {
        "Steps": params.steps,
        "Sampler": sampling.sampler.name,
        "Schedule type": sampling.infotext_schedule,
        "CFG scale": params.cfg_scale,
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": model.info.short_hash,
        "Model": model.info.name,
        "VAE hash": vae.short_hash if vae else None,
        "VAE": vae.path.name if vae else None,
        "Variation seed": subseed if varies else None,
        "Variation seed strength": params.subseed_strength if varies else None,
        "Seed resize from": f"{resize_from[0]}x{resize_from[1]}" if resize_from else None,
        # A1111 lists these here even though they come from `extra_generation_params` (img2img, hires fix).
        "Denoising strength": extra.get("Denoising strength"),
        "Conditional mask weight": extra.get("Conditional mask weight"),
        "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
        "ENSD": ctx.eta_noise_seed_delta if ctx.eta_noise_seed_delta and sampling.sampler.uses_ensd else None,
        "RNG": {"cpu": "CPU", "nv": "NV"}.get(ctx.rng),
        "Tiling": True if getattr(params, "tiling", False) else None,
        **extra,
        "Version": INFOTEXT_VERSION,
    }
    return build_infotext(params.prompt, params.negative_prompt, values)
