"""Images -> latents (img2img's init latent, an inpainting model's masked-image conditioning).

A1111 (`images_tensor_to_samples` -> `get_first_stage_encoding`) samples the VAE's posterior; we take its mean,
which is deterministic (the posterior's std is tiny for SD's VAEs, so the two differ by noise far below what the
sampler adds). A half-precision VAE that overflows is re-run in float32, as on decode; the image is encoded in
tiles when the `tiled_vae` setting says so, when it would not fit the memory budget, or after an out-of-memory
error.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sdwebui.models.memory import is_out_of_memory, release_device_cache
from sdwebui.models.sd_model import SDModel
from sdwebui.models.vae_tiling import VaeTiling, tiled_encode_mean, widest_stage


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images (same size) -> [B, 3, H, W] float32 in [-1, 1] (A1111: `array / 255`, then `* 2 - 1`)."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch * 2.0 - 1.0


def encode_pixels(model: SDModel, pixels: torch.Tensor, tiling: VaeTiling | None = None) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> scaled latents [B, C, H/8, W/8] (float32, on the model's device)."""
    out = []
    for one in pixels:
        tile_size = None
        if tiling is not None and tiling.wants(model.device, widest_stage(model.vae), one.shape[-2], one.shape[-1],
                                               model.vae_dtype):
            tile_size = tiling.tile_size
        try:
            latent = _encode_one(model, one[None], model.vae_dtype, tile_size)
        except Exception as error:  # noqa: BLE001 - only an out-of-memory error is retried
            if not is_out_of_memory(error) or tile_size:
                raise
            release_device_cache()
            tile_size = tiling.tile_size if tiling is not None else VaeTiling().tile_size
            latent = _encode_one(model, one[None], model.vae_dtype, tile_size)
        if torch.isnan(latent).any() and model.vae_dtype != torch.float32:
            latent = _encode_one(model, one[None], torch.float32, tile_size)
        if torch.isnan(latent).any():
            raise RuntimeError("the VAE produced NaNs while encoding the image; the checkpoint's VAE may be broken")
        out.append(latent)
    return torch.cat(out)


def encode_images(model: SDModel, images: list[Image.Image], tiling: VaeTiling | None = None) -> torch.Tensor:
    return encode_pixels(model, pil_to_tensor(images), tiling)


def _encode_one(model: SDModel, pixels: torch.Tensor, dtype: torch.dtype, tile_size: int | None = None) -> torch.Tensor:
    vae = model.vae
    if model.placement is not None:
        model.placement.ensure(vae)
    original_dtype = next(vae.parameters()).dtype
    if original_dtype != dtype:
        vae.to(dtype)
    try:
        pixels = pixels.to(model.device, dtype)
        if tile_size:
            latent = tiled_encode_mean(vae, pixels, tile_size=tile_size).float()
        else:
            latent = vae.encode(pixels, return_dict=False)[0].mean.float()
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            latent = latent - shift
        return latent * model.latent_scaling_factor
    finally:
        if original_dtype != dtype:
            vae.to(original_dtype)


__all__ = ["pil_to_tensor", "encode_pixels", "encode_images"]
