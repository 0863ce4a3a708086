"""DPM-Solver++ samplers (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", arXiv:2211.01095), as in k-diffusion `sample_dpmpp_2m`.

Written in the half-log-SNR time t = -log(sigma) of the VE parameterisation, where the data-prediction ODE has the
exact solution x(t') = (sigma'/sigma) x(t) - (e^{-h} - 1) * x0 for constant x0 (h = t' - t).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdwebui.core.samplers.common import Callback, NoiseSampler

__all__ = ["sample_dpmpp_2m"]


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
