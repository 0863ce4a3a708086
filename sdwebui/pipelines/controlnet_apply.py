"""ControlNet units inside the UNet call, as sd-webui-controlnet's `hook.py` applies them.

Every UNet call (the CFG pass: cond and uncond rows in one batch) first runs each active unit's ControlNet on the
same latents, timesteps and text conditioning, with the unit's control map at the latent's size (x 8), and adds the
scaled residuals of all units to the UNet's down blocks and mid block (diffusers' `down_block_additional_residuals`
/ `mid_block_additional_residual`). The hires pass gets its map at the hires size, as the extension's
`hr_hint_cond`; a unit's `hr_option` ("Both", "Low res only", "High res only") says which passes it acts on, and
canny / mlsd maps use the soft weights in the hires pass, as the extension forces them there.

- *weight*: every residual times the unit's weight (a unit of weight 0 is not run at all, so the image is
  bit-identical to one without it).
- *guidance start / end*: a unit acts while the sampling progress p satisfies start <= p <= end (the extension's
  `guidance_stopped`); start >= end (or start = end = 1) leaves it out. The extension counts p in sampler calls
  over the steps; the UNet call sees only its timestep, so p here is the fraction of the run's timestep range
  already covered, `(t_first - t) / t_first` — the same as the step fraction for A1111's default uniform
  schedules, and a monotone stand-in for the others.
- *control modes* (the extension's soft injection, `ControlMode`): Balanced — the weight on every residual;
  "My prompt is more important" — residual i of 13 scaled by weight * 0.825^(12 - i), so the deepest block gets the
  full weight and the shallow ones less; "ControlNet is more important" — those soft weights and the control on
  the conditional rows only (`cond_mark`: the uncond pass runs without it, so CFG pushes toward the control).
  SDXL's 10 residuals take the first 10 of the 13 soft weights, as the extension does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sdwebui.models.controlnet import LoadedControlNet
from sdwebui.pipelines.context import ModelCall
from sdwebui.pipelines.controlnet_preprocess import (
    fit_control_map,
    pixel_perfect_resolution,
    run_preprocessor,
)
from sdwebui.pipelines.controlnet_units import CONTROL_MODES, HIRES_OPTIONS

SOFT_BASE = 0.825


@dataclass
class ActiveUnit:
    """One enabled unit of a run: its checked fields, its ControlNet, and its input: `source()` gives (the input
    image as uint8 RGB, the resize mode), read at the first step (img2img's init image is known only then)."""

    unit: dict
    controlnet: LoadedControlNet
    source: Callable[[], tuple[np.ndarray, str]]
    seed: Callable[[], int] = lambda: 0
    in_hires: Callable[[int, int], bool] = lambda height, width: False
    """Whether a UNet call at (height, width) pixels is the hires fix's second pass."""
    _maps: dict = field(default_factory=dict)

    def control_map(self, height: int, width: int) -> np.ndarray:
        """The preprocessed map fitted to (height, width) pixels (cached per size)."""
        key = (height, width)
        if key not in self._maps:
            unit = self.unit
            image, resize_mode = self.source()
            resolution = unit["processor_res"]
            if unit["pixel_perfect"]:
                resolution = pixel_perfect_resolution(image, height, width, resize_mode)
            detected = run_preprocessor(unit["module"], image, resolution, unit["threshold_a"],
                                        unit["threshold_b"], seed=self.seed())
            self._maps[key] = fit_control_map(detected, resize_mode, height, width)
        return self._maps[key]

    def hint(self, height: int, width: int, device, dtype) -> torch.Tensor:
        """The map as the ControlNet takes it: [1, 3, H, W] in [0, 1] (the extension's `get_pytorch_control`)."""
        detected = self.control_map(height, width)
        return torch.from_numpy(np.ascontiguousarray(detected)).to(device, torch.float32).div(255.0) \
            .permute(2, 0, 1)[None].to(dtype)

    def active_at(self, progress: float, hires: bool = False) -> bool:
        start, end = self.unit["guidance_start"], self.unit["guidance_end"]
        option = self.unit.get("hr_option", HIRES_OPTIONS[0])
        if (option == HIRES_OPTIONS[1] and hires) or (option == HIRES_OPTIONS[2] and not hires):
            return False
        return self.unit["weight"] > 0 and start < end and start <= progress <= end


def control_scales(unit: dict, count: int, is_sdxl: bool, forced_soft: bool = False) -> list[float]:
    """Each residual's scale: the weight, or the extension's soft-injection weights for the two other modes (and,
    `forced_soft`, for canny / mlsd maps in the hires pass, where the extension forces them)."""
    weight = float(unit["weight"])
    if unit["control_mode"] == CONTROL_MODES[0] and not forced_soft:
        return [weight] * count
    if count == 13 or is_sdxl:
        soft = [weight * SOFT_BASE ** float(12 - i) for i in range(13)]
        return (soft + [weight] * count)[:count]
    return [weight * SOFT_BASE ** float(count - 1 - i) for i in range(count)]


class RunProgress:
    """The sampling progress of the current run from the timesteps the UNet sees: a call at a later (higher)
    timestep than the last one starts a new run (the next batch, the hires pass)."""

    def __init__(self):
        self.first: float | None = None
        self.last: float | None = None

    def at(self, t: torch.Tensor) -> float:
        now = float(torch.as_tensor(t).max())
        if self.first is None or self.last is None or now > self.last + 1e-4:
            self.first = now
        self.last = now
        return 0.0 if self.first <= 0 else min(1.0, max(0.0, (self.first - now) / self.first))


def controlnet_call(call: ModelCall, units: Sequence[ActiveUnit], dtype: torch.dtype) -> ModelCall:
    """`call` with the units' residuals added to every UNet call (see the module docstring)."""
    progress = RunProgress()

    def wrapped(x, t, encoder_hidden_states, added_cond_kwargs=None, c_concat=None, cond_mark=None, **extra):
        done = progress.at(t)
        height, width = x.shape[-2] * 8, x.shape[-1] * 8
        hires = any(unit.in_hires(height, width) for unit in units)
        active = [unit for unit in units if unit.active_at(done, hires)]
        if cond_mark is not None:
            extra["cond_mark"] = cond_mark
        if not active:
            return call(x, t, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, c_concat=c_concat, **extra)
        down_total: list[torch.Tensor] | None = None
        mid_total: torch.Tensor | None = None
        for unit in active:
            model = unit.controlnet.model
            hint = unit.hint(height, width, x.device, dtype).expand(x.shape[0], -1, -1, -1)
            down, mid = model(x.to(dtype), t, encoder_hidden_states=encoder_hidden_states, controlnet_cond=hint,
                              added_cond_kwargs=added_cond_kwargs, return_dict=False)
            residuals = [*down, mid]
            forced = hires and any(name in unit.unit["module"] for name in ("canny", "mlsd"))
            scales = control_scales(unit.unit, len(residuals), unit.controlnet.is_sdxl, forced)
            residuals = [r * s for r, s in zip(residuals, scales)]
            if unit.unit["control_mode"] == CONTROL_MODES[2] and cond_mark is not None:
                mark = cond_mark.to(x.device, dtype).view(-1, 1, 1, 1)
                residuals = [r * mark for r in residuals]
            *down, mid = residuals
            down_total = list(down) if down_total is None else [a + b for a, b in zip(down_total, down)]
            mid_total = mid if mid_total is None else mid_total + mid
        given_down = extra.pop("down_block_additional_residuals", None)
        given_mid = extra.pop("mid_block_additional_residual", None)
        if given_down is not None:
            down_total = [a + b for a, b in zip(given_down, down_total)]
        if given_mid is not None:
            mid_total = given_mid + mid_total
        return call(x, t, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, c_concat=c_concat,
                    down_block_additional_residuals=tuple(down_total),
                    mid_block_additional_residual=mid_total, **extra)

    return wrapped


__all__ = ["ActiveUnit", "controlnet_call", "control_scales", "RunProgress"]
