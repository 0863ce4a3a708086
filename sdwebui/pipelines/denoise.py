"""Denoise from a given latent: the step img2img, inpainting and the hires-fix second pass share.

A1111's semantics (`sd_samplers_common.setup_img2img_steps`, `KDiffusionSampler.sample_img2img`):

- Denoising strength s with N steps: the N-step schedule is built and sampling starts at its sigma with index
  `N - t_enc - 1`, `t_enc = int(min(s, 0.999) * N)`, i.e. the last `t_enc + 1` steps of the schedule are run.
- "Do exactly the amount of steps the slider specifies" (A1111 option `img2img_fix_steps`, and always for the
  hires-fix pass with its own step count): the schedule is built for `int(N / min(s, 0.999))` steps and
  `t_enc = N - 1`, so exactly N steps run.
- The start latent is `init + noise * initial_noise_multiplier * sigmas[0]`, where `noise` is the image's seeded
  noise (the same first draw of the per-image generator txt2img starts from, so seeds, variation seeds, "resize
  seed from" and ENSD behave as in txt2img).
- With a latent mask (inpainting), every denoiser output is blended back to the init latent outside the mask
  (`init * mask + nmask * denoised`, A1111 `CFGDenoiser.forward`) and so is the final sample.

Strength 0 differs from A1111 on purpose: A1111 still runs one step at the smallest sigma; we run none and return
the init latent, so "strength 0 returns the input" holds exactly (up to the VAE round trip).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from sdwebui.core.samplers import SamplerSpec


def img2img_steps(steps: int, strength: float, *, fix_steps: bool = False) -> tuple[int, int]:
    """(steps of the schedule to build, t_enc): A1111's `setup_img2img_steps`.

    The number of steps actually run is `t_enc + 1` (0 for strength 0, see the module docstring)."""
    strength = float(strength)
    if fix_steps:
        schedule_steps = int(steps / min(strength, 0.999)) if strength > 0 else 0
        return schedule_steps, steps - 1
    return steps, int(min(strength, 0.999) * steps)


def img2img_sigmas(full_sigmas: Tensor, schedule_steps: int, t_enc: int) -> Tensor:
    """The tail of a `schedule_steps`-step schedule that img2img runs: `sigmas[schedule_steps - t_enc - 1:]`.

    `full_sigmas` may have one more entry than `schedule_steps + 1` when the sampler discards the penultimate
    sigma (it was built for one step more and lost one entry), which keeps the same tail length rule."""
    return full_sigmas[max(0, schedule_steps - t_enc - 1):]


def denoise_sigmas(
    sampler: SamplerSpec,
    denoiser: Any,
    steps: int,
    strength: float,
    *,
    fix_steps: bool = False,
    make_sigmas: Callable[[int], Tensor] | None = None,
) -> Tensor:
    """The sigmas img2img runs for `steps` at `strength` (empty tail `[0]` for strength 0).

    `make_sigmas(n)` builds the n-step schedule (with the user's schedule settings); by default the sampler's
    Automatic schedule over `denoiser`."""
    if float(strength) <= 0:
        return torch.zeros(1)
    schedule_steps, t_enc = img2img_steps(steps, strength, fix_steps=fix_steps)
    full = make_sigmas(schedule_steps) if make_sigmas else sampler.sigmas(schedule_steps, denoiser, "Automatic")
    return img2img_sigmas(full, schedule_steps, t_enc)


class MaskedDenoiser:
    """A1111's inpainting blend around a denoiser: `init * mask + nmask * D(x, sigma)` at every call.

    `mask` is 1 where the init latent is kept, `nmask = 1 - mask` where the model repaints. Everything else
    (sigma range, schedule, prediction type, `reset`, `recording_uncond`, `last_uncond`) is the inner one's."""

    def __init__(self, inner: Any, init_latent: Tensor, mask: Tensor, nmask: Tensor):
        self.inner = inner
        self.init_latent = init_latent
        self.mask = mask
        self.nmask = nmask

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        denoised = self.inner(x, sigma, **kwargs)
        return self.init_latent * self.mask + self.nmask * denoised

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @contextmanager
    def recording_uncond(self, cfg_scale_multiplier: float = 1.0):
        with self.inner.recording_uncond(cfg_scale_multiplier):
            yield self

    @property
    def last_uncond(self):
        return self.inner.last_uncond


def denoise_latents(
    sampler: SamplerSpec,
    denoiser: Any,
    init_latent: Tensor,
    noise: Tensor,
    sigmas: Tensor,
    *,
    noise_multiplier: float = 1.0,
    mask: Tensor | None = None,
    image_conditioning: Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    noise_sampler: Any = None,
    **sampler_kwargs: Any,
) -> Tensor:
    """Noise `init_latent` to `sigmas[0]` and sample down `sigmas` (from `denoise_sigmas`).

    - `noise`: the batch's seeded noise (`ImageRNG.first()`), same shape as `init_latent`.
    - `mask`: latent mask, 1 = keep the init latent, 0 = repaint (A1111's `p.mask`); broadcast over channels.
    - `image_conditioning`: an inpainting model's `c_concat` (mask + masked-image latents), passed to the
      denoiser as `c_concat` at every call.
    - `callback`: the sampler's per-step callback (`{"i", "x", "sigma", "denoised", ...}`).
    Returns the final latents (blended with the init latent outside the mask).
    """
    if len(sigmas) < 2:
        return init_latent.clone()
    sigmas = sigmas.to(init_latent.device)
    x = init_latent + noise.to(init_latent.device, init_latent.dtype) * float(noise_multiplier) * sigmas[0]
    nmask = None
    if mask is not None:
        mask = mask.to(init_latent.device, init_latent.dtype)
        nmask = 1.0 - mask
        denoiser = MaskedDenoiser(denoiser, init_latent, mask, nmask)
    extra_args = {"c_concat": image_conditioning} if image_conditioning is not None else None
    samples = sampler.sample(
        denoiser, x, sigmas, extra_args=extra_args, callback=callback, noise_sampler=noise_sampler, **sampler_kwargs
    )
    if mask is not None:
        samples = samples * nmask + init_latent * mask
    return samples


__all__ = ["img2img_steps", "img2img_sigmas", "denoise_sigmas", "denoise_latents", "MaskedDenoiser"]
