"""UniPC, unified predictor-corrector (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models", arXiv:2302.04867), multistep, data prediction, B(h) variants "bh1" / "bh2".

Written k-diffusion-style over sigmas in the VE parameterisation with lambda = -log(sigma): there the UniP step of
order p from s0 to t (h = lambda_t - lambda_s0) is

    x_t = (sigma_t / sigma_s0) x - expm1(-h) m0 - B(h) * sum_k rho_k D1_k,   D1_k = (m_k - m0) / r_k,

with m the model's x0 predictions (history), r_k = (lambda_k - lambda_s0) / h, and the rho solving UniPC's order
conditions (every alpha_t of the VP form cancels). UniC corrects x_t with the model output AT x_t, which is computed
anyway for the next step, so the corrector costs no model call: one call per step. This is diffusers'
`UniPCMultistepScheduler` (and A1111's `uni_pc`, from the authors' code) step for step; tested against diffusers.

A1111's options and defaults: `order` ("UniPC order", 3; the effective order is order + 1 thanks to UniC),
`variant` ("UniPC variant", "bh1"), `lower_order_final` (True: the last steps use lower orders). A1111's "UniPC skip
type" "time_uniform" is a schedule here: "SGM Uniform" (n timesteps evenly spaced from 999 towards 0, the endpoint
excluded), the sampler's default, puts the model calls at A1111's timesteps. Differences from A1111, on purpose:
A1111 stops at sigma_min (timestep 0, sigma 0.029) without a final denoise; like every sampler here we end at sigma 0
with the model's x0 there. The step to sigma 0 is always first order (it returns the x0 prediction): lambda = inf
makes higher orders undefined (diffusers' scheduler returns NaN on that step with `final_sigmas_type="zero"`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sdwebui.core.samplers.common import Callback, NoiseSampler

__all__ = ["sample_unipc", "UNIPC_VARIANTS"]

UNIPC_VARIANTS = ("bh1", "bh2")


def _bh_coefficients(rks: list[float], hh: float, order: int, variant: str) -> tuple[float, Tensor, Tensor]:
    """B(h), and UniPC's order-condition system R (order x order) and b (order), in float64."""
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial_i = 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rks_t = torch.tensor(rks, dtype=torch.float64)
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(rks_t ** (i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    return b_h, torch.stack(rows), torch.tensor(b, dtype=torch.float64)


def _uni_update(
    x: Tensor,
    history: list[Tensor],
    lambdas: list[float],
    sigma_s0: float,
    sigma_t: float,
    lambda_t: float,
    order: int,
    variant: str,
    model_t: Tensor | None = None,
) -> Tensor:
    """UniP (model_t None) or UniC (model_t = the x0 prediction at the predicted x_t) of `order`, from the last point
    of `history` / `lambdas` (s0) to lambda_t."""
    m0, lambda_s0 = history[-1], lambdas[-1]
    h = lambda_t - lambda_s0
    hh = -h
    rks, d1s = [], []
    for k in range(1, order):
        rk = (lambdas[-(k + 1)] - lambda_s0) / h
        rks.append(rk)
        d1s.append((history[-(k + 1)] - m0) / rk)
    rks.append(1.0)
    b_h, rows, b = _bh_coefficients(rks, hh, order, variant)
    x_t = (sigma_t / sigma_s0) * x - math.expm1(hh) * m0
    if model_t is None:  # predictor
        if d1s:
            rhos = [0.5] if order == 2 else torch.linalg.solve(rows[:-1, :-1], b[:-1]).tolist()
            x_t = x_t - b_h * sum(rho * d for rho, d in zip(rhos, d1s))
        return x_t
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(rows, b).tolist()
    res = rhos_c[-1] * (model_t - m0)
    if d1s:
        res = res + sum(rho * d for rho, d in zip(rhos_c[:-1], d1s))
    return x_t - b_h * res


@torch.no_grad()
def sample_unipc(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
) -> Tensor:
    """Multistep UniPC (UniP-`order` predictor + UniC corrector). One model call per step. Deterministic."""
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"UniPC variant must be one of {UNIPC_VARIANTS}, got {variant!r}")
    if int(order) != order or order < 1:
        raise ValueError(f"UniPC order must be a positive integer, got {order!r}")
    order = int(order)
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    n = len(sigmas) - 1
    sig = [float(s) for s in sigmas.detach().to("cpu", torch.float64)]
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]
    history: list[Tensor] = []
    lambdas: list[float] = []
    last_x: Tensor | None = None
    last_order = 0
    for i in range(n):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if last_x is not None:
            # UniC: correct the step (i-1 -> i) with the model output at the predicted point
            x = _uni_update(last_x, history, lambdas, sig[i - 1], sig[i], lam[i], last_order, variant, denoised)
        history.append(denoised)
        lambdas.append(lam[i])
        if len(history) > order:
            history.pop(0)
            lambdas.pop(0)
        if sig[i + 1] == 0:
            x = denoised  # first order to sigma 0: exactly the x0 prediction
            last_x = None
            continue
        this_order = min(order, n - i) if lower_order_final else order
        this_order = min(this_order, len(history))  # warm-up: orders 1, 2, ... as the history fills
        last_x, last_order = x, this_order
        x = _uni_update(x, history, lambdas, sig[i], sig[i + 1], lam[i + 1], this_order, variant)
    return x
