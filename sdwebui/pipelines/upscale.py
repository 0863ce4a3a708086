"""Upscaling images (resamplers and spandrel models, run in overlapping tiles) and latents (A1111's latent modes).

References: A1111 `modules/upscaler.py` (`Upscaler.upscale`: apply the model's factor up to three times until the
target is reached, then Lanczos to the exact size), `modules/upscaler_utils.py` (tiles of `ESRGAN_tile` pixels
overlapping by `ESRGAN_tile_overlap`), `modules/processing.py` (latent upscale with `torch.nn.functional.interpolate`).

Tiles are blended with weights that ramp across the overlap (A1111's `images.combine_grid` does the same blend in
Pillow space), so a tile's edge pixels, which saw zero padding instead of the neighbouring image, count for
little and the tiled result matches the untiled one closely.

Differences from A1111, on purpose: models get RGB input, as spandrel documents for every architecture it loads
(A1111 hands them BGR, a leftover of the cv2-based ESRGAN code; colours can differ slightly for models that are
not symmetric in their channels), and models run in float32 (A1111 uses half precision on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sdwebui.core.upscale_modes import LATENT_UPSCALE_MODES, is_latent_mode
from sdwebui.models.upscalers import UpscalerEntry, UpscalerLibrary

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST
DEFAULT_TILE = 192
DEFAULT_TILE_OVERLAP = 8
"""A1111's "Tile size for ESRGAN upscalers" and "Tile overlap for ESRGAN upscalers" (pixels; 0 = no tiling)."""


@dataclass(frozen=True)
class TileOptions:
    size: int = DEFAULT_TILE
    overlap: int = DEFAULT_TILE_OVERLAP


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] -> RGB; truncated to 8 bits as A1111 does."""
    array = (tensor[0].float().clamp(0, 1) * 255.0).permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def _ramp(length: int, ramp: int, start: bool, end: bool) -> torch.Tensor:
    weight = torch.ones(length)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        rising = torch.arange(1, ramp + 1, dtype=torch.float32) / (ramp + 1)
        if start:
            weight[:ramp] = rising
        if end:
            weight[length - ramp:] = rising.flip(0)
    return weight


def _starts(total: int, tile: int, stride: int) -> list[int]:
    if total <= tile:
        return [0]
    starts = list(range(0, total - tile, stride))
    starts.append(total - tile)
    return starts


def run_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """`model` over `image` (1, C, H, W) in overlapping tiles of `tile` pixels, blended; tile <= 0: in one piece.

    The model's scale factor is read from the first tile's output. Tiles at the image's border are not faded on
    that side, so every output pixel has a positive weight.
    """
    _, _, height, width = image.shape
    if tile <= 0 or (height <= tile and width <= tile):
        return model(image)
    overlap = max(0, min(overlap, tile // 2))
    stride = tile - overlap
    tile_h, tile_w = min(tile, height), min(tile, width)
    rows, cols = _starts(height, tile_h, stride), _starts(width, tile_w, stride)
    result = weights = None
    scale = 1
    for y in rows:
        for x in cols:
            if should_stop is not None and should_stop():
                break
            out = model(image[..., y:y + tile_h, x:x + tile_w])
            if result is None:
                scale = out.shape[-1] // tile_w
                result = torch.zeros((out.shape[0], out.shape[1], height * scale, width * scale),
                                     dtype=torch.float32, device=out.device)
                weights = torch.zeros((1, 1, height * scale, width * scale), dtype=torch.float32, device=out.device)
            ramp = overlap * scale
            wy = _ramp(tile_h * scale, ramp, y > 0, y + tile_h < height)
            wx = _ramp(tile_w * scale, ramp, x > 0, x + tile_w < width)
            w = (wy[:, None] * wx[None, :]).to(out.device)[None, None]
            ys, xs = slice(y * scale, (y + tile_h) * scale), slice(x * scale, (x + tile_w) * scale)
            result[..., ys, xs] += out.float() * w
            weights[..., ys, xs] += w
    assert result is not None and weights is not None
    return result / weights.clamp_min(1e-8)


def model_upscale_once(model, image: Image.Image, tiles: TileOptions, should_stop=None) -> Image.Image:
    """One pass of a spandrel model over `image` (its own factor), tiled."""
    tensor = image_to_tensor(image).to(model.device, model.dtype)
    with torch.inference_mode():
        out = run_tiled(model, tensor, tile=tiles.size, overlap=tiles.overlap, should_stop=should_stop)
    return tensor_to_image(out)


def upscale_image(
    image: Image.Image,
    entry: UpscalerEntry,
    scale: float,
    *,
    library: UpscalerLibrary | None = None,
    tiles: TileOptions = TileOptions(),
    should_stop: Callable[[], bool] | None = None,
) -> Image.Image:
    """A1111 `Upscaler.upscale`: the target is (size x scale) floored to a multiple of 8; the upscaler is applied
    (at most 3 times) until the image covers it, then Lanczos makes the exact size. "None" returns the image."""
    if entry.kind == "none":
        return image
    image = image.convert("RGB")
    dest_w = int((image.width * scale) // 8 * 8)
    dest_h = int((image.height * scale) // 8 * 8)
    for _ in range(3):
        if image.width >= dest_w and image.height >= dest_h:
            break
        before = image.size
        if entry.kind == "lanczos":
            image = image.resize((int(image.width * scale), int(image.height * scale)), LANCZOS)
        elif entry.kind == "nearest":
            image = image.resize((int(image.width * scale), int(image.height * scale)), NEAREST)
        else:
            if library is None:
                raise ValueError("a model upscaler needs the upscaler library")
            image = model_upscale_once(library.model(entry), image, tiles, should_stop)
        if image.size == before:
            break
    if image.size != (dest_w, dest_h):
        image = image.resize((dest_w, dest_h), LANCZOS)
    return image


def resize_image_to(
    image: Image.Image, entry: UpscalerEntry, width: int, height: int, *,
    library: UpscalerLibrary | None = None, tiles: TileOptions = TileOptions(), should_stop=None,
) -> Image.Image:
    """A1111 `images.resize_image(0, ...)` ("Just resize") with an upscaler: upscale by the larger factor
    needed, then Lanczos to exactly (width, height). "None" resizes with Lanczos directly."""
    if (image.width, image.height) == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    if scale > 1.0 and entry.kind != "none":
        image = upscale_image(image, entry, scale, library=library, tiles=tiles, should_stop=should_stop)
    if (image.width, image.height) != (width, height):
        image = image.convert("RGB").resize((width, height), LANCZOS)
    return image


def upscale_latents(latents: torch.Tensor, mode: str, width: int, height: int) -> torch.Tensor:
    """A1111's latent upscale: `interpolate` to (height // 8, width // 8) with the mode's filter."""
    try:
        interpolation, antialias = LATENT_UPSCALE_MODES[mode]
    except KeyError:
        raise ValueError(f"unknown latent upscale mode {mode!r}") from None
    return torch.nn.functional.interpolate(
        latents.float(), size=(height // 8, width // 8), mode=interpolation, antialias=antialias
    ).to(latents.dtype)


__all__ = [
    "TileOptions", "run_tiled", "upscale_image", "resize_image_to", "upscale_latents", "is_latent_mode",
    "image_to_tensor", "tensor_to_image", "DEFAULT_TILE", "DEFAULT_TILE_OVERLAP",
]
