"""LCM, latent consistency model sampling (Luo et al. 2023, "Latent Consistency Models", arXiv:2310.04378,
Algorithm 1 "multistep consistency sampling"), as A1111 (`modules/sd_samplers_lcm.py`) and diffusers'
`LCMScheduler` run it.

Each step takes the consistency function's output f(x, t) = c_skip(t) x + c_out(t) x0(x, t) as the clean image and
re-noises it to the next sigma with fresh noise: x' = f + sigma' z. The boundary-condition scalings use the discrete
timestep t scaled by `timestep_scaling` (10): c_skip = s^2 / ((10 t)^2 + s^2), c_out = 10 t / sqrt((10 t)^2 + s^2)
with sigma_data s = 0.5. They are within 1e-5 of (0, 1) for t >= 19, so they matter only near t = 0. The timestep is
the model's (`denoiser.schedule.sigma_to_t`); a denoiser without a discrete schedule gets f = x0. Like diffusers and
the paper, c_skip multiplies the VP sample x / sqrt(1 + sigma^2); A1111 multiplies the VE sample x (a difference
below 1e-7 of the output).

"Automatic" for LCM is `lcm_sigmas`: A1111's LCM denoiser spaces n steps evenly over the 50 timesteps an LCM was
distilled on (t = 999, 979, ..., 19) and calls the model at the nearest one; we take those nearest timesteps' sigmas
directly, so the model is called on the distillation grid with sigma and timestep consistent. A1111 keeps the
un-snapped (interpolated) sigma for the input scaling; for n = 2, 8, 50 (index grids that are exact) the two agree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdwebui.core.denoiser import DiscreteSchedule, append_dims
from sdwebui.core.samplers.common import Callback, NoiseSampler, default_noise_sampler
from sdwebui.core.schedules import append_zero

__all__ = ["sample_lcm", "lcm_sigmas", "lcm_timesteps"]


def lcm_timesteps(n: int, num_timesteps: int = 1000, original_steps: int = 50) -> Tensor:
    """A1111's LCM timesteps for n steps (descending): n points evenly spaced over the `original_steps` distillation
    timesteps (k * (T / original_steps) - 1, k = 1..original_steps), snapped to the nearest one."""
    if int(n) != n or n < 1:
        raise ValueError(f"the number of steps must be a positive integer, got {n!r}")
    skip = num_timesteps // original_steps
    idx = torch.floor(torch.linspace(original_steps - 1, 0, n, dtype=torch.float64) + 0.5).long()
    return (idx + 1) * skip - 1


def lcm_sigmas(n: int, schedule: DiscreteSchedule, original_steps: int = 50) -> Tensor:
    """The sigmas of `lcm_timesteps` on the model's schedule, then 0 (LCM's "Automatic" schedule)."""
    t = lcm_timesteps(n, schedule.num_timesteps, original_steps)
    return append_zero(schedule.sigmas[t].clone()).float()


@torch.no_grad()
def sample_lcm(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    timestep_scaling: float = 10.0,
    sigma_data: float = 0.5,
) -> Tensor:
    """Multistep consistency sampling. One model call and (except on the last step) one noise draw per step."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    schedule = getattr(denoiser, "schedule", None)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = denoiser(x, sigma * s_in, **extra_args)
        if isinstance(schedule, DiscreteSchedule) and timestep_scaling:
            scaled_t = schedule.sigma_to_t(sigma.reshape(1).float()).to(x.device, torch.float32) * timestep_scaling
            c_skip = sigma_data**2 / (scaled_t**2 + sigma_data**2)
            c_out = scaled_t / (scaled_t**2 + sigma_data**2) ** 0.5
            x_vp = x / (sigma**2 + 1) ** 0.5
            denoised = append_dims(c_out, x.ndim) * denoised + append_dims(c_skip, x.ndim) * x_vp
            denoised = denoised.to(x.dtype)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigma, sigmas[i + 1]) * sigmas[i + 1]
    return x
