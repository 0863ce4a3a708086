"""Seamless (tileable) images: circular padding in the convolutions of the UNet and the VAE, inside a scope.

A1111's "Tiling" (`modules/sd_hijack.py`, `apply_circular`) sets `padding_mode = "circular"` on every `Conv2d` of
the model, so each convolution sees the opposite edge of the image past its border and the result wraps around.
Here the change lasts only for the `with` block: the modules' own padding modes are put back on exit, even when
sampling fails, so the cached model is never left patched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def circular_padding(*modules: torch.nn.Module | None, enabled: bool = True) -> Iterator[int]:
    """Make every padded `Conv2d` in `modules` pad circularly; yields how many were changed."""
    changed: list[tuple[torch.nn.Conv2d, str]] = []
    if enabled:
        for module in modules:
            if module is None:
                continue
            for layer in module.modules():
                if isinstance(layer, torch.nn.Conv2d) and layer.padding_mode != "circular" and _pads(layer):
                    changed.append((layer, layer.padding_mode))
                    layer.padding_mode = "circular"
    try:
        yield len(changed)
    finally:
        for layer, mode in changed:
            layer.padding_mode = mode


def _pads(layer: torch.nn.Conv2d) -> bool:
    padding = layer.padding
    if isinstance(padding, str):
        return padding == "same"
    return any(p > 0 for p in padding)


__all__ = ["circular_padding"]
