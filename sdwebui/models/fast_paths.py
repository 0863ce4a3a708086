"""Opt-in fast paths applied to a model when it is loaded: A1111's `--opt-channelslast`, and `--compile` /
`--compile-mode` (torch.compile of the UNet, with or without CUDA graphs).

- channels_last: the UNet's and VAE's 4-D weights are stored NHWC (`module.to(memory_format=torch.channels_last)`,
  what A1111's flag does to its whole model). cuDNN's fastest convolution kernels on tensor cores want that
  layout; on a CPU it mostly changes which kernels run, so it can change the last bits of a result and is off by
  default.
- compile: `unet.compile(dynamic=False)` (the module is compiled in place: it stays the same object, so the
  pipelines, LoRA patching and the hooks of token merging or ControlNet still find it). Shapes are kept static:
  a new image size or batch size compiles once more, a new seed, prompt (within 75 tokens), CFG scale or step count
  does not (the latents, timesteps and text embeddings are tensor inputs of the same shapes). Weights are inputs of
  the graph, not constants, so a LoRA applied in place is seen without a recompile. Inductor's own cache
  (`TORCHINDUCTOR_FX_GRAPH_CACHE`, on by default) keeps compiled kernels between runs. A model in medvram or
  lowvram is not compiled: their hooks move weights between devices inside the call.
- CUDA graphs (`--compile-mode reduce-overhead`, or `max-autotune`): inductor records each compiled size's kernel
  launches once and replays them, which takes the CPU's launch overhead out of every step (what small batches on a
  fast GPU are bound by). Shapes are static already; weights changed in place (LoRA) keep their addresses, so a
  replay sees them. The one catch is the output: it lives in the graph's memory pool and the next replay writes
  over it, so the denoiser marks a new step before each call and copies the output (one latent) after it
  (`SDModel.unet_cuda_graphs`). On a CPU there are no graphs: the mode compiles as plain inductor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sdwebui.config import COMPILE_MODES


CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


@dataclass(frozen=True)
class FastPaths:
    channels_last: bool = False
    """A1111's `--opt-channelslast`."""
    compile: bool = False
    """`--compile`: torch.compile the UNet (dynamic=False)."""
    compile_backend: str | Callable[..., Any] = "inductor"
    """torch.compile's backend (tests use a counting one; "inductor" needs a C compiler on a CPU)."""
    compile_mode: str = "default"
    """torch.compile's mode (`--compile-mode`, one of `COMPILE_MODES`): "reduce-overhead" replays CUDA graphs,
    "max-autotune" also tries kernel choices (a long first compile), "max-autotune-no-cudagraphs" without graphs."""

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")

    @property
    def any(self) -> bool:
        return self.channels_last or self.compile


def use_channels_last(model) -> list[str]:
    """Store the UNet's and VAE's 4-D weights channels-last (before the memory mode is installed, so its copies
    have the layout too). Returns the load notes."""
    for module in (model.unet, model.vae):
        module.to(memory_format=torch.channels_last)
    return ["channels_last memory format (UNet, VAE)"]


def compile_unet(model, fast: FastPaths) -> list[str]:
    """torch.compile the UNet in place (after the memory mode is installed: only a model kept whole on its device
    is compiled). Compiling happens on the first call; returns the load notes."""
    placement = getattr(model, "placement", None)
    mode = placement.mode if placement is not None else "none"
    if mode != "none":
        return [f"UNet not compiled: --compile needs the whole model on the device (memory mode {mode})"]
    mode = None if fast.compile_mode == "default" else fast.compile_mode
    model.unet.compile(backend=fast.compile_backend, dynamic=False, mode=mode)
    model.unet_cuda_graphs = fast.compile_mode in CUDA_GRAPH_MODES and model.device.type == "cuda"
    backend = fast.compile_backend if isinstance(fast.compile_backend, str) else "custom"
    graphs = ", CUDA graphs" if model.unet_cuda_graphs else ""
    return [f"UNet compiled with torch.compile (backend {backend}, mode {fast.compile_mode}{graphs}, dynamic=False; "
            "the first call at each size compiles)"]


def is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


__all__ = ["CUDA_GRAPH_MODES", "FastPaths", "use_channels_last", "compile_unet", "is_compiled"]
