"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes", arXiv:2306.14878), as
A1111 implements it (`modules/sd_samplers_extra.py: restart_sampler`; not part of k-diffusion).

Heun steps along the schedule; at the sigma closest to a restart point `min_sigma` the sampler jumps back up to the
sigma closest to `max_sigma` by adding fresh noise (std sqrt(max^2 - min^2)) and walks down again on a Karras
sub-schedule, `restart_times` times. The extra noise contracts the accumulated error of the ODE solver.

A1111's automatic restart plan (used when `restart_list` is None), kept exactly:
- fewer than 20 steps: no restart, plain Heun on the given sigmas;
- 20 to 35 steps: 9 restart steps, once; 36 or more: steps // 4 restart steps, twice;
- with restarts the main schedule is REBUILT as Karras with `steps - restart_steps * restart_times` steps between
  sigmas[-2] and sigmas[0] (whatever schedule type was chosen), and restart_list = {0.1: [restart_steps + 1,
  restart_times, 2]}.
So the number of Heun steps (each 2 model calls, 1 on the step to sigma 0) stays about `steps`; the callback's `i`
counts Heun steps and can run past `len(sigmas) - 2`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdwebui.core.samplers.common import Callback, NoiseSampler, default_noise_sampler, to_d
from sdwebui.core.schedules import karras

__all__ = ["sample_restart", "restart_plan"]


def restart_plan(
    sigmas: Tensor, restart_list: dict[float, list[int]] | None = None
) -> list[tuple[Tensor, Tensor]]:
    """The (old_sigma, new_sigma) Heun steps of a restart run, with A1111's automatic plan when `restart_list` is
    None. `restart_list` maps min_sigma -> [restart_steps, restart_times, max_sigma]."""
    steps = sigmas.shape[0] - 1
    if restart_list is None:
        if steps >= 20:
            restart_steps = 9
            restart_times = 1
            if steps >= 36:
                restart_steps = steps // 4
                restart_times = 2
            sigmas = karras(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0])).to(sigmas)
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
        else:
            restart_list = {}

    by_index = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    step_list: list[tuple[Tensor, Tensor]] = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            restart_steps, restart_times, restart_max = by_index[i + 1]
            min_idx = i + 1
            max_idx = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = karras(restart_steps, float(sigmas[min_idx]), float(sigmas[max_idx]))[:-1]
                sigma_restart = sigma_restart.to(sigmas)
                while restart_times > 0:
                    restart_times -= 1
                    step_list.extend(zip(sigma_restart[:-1], sigma_restart[1:]))
    return step_list


@torch.no_grad()
def sample_restart(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_noise: float = 1.0,
    restart_list: dict[float, list[int]] | None = None,
) -> Tensor:
    """Restart sampler (A1111's `restart_sampler`). Noise is drawn once per restart jump."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    step_id = 0

    def heun_step(x: Tensor, old_sigma: Tensor, new_sigma: Tensor) -> Tensor:
        nonlocal step_id
        denoised = denoiser(x, old_sigma * s_in, **extra_args)
        d = to_d(x, old_sigma, denoised)
        if callback is not None:
            # A1111 reports new_sigma as "sigma"; we keep the common contract (the level the model just saw).
            callback({"x": x, "i": step_id, "sigma": old_sigma, "sigma_hat": old_sigma, "denoised": denoised})
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = denoiser(x_2, new_sigma * s_in, **extra_args)
            d_2 = to_d(x_2, new_sigma, denoised_2)
            x = x + (d + d_2) / 2 * dt
        step_id += 1
        return x

    last_sigma = None
    for old_sigma, new_sigma in restart_plan(sigmas, restart_list):
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + noise_sampler(last_sigma, old_sigma) * s_noise * (old_sigma**2 - last_sigma**2) ** 0.5
        x = heun_step(x, old_sigma, new_sigma)
        last_sigma = new_sigma
    return x
