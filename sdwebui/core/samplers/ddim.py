"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12) as a k-diffusion-style sampler over sigmas.

In the VE parameterisation x = x_vp / sqrt(alpha_cumprod) (sigma^2 = (1 - a) / a) the DDIM update

    x_vp' = sqrt(a') x0 + sqrt(1 - a' - s_t^2) eps + s_t z,    s_t = eta sqrt((1 - a') / (1 - a) (1 - a / a'))

divided by sqrt(a') becomes

    x' = x0 + sigma_down * eps + sigma_up * z,    eps = (x - x0) / sigma

with (sigma_down, sigma_up) exactly k-diffusion's ancestral split of sigma -> sigma' scaled by eta. So eta = 0 is
an Euler step of the probability-flow ODE and eta = 1 is "Euler a"; what makes it "DDIM" is the timestep spacing,
the "DDIM" schedule (`sdwebui.core.schedules.ddim`: t = 951, 901, ..., 1 for 20 steps), which is the sampler's
default. On that schedule this equals diffusers' `DDIMScheduler(timestep_spacing="leading", steps_offset=1,
set_alpha_to_one=True)` step for step (tested).

Deliberate difference from A1111 1.10 (`sd_samplers_timesteps_impl.ddim`): A1111 loops `len(timesteps) - 1` times
over `range(0, 1000, 1000 // steps) + 1`, so when 1000 % steps == 0 it makes steps - 1 model calls and returns
the latent at t = 1 (not fully denoised). We make exactly `steps` calls and end at sigma = 0 (the clean image), as
the CompVis/diffusers DDIM do. Images differ from A1111's DDIM by about one step's worth of detail.

"DDIM CFG++" (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models",
arXiv:2406.08070; A1111 `ddim_cfgpp`): the same step, but the direction back to the noise uses the UNCONDITIONAL
noise prediction, eps_u = (x - x0_uncond) / sigma, and the guidance scale is divided by 12.5:

    x' = x0_guided + sigma_down * eps_u + sigma_up * z,   x0_guided with scale cfg_scale / 12.5.

The uncond prediction comes from the denoiser's `recording_uncond` hook (`CFGDenoiser`). A denoiser without it has
no separate uncond prediction: the step falls back to plain DDIM at full scale.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor

from sdwebui.core.samplers.common import Callback, NoiseSampler, default_noise_sampler, get_ancestral_step

__all__ = ["sample_ddim", "sample_ddim_cfgpp", "CFGPP_SCALE_MULTIPLIER"]

CFGPP_SCALE_MULTIPLIER = 1 / 12.5
"""A1111's CFG++ mapping of the usual CFG scale range [0, 12.5] onto CFG++'s [0, 1]."""


@torch.no_grad()
def sample_ddim(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DDIM with stochasticity `eta` (A1111's "Eta DDIM", default 0). Noise is drawn only when eta > 0."""
    extra_args = {} if extra_args is None else extra_args
    if eta and noise_sampler is None:
        noise_sampler = default_noise_sampler(x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        eps = (x - denoised) / sigma
        x = denoised + eps * sigma_down
        if eta and sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_ddim_cfgpp(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DDIM CFG++: guidance scaled by 1/12.5, renoising along the unconditional eps. Noise only when eta > 0."""
    extra_args = {} if extra_args is None else extra_args
    if eta and noise_sampler is None:
        noise_sampler = default_noise_sampler(x)
    s_in = x.new_ones([x.shape[0]])
    hook = getattr(denoiser, "recording_uncond", None)
    scope = hook(cfg_scale_multiplier=CFGPP_SCALE_MULTIPLIER) if callable(hook) else nullcontext()
    with scope:
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = denoiser(x, sigma * s_in, **extra_args)
            uncond = getattr(denoiser, "last_uncond", None)
            if uncond is None:
                uncond = denoised
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
            sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
            x = denoised + (x - uncond) / sigma * sigma_down
            if eta and sigma_next > 0:
                x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x
