"""Sampler registry: A1111 names and aliases -> pure sampler functions over a denoiser.

Each sampler lives in the file of its family (`euler.py`, `dpmpp.py`, `ddim.py`) with k-diffusion's signature
(see `common.py`). `SAMPLERS` maps A1111's display name to a `SamplerSpec`; `find_sampler` looks names and aliases
up case-insensitively; `parse_sampler_name` splits legacy combined names such as "DPM++ 2M Karras".

Schedules are orthogonal (A1111 >= 1.9, ComfyUI): a `SamplerSpec` only says which schedule "Automatic" means for
it (A1111's per-sampler `scheduler` option): Karras for DPM++ 2M, the model's own uniform schedule for Euler and
Euler a, DDIM's own timestep spacing for DDIM (what A1111's timestep-based DDIM uses; see `ddim.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor

from sdwebui.core.samplers.common import SamplerFn, default_noise_sampler, get_ancestral_step, to_d
from sdwebui.core.samplers.ddim import sample_ddim
from sdwebui.core.samplers.dpmpp import sample_dpmpp_2m
from sdwebui.core.samplers.euler import sample_euler, sample_euler_ancestral
from sdwebui.core.schedules import SCHEDULES, build_sigmas, find_schedule

__all__ = [
    "SamplerSpec",
    "SAMPLERS",
    "UnknownSamplerError",
    "find_sampler",
    "sampler_names",
    "parse_sampler_name",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_dpmpp_2m",
    "sample_ddim",
    "to_d",
    "get_ancestral_step",
    "default_noise_sampler",
]


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        find_schedule(self.default_schedule)  # fail at import on a typo

    def sigmas(self, steps: int, denoiser_or_schedule: Any, schedule: str = "Automatic", **opts: Any) -> Tensor:
        """`build_sigmas` with "Automatic" resolved to this sampler's default schedule."""
        return build_sigmas(schedule, steps, denoiser_or_schedule, automatic=self.default_schedule, **opts)

    def sample(self, denoiser, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
        """Run the sampler with its default options overridden by `kwargs`."""
        return self.function(denoiser, x, sigmas, **{**self.options, **kwargs})


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec(
            "DPM++ 2M", sample_dpmpp_2m, ("k_dpmpp_2m",), default_schedule="Karras",
            description="DPM-Solver++(2M), second-order multistep (Lu et al. 2022)",
        ),
        SamplerSpec(
            "Euler a", sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"), default_schedule="Uniform",
            is_stochastic=True, needs_noise=True, uses_ensd=True, options={"eta": 1.0, "s_noise": 1.0},
            description="ancestral sampling with Euler steps",
        ),
        SamplerSpec(
            "Euler", sample_euler, ("k_euler",), default_schedule="Uniform",
            options={"s_churn": 0.0, "s_tmin": 0.0, "s_noise": 1.0},
            description="Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2)",
        ),
        SamplerSpec(
            "DDIM", sample_ddim, ("ddim",), default_schedule="DDIM", options={"eta": 0.0},
            description="DDIM (Song et al. 2021); eta > 0 adds noise",
        ),
    )
}
"""Available samplers by A1111 display name, in A1111's menu order."""


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
    Old aliases ending in "_ka" ("k_dpmpp_2m_ka") mean Karras. With `convert_automatic=True` a schedule equal to
    the sampler's default is reported as "Automatic" (what A1111's UI shows). Unknown names raise
    `UnknownSamplerError`; unknown schedules raise KeyError.
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
        if spec is None and lowered.endswith("_ka"):
            spec = find_sampler(text[:-3])
            label = "Karras"
        if spec is None:
            find_sampler(text)  # raises with the list of valid names
    assert spec is not None
    if convert_automatic and label == spec.default_schedule:
        label = "Automatic"
    return spec.name, label
