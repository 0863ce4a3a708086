"""Training data: the images of a dataset folder, read at the training size, and their latents (shared by textual
inversion, hypernetwork and LoRA training).

- the images of `data_root` once each, and those of kohya's `<repeats>_<concept>` sub-folders that many times an
  epoch (`dataset_images`);
- each converted to RGB (RGBA with `keep_alpha`) and resized to the training size (bicubic) unless `varsize`, or
  scaled and centre-cropped to kohya's aspect-ratio bucket (`bucket_size`); the caption is the `.txt` beside the
  image, else its file name without its extension and leading numbers (A1111's `re_numbers_at_start`);
- encoded once by the VAE (`encode_dataset`: the posterior's mean, or the posterior itself for `random`), with the
  loss weight from the alpha channel for `use_weight` (`alpha_weight`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdwebui.core.errors import ParamError
from sdwebui.models.sd_model import SDModel
from sdwebui.pipelines.vae_encode import pil_to_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_NUMBERS_AT_START = re.compile(r"^[-\d]+\s*")
_KOHYA_FOLDER = re.compile(r"^(\d+)_\S")
"""kohya's dataset subfolders: `<repeats>_<concept>` (`10_mystyle`: each image 10 times an epoch)."""


def dataset_images(data_root: Path) -> list[tuple[Path, int]]:
    """(image, repeats) of a dataset: the images of `data_root` itself once each, and those of kohya's
    `<repeats>_<concept>` subfolders (`train_data_dir/10_mystyle/`) that many times each, so a folder prepared for
    kohya's trainers works here unchanged."""
    root = Path(data_root)
    folders = [(root, 1)] + [(sub, int(match[1])) for sub in sorted(root.iterdir())
                             if sub.is_dir() and (match := _KOHYA_FOLDER.match(sub.name)) and int(match[1]) > 0]
    return [(path, repeats) for folder, repeats in folders for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]


@dataclass
class Sample:
    path: Path
    caption: str
    latent: torch.Tensor | None = None
    """[C, h, w] scaled latent (`once`, `deterministic`)."""
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    """The posterior (`random`)."""
    weight: torch.Tensor | None = None
    """[C, h, w] loss weight from the image's alpha channel (`use_weight`), min 0 and mean 1; None: uniform."""


def bucket_size(image_size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """kohya's aspect-ratio buckets: the (w, h) of about `width * height` pixels, sides multiples of 64 (of 8 below
    256), whose aspect ratio is nearest the image's."""
    step = 64 if min(width, height) >= 256 else 8
    area = width * height
    best, best_err = (width, height), float("inf")
    target = math.log(image_size[0] / image_size[1])
    for w in range(step, 4 * max(width, height) + 1, step):
        h = area // w // step * step
        if h < step or max(w, h) > 4 * min(w, h):
            continue
        err = abs(math.log(w / h) - target)
        if err < best_err - 1e-9:
            best, best_err = (w, h), err
    return best


def read_dataset(data_root: Path, width: int, height: int, varsize: bool,
                 buckets: bool = False, keep_alpha: bool = False) -> list[tuple[Path, Image.Image, str]]:
    """(path, RGB image at the training size, caption) for every image of `data_root` (and of its kohya
    subfolders: `dataset_images`); ParamError naming `data_root` when there are none or one cannot be read.
    `buckets`: each image scaled to cover its `bucket_size` and centre-cropped to it (kohya). `keep_alpha`: an
    image with an alpha channel stays RGBA (scaled and cropped with its colours; `use_weight`)."""
    out = []
    for path, _ in dataset_images(data_root):
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGBA" if keep_alpha and "A" in opened.getbands() else "RGB")
        except Exception as error:  # noqa: BLE001 - PIL fails in many ways on a damaged file
            raise ParamError(("data_root",), f"{path.name} is not a readable image ({error})") from None
        if buckets:
            w, h = bucket_size(image.size, width, height)
            scale = max(w / image.width, h / image.height)
            image = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))),
                                 Image.Resampling.BICUBIC)
            left, top = (image.width - w) // 2, (image.height - h) // 2
            image = image.crop((left, top, left + w, top + h))
        elif not varsize:
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        else:
            image = image.resize((image.width // 8 * 8 or 8, image.height // 8 * 8 or 8), Image.Resampling.BICUBIC)
        caption_file = path.with_suffix(".txt")
        if caption_file.is_file():
            caption = caption_file.read_text(encoding="utf-8").strip()
        else:
            caption = _NUMBERS_AT_START.sub("", path.stem)
        out.append((path, image, caption))
    if not out:
        raise ParamError(("data_root",), f"no images in {data_root}")
    return out


def encode_dataset(model: SDModel, items, method: str, use_weight: bool = False) -> list[Sample]:
    """Each item's latent (or posterior); with `use_weight`, its loss weight from the alpha channel."""
    samples = []
    vae = model.vae
    with torch.no_grad():
        for path, image, caption in items:
            pixels = pil_to_tensor([image]).to(model.device, model.vae_dtype)
            dist = vae.encode(pixels, return_dict=False)[0]
            scale = model.latent_scaling_factor
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            mean = ((dist.mean.float() - shift) * scale)[0]
            weight = alpha_weight(image, tuple(mean.shape)).to(mean.device) if use_weight else None
            if method == "random":
                samples.append(Sample(path, caption, mean=mean, std=(dist.std.float() * scale)[0], weight=weight))
            else:
                samples.append(Sample(path, caption, latent=mean, weight=weight))
    return samples


def alpha_weight(image: Image.Image, latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """A1111's `use_weight`: the image's alpha channel at the latent size as the loss weight of every latent
    channel, shifted to a minimum of 0 and scaled to a mean of 1 (so the loss stays comparable to an unweighted
    one); uniform for an image without alpha, or with the same alpha everywhere (where A1111 divides by zero).
    (A1111 passes the latent's (h, w) to PIL as (w, h): for an image that is not square its map is transposed
    and then reshaped; here it is at the latent's own size.)"""
    channels, height, width = latent_shape
    if "A" not in image.getbands():
        return torch.ones(latent_shape)
    alpha = np.asarray(image.getchannel("A").resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    weight = torch.from_numpy(alpha)[None].expand(channels, height, width).clone()
    weight -= weight.min()
    mean = float(weight.mean())
    return weight / mean if mean > 0 else torch.ones(latent_shape)


__all__ = ["IMAGE_SUFFIXES", "Sample", "dataset_images", "bucket_size", "read_dataset", "encode_dataset",
           "alpha_weight"]
