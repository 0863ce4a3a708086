"""Sampler + schedule names -> registry entries: the one place user-facing names are resolved.

The API, the CLI, the UI, scripts and the pipelines all call `resolve_sampling`: A1111 names, aliases and legacy
combined names ("DPM++ 2M Karras") in, a `ResolvedSampling` (the `SamplerSpec` and the schedule asked for) out, or
a `ParamError` on `sampler` / `scheduler` whose message lists the valid names.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdwebui.core.errors import ParamError
from sdwebui.core.samplers.registry import SamplerSpec, find_sampler, parse_sampler_name
from sdwebui.core.schedules import find_schedule

MODEL_OWN_SCHEDULES = ("Uniform", "DDIM", "SGM Uniform")
"""Defaults that stand for "the model's own timesteps" in A1111 (k-diffusion samplers without a `scheduler`
option, and the timestep samplers DDIM / PLMS / UniPC): their infotext says "Automatic"."""


@dataclass(frozen=True)
class ResolvedSampling:
    sampler: SamplerSpec
    schedule_label: str
    """The schedule the user asked for ("Automatic" or a label such as "Karras")."""

    @property
    def schedule_used(self) -> str:
        if self.schedule_label == "Automatic":
            return self.sampler.default_schedule
        return self.schedule_label

    @property
    def infotext_schedule(self) -> str:
        """A1111 writes the schedule actually used when the sampler carries a default of its own (DPM++ 2M ->
        Karras) and "Automatic" for samplers that just run the model's own discrete schedule (Euler, DDIM)."""
        if self.schedule_label == "Automatic" and self.sampler.default_schedule in MODEL_OWN_SCHEDULES:
            return "Automatic"
        return self.schedule_used


def resolve_sampling(sampler: str, scheduler: str = "Automatic") -> ResolvedSampling:
    """User-facing names (A1111 names, aliases, legacy "DPM++ 2M Karras") -> registry entries; a ParamError on
    `scheduler` or `sampler` (its message lists the valid names) for unknown ones."""
    try:
        find_schedule(scheduler or "Automatic")
    except KeyError as error:
        raise ParamError("scheduler", _message(error)) from None
    try:
        sampler_name, schedule_label = parse_sampler_name(sampler, scheduler or "Automatic")
    except KeyError as error:
        raise ParamError("sampler", _message(error)) from None
    return ResolvedSampling(find_sampler(sampler_name), schedule_label)


def _message(error: Exception) -> str:
    return error.args[0] if error.args and isinstance(error.args[0], str) else str(error)


__all__ = ["ResolvedSampling", "resolve_sampling", "MODEL_OWN_SCHEDULES"]
