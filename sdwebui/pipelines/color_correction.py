"""A1111's img2img color correction (setting `img2img_color_correction`): each result's colors matched to its init
image's, keeping the result's own lightness.

Reference: A1111 `modules/processing.py` `setup_color_correction` / `apply_color_correction`: both pictures in
OpenCV's 8-bit CIELAB, the result's histograms matched to the init image's channel by channel
(`skimage.exposure.match_histograms`), back to RGB, then blended over the result with the "luminosity" mode of
the `blendmodes` package (`blendLayers(matched, result, BlendType.LUMINOSITY)`: the matched picture's hue and
saturation with the result's luminosity, W3C compositing's SetLum / ClipColor with Rec. 601 weights). Written here
with numpy and OpenCV only, so neither scikit-image nor blendmodes is needed at run time.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
"""blendmodes' `_lum` weights (Rec. 601)."""


def color_target(image: Image.Image) -> np.ndarray:
    """What the results are matched to (A1111 `setup_color_correction`): the init image in 8-bit Lab."""
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2LAB)


def apply_color_correction(target: np.ndarray, image: Image.Image) -> Image.Image:
    """`image` with its colors matched to `target` (`color_target`), its luminosity kept; RGB."""
    source = np.asarray(image.convert("RGB"))
    lab = cv2.cvtColor(source, cv2.COLOR_RGB2LAB)
    matched = cv2.cvtColor(match_histograms(lab, target), cv2.COLOR_LAB2RGB)
    return luminosity_blend(matched, source)


def match_histograms(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Each channel of an 8-bit `source` (H x W x C) remapped so that its cumulative histogram matches
    `template`'s (scikit-image's `match_histograms` for unsigned images, including its truncation back to uint8)."""
    out = np.empty_like(source)
    for channel in range(source.shape[-1]):
        values = source[..., channel].reshape(-1)
        src_counts = np.bincount(values)
        tmpl_counts = np.bincount(template[..., channel].reshape(-1))
        tmpl_values = np.nonzero(tmpl_counts)[0]
        src_quantiles = np.cumsum(src_counts) / values.size
        tmpl_quantiles = np.cumsum(tmpl_counts[tmpl_values]) / template[..., channel].size
        mapped = np.interp(src_quantiles, tmpl_quantiles, tmpl_values)
        out[..., channel] = mapped[values].reshape(source.shape[:-1])
    return out


def luminosity_blend(colors: np.ndarray, luminosity: np.ndarray) -> Image.Image:
    """The "luminosity" blend of two opaque 8-bit RGB pictures: `colors`' hue and saturation, `luminosity`'s
    luminosity (blendmodes' `_setLum`, rounded to 8 bits as its `blendLayers`)."""
    base = colors.astype(np.float64) / 255.0
    lum = (luminosity.astype(np.float64) / 255.0) @ LUMA_WEIGHTS
    out = base + (lum - base @ LUMA_WEIGHTS)[..., None]
    # ClipColor: bring channels out of [0, 1] back in, keeping the luminosity.
    level = out @ LUMA_WEIGHTS
    low, high = out.min(axis=2), out.max(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        under = low < 0
        out[under] = level[under, None] + (out[under] - level[under, None]) * level[under, None] / (
            level[under, None] - low[under, None])
        over = high > 1
        out[over] = level[over, None] + (out[over] - level[over, None]) * (1 - level[over, None]) / (
            high[over, None] - level[over, None])
    out = np.nan_to_num(out, copy=False) * 255.0
    return Image.fromarray(np.uint8(np.around(out, 0)))


__all__ = ["color_target", "apply_color_correction", "match_histograms", "luminosity_blend"]
