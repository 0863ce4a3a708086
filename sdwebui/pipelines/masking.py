"""Image and mask geometry for img2img / inpainting, with A1111's exact rules.

- `resize_image` is A1111's `images.resize_image` (Lanczos): 0 Just resize, 1 Crop and resize, 2 Resize and fill
  (the empty bands are filled with the image's edge rows/columns stretched), 3 Just resize (latent upscale), which
  for images behaves as 2 (A1111 calls it with mode 3 only for masks, where it falls into the fill branch).
- `create_binary_mask`, `blur_mask`, `crop_region`, `expand_crop_region`, `fill` and `apply_overlay` follow
  A1111's `processing.create_binary_mask`, the cv2 Gaussian blur of `StableDiffusionProcessingImg2Img.init`,
  `masking.get_crop_region_v2` / `expand_crop_region` / `fill` and `processing.apply_overlay` / `uncrop`.

The mask blur is a separable Gaussian with A1111's kernel size `2 * int(2.5 * sigma + 0.5) + 1` and OpenCV's
default border (reflect-101), computed in float and rounded; OpenCV's fixed-point uint8 path can differ by one
grey level at a few pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

LANCZOS = Image.Resampling.LANCZOS
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


def resize_image(resize_mode: int, im: Image.Image, width: int, height: int) -> Image.Image:
    """A1111 `images.resize_image` without upscaler models (Lanczos)."""

    def resize(image: Image.Image, w: int, h: int) -> Image.Image:
        return image.resize((w, h), resample=LANCZOS)

    if resize_mode == 0:
        return resize(im, width, height)
    ratio = width / height
    src_ratio = im.width / im.height
    mode = "L" if im.mode == "L" else "RGB"
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
        resized = resize(im, src_w, src_h)
        res = Image.new(mode, (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return res
    src_w = width if ratio < src_ratio else im.width * height // im.height
    src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = resize(im, src_w, src_h)
    res = Image.new(mode, (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill_height = height // 2 - src_h // 2
        if fill_height > 0:
            res.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
            res.paste(
                resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)),
                box=(0, fill_height + src_h),
            )
    elif ratio > src_ratio:
        fill_width = width // 2 - src_w // 2
        if fill_width > 0:
            res.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
            res.paste(
                resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)),
                box=(fill_width + src_w, 0),
            )
    return res


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """A1111 `images.flatten`: transparent pixels over the background colour, as RGB."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background)
        base.alpha_composite(rgba)
        return base.convert("RGB")
    return image.convert("RGB")


def create_binary_mask(image: Image.Image, round: bool = True) -> Image.Image:  # noqa: A002 - A1111's name
    """A1111: a mask with a (not fully opaque) alpha channel is its alpha (thresholded at 128 when rounding);
    otherwise its greyscale. White = repaint."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.split()[-1].convert("L")
        return alpha.point(lambda x: 255 if x > 128 else 0) if round else alpha
    return image.convert("L")


def _gaussian_kernel(sigma: float) -> np.ndarray:
    size = 2 * int(2.5 * sigma + 0.5) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def _reflect_101(index: np.ndarray, n: int) -> np.ndarray:
    """OpenCV's BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba), repeated for kernels wider than the image."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def _blur_axis(array: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    n = array.shape[axis]
    out = np.zeros_like(array, dtype=np.float64)
    positions = np.arange(n)
    for i, weight in enumerate(kernel):
        out += weight * np.take(array, _reflect_101(positions + i - radius, n), axis=axis)
    return out


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """A1111's mask blur: a Gaussian along x (kernel (k, 1)), then along y, each only when its sigma > 0."""
    array = np.asarray(mask.convert("L"), dtype=np.float64)
    for sigma, axis in ((blur_x, 1), (blur_y, 0)):
        if sigma > 0:
            array = np.clip(np.rint(_blur_axis(array, float(sigma), axis)), 0, 255)
    return Image.fromarray(array.astype(np.uint8), mode="L")


def crop_region(mask: Image.Image, pad: int = 0) -> tuple[int, int, int, int] | None:
    """A1111 `masking.get_crop_region_v2`: the bounding box of the non-zero mask, grown by `pad` within the
    image; None for an empty mask."""
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    if not pad:
        return box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.size[0]), min(y2 + pad, mask.size[1])


def expand_crop_region(
    region: tuple[int, int, int, int], processing_width: int, processing_height: int, image_width: int,
    image_height: int,
) -> tuple[int, int, int, int]:
    """A1111 `masking.expand_crop_region`: grow the region to the processing aspect ratio, kept inside the image."""
    x1, y1, x2, y2 = region
    ratio_crop_region = (x2 - x1) / (y2 - y1)
    ratio_processing = processing_width / processing_height
    if ratio_crop_region > ratio_processing:
        desired_height = (x2 - x1) / ratio_processing
        desired_height_diff = int(desired_height - (y2 - y1))
        y1 -= desired_height_diff // 2
        y2 += desired_height_diff - desired_height_diff // 2
        if y2 >= image_height:
            diff = y2 - image_height
            y2 -= diff
            y1 -= diff
        if y1 < 0:
            y2 -= y1
            y1 -= y1
        if y2 >= image_height:
            y2 = image_height
    else:
        desired_width = (y2 - y1) * ratio_processing
        desired_width_diff = int(desired_width - (x2 - x1))
        x1 -= desired_width_diff // 2
        x2 += desired_width_diff - desired_width_diff // 2
        if x2 >= image_width:
            diff = x2 - image_width
            x2 -= diff
            x1 -= diff
        if x1 < 0:
            x2 -= x1
            x1 -= x1
        if x2 >= image_width:
            x2 = image_width
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 `masking.fill` ("Masked content: fill"): the masked area gets colours smeared in from around it
    by repeated blurs of the unmasked image."""
    image_mod = Image.new("RGBA", (image.width, image.height))
    image_masked = Image.new("RGBa", (image.width, image.height))
    image_masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    image_masked = image_masked.convert("RGBa")
    for radius, repeats in [(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)]:
        blurred = image_masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            image_mod.alpha_composite(blurred)
    return image_mod.convert("RGB")


def overlay_image(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The original pixels with alpha = 255 - mask (A1111's `overlay_images` entry)."""
    image_masked = Image.new("RGBa", (image.width, image.height))
    image_masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
    return image_masked.convert("RGBA")


def uncrop(image: Image.Image, dest_size: tuple[int, int], paste_loc: tuple[int, int, int, int]) -> Image.Image:
    """A1111 `processing.uncrop`: the processed crop resized (crop-and-resize) back into its place on a
    transparent canvas of the original size."""
    x, y, w, h = paste_loc
    base = Image.new("RGBA", dest_size)
    base.paste(resize_image(1, image, w, h), (x, y))
    return base


def apply_overlay(
    image: Image.Image, paste_loc: tuple[int, int, int, int] | None, overlay: Image.Image | None
) -> Image.Image:
    """A1111 `processing.apply_overlay`: paste the generated image back (uncropping an "only masked" crop) and
    composite the original through the blurred mask on top, so pixels outside the mask are the original's."""
    if overlay is None:
        return image
    if paste_loc is not None:
        image = uncrop(image, (overlay.width, overlay.height), paste_loc)
    image = image.convert("RGBA")
    image.alpha_composite(overlay)
    return image.convert("RGB")


__all__ = [
    "RESIZE_MODES", "resize_image", "flatten", "create_binary_mask", "blur_mask", "crop_region",
    "expand_crop_region", "fill", "overlay_image", "uncrop", "apply_overlay",
]
