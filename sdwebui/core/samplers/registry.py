"""The sampler table: A1111's display names and aliases -> `SamplerSpec` (function, default schedule, options).

`SAMPLERS` lists A1111 1.10's menu in order (its k-diffusion table, then the timestep samplers, then LCM);
`find_sampler` looks names and aliases up case-insensitively; `parse_sampler_name` splits legacy combined names
such as "DPM++ 2M Karras" (A1111's `get_sampler_and_scheduler`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor

from sdwebui.core.denoiser import DiscreteSchedule
from sdwebui.core.samplers.common import SamplerFn
from sdwebui.core.samplers.ddim import sample_ddim, sample_ddim_cfgpp
from sdwebui.core.samplers.dpm_fast import sample_dpm_adaptive, sample_dpm_fast
from sdwebui.core.samplers.dpmpp import sample_dpmpp_2m, sample_dpmpp_2s_ancestral
from sdwebui.core.samplers.dpmpp_sde import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_dpmpp_sde
from sdwebui.core.samplers.euler import sample_euler, sample_euler_ancestral
from sdwebui.core.samplers.heun import sample_dpm_2, sample_dpm_2_ancestral, sample_heun
from sdwebui.core.samplers.lcm import lcm_sigmas, sample_lcm
from sdwebui.core.samplers.lms import sample_lms
from sdwebui.core.samplers.plms import sample_plms
from sdwebui.core.samplers.restart import sample_restart
from sdwebui.core.samplers.unipc import sample_unipc
from sdwebui.core.schedules import SCHEDULES, build_sigmas, find_schedule, model_schedule_of


class UnknownSamplerError(KeyError, ValueError):
    """An unknown sampler name; both a KeyError (lookup) and a ValueError (bad user input)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    """A1111's display name, as written in infotexts ("Euler a")."""
    function: SamplerFn
    aliases: tuple[str, ...] = ()
    """Other accepted names (A1111's aliases such as "k_euler_a", used by the API and old infotexts)."""
    default_schedule: str = "Uniform"
    """The schedule label "Automatic" resolves to for this sampler."""
    is_stochastic: bool = False
    """Adds fresh noise during sampling with its default options (the result depends on the noise sampler)."""
    needs_noise: bool = False
    """Calls `noise_sampler` with its default options (some options, e.g. Euler's s_churn or DDIM's eta > 0, make
    a deterministic sampler draw noise too; passing a seeded noise sampler is always safe)."""
    uses_ensd: bool = False
    """A1111 records "ENSD" (eta noise seed delta) in the infotext for this sampler when eta != 0."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Default keyword options passed to `function` (A1111's defaults, e.g. eta)."""
    description: str = ""
    brownian_noise: bool = False
    """Wants Brownian-tree noise (A1111 "brownian_noise": the SDE samplers). `sample` turns a noise sampler that
    offers `.brownian(x, sigmas)` (`ImageRNG.noise_sampler()`) into the per-image-seeded Brownian tree."""
    discard_penultimate_sigma: bool = False
    """A1111 "discard_next_to_last_sigma": `sigmas` schedules one step more and drops the last non-zero sigma
    (DPM2, DPM2 a, DPM++ 3M SDE)."""
    second_order: bool = False
    """Makes about two model calls per step (A1111's "second_order", for progress estimates)."""
    automatic_sigmas: Callable[[int, DiscreteSchedule], Tensor] | None = None
    """A sampler-specific "Automatic" schedule that is none of the schedule types (LCM's distillation grid);
    `default_schedule` is then only the fallback when no model schedule is given."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        find_schedule(self.default_schedule)  # fail at import on a typo

    def total_steps(self, steps: int) -> int:
        """A1111's `SamplerData.total_steps`: the denoiser calls it plans for (2 per step when second order).

        Prompt-editing schedules are laid out over this count, because A1111's CFG denoiser counts calls."""
        return steps * 2 if self.second_order else steps

    def sigmas(self, steps: int, denoiser_or_schedule: Any, schedule: str = "Automatic", **opts: Any) -> Tensor:
        """`build_sigmas` with "Automatic" resolved to this sampler's default schedule, and the sampler's own
        "discard penultimate sigma" applied (or the user's, `discard_penultimate_sigma=True`)."""
        discard = bool(opts.pop("discard_penultimate_sigma", False)) or self.discard_penultimate_sigma
        if self.automatic_sigmas is not None and find_schedule(schedule).function is None:
            model_schedule = model_schedule_of(denoiser_or_schedule)
            if model_schedule is not None:
                sigmas = self.automatic_sigmas(steps + 1 if discard else steps, model_schedule)
                if discard:
                    sigmas = sigmas[[*range(len(sigmas) - 2), len(sigmas) - 1]]
                device = opts.get("device")
                return sigmas if device is None else sigmas.to(device)
        return build_sigmas(
            schedule, steps, denoiser_or_schedule, automatic=self.default_schedule,
            discard_penultimate_sigma=discard, **opts,
        )

    def sample(self, denoiser, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
        """Run the sampler with its default options overridden by `kwargs`."""
        kwargs = {**self.options, **kwargs}
        if self.brownian_noise:
            make_brownian = getattr(kwargs.get("noise_sampler"), "brownian", None)
            if callable(make_brownian):
                kwargs["noise_sampler"] = make_brownian(x, sigmas)
        return self.function(denoiser, x, sigmas, **kwargs)


_CHURN = {"s_churn": 0.0, "s_tmin": 0.0, "s_noise": 1.0}
_ANCESTRAL = {"eta": 1.0, "s_noise": 1.0}

SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec(
            "DPM++ 2M", sample_dpmpp_2m, ("k_dpmpp_2m",), default_schedule="Karras",
            description="DPM-Solver++(2M), second-order multistep (Lu et al. 2022)",
        ),
        SamplerSpec(
            "DPM++ SDE", sample_dpmpp_sde, ("k_dpmpp_sde",), default_schedule="Karras", is_stochastic=True,
            needs_noise=True, brownian_noise=True, second_order=True, options=_ANCESTRAL,
            description="DPM-Solver++ stochastic, single-step second order, Brownian-tree noise",
        ),
        SamplerSpec(
            "DPM++ 2M SDE", sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",), default_schedule="Exponential",
            is_stochastic=True, needs_noise=True, brownian_noise=True,
            options={**_ANCESTRAL, "solver_type": "midpoint"},
            description="DPM-Solver++(2M) SDE, midpoint correction, Brownian-tree noise",
        ),
        SamplerSpec(
            "DPM++ 2M SDE Heun", sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde_heun",), default_schedule="Exponential",
            is_stochastic=True, needs_noise=True, brownian_noise=True, options={**_ANCESTRAL, "solver_type": "heun"},
            description="DPM-Solver++(2M) SDE, Heun correction, Brownian-tree noise",
        ),
        SamplerSpec(
            "DPM++ 2S a", sample_dpmpp_2s_ancestral, ("k_dpmpp_2s_a",), default_schedule="Karras",
            is_stochastic=True, needs_noise=True, uses_ensd=True, second_order=True, options=_ANCESTRAL,
            description="ancestral DPM-Solver++(2S), single-step second order",
        ),
        SamplerSpec(
            "DPM++ 3M SDE", sample_dpmpp_3m_sde, ("k_dpmpp_3m_sde",), default_schedule="Exponential",
            is_stochastic=True, needs_noise=True, brownian_noise=True, discard_penultimate_sigma=True,
            options=_ANCESTRAL, description="DPM-Solver++(3M) SDE, third-order multistep, Brownian-tree noise",
        ),
        SamplerSpec(
            "Euler a", sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"), default_schedule="Uniform",
            is_stochastic=True, needs_noise=True, uses_ensd=True, options=_ANCESTRAL,
            description="ancestral sampling with Euler steps",
        ),
        SamplerSpec(
            "Euler", sample_euler, ("k_euler",), default_schedule="Uniform", options=_CHURN,
            description="Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2)",
        ),
        SamplerSpec(
            "LMS", sample_lms, ("k_lms",), default_schedule="Uniform",
            description="linear multistep (Adams-Bashforth, order 4) in sigma",
        ),
        SamplerSpec(
            "Heun", sample_heun, ("k_heun",), default_schedule="Uniform", second_order=True, options=_CHURN,
            description="Heun's method (Karras et al. 2022, Algorithm 2), second order",
        ),
        SamplerSpec(
            "DPM2", sample_dpm_2, ("k_dpm_2",), default_schedule="Karras", discard_penultimate_sigma=True,
            second_order=True, options=_CHURN, description="DPM-Solver-2 (Lu et al. 2022), second order",
        ),
        SamplerSpec(
            "DPM2 a", sample_dpm_2_ancestral, ("k_dpm_2_a",), default_schedule="Karras",
            discard_penultimate_sigma=True, is_stochastic=True, needs_noise=True, uses_ensd=True, second_order=True,
            options=_ANCESTRAL, description="ancestral DPM-Solver-2",
        ),
        SamplerSpec(
            "DPM fast", sample_dpm_fast, ("k_dpm_fast",), default_schedule="Uniform", is_stochastic=True,
            needs_noise=True, uses_ensd=True, options=_ANCESTRAL,
            description="DPM-Solver-fast (orders 3/2/1) between the schedule's ends; stops at sigma_min",
        ),
        SamplerSpec(
            "DPM adaptive", sample_dpm_adaptive, ("k_dpm_ad",), default_schedule="Uniform", is_stochastic=True,
            needs_noise=True, uses_ensd=True, options=_ANCESTRAL,
            description="DPM-Solver-23 with adaptive steps; ignores the step count; stops at sigma_min",
        ),
        SamplerSpec(
            "Restart", sample_restart, ("restart",), default_schedule="Karras", is_stochastic=True,
            needs_noise=True, second_order=True, options={"s_noise": 1.0},
            description="Restart sampling (Xu et al. 2023), A1111's plan: restarts from 20 steps on",
        ),
        SamplerSpec(
            "DDIM", sample_ddim, ("ddim",), default_schedule="DDIM", options={"eta": 0.0},
            description="DDIM (Song et al. 2021); eta > 0 adds noise",
        ),
        SamplerSpec(
            "DDIM CFG++", sample_ddim_cfgpp, ("ddim_cfgpp",), default_schedule="DDIM", options={"eta": 0.0},
            description="DDIM with CFG++ (Chung et al. 2024): uncond renoising, guidance / 12.5",
        ),
        SamplerSpec(
            "PLMS", sample_plms, ("plms",), default_schedule="DDIM",
            description="pseudo linear multistep (Liu et al. 2022), order 4",
        ),
        SamplerSpec(
            "UniPC", sample_unipc, ("unipc",), default_schedule="SGM Uniform",
            options={"order": 3, "variant": "bh1", "lower_order_final": True},
            description="UniPC (Zhao et al. 2023) multistep predictor-corrector",
        ),
        SamplerSpec(
            "LCM", sample_lcm, ("k_lcm",), default_schedule="Uniform", is_stochastic=True, needs_noise=True,
            automatic_sigmas=lcm_sigmas, description="latent consistency model sampling (Luo et al. 2023)",
        ),
    )
}
"""Available samplers by A1111 display name, in A1111 1.10's menu order."""


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def _norm(name: str) -> str:
    return " ".join(str(name).split()).lower()


def find_sampler(name: str) -> SamplerSpec:
    """The sampler called `name` (display name or alias, case-insensitive). Raises `UnknownSamplerError`
    (a KeyError and a ValueError) listing the valid names."""
    key = _norm(name)
    for spec in SAMPLERS.values():
        if key == _norm(spec.name) or key in (_norm(a) for a in spec.aliases):
            return spec
    valid = ", ".join(f"{s.name} ({', '.join(s.aliases)})" if s.aliases else s.name for s in SAMPLERS.values())
    raise UnknownSamplerError(f"unknown sampler {name!r}; valid samplers (aliases): {valid}")


def parse_sampler_name(
    name: str, schedule: str | None = None, *, convert_automatic: bool = False
) -> tuple[str, str]:
    """Split a sampler name that may carry a schedule suffix into (sampler display name, schedule label).

    A1111's `get_sampler_and_scheduler`: "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); "Euler a" -> ("Euler a",
    `schedule` or "Automatic"). A suffix (a schedule label, internal name or alias, any case) wins over `schedule`.
    Old aliases ending in "_ka" ("k_dpmpp_2m_ka") mean Karras, "_exp" ("k_dpmpp_3m_sde_exp") Exponential. With
    `convert_automatic=True` a schedule equal to the sampler's default is reported as "Automatic" (what A1111's UI
    shows). Unknown names raise `UnknownSamplerError`; unknown schedules raise KeyError.
    """
    label = find_schedule(schedule).label if schedule else "Automatic"
    text = " ".join(str(name).split())
    try:
        spec = find_sampler(text)
    except UnknownSamplerError:
        spec = None
        lowered = text.lower()
        for sched in SCHEDULES.values():
            for option in (sched.label, sched.name, *sched.aliases):
                if lowered.endswith(" " + option.lower()) and len(text) > len(option) + 1:
                    spec = find_sampler(text[: -(len(option) + 1)])
                    label = sched.label
                    break
            if spec is not None:
                break
        for suffix, suffix_label in (("_ka", "Karras"), ("_exp", "Exponential")):
            if spec is None and lowered.endswith(suffix):
                spec = find_sampler(text[: -len(suffix)])
                label = suffix_label
        if spec is None:
            find_sampler(text)  # raises with the list of valid names
    assert spec is not None
    if convert_automatic and label == spec.default_schedule:
        label = "Automatic"
    return spec.name, label


__all__ = ["SamplerSpec", "SAMPLERS", "UnknownSamplerError", "find_sampler", "sampler_names", "parse_sampler_name"]
