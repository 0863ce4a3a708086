"""DPM-Solver with fixed ("DPM fast") and adaptive ("DPM adaptive") step sizes (Lu et al. 2022, "DPM-Solver: A
Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps", arXiv:2206.00927), as in k-diffusion's
`DPMSolver`, `sample_dpm_fast` and `sample_dpm_adaptive`.

They solve the ODE in t = -log(sigma) on the noise prediction eps = (x - D(x, sigma)) / sigma, between the largest
and the smallest NON-ZERO sigma of the schedule: log-time cannot reach sigma = 0, and like k-diffusion and A1111
they return the sample at sigma_min (about 0.03 for SD), not a fully denoised one. They take only the ends of the
schedule (A1111 passes the model's sigma_min / sigma_max and ignores the schedule type), and make their own steps:

- DPM fast: `n = len(sigmas) - 1` model calls, spent as floor(n/3)+1 steps uniform in t of orders 3, ..., 3 and a
  last one or two of order 2/1 (the paper's DPM-Solver-fast).
- DPM adaptive: embedded DPM-Solver-2/3 (or 1/2) pairs with a PID step-size controller; as many calls as the
  tolerances need (each attempted step costs 3 calls for order 3), whatever the schedule length.

`eta` > 0 adds ancestral noise after each step (A1111 passes its "Eta" for ancestral samplers, 1.0 by default).
The callback's `i` counts these samplers' own steps (DPM adaptive: attempted steps), not schedule entries.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sdwebui.core.samplers.common import Callback, NoiseSampler, default_noise_sampler, get_ancestral_step

__all__ = ["DPMSolver", "PIDStepSizeController", "sample_dpm_fast", "sample_dpm_adaptive"]


class PIDStepSizeController:
    """A PID controller for ODE adaptive step size control (k-diffusion's, after Söderlind 2003)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def limiter(self, x: float) -> float:
        return 1 + math.atan(x - 1)

    def propose_step(self, error) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = self.limiter(factor)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


class DPMSolver:
    """DPM-Solver-1/2/3 steps in t = -log(sigma) on eps, with a per-step cache of model evaluations."""

    def __init__(self, denoiser, extra_args: dict[str, Any] | None = None, info_callback: Callback | None = None):
        self.denoiser = denoiser
        self.extra_args = {} if extra_args is None else extra_args
        self.info_callback = info_callback

    @staticmethod
    def t(sigma: Tensor) -> Tensor:
        return -sigma.log()

    @staticmethod
    def sigma(t: Tensor) -> Tensor:
        return t.neg().exp()

    def eps(self, eps_cache: dict, key: str, x: Tensor, t: Tensor) -> tuple[Tensor, dict]:
        if key in eps_cache:
            return eps_cache[key], eps_cache
        sigma = self.sigma(t) * x.new_ones([x.shape[0]])
        eps = (x - self.denoiser(x, sigma, **self.extra_args)) / self.sigma(t)
        return eps, {key: eps, **eps_cache}

    def dpm_solver_1_step(self, x, t, t_next, eps_cache=None):
        eps_cache = {} if eps_cache is None else eps_cache
        h = t_next - t
        eps, eps_cache = self.eps(eps_cache, "eps", x, t)
        x_1 = x - self.sigma(t_next) * h.expm1() * eps
        return x_1, eps_cache

    def dpm_solver_2_step(self, x, t, t_next, r1=1 / 2, eps_cache=None):
        eps_cache = {} if eps_cache is None else eps_cache
        h = t_next - t
        eps, eps_cache = self.eps(eps_cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, eps_cache = self.eps(eps_cache, "eps_r1", u1, s1)
        x_2 = x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        return x_2, eps_cache

    def dpm_solver_3_step(self, x, t, t_next, r1=1 / 3, r2=2 / 3, eps_cache=None):
        eps_cache = {} if eps_cache is None else eps_cache
        h = t_next - t
        eps, eps_cache = self.eps(eps_cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, eps_cache = self.eps(eps_cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * (r2 * h).expm1() * eps
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2, eps_cache = self.eps(eps_cache, "eps_r2", u2, s2)
        x_3 = x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        return x_3, eps_cache

    def _info(self, x, i, t, t_up, denoised):
        if self.info_callback is not None:
            self.info_callback(
                {"x": x, "i": i, "sigma": self.sigma(t), "sigma_hat": self.sigma(t_up), "denoised": denoised}
            )

    def dpm_solver_fast(self, x, t_start, t_end, nfe, eta=0.0, s_noise=1.0, noise_sampler=None):
        noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
        if not t_end > t_start and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device, dtype=t_start.dtype)
        if nfe % 3 == 0:
            orders = [3] * (m - 2) + [2, 1]
        else:
            orders = [3] * (m - 1) + [nfe % 3]
        for i in range(len(orders)):
            eps_cache: dict = {}
            t, t_next = ts[i], ts[i + 1]
            if eta:
                sd, su = get_ancestral_step(self.sigma(t), self.sigma(t_next), eta)
                t_next_ = torch.minimum(t_end, self.t(sd))
                su = (self.sigma(t_next) ** 2 - self.sigma(t_next_) ** 2) ** 0.5
            else:
                t_next_, su = t_next, 0.0
            eps, eps_cache = self.eps(eps_cache, "eps", x, t)
            self._info(x, i, ts[i], t, x - self.sigma(t) * eps)
            if orders[i] == 1:
                x, eps_cache = self.dpm_solver_1_step(x, t, t_next_, eps_cache=eps_cache)
            elif orders[i] == 2:
                x, eps_cache = self.dpm_solver_2_step(x, t, t_next_, eps_cache=eps_cache)
            else:
                x, eps_cache = self.dpm_solver_3_step(x, t, t_next_, eps_cache=eps_cache)
            x = x + su * s_noise * noise_sampler(self.sigma(t), self.sigma(t_next))
        return x

    def dpm_solver_adaptive(
        self, x, t_start, t_end, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0,
        dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None,
    ):
        noise_sampler = default_noise_sampler(x) if noise_sampler is None else noise_sampler
        if order not in {2, 3}:
            raise ValueError("order should be 2 or 3")
        forward = t_end > t_start
        if not forward and eta:
            raise ValueError("eta must be 0 for reverse sampling")
        h_init = abs(h_init) * (1 if forward else -1)
        atol = torch.tensor(atol)
        rtol = torch.tensor(rtol)
        s = t_start
        x_prev = x
        pid = PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
        info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
        while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
            eps_cache: dict = {}
            t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
            if eta:
                sd, su = get_ancestral_step(self.sigma(s), self.sigma(t), eta)
                t_ = torch.minimum(t_end, self.t(sd))
                su = (self.sigma(t) ** 2 - self.sigma(t_) ** 2) ** 0.5
            else:
                t_, su = t, 0.0
            eps, eps_cache = self.eps(eps_cache, "eps", x, s)
            denoised = x - self.sigma(s) * eps
            x_eval, s_eval = x, s
            if order == 2:
                x_low, eps_cache = self.dpm_solver_1_step(x, s, t_, eps_cache=eps_cache)
                x_high, eps_cache = self.dpm_solver_2_step(x, s, t_, eps_cache=eps_cache)
            else:
                x_low, eps_cache = self.dpm_solver_2_step(x, s, t_, r1=1 / 3, eps_cache=eps_cache)
                x_high, eps_cache = self.dpm_solver_3_step(x, s, t_, eps_cache=eps_cache)
            delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            accept = pid.propose_step(error)
            if accept:
                x_prev = x_low
                x = x_high + su * s_noise * noise_sampler(self.sigma(s), self.sigma(t))
                s = t
                info["n_accept"] += 1
            else:
                info["n_reject"] += 1
            info["nfe"] += 1
            info["steps"] += 1
            # k-diffusion reports x and sigma after the step; we report the point the model saw (common contract)
            self._info(x_eval, info["steps"] - 1, s_eval, s_eval, denoised)
        return x, info


def _range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    positive = sigmas[sigmas > 0]
    if positive.numel() == 0:
        raise ValueError("DPM fast / adaptive need at least one non-zero sigma")
    return positive.min(), positive.max()


@torch.no_grad()
def sample_dpm_fast(
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
    """DPM-Solver-fast from sigmas[0] to the smallest non-zero sigma with `len(sigmas) - 1` model calls (k-diffusion
    `sample_dpm_fast(model, x, sigma_min, sigma_max, n)`); returns the sample at that sigma_min."""
    sigma_min, sigma_max = _range(sigmas)
    solver = DPMSolver(denoiser, extra_args, info_callback=callback)
    return solver.dpm_solver_fast(
        x, solver.t(sigma_max), solver.t(sigma_min), len(sigmas) - 1, eta, s_noise, noise_sampler
    )


@torch.no_grad()
def sample_dpm_adaptive(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-12/23 with adaptive steps from sigmas[0] to the smallest non-zero sigma (k-diffusion
    `sample_dpm_adaptive`; only the schedule's ends are used). Returns the sample at that sigma_min."""
    sigma_min, sigma_max = _range(sigmas)
    solver = DPMSolver(denoiser, extra_args, info_callback=callback)
    x, _ = solver.dpm_solver_adaptive(
        x, solver.t(sigma_max), solver.t(sigma_min), order, rtol, atol, h_init, pcoeff, icoeff, dcoeff,
        accept_safety, eta, s_noise, noise_sampler,
    )
    return x
