"""PLMS, pseudo linear multistep (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds",
arXiv:2202.09778), as A1111 (`sd_samplers_timesteps_impl.plms`, after CompVis' `PLMSSampler`) and diffusers'
`PNDMScheduler(skip_prk_steps=True)` run it.

Every step is a DDIM (eta = 0) step with a combined noise prediction e': the first step uses the improved-Euler
average of eps at both ends (an extra model call at the step's end), then Adams-Bashforth of orders 2, 3 and 4 on the
history of eps with the fixed-step coefficients (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24. Over sigmas (VE),
a DDIM step with noise prediction e is x' = x + (sigma' - sigma) * e, so PLMS is a linear multistep method in sigma
whose coefficients assume equal steps (the "pseudo" part). steps + 1 model calls.

Default schedule "DDIM" (A1111's PLMS uses DDIM's timesteps); with it this equals diffusers' PNDM with
`timestep_spacing="leading"`, `steps_offset=1`, `set_alpha_to_one=True` (tested). Like our DDIM (see `ddim.py`) it
ends at sigma 0, where A1111's timestep loop stops at t = 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdwebui.core.samplers.common import Callback, NoiseSampler, to_d

__all__ = ["sample_plms"]


@torch.no_grad()
def sample_plms(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """PLMS over sigmas. Deterministic."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_eps: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        eps = to_d(x, sigma, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        if not old_eps:
            if sigma_next > 0:
                # pseudo improved Euler (2nd order): eps at the end of a DDIM step, averaged
                x_next = x + eps * (sigma_next - sigma)
                eps_next = to_d(x_next, sigma_next, denoiser(x_next, sigma_next * s_in, **extra_args))
                eps_prime = (eps + eps_next) / 2
            else:
                eps_prime = eps
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = x + eps_prime * (sigma_next - sigma)
        old_eps.append(eps)
        if len(old_eps) > 3:
            old_eps.pop(0)
    return x
