"""Euler samplers (k-diffusion `sample_euler`, `sample_euler_ancestral`).

- "Euler": Algorithm 2 of Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative
  Models", with Euler steps on the probability-flow ODE; optional "churn" (s_churn, s_tmin, s_tmax, s_noise) adds
  noise before a step to raise sigma to sigma_hat.
- "Euler a": ancestral sampling with Euler steps: step down to sigma_down deterministically, then add fresh noise of
  std sigma_up (`get_ancestral_step`); `eta` scales the noise (1 = DDPM-like, 0 = plain Euler).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sdwebui.core.samplers.common import Callback, NoiseSampler, default_noise_sampler, get_ancestral_step, to_d

__all__ = ["sample_euler", "sample_euler_ancestral"]


@torch.no_grad()
def sample_euler(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2). Noise is drawn only for steps
    with churn (gamma > 0), as in current k-diffusion."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    n = len(sigmas) - 1
    for i in range(n):
        sigma = sigmas[i]
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            eps = noise_sampler(sigma, sigmas[i + 1]) * s_noise
            x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = denoiser(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral sampling with Euler method steps. One noise draw per step that ends above sigma 0."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x
