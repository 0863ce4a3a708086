"""Hires fix: txt2img's second pass, upscaled and denoised again from the first pass's result.

Reference: A1111 `StableDiffusionProcessingTxt2Img` (`init`, `calculate_target_resolution`, `calculate_hr_conds`,
`sample`, `sample_hr_pass`):

1. Target size: `hr_scale` x the first pass's size, or "resize to" `hr_resize_x/y` (see
   `Txt2ImgParams.hires_target`: cover the asked size keeping the aspect ratio, then crop the latent).
2. Upscale: a latent mode interpolates the latents; an image upscaler decodes the first pass with the first
   pass's model, upscales the pictures (`resize_image` "Just resize") and encodes them with the hires model.
3. Denoise from that latent at `denoising_strength` with the hires sampler and schedule, running exactly
   `hr_second_pass_steps` (0 = the first pass's steps) steps (A1111 always "fixes" the hires pass's steps), with
   noise drawn from the image's seed at the new size (a fresh per-image generator, as A1111's new `ImageRNG`).
4. Conditioning from the hires prompt (empty = the prompt) encoded by the hires model; prompt-editing fractions
   above 1 refer to this pass (the schedules are built with `hires_steps`).

The pass runs on the sampling engine's public pieces (`pipelines.sampling`): its UNet calls go through the
scripts' `wrap_model_call` as the first pass's do, and its steps are reported on the batch's progress bar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sdwebui.core.errors import ParamError
from sdwebui.core.samplers import ResolvedSampling, resolve_sampling
from sdwebui.core.upscale_modes import BUILTIN_UPSCALERS, is_latent_mode
from sdwebui.models.sd_model import SDModel
from sdwebui.models.upscalers import UpscalerEntry
from sdwebui.pipelines.conditioning import build_conditioning
from sdwebui.pipelines.context import BatchPrompts, GenerationContext
from sdwebui.pipelines.denoise import denoise_sigmas
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.sampling import (
    LABELS,
    DenoiserWrap,
    InitLatents,
    NetworkScope,
    SamplerPlan,
    denoise_batch,
    make_denoiser,
    prompt_infotext,
    sampler_options,
    schedule_sigmas,
    scheduled_denoiser,
    short_title,
)
from sdwebui.pipelines.upscale import TileOptions, resize_image_to, upscale_latents
from sdwebui.pipelines.vae_decode import decode_latents
from sdwebui.pipelines.vae_encode import encode_images
from sdwebui.prompts.extra_networks import parse_prompts


@dataclass
class HiresPlan:
    """The hires pass of a job, as far as it does not depend on the batch."""

    params: Txt2ImgParams
    sampling: ResolvedSampling
    """The hires pass's sampler and schedule."""
    model: SDModel
    """The hires checkpoint, or the job's model."""
    upscaler: str
    first_total_steps: int
    """Denoiser calls of the first pass (prompt schedules are laid out over both passes)."""
    infotext: dict[str, object] = field(default_factory=dict)
    """A1111's hires entries ("Hires upscale", "Hires upscaler", ...), the same for every image."""


def plan_hires(ctx: GenerationContext, params: Txt2ImgParams, first_sampling: ResolvedSampling,
               load: Callable[[str], SDModel]) -> HiresPlan:
    """Everything the hires pass needs that does not depend on the batch; raises ParamError for bad names."""
    hr_sampler = params.hr_sampler or params.sampler
    hr_scheduler = params.hr_scheduler or params.scheduler
    try:
        sampling = resolve_sampling(hr_sampler, hr_scheduler)
    except ParamError as error:
        raise ParamError({"sampler": "hr_sampler", "scheduler": "hr_scheduler"}.get(error.field, error.field),
                         error.message) from None
    upscaler = params.hr_upscaler or "Latent"
    if not is_latent_mode(upscaler) and upscaler not in BUILTIN_UPSCALERS:
        if ctx.upscalers is None:
            raise ParamError("hr_upscaler", f"upscaler {upscaler!r} not found (no upscaler models here)")
        try:
            ctx.upscalers.find(upscaler)
        except LookupError as error:
            raise ParamError("hr_upscaler", str(error.args[0])) from None
    model = ctx.model
    infotext: dict[str, object] = {LABELS["denoising_strength"]: params.denoising_strength}
    if params.hr_checkpoint:
        model = load(params.hr_checkpoint)
        infotext[LABELS["hr_checkpoint"]] = short_title(model)
    if params.hr_sampler and sampling.sampler.name != first_sampling.sampler.name:
        infotext[LABELS["hr_sampler"]] = sampling.sampler.name
    if params.hr_scheduler and sampling.schedule_label != first_sampling.schedule_label:
        infotext[LABELS["hr_scheduler"]] = sampling.infotext_schedule
    if params.hr_prompt and params.hr_prompt != params.prompt:
        infotext[LABELS["hr_prompt"]] = params.hr_prompt
    if params.hr_negative_prompt and params.hr_negative_prompt != params.negative_prompt:
        infotext[LABELS["hr_negative_prompt"]] = params.hr_negative_prompt
    if params.hr_resize_x == 0 and params.hr_resize_y == 0:
        infotext[LABELS["hr_scale"]] = params.hr_scale
    else:
        infotext[LABELS["hr_resize_x"]] = f"{params.hr_resize_x}x{params.hr_resize_y}"
    if params.hr_second_pass_steps:
        infotext[LABELS["hr_second_pass_steps"]] = params.hr_second_pass_steps
    infotext[LABELS["hr_upscaler"]] = upscaler
    return HiresPlan(params, sampling, model, upscaler, first_sampling.sampler.total_steps(params.steps), infotext)


class HiresFix:
    """Runs the hires pass batch by batch; keeps the conditioning and denoisers it built for reuse.

    `wrap_denoiser(denoiser, prompts, negative_prompts)`: put something around the pass's CFG denoiser (the
    refiner's switch: A1111's default `hires_fix_refiner_pass` "second pass")."""

    def __init__(self, ctx: GenerationContext, plan: HiresPlan, wrap_denoiser: DenoiserWrap | None = None):
        self.ctx = ctx
        self.plan = plan
        self.inner = make_denoiser(plan.model, ctx.hooks)
        self.wrap_denoiser = wrap_denoiser
        params = plan.params
        self.to_x, self.to_y, self.truncate_x, self.truncate_y = params.hires_target
        self.steps = params.hires_steps
        options, _ = sampler_options(plan.sampling, params)
        # A low strength makes the "exact steps" schedule longer than the steps limit: `schedule_sigmas` allows it.
        sigmas = denoise_sigmas(
            plan.sampling.sampler, self.inner, self.steps, params.denoising_strength, fix_steps=True,
            make_sigmas=lambda n: schedule_sigmas(plan.sampling, params, self.inner, steps=n)[0],
        ).to(plan.model.device)
        self.sampler = SamplerPlan(plan.sampling.sampler, sigmas, options)
        self._cached: tuple[tuple, Any, dict] | None = None
        self.extra_infotext: dict[str, object] = {}
        """The last batch's infotext entries from its hires prompt (networks, TI hashes, emphasis)."""
        self.last_denoiser: Any = None
        """The last batch's denoiser (a refiner switch tells whether it switched)."""
        self.notes: list[str] = []

    def prompts(self, batch: BatchPrompts) -> tuple[list[str], list[str]]:
        """The pass's prompts for a batch: the hires prompts, or where they are empty the batch's own (as the
        scripts' `before_batch` left them: A1111's `all_hr_prompts` follow `all_prompts`)."""
        params, count = self.plan.params, len(batch.seeds)
        prompts = [params.hr_prompt] * count if params.hr_prompt else list(batch.prompts)
        negatives = ([params.hr_negative_prompt] * count if params.hr_negative_prompt
                     else list(batch.negative_prompts))
        return prompts, negatives

    def upscale(self, first_model: SDModel, latents: torch.Tensor,
                first_pass: Callable[[list], None] | None = None) -> torch.Tensor:
        """The first pass's latents at the target size: interpolated (latent modes), or decoded by `first_model`,
        upscaled as pictures and encoded by the hires model; cropped to the "resize to" size. `first_pass` is
        called with the first pass's pictures (A1111's `save_intermediate`: with a latent mode they are decoded
        just for it)."""
        plan = self.plan
        if is_latent_mode(plan.upscaler):
            if first_pass is not None:
                first_pass(decode_latents(first_model, latents, self.ctx.vae_tiling)[0])
            samples = upscale_latents(latents, plan.upscaler, self.to_x, self.to_y)
        else:
            images, _ = decode_latents(first_model, latents, self.ctx.vae_tiling)
            if first_pass is not None:
                first_pass(list(images))
            entry = _find_entry(self.ctx, plan.upscaler)
            tile, overlap = self.ctx.upscale_tile
            resized = [
                resize_image_to(image, entry, self.to_x, self.to_y, library=self.ctx.upscalers,
                                tiles=TileOptions(tile, overlap), should_stop=self.ctx.stop.interrupted.is_set)
                for image in images
            ]
            samples = encode_images(plan.model, resized, self.ctx.vae_tiling).float()
        ty, tx = self.truncate_y, self.truncate_x
        if tx or ty:
            samples = samples[:, :, ty // 2: samples.shape[2] - (ty + 1) // 2, tx // 2: samples.shape[3] - (tx + 1) // 2]
        return samples

    def denoiser(self, prompts: list[str], negative_prompts: list[str], networks_key: object = None):
        """The hires pass's CFG denoiser for a batch's prompts (built once per distinct prompts and networks), and
        the infotext entries encoding them adds."""
        plan = self.plan
        key = (tuple(prompts), tuple(negative_prompts), networks_key)
        if self._cached is None or self._cached[0] != key:
            params = plan.params
            conditioning = build_conditioning(
                plan.model.text_encoder, prompts, negative_prompts, plan.first_total_steps,
                clip_skip=params.clip_skip, emphasis=params.emphasis, embeddings=self.ctx.embeddings,
                hires_steps=plan.sampling.sampler.total_steps(self.steps),
            )
            denoiser = scheduled_denoiser(plan.model, self.inner, conditioning, self.to_x, self.to_y,
                                          float(params.cfg_scale))
            if self.wrap_denoiser is not None:
                denoiser = self.wrap_denoiser(denoiser, prompts, negative_prompts)
            self._cached = (key, denoiser, prompt_infotext(params, conditioning))
        return self._cached[1], self._cached[2]

    @property
    def step_count(self) -> int:
        """Sampler steps the hires pass runs per batch."""
        return self.sampler.steps

    def run(self, first_model: SDModel, latents: torch.Tensor, batch: BatchPrompts, steps_before: int = 0,
            networks: NetworkScope | None = None,
            first_pass: Callable[[list], None] | None = None) -> tuple[torch.Tensor, bool]:
        """(hires latents, stopped) for one batch's first-pass latents. Progress is reported after the first
        pass's `steps_before` steps, out of both passes' steps (one bar for the batch, as A1111).

        `networks` (txt2img's network scope): the hires prompt's `<lora:...>` tags are applied for this pass, as
        A1111's `hr_extra_network_data` (on the job's model; with another hires checkpoint they are left out,
        with a note). `first_pass(images)`: see `upscale`."""
        ctx, plan = self.ctx, self.plan
        samples = self.upscale(first_model, latents, first_pass).to(plan.model.device)
        prompts_with_tags, negative_prompts = self.prompts(batch)
        prompts, calls = parse_prompts(prompts_with_tags)
        network_infotext, networks_key = self._activate_networks(networks, calls)
        denoiser, extra = self.denoiser(prompts, negative_prompts, networks_key)
        self.extra_infotext = {**network_infotext, **extra}
        self.last_denoiser = denoiser
        denoiser.reset()
        # Noise from the images' seeds at the new size (a fresh per-image generator, as A1111's new ImageRNG).
        return denoise_batch(ctx, plan.params, self.sampler, denoiser, batch, InitLatents(samples.float()),
                             model=plan.model, steps_before=steps_before,
                             token_merging_ratio=plan.params.hires_token_merging_ratio)

    def _activate_networks(self, networks: NetworkScope | None, calls) -> tuple[dict[str, object], object]:
        """(infotext entries, networks key) of the hires prompt's networks, applied when the pass runs the job's
        model; a note when they cannot be."""
        if networks is not None and self.plan.model is self.ctx.model:
            activation = networks.activate(calls)
            self.notes.extend(note for note in activation.notes if note not in self.notes)
            return activation.infotext, networks.active
        if calls:
            note = "extra networks in the hires prompt are not applied to another hires checkpoint"
            if note not in self.notes:
                self.notes.append(note)
        return {}, None


def _find_entry(ctx: GenerationContext, name: str) -> UpscalerEntry:
    if name in BUILTIN_UPSCALERS:
        return UpscalerEntry(name, name.lower())
    assert ctx.upscalers is not None
    return ctx.upscalers.find(name)


__all__ = ["HiresFix", "HiresPlan", "plan_hires"]
