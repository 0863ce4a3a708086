"""Helpers shared by the samplers (k-diffusion `sampling.py`: `to_d`, `get_ancestral_step`, noise samplers).

Every sampler has the k-diffusion shape

    sample_x(denoiser, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, **opts) -> x

- `denoiser(x, sigma[B], **extra_args) -> x0` (see `sdwebui.core.denoiser`); `x` starts at noise * sigmas[0]
  (txt2img) or at the noised init latent (img2img), and the result is the sample at `sigmas[-1]` (0: clean).
- `callback(dict(x=..., i=..., sigma=..., sigma_hat=..., denoised=...))` runs once per step, after the model
  call. It may raise (e.g. `InterruptedError` for "Interrupt"/"Skip"): samplers never catch it.
- `noise_sampler(sigma, sigma_next) -> Tensor like x` supplies the fresh noise of stochastic steps. Pass one built
  from the per-image seeds (`sdwebui.core.noise.ImageRNG.noise_sampler`) for A1111-reproducible results; the
  default draws from torch's global generator (`torch.randn_like`), as k-diffusion does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from sdwebui.core.denoiser import append_dims

__all__ = ["Callback", "NoiseSampler", "SamplerFn", "to_d", "get_ancestral_step", "default_noise_sampler"]

Callback = Callable[[dict[str, Any]], None]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]


class SamplerFn(Protocol):
    def __call__(
        self,
        denoiser: Callable[..., Tensor],
        x: Tensor,
        sigmas: Tensor,
        *,
        extra_args: dict[str, Any] | None = None,
        callback: Callback | None = None,
        noise_sampler: NoiseSampler | None = None,
        **opts: Any,
    ) -> Tensor: ...


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split an ancestral step sigma_from -> sigma_to into a deterministic step down to `sigma_down` and fresh noise
    of std `sigma_up`, with sigma_down^2 + sigma_up^2 = sigma_to^2. eta = 1 is DDPM's ancestral sampler, 0 is
    deterministic (k-diffusion `get_ancestral_step`)."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def default_noise_sampler(x: Tensor) -> NoiseSampler:
    """k-diffusion's default: fresh standard normal noise like `x` from torch's global generator."""

    def sampler(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn_like(x)

    return sampler
