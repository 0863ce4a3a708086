"""What a running generation may ask of its caller: progress reports and "stop now" flags.

The pipeline functions take a `GenerationContext` so the CLI (a tqdm bar), the server (job progress,
interrupt / skip buttons) and tests all drive the same code without globals.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from sdwebui.models.sd_model import SDModel


@dataclass(frozen=True)
class StepProgress:
    step: int
    """1-based sampling step just finished, within the current batch."""
    total_steps: int
    batch_index: int
    """0-based index of the current batch (A1111's batch count / n_iter)."""
    batch_count: int
    denoised: torch.Tensor | None = None
    """The sampler's current x0 estimate (latent); used for live previews."""


class GenerationStopped(Exception):
    """Raised inside the sampling loop when the caller asked to interrupt or skip; caught by the pipeline."""


@dataclass
class StopFlags:
    """Thread-safe flags set from outside (the HTTP interrupt / skip routes) and read between steps.

    A1111 semantics: *interrupt* ends the job after the current step and keeps what was made so far
    (the current batch is decoded from its latest estimate); *skip* abandons only the current batch and
    moves on to the next one.
    """

    interrupted: threading.Event = field(default_factory=threading.Event)
    skipped: threading.Event = field(default_factory=threading.Event)

    def interrupt(self) -> None:
        self.interrupted.set()

    def skip(self) -> None:
        self.skipped.set()


@dataclass
class GenerationContext:
    model: SDModel
    rng: str = "gpu"
    """A1111's "Random number generator source": "gpu", "cpu" or "nv"."""
    eta_noise_seed_delta: int = 0
    on_step: Callable[[StepProgress], None] | None = None
    stop: StopFlags = field(default_factory=StopFlags)
    nan_check: bool = True
    """Fail a job whose latents are NaN instead of returning a black image (A1111's NaN check)."""
