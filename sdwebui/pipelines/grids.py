"""Image grids: a job's images put together, as A1111's `images.image_grid` lays them out (returned first in the
gallery and the API's `images` when there are several, and saved to `outputs/txt2img-grids`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image


def grid_rows(count: int, batch_size: int, n_rows: int = -1, prevent_empty_spots: bool = False) -> int:
    """A1111's row count: the setting `n_rows` when > 0, the batch size when 0, else about the square root (with
    "prevent empty spots": the largest divisor of `count` not above it)."""
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = batch_size
    elif prevent_empty_spots:
        rows = math.floor(math.sqrt(count))
        while count % rows != 0:
            rows -= 1
    else:
        rows = round(math.sqrt(count))
    return max(1, min(rows, count))


def image_grid(images: Sequence[Image.Image], rows: int, background: str = "#ffffff") -> Image.Image:
    """`images` in `rows` rows, left to right, each centred in a cell the size of the largest."""
    cols = math.ceil(len(images) / rows)
    width, height = (max(sides) for sides in zip(*(image.size for image in images)))
    grid = Image.new("RGB", (cols * width, rows * height), background)
    for index, image in enumerate(images):
        x = index % cols * width + (width - image.width) // 2
        y = index // cols * height + (height - image.height) // 2
        grid.paste(image.convert("RGB"), (x, y))
    return grid


__all__ = ["grid_rows", "image_grid"]
