"""ControlNet preprocessors that need no downloaded weights, and the control map's resize to the generation size,
as sd-webui-controlnet does them (`scripts/preprocessor/model_free_preprocessors.py`,
`scripts/preprocessor/legacy/processor.py`, `annotator/util.py`, `scripts/controlnet.py: detectmap_proc`), on
OpenCV (opencv-python-headless). Images are numpy uint8 HWC RGB arrays.

Hand-checkable: canny finds the edges of a drawn square; invert is 255 - x; threshold keeps pixels brighter than
the threshold; binary is the inverted (Otsu) threshold of the grey image; tile_resample shrinks by its rate;
shuffle moves pixels with a seeded random flow (the job's seed + subseed, as the extension's `set_numpy_seed`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sdwebui.pipelines.controlnet_annotators import WEIGHTED, AnnotatorMissing, missing_message
from sdwebui.pipelines.controlnet_units import RESIZE_MODES, find_preprocessor


class PreprocessorError(ValueError):
    """A preprocessor that cannot run here (its weights are missing)."""


def hwc3(x: np.ndarray) -> np.ndarray:
    """The extension's `HWC3`: grey -> RGB; RGBA -> RGB over white."""
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    if x.ndim == 2:
        x = x[:, :, None]
    channels = x.shape[2]
    if channels == 3:
        return x
    if channels == 1:
        return np.concatenate([x, x, x], axis=2)
    color = x[:, :, :3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def _pad64(x: int) -> int:
    return int(np.ceil(float(x) / 64.0) * 64 - x)


def resize_image_with_pad(image: np.ndarray, resolution: int):
    """The shorter side to `resolution` (cubic up, area down), padded by edge to a multiple of 64; with the
    function that takes the padding off a result."""
    img = hwc3(image)
    height, width, _ = img.shape
    k = float(resolution) / float(min(height, width))
    interpolation = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    target_h, target_w = int(np.round(height * k)), int(np.round(width * k))
    img = cv2.resize(img, (target_w, target_h), interpolation=interpolation)
    padded = np.pad(img, [[0, _pad64(target_h)], [0, _pad64(target_w)], [0, 0]], mode="edge")

    def remove_pad(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:target_h, :target_w]).copy()

    return np.ascontiguousarray(padded), remove_pad


def _none(img, res, a, b, rng):
    return img


def _invert(img, res, a, b, rng):
    return 255 - hwc3(img)


def _canny(img, res, a, b, rng):
    img, remove_pad = resize_image_with_pad(img, res)
    return remove_pad(cv2.cvtColor(cv2.Canny(img, int(a), int(b)), cv2.COLOR_GRAY2RGB))


def _blur(img, res, a, b, rng):
    img, remove_pad = resize_image_with_pad(img, res)
    return cv2.GaussianBlur(remove_pad(img), (0, 0), float(a))


def _tile_resample(img, res, a, b, rng):
    img = hwc3(img)
    if a < 1.1:
        return img
    height, width = int(img.shape[0] / a), int(img.shape[1] / a)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def _color(img, res, a, b, rng):
    img = hwc3(img)
    height, width = img.shape[:2]
    if height < width:
        new_h, new_w = res, int(round(width / height * res))
    else:
        new_w, new_h = res, int(round(height / width * res))
    img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)
    small = cv2.resize(img, (max(1, new_w // 64), max(1, new_h // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (new_w, new_h), interpolation=cv2.INTER_NEAREST)


def _noise_disk(rng: np.random.Generator, height: int, width: int, f: int) -> np.ndarray:
    noise = rng.uniform(low=0, high=1, size=((height // f) + 2, (width // f) + 2, 1))
    noise = cv2.resize(noise, (width + 2 * f, height + 2 * f), interpolation=cv2.INTER_CUBIC)
    noise = noise[f: f + height, f: f + width]
    noise -= np.min(noise)
    noise /= max(np.max(noise), 1e-12)
    return noise[:, :, None]


def _shuffle(img, res, a, b, rng):
    img, remove_pad = resize_image_with_pad(img, res)
    img = remove_pad(img)
    height, width = img.shape[:2]
    x = _noise_disk(rng, height, width, 256) * float(width - 1)
    y = _noise_disk(rng, height, width, 256) * float(height - 1)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    return cv2.remap(img, flow, None, cv2.INTER_LINEAR)


def _scribble_xdog(img, res, a, b, rng):
    img, remove_pad = resize_image_with_pad(img, res)
    g1 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.5)
    g2 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    result = np.zeros_like(img, dtype=np.uint8)
    result[2 * (255 - dog) > a] = 255
    return remove_pad(result)


def _lineart_standard(img, res, a, b, rng):
    img, remove_pad = resize_image_with_pad(img, res)
    x = img.astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
    intensity *= 127
    return hwc3(remove_pad(intensity.clip(0, 255).astype(np.uint8)))


def _threshold(img, res, a, b, rng):
    img, remove_pad = resize_image_with_pad(img, res)
    result = np.zeros_like(img, dtype=np.uint8)
    result[np.min(img, axis=2) > a] = 255
    return remove_pad(result)


def _binary(img, res, a, b, rng):
    img, remove_pad = resize_image_with_pad(img, res)
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if a in (0, 255):
        _, result = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    else:
        _, result = cv2.threshold(gray, a, 255, cv2.THRESH_BINARY_INV)
    return remove_pad(cv2.cvtColor(result, cv2.COLOR_GRAY2RGB))


def _recolor(channel: int, conversion: int):
    """The extension's recolor preprocessors: one channel of the image in another colour space (luminance: LAB's L;
    intensity: HSV's V), gamma-corrected by the slider, as a grey map. The extension converts from BGR although
    the image is RGB; so do we, so the maps match (for L it weighs red and blue the other way round)."""
    def run(img, res, a, b, rng):
        value = cv2.cvtColor(img, conversion)[:, :, channel].astype(np.float32) / 255.0
        return cv2.cvtColor(((value ** a) * 255.0).clip(0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)

    return run


RECOLOR_SPACES = {"recolor_luminance": (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB, 0),
                  "recolor_intensity": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2)}
"""For the recolor modules: (to, back, channel) of the colour space whose channel the map replaces in the result."""


def recolor_image(image: np.ndarray, control_map: np.ndarray, module: str) -> np.ndarray:
    """The extension's recolor post-processing: `image`'s lightness (or value) channel replaced by the map's."""
    to_space, back, channel = RECOLOR_SPACES[module]
    converted = cv2.cvtColor(image, to_space)
    converted[:, :, channel] = control_map[:, :, 0]
    return cv2.cvtColor(converted, back)


Preprocess = Callable[[np.ndarray, int, float, float, np.random.Generator], np.ndarray]
IMPLEMENTATIONS: dict[str, Preprocess] = {
    "none": _none, "invert": _invert, "canny": _canny, "blur_gaussian": _blur, "tile_resample": _tile_resample,
    "color": _color, "shuffle": _shuffle, "scribble_xdog": _scribble_xdog, "lineart_standard": _lineart_standard,
    "threshold": _threshold, "binary": _binary,
    "recolor_luminance": _recolor(0, cv2.COLOR_BGR2LAB), "recolor_intensity": _recolor(2, cv2.COLOR_BGR2HSV),
    # IP-Adapter modules: the unit's image goes to the CLIP image encoder as it is (`controlnet_apply`)
    "ip-adapter_clip_sd15": _none, "ip-adapter_clip_sdxl": _none, "ip-adapter_clip_sdxl_plus_vith": _none,
    "ip-adapter-auto": _none,
    # reference: the image itself, VAE-encoded for the attention / AdaIN injection (`controlnet_apply`)
    "reference_only": _none, "reference_adain": _none, "reference_adain+attn": _none,
}


def _weighted(module: str, annotators: Path | None) -> Preprocess:
    """A weighted preprocessor (controlnet_annotators) on the image padded at the processor resolution, as the
    extension's wrappers (`resize_image_with_pad`, the model, `remove_pad`)."""
    def run(img, res, a, b, rng):
        padded, remove_pad = resize_image_with_pad(img, res)
        return remove_pad(hwc3(WEIGHTED[module](padded, annotators)))

    return run


def run_preprocessor(module: str, image: np.ndarray, resolution: int = 512, threshold_a: float = -1,
                     threshold_b: float = -1, seed: int = 0, annotators: Path | None = None) -> np.ndarray:
    """The control map of `image` (uint8 HWC) by `module` (name or label); sliders out of range take the
    preprocessor's defaults, as the extension does. Weighted modules find their weights below `annotators`
    (`models/ControlNetAnnotators`)."""
    spec = find_preprocessor(module)
    if spec is None:
        raise PreprocessorError(f"module({module}) not found in supported modules.")
    implementation = IMPLEMENTATIONS.get(spec.name)
    if implementation is None:
        why = missing_message(spec.name, spec.display, annotators, spec.weights)
        if why is not None:
            raise PreprocessorError(why)
        implementation = _weighted(spec.name, annotators)

    def slider(value, spec_slider):
        if spec_slider is None or not spec_slider.minimum <= value <= spec_slider.maximum:
            return spec_slider.value if spec_slider is not None else value
        return value

    resolution = int(slider(resolution, spec.resolution)) if spec.resolution is not None else 512
    rng = np.random.default_rng(seed & 0xFFFFFFFF)
    try:
        return hwc3(implementation(hwc3(image), resolution, slider(threshold_a, spec.slider_1),
                                   slider(threshold_b, spec.slider_2), rng))
    except AnnotatorMissing as error:  # removed since the check
        raise PreprocessorError(str(error)) from None


# ---- the control map at the generation size --------------------------------------------------------------------


def pixel_perfect_resolution(image: np.ndarray, target_h: int, target_w: int, resize_mode: str) -> int:
    """The extension's `pixel_perfect_resolution`: the preprocessor resolution that gives the target size."""
    raw_h, raw_w = image.shape[:2]
    k0, k1 = float(target_h) / raw_h, float(target_w) / raw_w
    k = min(k0, k1) if resize_mode == RESIZE_MODES[2] else max(k0, k1)
    return int(np.round(k * float(min(raw_h, raw_w))))


def _high_quality_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The extension's `high_quality_resize` without its thin-edge clean-up: nearest for maps of few colours
    (segmentation), area down, cubic up; two-colour maps stay two-colour (Otsu)."""
    if x.shape[0] == size[1] and x.shape[1] == size[0]:
        return x
    colors = len(np.unique(x.reshape(-1, x.shape[2]), axis=0))
    smaller = size[0] * size[1] < x.shape[0] * x.shape[1]
    is_binary = colors == 2 and int(np.min(x)) < 16 and int(np.max(x)) > 240
    if 2 < colors < 200:
        interpolation = cv2.INTER_NEAREST
    elif smaller:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    y = cv2.resize(x, size, interpolation=interpolation)
    if is_binary:
        grey = np.mean(y.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        y = np.stack([grey] * 3, axis=2)
    return y


def fit_control_map(detected: np.ndarray, resize_mode: str, height: int, width: int) -> np.ndarray:
    """The extension's `detectmap_proc`: the map at (height, width) by Just Resize (stretch), Crop and Resize
    (cover, centre crop) or Resize and Fill (contain, padded with the median border colour)."""
    detected = hwc3(detected)
    if resize_mode == RESIZE_MODES[0]:
        return _high_quality_resize(detected, (width, height))
    old_h, old_w = float(detected.shape[0]), float(detected.shape[1])
    k0, k1 = height / old_h, width / old_w
    if resize_mode == RESIZE_MODES[2]:
        k = min(k0, k1)
        borders = np.concatenate([detected[0, :, :], detected[-1, :, :], detected[:, 0, :], detected[:, -1, :]])
        background = np.tile(np.median(borders, axis=0).astype(np.uint8)[None, None], [height, width, 1])
        resized = _high_quality_resize(detected, (int(np.round(old_w * k)), int(np.round(old_h * k))))
        new_h, new_w = resized.shape[:2]
        pad_h, pad_w = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
        background[pad_h:pad_h + new_h, pad_w:pad_w + new_w] = resized[:height, :width]
        return background
    k = max(k0, k1)
    resized = _high_quality_resize(detected, (int(np.round(old_w * k)), int(np.round(old_h * k))))
    new_h, new_w = resized.shape[:2]
    pad_h, pad_w = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
    return np.ascontiguousarray(resized[pad_h:pad_h + height, pad_w:pad_w + width])


def input_from_rgba(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The unit's input (the extension's `from_rgba_to_input`): the image, or, when a mask paints part of it
    (canvas scribble), the mask as the input."""
    rgb = hwc3(image)
    if mask is None:
        return rgb
    alpha = mask if mask.ndim == 2 else hwc3(mask)[:, :, 0]
    if alpha.shape[:2] != rgb.shape[:2]:
        alpha = cv2.resize(alpha, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    if (alpha <= 5).all() or (alpha >= 250).all():
        return rgb
    return hwc3(alpha)


def as_array(image: Any, mask: Any = None) -> np.ndarray:
    """A unit's PIL image (and mask) as the unit's input array (uint8 RGB)."""
    rgb = np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"))
    alpha = np.asarray(mask.convert("L")) if mask is not None else None
    return input_from_rgba(rgb, alpha)


__all__ = ["as_array", "run_preprocessor", "fit_control_map", "pixel_perfect_resolution", "input_from_rgba", "hwc3",
           "resize_image_with_pad", "PreprocessorError", "IMPLEMENTATIONS"]
