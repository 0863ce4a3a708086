"""Denoiser adapters: turn an eps- or v-predicting diffusion model into a k-diffusion denoiser `D(x, sigma) -> x0`.

The samplers in `sdwebui.core.samplers` work in the variance-exploding parameterisation of Karras et al. (2022),
"Elucidating the Design Space of Diffusion-Based Generative Models": `x = x0 + sigma * eps`. Stable Diffusion is a
discrete variance-preserving (DDPM) model trained on 1000 timesteps; the classes here are the bridge, following
k-diffusion's `external.py` (`DiscreteSchedule`, `DiscreteEpsDDPMDenoiser`, `DiscreteVDDPMDenoiser`), which is what
A1111 wraps its model in (`CompVisDenoiser` / `CompVisVDenoiser`).

    sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])
    x_vp    = x / sqrt(1 + sigma^2)                          (what the UNet sees)
    eps:  x0 = x - sigma * eps
    v:    x0 = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v

Everything a sampler or a schedule needs to know about the model (its sigma range, its prediction type, its
discrete schedule) is an attribute of the denoiser, so nobody has to walk `model.inner_model.inner_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "Denoiser",
    "DiscreteSchedule",
    "ModelDenoiser",
    "CFGDenoiser",
    "CFGConditioning",
    "ConditioningSchedule",
    "PREDICTION_TYPES",
    "append_dims",
    "scaled_linear_alphas_cumprod",
]

PREDICTION_TYPES = ("epsilon", "v_prediction")


def append_dims(x: Tensor, target_dims: int) -> Tensor:
    """Append trailing singleton dimensions so that `x` broadcasts against a tensor with `target_dims` dims."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def scaled_linear_alphas_cumprod(
    num_timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012
) -> Tensor:
    """SD's training schedule, computed as the original LDM code does (float64, then float32).

    `betas = linspace(sqrt(linear_start), sqrt(linear_end), T) ** 2` ("scaled linear"); this is
    `ldm.modules.diffusionmodules.util.make_beta_schedule("linear", ...)`, which A1111 uses for SD1, SD2 and SDXL.
    """
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


class DiscreteSchedule:
    """The discrete noise levels a DDPM-trained model knows, and the map between sigma and (fractional) timestep.

    k-diffusion's `DiscreteSchedule`. `sigmas` is ascending (index = timestep). `sigma_to_t` interpolates linearly
    in log-sigma between the two neighbouring timesteps, giving a float timestep; with `quantize=True` it snaps to
    the nearest integer timestep instead (A1111's "Enable quantization in K samplers" option, off by default).
    """

    def __init__(self, alphas_cumprod: Tensor, *, quantize: bool = False):
        alphas_cumprod = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float32)
        if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor with at least two entries")
        self.alphas_cumprod = alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.quantize = quantize
        self._by_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"DiscreteSchedule(n={len(self.sigmas)}, sigma_min={self.sigma_min:.4f}, "
            f"sigma_max={self.sigma_max:.4f}, quantize={self.quantize})"
        )

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        # A per-object cache of the tables on the sampling device (one small copy per device, not one per step).
        tables = self._by_device.get(device)
        if tables is None:
            tables = (self.sigmas.to(device), self.log_sigmas.to(device))
            self._by_device[device] = tables
        return tables

    def sigma_to_t(self, sigma: Tensor | float, quantize: bool | None = None) -> Tensor:
        """Float timestep(s) for the given sigma(s), same shape as `sigma` (float32)."""
        quantize = self.quantize if quantize is None else quantize
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        _, log_sigmas = self._tables(sigma.device)
        log_sigma = sigma.float().log()
        dists = log_sigma.reshape(-1) - log_sigmas[:, None]
        if quantize:
            return dists.abs().argmin(dim=0).view(sigma.shape).to(torch.float32)
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        w = ((low - log_sigma.reshape(-1)) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: Tensor | float) -> Tensor:
        """Sigma(s) at (fractional) timestep(s) `t`, interpolating linearly in log-sigma."""
        t = torch.as_tensor(t, dtype=torch.float32).float()
        _, log_sigmas = self._tables(t.device)
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]
        return log_sigma.exp()


@runtime_checkable
class Denoiser(Protocol):
    """What samplers call: `denoiser(x, sigma[B], **extra_args) -> x0` plus what schedules need to know."""

    sigma_min: float
    sigma_max: float
    prediction_type: str
    schedule: DiscreteSchedule

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor: ...


ModelFn = Callable[..., Tensor]
"""`model_fn(x_scaled, t, **cond) -> eps or v`: the UNet in VP space; `t` is a float timestep tensor [B]."""


def _sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma


class ModelDenoiser:
    """k-diffusion's `DiscreteEpsDDPMDenoiser` and `DiscreteVDDPMDenoiser` in one class.

    `model_fn(x_scaled, t, **cond)` is called with `x_scaled = x / sqrt(sigma^2 + 1)` (the VP-space latent the
    UNet was trained on) and float timesteps `t = schedule.sigma_to_t(sigma)`. The scalings are computed in
    float32 whatever dtype the model runs in; the model's input is passed in `x.dtype` and its output is upcast to
    float32 before combining, and the result is returned in `x.dtype`.
    """

    def __init__(self, model_fn: ModelFn, schedule: DiscreteSchedule, prediction_type: str = "epsilon"):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.model_fn = model_fn
        self.schedule = schedule
        self.prediction_type = prediction_type

    def __repr__(self) -> str:
        return f"ModelDenoiser(prediction_type={self.prediction_type!r}, schedule={self.schedule!r})"

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor:
        sigma = _sigma_batch(sigma, x)
        s = append_dims(sigma, x.ndim)
        x32 = x.to(torch.float32)
        c_in = 1 / (s**2 + 1) ** 0.5
        t = self.schedule.sigma_to_t(sigma)
        out = self.model_fn((x32 * c_in).to(x.dtype), t, **cond).to(torch.float32)
        if self.prediction_type == "epsilon":
            denoised = x32 - s * out
        else:
            denoised = x32 / (s**2 + 1) - s * c_in * out
        return denoised.to(x.dtype)


def _concat_tree(a: Any, b: Any, path: str = "") -> Any:
    """Concatenate two conditioning trees (tensors, nested dicts of tensors) along dim 0."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape[1:] != b.shape[1:]:
            raise _ShapeMismatch(path)
        return torch.cat([a, b], dim=0)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            raise ValueError(f"cond and uncond have different keys at {path or '<root>'}: {sorted(a)} vs {sorted(b)}")
        return {k: _concat_tree(a[k], b[k], f"{path}.{k}" if path else str(k)) for k in a}
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        kinds = f"{type(a).__name__} vs {type(b).__name__}"
        raise ValueError(f"cond and uncond differ in kind at {path or '<root>'}: {kinds}")
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return type(a)(_concat_tree(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    if a is b or a == b:
        return a
    raise ValueError(f"cond and uncond differ at {path or '<root>'} and are not tensors: {a!r} vs {b!r}")


class _ShapeMismatch(Exception):
    pass


@dataclass(frozen=True)
class CFGConditioning:
    """The conditioning of one CFG denoiser call.

    `cond` and `uncond` are the keyword trees the inner denoiser takes (tensors with the batch on dim 0, nested
    dicts of them). `weights` describes composable diffusion (Liu et al. 2022, "Compositional Visual Generation
    with Composable Diffusion Models"; A1111's `AND`): for image i of the batch, the weights of its rows in
    `cond`, the rows listed image by image (image 0's sub-prompts, then image 1's, ...). None means one
    `cond` row per image with weight 1, plain CFG.
    """

    cond: Mapping[str, Any]
    uncond: Mapping[str, Any] | None
    weights: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.weights is not None and any(len(w) == 0 for w in self.weights):
            raise ValueError("every image needs at least one conditioning row")

    @property
    def is_plain(self) -> bool:
        """One row per image with weight 1: guidance reduces to `uncond + scale * (cond - uncond)`."""
        return self.weights is None or all(w == (1.0,) for w in self.weights)


ConditioningSchedule = Callable[[int], CFGConditioning]
"""`conditioning(step) -> CFGConditioning`: the conditioning of the `step`-th call (0-based) of a sampling run."""


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans, 2022) around a denoiser: `uncond + cfg_scale * (cond - uncond)`.

    Cond and uncond run as ONE batched call, `[cond..., uncond...]` along dim 0, as A1111 does: every tensor in the
    `cond` / `uncond` dicts (including nested dicts such as SDXL's `{"text_embeds": ..., "time_ids": ...}`) is
    concatenated along dim 0. Keyword arguments given at call time (the sampler's `extra_args`, e.g. an inpainting
    model's image conditioning) are shared by both halves and duplicated. When the two sides cannot be batched
    (prompts of different token lengths, e.g. 77 vs 154) the two passes run one after the other, which gives the same
    result. With `cfg_scale == 1` the uncond pass is skipped (the result would equal the cond pass).

    Conditioning that changes during sampling (A1111's prompt editing `[a:b:when]`, alternation `[a|b]`) and
    composable diffusion (`a AND b :1.2`) come in through `conditioning`: a function of the call counter `step`, which
    counts this denoiser's calls from 0 (A1111's `CFGDenoiser.step`; samplers stay pure and know nothing of it).
    A1111 counts calls, not sampler steps, and plans the prompt schedule over its sampler's `total_steps`
    (two calls per step for second-order samplers); the pipeline does the same. `reset()` starts the count again
    for the next sampling run. With weights, guidance is A1111's `combine_denoised`:
    `uncond[i] + sum_j (cond[j] - uncond[i]) * (w_j * cfg_scale)` over image i's rows j.
    """

    def __init__(
        self,
        inner: Denoiser,
        cond: Mapping[str, Any] | None,
        uncond: Mapping[str, Any] | None,
        cfg_scale: float,
        *,
        conditioning: ConditioningSchedule | None = None,
    ):
        if conditioning is None and cond is None:
            raise ValueError("CFGDenoiser needs cond or a conditioning schedule")
        self.inner = inner
        self.cond = None if cond is None else dict(cond)
        self.uncond = None if uncond is None else dict(uncond)
        self.conditioning = conditioning
        """`conditioning(step) -> CFGConditioning`, or None: `cond` / `uncond` at every call."""
        self.step = 0
        """Calls made since construction or the last `reset()`; the index `conditioning` is asked about."""
        self.cfg_scale = float(cfg_scale)
        self.cfg_scale_multiplier = 1.0
        """Guidance uses cfg_scale * cfg_scale_multiplier (set by `recording_uncond`; A1111's
        `cond_scale_miltiplier`)."""
        self.record_uncond = False
        self.last_uncond: Tensor | None = None
        """The unconditional x0 of the last call, when `record_uncond` is on (else None)."""

    @classmethod
    def scheduled(cls, inner: Denoiser, conditioning: ConditioningSchedule, cfg_scale: float) -> "CFGDenoiser":
        """A denoiser whose conditioning comes from `conditioning(step)` at every call."""
        return cls(inner, None, None, cfg_scale, conditioning=conditioning)

    def reset(self) -> None:
        """Start counting calls from 0 again (a new sampling run)."""
        self.step = 0

    def conditioning_at(self, step: int) -> CFGConditioning:
        if self.conditioning is not None:
            return self.conditioning(step)
        assert self.cond is not None
        return CFGConditioning(self.cond, self.uncond)

    @contextmanager
    def recording_uncond(self, cfg_scale_multiplier: float = 1.0) -> Iterator["CFGDenoiser"]:
        """The hook for samplers that need the unconditional prediction (DDIM CFG++, Chung et al. 2024).

        Inside the block every call stores the uncond pass's x0 in `last_uncond` (running it even where guidance
        would skip it; with no uncond conditioning at all it is the cond pass), and guidance uses
        `cfg_scale * cfg_scale_multiplier` (CFG++ uses 1/12.5, mapping the usual CFG range [0, 12.5] to [0, 1]).
        The previous state is restored on exit. A wrapper around a CFGDenoiser must forward this method and
        `last_uncond` for such samplers to see the uncond prediction.
        """
        saved = (self.record_uncond, self.cfg_scale_multiplier)
        self.record_uncond, self.cfg_scale_multiplier = True, float(cfg_scale_multiplier)
        try:
            yield self
        finally:
            self.record_uncond, self.cfg_scale_multiplier = saved
            self.last_uncond = None

    def __repr__(self) -> str:
        return f"CFGDenoiser(cfg_scale={self.cfg_scale}, inner={self.inner!r})"

    @property
    def sigma_min(self) -> float:
        return self.inner.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.inner.sigma_max

    @property
    def prediction_type(self) -> str:
        return self.inner.prediction_type

    @property
    def schedule(self) -> DiscreteSchedule:
        return self.inner.schedule

    def __call__(self, x: Tensor, sigma: Tensor | float, **extra: Any) -> Tensor:
        conditioning = self.conditioning_at(self.step)
        self.step += 1
        sigma = _sigma_batch(sigma, x)
        scale = self.cfg_scale * self.cfg_scale_multiplier
        self.last_uncond = None
        if conditioning.is_plain:
            return self._plain(x, sigma, conditioning.cond, conditioning.uncond, scale, extra)
        return self._composed(x, sigma, conditioning, scale, extra)

    def _plain(self, x, sigma, cond, uncond, scale, extra) -> Tensor:
        if uncond is None or (scale == 1.0 and not self.record_uncond):
            out = self.inner(x, sigma, **cond, **extra)
            if self.record_uncond:
                self.last_uncond = out
            return out
        cond_out, uncond_out = self._run_both(x, sigma, cond, uncond, extra, extra, x, sigma)
        if self.record_uncond:
            self.last_uncond = uncond_out
        return uncond_out + (cond_out - uncond_out) * scale

    def _composed(self, x, sigma, conditioning: CFGConditioning, scale, extra) -> Tensor:
        weights = conditioning.weights
        assert weights is not None
        if len(weights) != x.shape[0]:
            raise ValueError(f"conditioning weights are for {len(weights)} images, the batch has {x.shape[0]}")
        repeats = torch.tensor([len(w) for w in weights], device=x.device)
        x_rows = x.repeat_interleave(repeats, dim=0)
        sigma_rows = sigma.repeat_interleave(repeats, dim=0)
        extra_rows = _repeat_rows(extra, repeats, x.shape[0])
        if conditioning.uncond is None:
            # No negative branch at all: the weighted sum of the sub-prompt predictions.
            cond_out = self.inner(x_rows, sigma_rows, **conditioning.cond, **extra_rows)
            uncond_out = torch.zeros_like(x)
        else:
            cond_out, uncond_out = self._run_both(
                x_rows, sigma_rows, conditioning.cond, conditioning.uncond, extra_rows, extra, x, sigma
            )
        if self.record_uncond:
            self.last_uncond = uncond_out if conditioning.uncond is not None else None
        denoised = uncond_out.clone()
        row = 0
        for i, image_weights in enumerate(weights):
            for weight in image_weights:
                denoised[i] += (cond_out[row] - uncond_out[i]) * (weight * scale)
                row += 1
        return denoised

    def _run_both(self, x_c, sigma_c, cond, uncond, extra_c, extra_u, x_u, sigma_u) -> tuple[Tensor, Tensor]:
        """Run the cond rows and the uncond rows, batched into one call when their shapes allow."""
        try:
            cond_in = _concat_tree({**cond, **extra_c}, {**uncond, **extra_u})
        except _ShapeMismatch:
            return self.inner(x_c, sigma_c, **cond, **extra_c), self.inner(x_u, sigma_u, **uncond, **extra_u)
        out = self.inner(torch.cat([x_c, x_u]), torch.cat([sigma_c, sigma_u]), **cond_in)
        return out[: x_c.shape[0]], out[x_c.shape[0] :]


def _repeat_rows(tree: Any, repeats: Tensor, batch: int) -> Any:
    """Repeat per-image tensors (dim 0 == batch) row-wise to match the composable cond rows."""
    if isinstance(tree, Tensor):
        if tree.ndim and tree.shape[0] == batch:
            return tree.repeat_interleave(repeats.to(tree.device), dim=0)
        return tree
    if isinstance(tree, Mapping):
        return {k: _repeat_rows(v, repeats, batch) for k, v in tree.items()}
    return tree
