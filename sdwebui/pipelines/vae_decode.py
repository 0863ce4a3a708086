"""Latents -> images, with A1111's NaN fallback: a half-precision VAE that overflows is re-run in fp32."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sdwebui.models.sd_model import SDModel


class VaeDecodeError(RuntimeError):
    pass


def decode_latents(model: SDModel, latents: torch.Tensor) -> tuple[list[Image.Image], list[str]]:
    """Decode one image at a time (peak memory of one image, like A1111's batch-of-1 decode)."""
    notes: list[str] = []
    images = []
    for latent in latents:
        pixels = _decode_one(model, latent[None], model.vae_dtype)
        if torch.isnan(pixels).any():
            if model.vae_dtype == torch.float32:
                raise VaeDecodeError("the VAE produced NaNs even in full precision; the checkpoint's VAE may be broken")
            pixels = _decode_one(model, latent[None], torch.float32)
            if torch.isnan(pixels).any():
                raise VaeDecodeError("the VAE produced NaNs even in full precision; the checkpoint's VAE may be broken")
            note = f"VAE produced NaNs in {str(model.vae_dtype).removeprefix('torch.')}; decoded again in float32"
            if note not in notes:
                notes.append(note)
        images.append(to_pil(pixels[0]))
    return images, notes


def _decode_one(model: SDModel, latent: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    vae = model.vae
    original_dtype = next(vae.parameters()).dtype
    if original_dtype != dtype:
        vae.to(dtype)
    try:
        scaled = latent.to(model.device, dtype) / model.latent_scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        return vae.decode(scaled, return_dict=False)[0].float()
    finally:
        if original_dtype != dtype:
            vae.to(original_dtype)


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """[-1, 1] CHW tensor -> 8-bit RGB image.

    A1111 truncates (`(255 * clamp((x + 1) / 2, 0, 1)).astype(uint8)`) where diffusers rounds; we truncate so
    that the same latents give byte-identical PNGs to A1111's.
    """
    scaled = 255.0 * torch.clamp((pixels.float() + 1.0) / 2.0, 0.0, 1.0)
    array = scaled.permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")
