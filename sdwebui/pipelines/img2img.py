"""img2img, sketch, inpainting and outpainting: A1111's `StableDiffusionProcessingImg2Img` as plain functions.

    images (+ mask) --prepare_images--> processing-size images, latent mask, overlays (pure PIL, `masking`)
                    --VAE encode-->     init latents (bilinear-resized for "Just resize (latent upscale)")
                    --denoise-->        `sampling.denoise_batch` from the strength's start sigma, per batch
                    --VAE decode-->     images, color-corrected to the init images when asked
                                        (`color_correction`), pasted back through the blurred mask
                                        (`masking.apply_overlay`)

Batches run on the sampling engine (`pipelines.sampling`) as txt2img's do: the scripts' `before_batch`,
`wrap_model_call` and `after_batch` (which sees the images after the overlay paste) act here too.

- A colour sketch is just the init image (the UI flattens the strokes into it).
- Inpainting: white in the mask = repaint. The mask is binarised (alpha masks thresholded), optionally inverted,
  blurred in pixels (x, then y), and for "only masked" the region around it (plus padding, grown to the output
  aspect) is cropped, processed at the full output size and pasted back. Masked content: 0 fill (colours smeared
  in from around the mask), 1 original, 2 latent noise, 3 latent nothing.
- Every model gets A1111's per-step blend that re-imposes the init latent outside the (latent) mask; 9-channel
  inpainting models also get the masked-image conditioning (mask + VAE latents of the masked image,
  `inpainting_image_conditioning`).
- Outpainting is "Resize and fill" (the new border is filled with stretched edges) or an uploaded mask that
  covers the border.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps

from sdwebui.core import noise as core_noise
from sdwebui.core.errors import ParamError
from sdwebui.core.samplers import ResolvedSampling, resolve_sampling
from sdwebui.models.tiling import circular_padding
from sdwebui.pipelines import masking
from sdwebui.pipelines.color_correction import apply_color_correction, color_target
from sdwebui.pipelines.context import GenerationContext, IntermediateImages
from sdwebui.pipelines.denoise import denoise_sigmas
from sdwebui.pipelines.img2img_params import INPAINTING_FILLS, Img2ImgParams
from sdwebui.pipelines.output import BEFORE_COLOR_CORRECTION, MASK, MASK_COMPOSITE
from sdwebui.pipelines.sampling import (
    LABELS,
    BatchDenoisers,
    FinishedBatches,
    GenerationResult,
    InitLatents,
    JobSeeds,
    NetworkScope,
    SamplerPlan,
    batch_prompts,
    denoise_batch,
    make_denoiser,
    run_batches,
    sampler_options,
    schedule_sigmas,
    was_skipped,
)
from sdwebui.pipelines.vae_encode import encode_pixels, pil_to_tensor

LATENT_FACTOR = 8


@dataclass
class PreparedImages:
    """What `prepare_images` makes of the user's images and mask (A1111 `StableDiffusionProcessingImg2Img.init`
    up to the VAE)."""

    images: list[Image.Image]
    """Init images at the processing size (after resize / crop, and "fill" when asked), RGB."""
    image_mask: Image.Image | None = None
    """The processed mask at the processing size ("L", white = repaint), or None without a mask."""
    overlays: list[Image.Image] | None = None
    """Per init image: the original with alpha = 255 - blurred mask, composited over the result."""
    paste_to: tuple[int, int, int, int] | None = None
    """"Only masked": (x, y, w, h) of the crop in the original image."""
    infotext: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mask_for_overlay: Image.Image | None = None
    """The blurred mask the overlays were cut with ("L", at the original's size; A1111's `mask_for_overlay`):
    saved as the `-mask` copy."""


def prepare_images(
    params: Img2ImgParams, init_images: list[Image.Image], mask: Image.Image | None = None
) -> PreparedImages:
    """Resize, mask, crop and fill the init images as A1111 does before encoding them."""
    width, height = params.width, params.height
    infotext: dict[str, object] = {LABELS["denoising_strength"]: params.denoising_strength}
    notes: list[str] = []
    crop = None
    paste_to = None
    image_mask = None
    mask_for_overlay = None
    if mask is not None:
        image_mask = masking.create_binary_mask(mask, round=params.mask_round)
        if params.inpainting_mask_invert:
            image_mask = ImageOps.invert(image_mask)
            infotext["Mask mode"] = "Inpaint not masked"
        if params.mask_blur_x > 0 or params.mask_blur_y > 0:
            image_mask = masking.blur_mask(image_mask, params.mask_blur_x, params.mask_blur_y)
            if params.mask_blur is not None:
                infotext["Mask blur"] = params.mask_blur
        if params.inpaint_full_res:
            mask_for_overlay = image_mask
            region = masking.crop_region(image_mask, params.inpaint_full_res_padding)
            if region:
                crop = masking.expand_crop_region(region, width, height, image_mask.width, image_mask.height)
                x1, y1, x2, y2 = crop
                image_mask = masking.resize_image(2, image_mask.crop(crop), width, height)
                paste_to = (x1, y1, x2 - x1, y2 - y1)
                infotext["Inpaint area"] = "Only masked"
                infotext[LABELS["inpaint_full_res_padding"]] = params.inpaint_full_res_padding
            else:
                image_mask = None
                mask_for_overlay = None
                notes.append('Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.')
        else:
            image_mask = masking.resize_image(params.resize_mode, image_mask, width, height)
            doubled = np.clip(np.asarray(image_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
            mask_for_overlay = Image.fromarray(doubled, mode="L")

    images: list[Image.Image] = []
    overlays: list[Image.Image] | None = [] if image_mask is not None else None
    for original in init_images:
        image = masking.flatten(original)
        if crop is None and params.resize_mode != 3:
            image = masking.resize_image(params.resize_mode, image, width, height)
        if image_mask is not None:
            if mask_for_overlay.size != image.size:
                mask_for_overlay = masking.resize_image(params.resize_mode, mask_for_overlay, image.width, image.height)
            overlays.append(masking.overlay_image(image, mask_for_overlay))
        if crop is not None:
            image = masking.resize_image(2, image.crop(crop), width, height)
        if image_mask is not None and params.inpainting_fill != 1:
            image = masking.fill(image, image_mask)
            if params.inpainting_fill == 0:
                infotext["Masked content"] = "fill"
        images.append(image)
    return PreparedImages(images, image_mask, overlays, paste_to, infotext, notes,
                          mask_for_overlay if image_mask is not None else None)


def latent_mask(image_mask: Image.Image, latent_size: tuple[int, int], round_mask: bool = True) -> torch.Tensor:
    """A1111's `latmask`: the mask resized to the latent grid (PIL's default filter on an RGB copy), in [0, 1];
    returned as [1, 1, h, w] with 1 = repaint (A1111's `nmask`)."""
    h, w = latent_size
    array = np.asarray(image_mask.convert("RGB").resize((w, h)), dtype=np.float32)[..., 0] / 255
    if round_mask:
        array = np.around(array)
    return torch.from_numpy(np.ascontiguousarray(array))[None, None]


def inpainting_conditioning(
    model, source: torch.Tensor, image_mask: Image.Image | None, latent_size: tuple[int, int],
    *, round_mask: bool = True, mask_weight: float = 1.0, vae_tiling=None,
) -> torch.Tensor:
    """A1111 `inpainting_image_conditioning`: [mask, VAE latents of the masked image] for a 9-channel UNet.

    `source` is the init batch in [-1, 1]; without a mask the whole image counts as masked (all ones)."""
    if image_mask is not None:
        cond_mask = torch.from_numpy(np.asarray(image_mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
        if round_mask:
            cond_mask = torch.round(cond_mask)
    else:
        cond_mask = source.new_ones(1, 1, *source.shape[-2:])
    cond_mask = cond_mask.to(source.device, source.dtype)
    masked = torch.lerp(source, source * (1.0 - cond_mask), float(mask_weight))
    masked_latents = encode_pixels(model, masked, vae_tiling)
    cond_mask = torch.nn.functional.interpolate(cond_mask, size=latent_size)
    cond_mask = cond_mask.to(masked_latents.device).expand(masked_latents.shape[0], -1, -1, -1)
    return torch.cat([cond_mask, masked_latents], dim=1)


def is_inpainting_model(model) -> bool:
    return int(getattr(model.unet.config, "in_channels", 4)) == model.latent_channels * 2 + 1


def img2img(
    ctx: GenerationContext,
    params: Img2ImgParams,
    init_images: list[Image.Image],
    mask: Image.Image | None = None,
) -> GenerationResult:
    """Generate from `init_images` (one for the whole batch, or one per image of the batch) and an optional
    inpainting `mask` (white = repaint), as A1111's `/sdapi/v1/img2img`; raises `ParamError` for bad input."""
    if not init_images:
        raise ParamError("init_images", "at least one init image is needed")
    sampling = resolve_sampling(params.sampler, params.scheduler)
    if len(init_images) > 1:
        if len(init_images) > params.batch_size:
            raise ParamError(
                "init_images", f"{len(init_images)} init images for a batch size of {params.batch_size}; "
                "give one image, or at most batch size images"
            )
        params = params.replace(batch_size=len(init_images))  # A1111: the batch is the init images
    job_seeds = JobSeeds.of(params)
    params = job_seeds.params
    prepared = prepare_images(params, init_images, mask)
    with torch.inference_mode(), ExitStack() as stack:
        # A1111's `tiling` applies to img2img too (seamless textures): circular padding for UNet and VAE.
        stack.enter_context(circular_padding(ctx.model.unet, ctx.model.vae, enabled=params.tiling))
        start, image_infotext = init_latents(ctx, params, prepared, job_seeds.seeds)
        run = _Img2ImgRun(ctx, sampling, job_seeds, prepared, start, image_infotext, stack)
        interrupted = run_batches(ctx, params.batch_count, run.batch)
        return run.finished.result(run.latent_shape, interrupted)


def init_latents(ctx: GenerationContext, params: Img2ImgParams, prepared: PreparedImages,
                 seeds: list[int]) -> tuple[InitLatents, dict[str, object]]:
    """The VAE latents the batches start from, with A1111's masked-content fills, the latent mask and an
    inpainting model's image conditioning; and the infotext entries they add."""
    model = ctx.model
    infotext = dict(prepared.infotext)
    latent_size = (params.height // LATENT_FACTOR, params.width // LATENT_FACTOR)
    source = pil_to_tensor(prepared.images).to(model.device)
    init_latent = encode_pixels(model, source, ctx.vae_tiling).float()
    if init_latent.shape[0] == 1 and params.batch_size > 1:  # one init image for the whole batch: encode once
        source = source.repeat(params.batch_size, 1, 1, 1)
        init_latent = init_latent.repeat(params.batch_size, 1, 1, 1)
    if params.resize_mode == 3:
        init_latent = torch.nn.functional.interpolate(init_latent, size=latent_size, mode="bilinear")
    keep_mask = None
    if prepared.image_mask is not None:
        nmask = latent_mask(prepared.image_mask, init_latent.shape[-2:], params.mask_round).to(init_latent.device)
        keep_mask = 1.0 - nmask
        if params.inpainting_fill == 2:
            # A1111 draws this once, from the first batch's seeds (its own "needs to be fixed" note), with the
            # job's RNG source but neither variation seed nor ENSD.
            fill_noise = core_noise.ImageRNG(
                tuple(init_latent.shape[1:]), seeds[: init_latent.shape[0]], device=model.device, rng=params.rng
            ).first().to(init_latent.device, init_latent.dtype)
            init_latent = init_latent * keep_mask + fill_noise * nmask
            infotext["Masked content"] = INPAINTING_FILLS[2]
        elif params.inpainting_fill == 3:
            init_latent = init_latent * keep_mask
            infotext["Masked content"] = INPAINTING_FILLS[3]
    image_conditioning = None
    if is_inpainting_model(model):
        image_conditioning = inpainting_conditioning(
            model, source, prepared.image_mask, tuple(init_latent.shape[-2:]),
            round_mask=params.mask_round, mask_weight=params.inpainting_mask_weight, vae_tiling=ctx.vae_tiling,
        ).to(init_latent.dtype)
        infotext[LABELS["inpainting_mask_weight"]] = params.inpainting_mask_weight
    return InitLatents(init_latent, keep_mask, image_conditioning, params.initial_noise_multiplier), infotext


class _Img2ImgRun:
    """One img2img job's fixed parts (sigmas of the strength's tail, denoisers, the overlay paste) and its batch
    step."""

    def __init__(self, ctx: GenerationContext, sampling: ResolvedSampling, job_seeds: JobSeeds,
                 prepared: PreparedImages, start: InitLatents, image_infotext: dict[str, object], stack: ExitStack):
        model, params = ctx.model, job_seeds.params
        self.ctx, self.params, self.job_seeds = ctx, params, job_seeds
        self.prepared, self.start = prepared, start
        self.latent_shape = (model.latent_channels, params.height // LATENT_FACTOR, params.width // LATENT_FACTOR)
        inner = make_denoiser(model, ctx.hooks)
        sigmas = denoise_sigmas(
            sampling.sampler, inner, params.steps, params.denoising_strength, fix_steps=params.fix_steps,
            make_sigmas=lambda n: schedule_sigmas(sampling, params, inner, steps=n)[0],
        ).to(model.device)
        schedule_infotext = schedule_sigmas(sampling, params, inner)[1]
        options, sampler_infotext = sampler_options(sampling, params)
        self.sampler = SamplerPlan(sampling.sampler, sigmas, options)
        noise_infotext = {LABELS["initial_noise_multiplier"]: start.noise_multiplier} if start.noise_multiplier != 1.0 else {}
        self.notes: list[str] = list(prepared.notes)

        def infotext_entries(batch_extra: dict[str, object]) -> dict[str, object]:
            return {**image_infotext, **batch_extra, **noise_infotext, **sampler_infotext, **schedule_infotext}

        self.finished = FinishedBatches(ctx, params, sampling, self.notes, infotext_entries)
        self.denoisers = BatchDenoisers(ctx, model, inner, NetworkScope(ctx, stack), params,
                                        sampling.sampler.total_steps(params.steps))
        self.overlays = prepared.overlays
        if self.overlays is not None and len(self.overlays) == 1:
            self.overlays = self.overlays * params.batch_size
        # A1111 corrects only image i < the number of init images (with one init image, a batch's first image
        # alone); every image here, each matched to its own init image, as its overlay is.
        self.color_targets = [color_target(image) for image in prepared.images] if ctx.color_correction else None
        if self.color_targets is not None and len(self.color_targets) == 1:
            self.color_targets = self.color_targets * params.batch_size

    def batch(self, batch_index: int) -> bool:
        """Denoise one batch and keep it unless it was skipped; True when the job must stop."""
        ctx = self.ctx
        batch = batch_prompts(ctx, self.job_seeds, batch_index)
        _, denoiser, batch_extra = self.denoisers.for_batch(batch.prompts, batch.negative_prompts, self.notes)
        latents, stopped = denoise_batch(ctx, self.params, self.sampler, denoiser, batch, self.start)
        if was_skipped(ctx, stopped):
            return False
        self.finished.add(ctx.model, latents, batch, batch_extra, finish=self.finish)
        return stopped

    def finish(self, images: list[Image.Image], copies: list[IntermediateImages]) -> list[Image.Image]:
        """A batch's decoded images color-corrected (when asked) and pasted back over the originals, with the
        intermediate copies A1111 saves on the way (in its order): before color correction, the mask, the masked
        composite."""
        ctx = self.ctx
        if self.color_targets is not None:
            if ctx.wants(BEFORE_COLOR_CORRECTION):
                copies.append(IntermediateImages(BEFORE_COLOR_CORRECTION, self.paste_overlays(images)))
            images = [apply_color_correction(self.color_targets[i], image) for i, image in enumerate(images)]
        pasted = self.paste_overlays(images)
        mask = self.prepared.mask_for_overlay
        if mask is not None and ctx.wants(MASK):
            copies.append(IntermediateImages(MASK, [mask.convert("RGB")] * len(pasted), before=False))
        if mask is not None and ctx.wants(MASK_COMPOSITE):
            composites = [self.mask_composite(image, final, mask) for image, final in zip(images, pasted)]
            copies.append(IntermediateImages(MASK_COMPOSITE, composites, before=False))
        return pasted

    def mask_composite(self, image: Image.Image, final: Image.Image, mask: Image.Image) -> Image.Image:
        """A1111's masked composite: the generated picture (uncropped into place for "only masked") where the
        mask is, transparent elsewhere; RGBA at the result's size."""
        paste_to = self.prepared.paste_to
        denoised = masking.uncrop(image, final.size, paste_to) if paste_to is not None else image
        return Image.composite(denoised.convert("RGBA").convert("RGBa"), Image.new("RGBa", final.size),
                               masking.resize_image(2, mask, final.width, final.height).convert("L")).convert("RGBA")

    def paste_overlays(self, images: list[Image.Image]) -> list[Image.Image]:
        overlays, paste_to = self.overlays, self.prepared.paste_to
        if overlays is None:
            return images
        if paste_to is None and overlays[0].size != images[0].size:
            # "Just resize (latent upscale)" keeps the init image at its own size; the overlay must match the
            # output (A1111 fails here with "images do not match").
            overlays = [overlay.resize(images[0].size, resample=masking.LANCZOS) for overlay in overlays]
        # Image i of every batch belongs to init image i (A1111 repeats the init images per batch).
        return [masking.apply_overlay(image, paste_to, overlays[i]) for i, image in enumerate(images)]


__all__ = ["img2img", "prepare_images", "PreparedImages", "init_latents", "latent_mask", "inpainting_conditioning",
           "is_inpainting_model"]
