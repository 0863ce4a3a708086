"""What a running generation may ask of its caller: progress reports and "stop now" flags.

The pipeline functions take a `GenerationContext` so the CLI (a tqdm bar), the server (job progress,
interrupt / skip buttons) and tests all drive the same code without globals.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from sdwebui.models.sd_model import SDModel
from sdwebui.prompts.extra_networks import ExtraNetworkCall


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


@dataclass(frozen=True)
class FinishedImages:
    """One batch's images, decoded, with their seeds and infotexts (what `GenerationContext.on_images` gets)."""

    params: object
    """The job's parameters as run (seeds resolved): `Txt2ImgParams` or `Img2ImgParams`."""
    images: list
    """PIL images."""
    seeds: list[int]
    infotexts: list[str]


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
class NetworkActivation:
    """What applying a batch's extra networks reports back to the pipeline."""

    infotext: dict[str, object] = field(default_factory=dict)
    """Entries for the infotext, in order (A1111's "Lora hashes", "TI hashes", ...)."""
    notes: list[str] = field(default_factory=list)
    """Messages for the user (e.g. a LoRA name that was not found: A1111 goes on without it)."""


class ExtraNetworksHook(Protocol):
    """Applies the networks a batch's prompt asks for (`<lora:name:w>`, ...) for the duration of a `with` block.

    The pipeline enters the block before it encodes the batch's prompts and leaves it after sampling, so the
    networks act on the text encoders and the UNet alike; leaving must restore the model. `calls` are the tags of
    the batch's first prompt (A1111 `extra_networks.parse_prompts`); it may be empty (a job without networks
    after one with them).
    """

    def __call__(
        self, model: SDModel, calls: Sequence[ExtraNetworkCall]
    ) -> AbstractContextManager[NetworkActivation]: ...


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
    embeddings: "EmbeddingDatabase | None" = None  # noqa: F821  (sdwebui.models.embeddings)
    """Textual-inversion embeddings recognised by name in prompts; None: none."""
    extra_networks: ExtraNetworksHook | None = None
    """Applies `<lora:...>` and other extra networks; None: tags are removed from the prompt and reported as
    not applied."""
    load_model: Callable[[str], SDModel] | None = None
    """Loads another checkpoint by the name the parameters carry (hires checkpoint, refiner); None: parameters
    that name one are refused."""
    upscalers: "UpscalerLibrary | None" = None  # noqa: F821  (sdwebui.models.upscalers)
    """Image upscalers for the hires fix (Lanczos and Nearest work without one)."""
    upscale_tile: tuple[int, int] = (192, 8)
    """(tile size, overlap) for model upscalers (A1111's `ESRGAN_tile`, `ESRGAN_tile_overlap`)."""
    on_images: Callable[[FinishedImages], None] | None = None
    """Called with each batch's images as soon as they are decoded, before the next batch starts (the server
    saves them there, as A1111 does, so a job that is stopped or dies later keeps them)."""
