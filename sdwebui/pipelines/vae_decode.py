"""Latents -> images, with A1111's NaN fallback (a half-precision VAE that overflows is re-run in fp32), tiled
decoding (the `tiled_vae` setting, or automatic when the image would not fit the memory budget), and a retry in
tiles after an out-of-memory error."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sdwebui.models.memory import is_out_of_memory, release_device_cache
from sdwebui.models.sd_model import SDModel
from sdwebui.models.vae_tiling import VaeTiling, tiled_decode, widest_stage


class VaeDecodeError(RuntimeError):
    pass


def decode_latents(model: SDModel, latents: torch.Tensor,
                   tiling: VaeTiling | None = None) -> tuple[list[Image.Image], list[str]]:
    """Decode one image at a time (peak memory of one image, like A1111's batch-of-1 decode); in tiles when
    `tiling` says so, or after the device ran out of memory."""
    notes: list[str] = []
    images = []
    for latent in latents:
        tile_size = _tile_size(model, latent, tiling)
        try:
            pixels = _decode_one(model, latent[None], model.vae_dtype, tile_size)
        except Exception as error:  # noqa: BLE001 - only an out-of-memory error is retried
            if not is_out_of_memory(error) or tile_size:
                raise
            release_device_cache()
            tile_size = tiling.tile_size if tiling is not None else VaeTiling().tile_size
            pixels = _decode_one(model, latent[None], model.vae_dtype, tile_size)
            _add(notes, f"out of memory while decoding: decoded again in tiles of {tile_size} px")
        if torch.isnan(pixels).any():
            if model.vae_dtype == torch.float32:
                raise VaeDecodeError("the VAE produced NaNs even in full precision; the checkpoint's VAE may be broken")
            pixels = _decode_one(model, latent[None], torch.float32, tile_size)
            if torch.isnan(pixels).any():
                raise VaeDecodeError("the VAE produced NaNs even in full precision; the checkpoint's VAE may be broken")
            _add(notes, f"VAE produced NaNs in {str(model.vae_dtype).removeprefix('torch.')}; decoded again in float32")
        if tile_size:
            _add(notes, f"VAE decoded in tiles of {tile_size} px")
        images.append(to_pil(pixels[0]))
    return images, notes


def _add(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


def _tile_size(model: SDModel, latent: torch.Tensor, tiling: VaeTiling | None) -> int | None:
    if tiling is None:
        return None
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    height, width = latent.shape[-2] * factor, latent.shape[-1] * factor
    if tiling.wants(model.device, widest_stage(model.vae), height, width, model.vae_dtype):
        return tiling.tile_size
    return None


def _decode_one(model: SDModel, latent: torch.Tensor, dtype: torch.dtype, tile_size: int | None = None) -> torch.Tensor:
    vae = model.vae
    if model.placement is not None:
        model.placement.ensure(vae)
    original_dtype = next(vae.parameters()).dtype
    if original_dtype != dtype:
        vae.to(dtype)
    try:
        scaled = latent.to(model.device, dtype) / model.latent_scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        if tile_size:
            return tiled_decode(vae, scaled, tile_size=tile_size).float()
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
