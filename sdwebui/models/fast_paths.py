"""Opt-in fast paths applied to a model when it is loaded: A1111's `--opt-channelslast` and `--compile`
(torch.compile of the UNet).

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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class FastPaths:
    channels_last: bool = False
    """A1111's `--opt-channelslast`."""
    compile: bool = False
    """`--compile`: torch.compile the UNet (dynamic=False)."""
    compile_backend: str | Callable[..., Any] = "inductor"
    """torch.compile's backend (tests use a counting one; "inductor" needs a C compiler on a CPU)."""
    compile_mode: str | None = None
    """torch.compile's mode (None: its default; "max-autotune" tries CUDA graphs and kernel choices)."""

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
    model.unet.compile(backend=fast.compile_backend, dynamic=False, mode=fast.compile_mode)
    backend = fast.compile_backend if isinstance(fast.compile_backend, str) else "custom"
    return [f"UNet compiled with torch.compile (backend {backend}, dynamic=False; the first call at each size "
            "compiles)"]


def is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


__all__ = ["FastPaths", "use_channels_last", "compile_unet", "is_compiled"]
