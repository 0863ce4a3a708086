"""What a running generation may ask of its caller: progress reports and "stop now" flags.

The pipeline functions take a `GenerationContext` so the CLI (a tqdm bar), the server (job progress,
interrupt / skip buttons) and tests all drive the same code without globals.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from sdwebui.models.sd_model import SDModel
from sdwebui.models.vae_tiling import VaeTiling
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
class IntermediateImages:
    """Copies of a batch's images at a step on the way (A1111's "save a copy of image before ..." settings), one per
    image of the batch, saved beside the images but not returned (`pipelines.output` names the suffixes)."""

    suffix: str
    """The file name's suffix (`pipelines.output.BEFORE_FACE_RESTORATION`, ...)."""
    images: list
    """PIL images, image i of the batch's copy at index i."""
    before: bool = True
    """Saved just before the image it belongs to (A1111's "before ..." copies), else just after it (its masks)."""


@dataclass(frozen=True)
class FinishedImages:
    """One batch's images, decoded, with their seeds and infotexts (what `GenerationContext.on_images` gets)."""

    params: object
    """The job's parameters as run (seeds resolved): `Txt2ImgParams` or `Img2ImgParams`."""
    images: list
    """PIL images."""
    seeds: list[int]
    infotexts: list[str]
    prompts: list[str] = field(default_factory=list)
    """Each image's prompt (after the scripts' `before_batch`)."""
    intermediates: tuple[IntermediateImages, ...] = ()
    """The batch's intermediate copies that `GenerationContext.intermediates` asked for (they carry the images'
    infotexts, as A1111's do)."""


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


ModelCall = Callable[..., torch.Tensor]
"""One UNet call as the denoiser makes it: `call(x, t, encoder_hidden_states=..., added_cond_kwargs=...,
c_concat=...) -> prediction` (x and t batched over the CFG branches)."""


@dataclass
class BatchPrompts:
    """A batch about to be conditioned (A1111's `process_batch`): `GenerationHooks.before_batch` may change its
    prompts in place (wildcards, comments); the images' infotexts carry the prompts as changed."""

    batch_index: int
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    task: Any = None
    """The `pipelines.scripts.GenerationTask` this batch runs for, when the job runner runs it (a script reads back
    what its `before_job` put in `task.script_data`); None otherwise."""


@dataclass
class BatchImages:
    """A batch just decoded (A1111's `postprocess_batch` / `postprocess_image`): `GenerationHooks.after_batch`
    may replace `images` (face restoration) and add `infotext` entries and `notes`; its infotexts are written
    after the hook, and the batch is saved after that."""

    batch_index: int
    params: object
    images: list
    seeds: list[int]
    prompts: list[str]
    infotext: dict[str, object]
    notes: list[str]
    task: Any = None
    """As `BatchPrompts.task`."""


class GenerationHooks(Protocol):
    """What plug-ins (scripts) may do inside one generation run: `pipelines.scripts` composes the job's scripts
    into one of these. Every method is optional in spirit: a no-op is a valid implementation."""

    def before_batch(self, batch: BatchPrompts) -> None: ...

    def wrap_model_call(self, model: SDModel, call: ModelCall) -> ModelCall:
        """Around every UNet call of `model` (e.g. ControlNet adds its residuals); return `call` to leave it."""
        ...

    def after_batch(self, batch: BatchImages) -> None: ...


@dataclass
class GenerationContext:
    model: SDModel
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
    vae_tiling: VaeTiling | None = None
    """When the VAE encodes and decodes in tiles (the `tiled_vae` settings, the memory budget); None: only after
    an out-of-memory error."""
    on_images: Callable[[FinishedImages], None] | None = None
    """Called with each batch's images as soon as they are decoded, before the next batch starts (the server
    saves them there, as A1111 does, so a job that is stopped or dies later keeps them)."""
    hooks: GenerationHooks | None = None
    """The job's scripts (before each batch, around each UNet call, after each batch); None: none."""
    face_restoration: "FaceRestoration | None" = None  # noqa: F821  (sdwebui.pipelines.face_restoration)
    """Restores each image's faces for jobs with `restore_faces` (after decoding, before img2img's overlays and the
    scripts, as A1111); None: such jobs are refused."""
    color_correction: bool = False
    """img2img: match each result's colors to its init image (A1111's `img2img_color_correction`)."""
    intermediates: frozenset[str] = frozenset()
    """The intermediate copies the caller saves, by suffix (`pipelines.output.INTERMEDIATE_SETTINGS`); the
    pipelines make only these (a latent hires fix decodes its first pass only when it is asked for)."""
    on_intermediate: Callable[[str, FinishedImages], None] | None = None
    """Called with copies that come before a batch is finished: hires fix's first pass (`BEFORE_HIGHRES_FIX`),
    saved before the second pass starts, as A1111 does. The other copies come with the batch
    (`FinishedImages.intermediates`)."""

    def wants(self, suffix: str) -> bool:
        """Whether the caller saves the intermediate copies named by `suffix`."""
        return suffix in self.intermediates
