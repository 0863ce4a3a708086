"""Sigma schedules ("schedule types" in A1111 >= 1.9): pure functions returning a float32 tensor of n+1 sigmas,
descending, ending in 0.

Sampler and schedule are orthogonal (ComfyUI, A1111 >= 1.9): any sampler runs on any schedule. The functions
follow k-diffusion's `sampling.py` (`get_sigmas_karras`, `get_sigmas_exponential`, `get_sigmas_polyexponential`,
`DiscreteSchedule.get_sigmas`) and A1111's `modules/sd_schedulers.py` for the rest. `SCHEDULES` is the registry
by A1111 label; `build_sigmas` is the entry point the pipelines use.

A1111 conventions kept here:
- Model-independent schedules (Karras, Exponential, ...) use the model's own sigma range, `sigma_min` /
  `sigma_max` of its discrete schedule (0.0292 / 14.6146 for SD), unless overridden with a non-zero value.
- `rho` is used only by the schedules that have one (Karras 7, Polyexponential 1); 0 / None means the default.
- "Automatic" means "the sampler's default schedule" (`SamplerSpec.default_schedule`); `build_sigmas` takes it
  as `automatic=`. Without a sampler it is "Uniform", the model's own discrete schedule.
- "Discard penultimate sigma": schedule one step more and drop the next-to-last sigma.

Where A1111 returns something that does not end in 0 (its KL Optimal ends at sigma_min), we follow ComfyUI and end
in 0, so that every schedule honours the same contract and the sampler's last step lands on the clean image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sdwebui.core.denoiser import DiscreteSchedule

__all__ = [
    "append_zero",
    "uniform",
    "automatic",
    "karras",
    "exponential",
    "polyexponential",
    "sgm_uniform",
    "kl_optimal",
    "align_your_steps",
    "simple",
    "normal",
    "ddim",
    "ddim_timesteps",
    "beta",
    "ScheduleSpec",
    "SCHEDULES",
    "UnknownScheduleError",
    "find_schedule",
    "schedule_names",
    "build_sigmas",
    "model_schedule_of",
    "img2img_steps",
]


def append_zero(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_zeros([1])])


def _f32(x: Any) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float32)


def _check_n(n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"the number of steps must be a positive integer, got {n!r}")


# ---------------------------------------------------------------------------------------------------------------
# Schedules that need the model's discrete schedule


def uniform(n: int, schedule: DiscreteSchedule) -> Tensor:
    """The model's own schedule, k-diffusion's `DiscreteSchedule.get_sigmas(n)` (A1111 "Uniform" / "Automatic" for
    most samplers): `t = linspace(T-1, 0, n)`, sigma = `t_to_sigma(t)` (log-sigma interpolation), then 0."""
    _check_n(n)
    t_max = schedule.num_timesteps - 1
    t = torch.linspace(t_max, 0, n)
    return append_zero(schedule.t_to_sigma(t)).float()


automatic = uniform
"""Without a sampler to ask for its default, "Automatic" is the model's own schedule (see `build_sigmas`)."""


def sgm_uniform(
    n: int, schedule: DiscreteSchedule, sigma_min: float | None = None, sigma_max: float | None = None
) -> Tensor:
    """A1111 "SGM Uniform": n timesteps evenly spaced from `t(sigma_max)` towards `t(sigma_min)`, the endpoint
    excluded (`linspace(start, end, n + 1)[:-1]`), as SGM / SDXL's discretisation does."""
    _check_n(n)
    sigma_min = schedule.sigma_min if sigma_min is None else sigma_min
    sigma_max = schedule.sigma_max if sigma_max is None else sigma_max
    start = float(schedule.sigma_to_t(_f32(sigma_max)))
    end = float(schedule.sigma_to_t(_f32(sigma_min)))
    t = torch.linspace(start, end, n + 1)[:-1]
    return append_zero(schedule.t_to_sigma(t)).float()


def normal(
    n: int, schedule: DiscreteSchedule, sigma_min: float | None = None, sigma_max: float | None = None
) -> Tensor:
    """A1111 / ComfyUI "Normal": n timesteps evenly spaced from `t(sigma_max)` to `t(sigma_min)`, both included."""
    _check_n(n)
    sigma_min = schedule.sigma_min if sigma_min is None else sigma_min
    sigma_max = schedule.sigma_max if sigma_max is None else sigma_max
    start = float(schedule.sigma_to_t(_f32(sigma_max)))
    end = float(schedule.sigma_to_t(_f32(sigma_min)))
    t = torch.linspace(start, end, n)
    return append_zero(schedule.t_to_sigma(t)).float()


def simple(n: int, schedule: DiscreteSchedule) -> Tensor:
    """A1111 / ComfyUI "Simple": every (T/n)-th of the model's sigmas, counting down from the largest."""
    _check_n(n)
    sigmas = schedule.sigmas
    ss = len(sigmas) / n
    picked = [float(sigmas[-(1 + int(x * ss))]) for x in range(n)]
    return append_zero(_f32(picked))


def ddim_timesteps(n: int, num_timesteps: int = 1000, steps_offset: int = 1) -> Tensor:
    """DDIM's "leading" timestep spacing with SD's `steps_offset=1`, descending: `t_k = k * (T // n) + 1`.

    The same timesteps as CompVis' `make_ddim_timesteps(..., "uniform")`, diffusers' `DDIMScheduler`
    (`timestep_spacing="leading"`, `steps_offset=1`) and A1111's "DDIM" schedule type; with `T % n != 0` A1111's
    variant yields `ceil(T / (T // n))` of them, this yields exactly n (like diffusers).
    """
    _check_n(n)
    if n > num_timesteps:
        raise ValueError(f"DDIM spacing supports at most {num_timesteps} steps, got {n}")
    step_ratio = num_timesteps // n
    t = torch.arange(n, dtype=torch.int64) * step_ratio + steps_offset
    return t.clamp(max=num_timesteps - 1).flip(0)


def ddim(n: int, schedule: DiscreteSchedule) -> Tensor:
    """A1111 "DDIM" schedule type: the model's sigmas at DDIM's timesteps (`ddim_timesteps`), then 0.

    This is the schedule the DDIM sampler uses by default; DDIM on it is the classic CompVis/diffusers DDIM sampler
    (see `sdwebui.core.samplers.ddim`).
    """
    t = ddim_timesteps(n, schedule.num_timesteps)
    return append_zero(schedule.sigmas[t].clone()).float()


# ---------------------------------------------------------------------------------------------------------------
# Schedules that only need a sigma range


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022), eq. 5: `(max^(1/rho) + ramp * (min^(1/rho) - max^(1/rho)))^rho`, then 0."""
    _check_n(n)
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas).float()


def exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Evenly spaced in log-sigma from sigma_max to sigma_min (k-diffusion `get_sigmas_exponential`), then 0."""
    _check_n(n)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return append_zero(sigmas).float()


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """k-diffusion `get_sigmas_polyexponential`: log-sigma follows a polynomial ramp of degree rho (1 = exponential)."""
    _check_n(n)
    ramp = torch.linspace(1, 0, n) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return append_zero(sigmas).float()


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """"KL Optimal" (Sabour et al. 2024, "Align Your Steps", eq. for the optimal KL schedule):
    `tan` of evenly spaced `atan(sigma)` from sigma_max to sigma_min (n values), then 0 (ComfyUI's form)."""
    _check_n(n)
    if n == 1:
        return _f32([sigma_max, 0.0])
    idx = torch.arange(n, dtype=torch.float64) / (n - 1)
    sigmas = torch.tan(idx * math.atan(sigma_min) + (1 - idx) * math.atan(sigma_max))
    return append_zero(sigmas.float())


AYS_SIGMAS = {
    # NVIDIA's published 10-step tables (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html), as A1111.
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}


def align_your_steps(n: int, model_family: str = "sd15") -> Tensor:
    """"Align Your Steps": NVIDIA's optimised 10-step tables, log-linearly interpolated to n steps (A1111's
    `get_align_your_steps_sigmas`). `model_family` starting with "sdxl" picks the SDXL table, anything else SD1.5's."""
    _check_n(n)
    table = AYS_SIGMAS["sdxl" if str(model_family).lower().startswith("sdxl") else "sd15"]
    # A1111 interpolates the 11 table values to n points and appends 0 (n == 11 reproduces the table).
    xs = np.linspace(0, 1, len(table))
    ys = np.log(np.asarray(table[::-1]))
    new_ys = np.interp(np.linspace(0, 1, n), xs, ys)
    return append_zero(_f32(np.exp(new_ys)[::-1].copy()))


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """"Beta" (Lee et al. 2024, "Beta Sampling is All You Need", arXiv:2407.12173), A1111's form: timesteps are the
    Beta(alpha, beta) quantiles of `1 - linspace(0, 1, n)`, mapped linearly onto [sigma_min, sigma_max], then 0."""
    _check_n(n)
    qs = 1 - np.linspace(0, 1, n)
    xs = [_beta_ppf(float(q), alpha, beta) for q in qs]
    return append_zero(_f32([sigma_min + x * (sigma_max - sigma_min) for x in xs]))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) (continued fraction, Numerical Recipes `betacf`)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        even = m * (b - m) * x / ((a + m2 - 1) * (a + m2))
        odd = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))
        for num in (even, odd):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(ln_front) * h / a


def _beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse of `_betainc` by bisection (60 halvings: exact to float64 resolution on [0, 1])."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule type. `name` is A1111's internal name (infotext-independent), `label` what users see."""

    name: str
    label: str
    function: Callable[..., Tensor] | None
    aliases: tuple[str, ...] = ()
    needs_model_schedule: bool = False
    """Needs the model's `DiscreteSchedule` (passed as `schedule=`)."""
    uses_sigma_range: bool = False
    """Takes `sigma_min` / `sigma_max` (the model's unless overridden)."""
    default_rho: float | None = None
    """Takes `rho`; this is its default."""
    extra_options: tuple[str, ...] = field(default=())
    """Other keyword options it accepts (e.g. Beta's `alpha` and `beta`)."""


SCHEDULES: dict[str, ScheduleSpec] = {
    spec.label: spec
    for spec in (
        ScheduleSpec("automatic", "Automatic", None),
        ScheduleSpec("uniform", "Uniform", uniform, needs_model_schedule=True),
        ScheduleSpec("karras", "Karras", karras, uses_sigma_range=True, default_rho=7.0),
        ScheduleSpec("exponential", "Exponential", exponential, uses_sigma_range=True),
        ScheduleSpec("polyexponential", "Polyexponential", polyexponential, uses_sigma_range=True, default_rho=1.0),
        ScheduleSpec(
            "sgm_uniform", "SGM Uniform", sgm_uniform, aliases=("SGMUniform",),
            needs_model_schedule=True, uses_sigma_range=True,
        ),
        ScheduleSpec("kl_optimal", "KL Optimal", kl_optimal, uses_sigma_range=True),
        ScheduleSpec("align_your_steps", "Align Your Steps", align_your_steps, extra_options=("model_family",)),
        ScheduleSpec("simple", "Simple", simple, needs_model_schedule=True),
        ScheduleSpec("normal", "Normal", normal, needs_model_schedule=True, uses_sigma_range=True),
        ScheduleSpec("ddim", "DDIM", ddim, needs_model_schedule=True),
        ScheduleSpec("beta", "Beta", beta, uses_sigma_range=True, extra_options=("alpha", "beta")),
    )
}
"""A1111's schedule types by label, in A1111's order."""


def schedule_names() -> list[str]:
    return list(SCHEDULES)


class UnknownScheduleError(KeyError, ValueError):
    """An unknown schedule name; both a KeyError (lookup) and a ValueError (bad user input)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def find_schedule(name: str) -> ScheduleSpec:
    """Look a schedule up by label, internal name or alias, case-insensitively (`UnknownScheduleError` if none)."""
    key = " ".join(str(name).split()).lower()
    for spec in SCHEDULES.values():
        if key in (spec.label.lower(), spec.name.lower(), *(a.lower() for a in spec.aliases)):
            return spec
    raise UnknownScheduleError(f"unknown schedule type {name!r}; valid: {', '.join(SCHEDULES)}")


def model_schedule_of(denoiser_or_schedule: Any) -> DiscreteSchedule | None:
    """The `DiscreteSchedule` of a denoiser (anything with `.schedule`), or the schedule itself, or None."""
    if denoiser_or_schedule is None or isinstance(denoiser_or_schedule, DiscreteSchedule):
        return denoiser_or_schedule
    schedule = getattr(denoiser_or_schedule, "schedule", None)
    if isinstance(schedule, DiscreteSchedule):
        return schedule
    raise TypeError(f"expected a DiscreteSchedule or a denoiser with .schedule, got {type(denoiser_or_schedule)!r}")


def build_sigmas(
    schedule_name: str,
    steps: int,
    denoiser_or_schedule: Any = None,
    *,
    automatic: str = "Uniform",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    discard_penultimate_sigma: bool = False,
    device: torch.device | str | None = None,
    **opts: Any,
) -> Tensor:
    """The sigmas for `steps` sampling steps on schedule `schedule_name`: float32, length steps + 1, ending in 0.

    `denoiser_or_schedule` is a `ModelDenoiser` / `CFGDenoiser` / `DiscreteSchedule`; it gives the model's sigma
    range and discrete schedule. It may be None only for range schedules given both `sigma_min` and `sigma_max`.
    `automatic` is what "Automatic" resolves to (the sampler's default schedule). `sigma_min`, `sigma_max`, `rho`
    override the model's values when given and non-zero (A1111 semantics for its 0 = "default" options).
    Other keyword options go to schedules that accept them (`model_family` for Align Your Steps; `alpha`, `beta`
    for Beta); unknown ones raise `TypeError`.
    """
    spec = find_schedule(schedule_name)
    if spec.function is None:  # Automatic
        spec = find_schedule(automatic)
        if spec.function is None:
            raise ValueError("'automatic' must name a concrete schedule")
    _check_n(steps)
    unknown = set(opts) - set(spec.extra_options)
    if unknown:
        raise TypeError(f"schedule {spec.label!r} does not take option(s) {sorted(unknown)}")

    model_schedule = model_schedule_of(denoiser_or_schedule)
    if spec.needs_model_schedule and model_schedule is None:
        raise ValueError(f"schedule {spec.label!r} needs the model's discrete schedule (a denoiser)")

    n = steps + 1 if discard_penultimate_sigma else steps
    kwargs: dict[str, Any] = dict(opts)
    if spec.needs_model_schedule:
        kwargs["schedule"] = model_schedule
    if spec.uses_sigma_range:
        if spec.needs_model_schedule:
            # Range-aware model schedules (SGM Uniform, Normal) default to the model's range themselves.
            kwargs["sigma_min"] = sigma_min or None
            kwargs["sigma_max"] = sigma_max or None
        else:
            lo = sigma_min or (model_schedule.sigma_min if model_schedule is not None else None)
            hi = sigma_max or (model_schedule.sigma_max if model_schedule is not None else None)
            if lo is None or hi is None:
                raise ValueError(f"schedule {spec.label!r} needs sigma_min and sigma_max (or a denoiser)")
            kwargs["sigma_min"], kwargs["sigma_max"] = float(lo), float(hi)
    if spec.default_rho is not None:
        kwargs["rho"] = float(rho) if rho else spec.default_rho

    sigmas = spec.function(n, **kwargs)
    if discard_penultimate_sigma:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    sigmas = sigmas.to(torch.float32)
    return sigmas if device is None else sigmas.to(device)



def img2img_steps(steps: int, denoising_strength: float, *, fix_steps: bool = False) -> tuple[int, int]:
    """A1111's `setup_img2img_steps`: (steps to build the schedule for, t_enc). Sample on `sigmas[steps - t_enc - 1:]`
    starting from `init_latent + noise * sigmas[steps - t_enc - 1]`: t_enc + 1 model steps.

    Default: the schedule is built for `steps` and only the last `int(min(strength, 0.999) * steps)` + 1 sigmas are
    used. With `fix_steps` (A1111 option "img2img_fix_steps": do exactly the requested number of steps) the schedule
    is stretched to `int(steps / min(strength, 0.999))` and `t_enc = steps - 1`.
    """
    _check_n(steps)
    strength = min(float(denoising_strength), 0.999)
    if fix_steps:
        total = int(steps / strength) if denoising_strength > 0 else 0
        return total, steps - 1
    return steps, int(strength * steps)
