"""Linear multistep ("LMS", k-diffusion `sample_lms`): Adams-Bashforth on the probability-flow ODE in sigma.

Step i integrates the Lagrange polynomial through the last `order` derivatives d_j = (x_j - D(x_j)) / sigma_j
(at sigmas[i], sigmas[i-1], ...) from sigmas[i] to sigmas[i+1]; the first steps use the derivatives they have
(orders 1, 2, 3, then 4). k-diffusion and diffusers integrate with `scipy.integrate.quad`; the integrand is a
polynomial of degree order - 1 <= 3, so 2-point Gauss-Legendre quadrature here is exact (up to float64 rounding)
and needs no scipy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdwebui.core.samplers.common import Callback, NoiseSampler, to_d

__all__ = ["sample_lms", "linear_multistep_coeff"]

_GAUSS_NODES = (-(1 / 3) ** 0.5, (1 / 3) ** 0.5)  # 2-point Gauss-Legendre: exact for cubics


def linear_multistep_coeff(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial of node t[i - j] among t[i], ..., t[i-order+1]."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    a, b = t[i], t[i + 1]
    half, mid = (b - a) / 2, (a + b) / 2
    return half * sum(basis(mid + half * node) for node in _GAUSS_NODES)


@torch.no_grad()
def sample_lms(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 4,
) -> Tensor:
    """LMS of the given order (k-diffusion's default 4, A1111's too). Deterministic."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sigmas_list = [float(s) for s in sigmas.detach().to("cpu", torch.float64)]
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_list, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x
