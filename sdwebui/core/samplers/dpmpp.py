"""DPM-Solver++ samplers (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", arXiv:2211.01095), as in k-diffusion `sample_dpmpp_2m` and `sample_dpmpp_2s_ancestral`. The SDE variants
live in `dpmpp_sde.py`.

Written in the half-log-SNR time t = -log(sigma) of the VE parameterisation, where the data-prediction ODE has the
exact solution x(t') = (sigma'/sigma) x(t) - (e^{-h} - 1) * x0 for constant x0 (h = t' - t).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdwebui.core.samplers.common import Callback, NoiseSampler, default_noise_sampler, get_ancestral_step, to_d

__all__ = ["sample_dpmpp_2m", "sample_dpmpp_2s_ancestral"]


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(2M): second-order multistep in data prediction. The first step and the step to sigma = 0 are
    first order (DPM-Solver++(1) = DDIM), as k-diffusion and diffusers' `final_sigmas_type="zero"` do.
    Deterministic: `noise_sampler` is accepted for the common signature and never called."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])

    def t_fn(sigma: Tensor) -> Tensor:
        return sigma.log().neg()

    def sigma_fn(t: Tensor) -> Tensor:
        return t.neg().exp()

    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigmas[i + 1] == 0:
            # The exact step to sigma 0 of a first-order solver is the model's prediction itself.
            x = denoised
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
            h = t_next - t
            if old_denoised is None:
                denoised_d = denoised
            else:
                h_last = t - t_fn(sigmas[i - 1])
                r = h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
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
    """Ancestral DPM-Solver++(2S): a single-step second-order step (midpoint r = 1/2 in t = -log sigma) down to the
    ancestral sigma_down, then fresh noise of std sigma_up. A step with sigma_down = 0 is an Euler step. With
    eta = 0 it is the deterministic DPM-Solver++(2S)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_down == 0:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = denoiser(x_2, _sigma(s) * s_in, **extra_args)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x
