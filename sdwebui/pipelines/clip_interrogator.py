"""A1111's "Interrogate CLIP" (`modules/interrogate.py`): the BLIP caption (settings `interrogate_clip_num_beams`,
`interrogate_clip_min_length`, `interrogate_clip_max_length`), then for each category list (`artists`, `flavors`,
`mediums`, `movements`; a `NAME.topN.txt` file gives N matches) the entries CLIP ranks highest against the image,
each appended as `, entry` (or `, (entry:0.123)` with `interrogate_return_ranks`). Ranking as A1111's `rank`: the
softmax over the list of 100 x cosine similarity, the first `interrogate_clip_dict_limit` lines only (0: all);
categories named in `interrogate_clip_skip_categories` are left out. The lists ship in `clip_categories/` (short
lists written for this project, not A1111's downloaded ones); a user's own `interrogate/` folder in the data
directory (A1111's folder name) replaces them.

A1111's "Interrogate DeepBooru" (`modules/deepbooru.py`): the image resized to 512 x 512 with "Resize and fill",
RGB 0..1, through the DeepDanbooru network, then `format_tags`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdwebui.models.blip_clip import CLIP_MEAN, CLIP_STD, Blip, Clip
from sdwebui.models.deepdanbooru import DeepDanbooruModel
from sdwebui.pipelines.masking import resize_image


CATEGORIES_DIR = Path(__file__).resolve().parent / "clip_categories"
"""The category lists shipped with the package."""
RE_TOPN = re.compile(r"\.top(\d+)$")


@dataclass(frozen=True)
class Category:
    name: str
    topn: int
    items: tuple[str, ...]


def category_names(folder: Path = CATEGORIES_DIR) -> list[str]:
    """The category files' names (A1111's `category_types`: each `.txt` file's stem), sorted."""
    return sorted(f.stem for f in Path(folder).glob("*.txt"))


def load_categories(folder: Path = CATEGORIES_DIR, skip: Sequence[str] = ()) -> list[Category]:
    """Every `NAME.txt` in `folder` but those in `skip` (A1111's `categories()`), by name; `NAME.topN.txt` asks for N
    matches. Blank lines are left out."""
    out = []
    for path in sorted(Path(folder).glob("*.txt")):
        if path.stem in skip:
            continue
        found = RE_TOPN.search(path.stem)
        items = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        out.append(Category(path.stem, int(found[1]) if found else 1, items))
    return out


def _to_tensor(image: Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = (array - np.array(mean, np.float32)) / np.array(std, np.float32)
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def blip_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """A1111's BLIP input: resized to size x size (bicubic), CLIP's mean and std."""
    return _to_tensor(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


def clip_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """OpenAI CLIP's `preprocess`: the short side resized to `size` (bicubic), centre crop, mean and std."""
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return _to_tensor(image.crop((left, top, left + size, top + size)))


def rank(clip: Clip, image_features: torch.Tensor, items: Sequence[str], top_count: int = 1,
         dict_limit: int = 0) -> list[tuple[str, float]]:
    """A1111's `InterrogateModels.rank`: the `top_count` entries of `items` (the first `dict_limit`; 0: all) with
    the highest softmax(100 x cosine similarity) to the image (averaged over the rows of `image_features`), with
    that probability."""
    items = list(items[:int(dict_limit)] if dict_limit else items)
    top_count = min(top_count, len(items))
    if top_count <= 0:
        return []
    text = clip.list_features(items).to(image_features.dtype)
    similarity = torch.zeros(len(items), device=text.device, dtype=torch.float32)
    for row in image_features.to(text.device):
        similarity += (100.0 * row[None] @ text.T).float().softmax(dim=-1)[0]
    similarity /= image_features.shape[0]
    probs, labels = similarity.cpu().topk(top_count)
    return [(items[int(i)], float(p)) for p, i in zip(probs, labels)]


@dataclass(frozen=True)
class ClipOptions:
    num_beams: int = 1
    min_length: int = 24
    max_length: int = 48
    dict_limit: int = 1500
    skip_categories: tuple[str, ...] = ()
    include_ranks: bool = False

    @classmethod
    def from_settings(cls, options: Mapping[str, object]) -> "ClipOptions":
        skip = options.get("interrogate_clip_skip_categories") or ()
        if isinstance(skip, str):
            skip = [part.strip() for part in skip.split(",") if part.strip()]
        return cls(
            num_beams=int(options.get("interrogate_clip_num_beams", 1)),
            min_length=int(options.get("interrogate_clip_min_length", 24)),
            max_length=int(options.get("interrogate_clip_max_length", 48)),
            dict_limit=int(options.get("interrogate_clip_dict_limit", 1500)),
            skip_categories=tuple(skip),
            include_ranks=bool(options.get("interrogate_return_ranks", False)),
        )


def blip_caption(blip: Blip, image: Image.Image, options: ClipOptions = ClipOptions()) -> str:
    return blip.caption(blip_pixels(image, blip.image_size), num_beams=options.num_beams,
                        min_length=options.min_length, max_length=options.max_length)


def clip_interrogate(blip: Blip, clip: Clip, image: Image.Image, options: ClipOptions = ClipOptions(),
                     categories: Sequence[Category] | None = None) -> str:
    """A1111's `InterrogateModels.interrogate`: the BLIP caption, then `, match` per category's top matches."""
    image = image.convert("RGB")
    result = blip_caption(blip, image, options)
    if categories is None:
        categories = load_categories(skip=options.skip_categories)
    features = clip.image_features(clip_pixels(image, clip.image_size))
    for category in categories:
        if category.name in options.skip_categories:
            continue
        for match, score in rank(clip, features, category.items, category.topn, options.dict_limit):
            result += f", ({match}:{score:.3f})" if options.include_ranks else f", {match}"
    return result


@torch.no_grad()
def deepbooru_probabilities(model: DeepDanbooruModel, image: Image.Image) -> dict[str, float]:
    """A1111's `DeepDanbooru.tag_multi` up to the threshold: 512 x 512 "Resize and fill", RGB 0..1, each tag's
    probability."""
    picture = resize_image(2, image.convert("RGB"), 512, 512)
    array = np.asarray(picture, dtype=np.float32)[None] / 255.0
    device = model.n_Conv_0.weight.device
    scores = model(torch.from_numpy(array).to(device))[0].float().cpu().tolist()
    return dict(zip(model.tags, scores))


__all__ = ["CATEGORIES_DIR", "Category", "ClipOptions", "blip_caption", "blip_pixels", "category_names",
           "clip_interrogate", "clip_pixels", "deepbooru_probabilities", "load_categories", "rank"]
