"""Cheap latent -> RGB previews (A1111's "Approx cheap" live-preview method, `modules/sd_vae_approx.py`).

A fixed linear map from the 4 latent channels to RGB (coefficients fitted by Keturn,
discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204; SDXL's from A1111), then A1111's
`x * 0.5 + 0.5`, clamp to [0, 1], `* 255` truncated to uint8. One pixel per latent pixel (1/8 of the image size):
good enough for progress previews, costs nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["LATENT_RGB_FACTORS", "latent_rgb_factors", "latent_to_rgb_tensor", "latent_preview"]

LATENT_RGB_FACTORS: dict[str, tuple[tuple[float, float, float], ...]] = {
    # rows: latent channels 0..3; columns: R, G, B
    "sd": (
        (0.298, 0.207, 0.208),
        (0.187, 0.286, 0.173),
        (-0.158, 0.189, 0.264),
        (-0.184, -0.271, -0.473),
    ),
    "sdxl": (
        (0.3448, 0.4168, 0.4395),
        (-0.1953, -0.0290, 0.0250),
        (0.1074, 0.0886, -0.0163),
        (-0.3730, -0.2499, -0.2088),
    ),
}


def latent_rgb_factors(family: str = "sd1") -> tuple[tuple[float, float, float], ...]:
    """The 4x3 matrix for a model family name ("sd1", "sd2", "sdxl", "sdxl-refiner", ...; SDXL's VAE for any
    name starting with "sdxl", SD1/SD2's otherwise)."""
    return LATENT_RGB_FACTORS["sdxl" if str(family).lower().startswith("sdxl") else "sd"]


def latent_to_rgb_tensor(latent: Tensor, family: str = "sd1") -> Tensor:
    """[..., 4, H, W] latent -> [..., 3, H, W] float RGB in about [-1, 1] (unclamped)."""
    if latent.shape[-3] != 4:
        raise ValueError(f"expected 4 latent channels, got shape {tuple(latent.shape)}")
    coefs = torch.tensor(latent_rgb_factors(family), dtype=torch.float32, device=latent.device)
    return torch.einsum("...lxy,lr->...rxy", latent.to(torch.float32), coefs)


def latent_preview(latent: Tensor, family: str = "sd1") -> np.ndarray:
    """uint8 HWC (or BHWC for a batch) RGB preview of a [4, H, W] (or [B, 4, H, W]) latent."""
    with torch.no_grad():
        rgb = (latent_to_rgb_tensor(latent.detach(), family) * 0.5 + 0.5).clamp(0.0, 1.0)
        array = (255.0 * torch.movedim(rgb, -3, -1)).cpu().numpy()
    return array.astype(np.uint8)
