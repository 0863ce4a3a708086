"""The SDXL refiner switch: the base model samples until a noise level, then another checkpoint takes over.

Reference: A1111 `sd_samplers_common.apply_refiner`, called at every denoiser call. By default (A1111's option
`refiner_switch_by_sample_steps` off) the switch is measured by sigma: the current sigma's nearest index t in the
model's 1000-entry training schedule gives `completed_ratio = (999 - t) / 1000`, and the refiner runs every call
from the first one whose ratio reaches `refiner_switch_at`. The sampler goes on with its own state (history of
multistep samplers, noise), only the denoiser changes; the prompt schedule carries on at the same call index.
With hires fix, A1111's default `hires_fix_refiner_pass` is "second pass": the refiner acts in the hires pass only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sdwebui.core.denoiser import CFGDenoiser, DiscreteSchedule
from sdwebui.core.samplers import resolve_sampling
from sdwebui.models.sd_model import SDModel
from sdwebui.pipelines.conditioning import build_conditioning
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.sampling import LABELS, OtherModels, make_denoiser, scheduled_denoiser, short_title


def completed_ratio(model_sigmas: Tensor, sigma: Tensor | float) -> float:
    """A1111's `(999 - t) / 1000` for the training timestep t whose sigma is nearest the current one."""
    current = torch.as_tensor(sigma, dtype=torch.float32).max().cpu()
    index = int(torch.argmin((model_sigmas.float().cpu() - current).abs()))
    return (len(model_sigmas) - 1 - index) / len(model_sigmas)


class RefinerSwitch:
    """A denoiser that is `base` until the switch point, then the one `make_refiner()` builds (once)."""

    def __init__(self, base: Any, model_sigmas: Tensor, switch_at: float, make_refiner: Callable[[], Any],
                 on_switch: Callable[[int], None] | None = None):
        self.base = base
        self.active = base
        self.model_sigmas = model_sigmas
        self.switch_at = float(switch_at)
        self.make_refiner = make_refiner
        self.on_switch = on_switch
        self.refiner = None
        self.switched_at_call: int | None = None
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor | float, **extra: Any) -> Tensor:
        if self.active is self.base and completed_ratio(self.model_sigmas, sigma) >= self.switch_at:
            if self.refiner is None:
                self.refiner = self.make_refiner()
            self.refiner.reset()
            self.refiner.step = self.base.step  # the prompt schedule goes on where the base left it
            self.active = self.refiner
            self.switched_at_call = self.calls
            if self.on_switch is not None:
                self.on_switch(self.calls)
        self.calls += 1
        return self.active(x, sigma, **extra)

    def reset(self) -> None:
        self.base.reset()
        self.active = self.base
        self.switched_at_call = None
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "active"):
            raise AttributeError(name)
        return getattr(self.active, name)


class Refiner:
    """The job's refiner checkpoint: builds refiner switches (`RefinerSwitch`) around a pass's denoisers and
    remembers whether one switched (A1111 writes "Refiner" / "Refiner switch at" only then)."""

    def __init__(self, ctx: GenerationContext, params: Txt2ImgParams, models: OtherModels):
        self.ctx = ctx
        self.params = params
        self.model = models.load(params.refiner_checkpoint)
        self.inner = make_denoiser(self.model, ctx.hooks)
        self.infotext: dict[str, object] = {}

    def wrap(self, base: CFGDenoiser, base_model: SDModel, prompts: list[str], negative_prompts: list[str],
             width: int, height: int, hires: bool = False):
        """`base` until A1111's switch point, the refiner after it; `hires`: the pass is the hires pass (the
        refiner's prompt schedule is then laid out as the hires pass's)."""
        if self.model.info.path == base_model.info.path:
            return base  # A1111: the refiner is the model already running; nothing to switch
        params = self.params
        steps = resolve_sampling(params.sampler, params.scheduler).sampler.total_steps(params.steps)
        hires_steps = None
        if hires:
            hr_sampler = resolve_sampling(params.hr_sampler or params.sampler, params.hr_scheduler or params.scheduler)
            hires_steps = hr_sampler.sampler.total_steps(params.hires_steps)

        def make():
            conditioning = build_conditioning(
                self.model.text_encoder, prompts, negative_prompts, steps, hires_steps=hires_steps,
                clip_skip=params.clip_skip, emphasis=params.emphasis, embeddings=self.ctx.embeddings,
            )
            return scheduled_denoiser(self.model, self.inner, conditioning, width, height, float(params.cfg_scale))

        def on_switch(_call: int) -> None:
            self.infotext = {LABELS["refiner_checkpoint"]: short_title(self.model),
                             LABELS["refiner_switch_at"]: params.refiner_switch_at}

        # A1111 measures the switch on the running model's own 1000 training sigmas.
        model_sigmas = DiscreteSchedule(base_model.alphas_cumprod).sigmas
        return RefinerSwitch(base, model_sigmas, params.refiner_switch_at, make, on_switch)

    def model_after(self, denoiser: object, model: SDModel) -> SDModel:
        """The model whose VAE decodes what `denoiser` sampled: the refiner once it took over, else `model`."""
        switched = isinstance(denoiser, RefinerSwitch) and denoiser.switched_at_call is not None
        return self.model if switched else model


__all__ = ["RefinerSwitch", "Refiner", "completed_ratio"]
