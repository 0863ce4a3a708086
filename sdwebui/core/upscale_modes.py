"""The names of the upscalers that need no model file: A1111's latent upscale modes (`shared.latent_upscale_modes`,
each a `torch.nn.functional.interpolate` mode and whether it antialiases) and its built-in image upscalers. Plain
data, so the server and the UI can list them without importing torch."""

from __future__ import annotations

LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")
"""A1111's upscalers without a model ("None" keeps the size; Lanczos and Nearest are PIL resizes)."""


def is_latent_mode(name: str | None) -> bool:
    return (name or "") in LATENT_UPSCALE_MODES


__all__ = ["LATENT_UPSCALE_MODES", "BUILTIN_UPSCALERS", "is_latent_mode"]
