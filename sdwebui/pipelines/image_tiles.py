"""An image cut into overlapping tiles and put back together with the overlaps blended: A1111's
`images.split_grid` / `images.combine_grid` (v1.10), which SD upscale and Poor man's outpainting use.

Geometry (A1111's): with `tile_w` x `tile_h` tiles overlapping by `overlap`, there are
`cols = ceil((w - overlap) / (tile_w - overlap))` columns spread evenly over the width (`x = int(col * dx)`,
`dx = (w - tile_w) / (cols - 1)`), the last one flush with the right edge; rows likewise.

Blend (A1111's): each row is built left to right, a tile's first `overlap` columns pasted over what is there
through a ramp mask `int(i * 255 / overlap)` for column i (0 = keep the left tile, ~255 = the new one), the rest
pasted plainly; then the rows are stacked top to bottom the same way with a vertical ramp. Where tiles overlap by
more than `overlap` (the last column pushed against the edge), the later tile simply covers the earlier one.

Where we differ: an image smaller than a tile is not cropped beyond its edge (A1111 pads with black there and
then fails to paste a tile of the wrong size); it is a single tile of its own size. Overlap 0 pastes tiles side
by side (A1111 builds a mask of width 0, which Pillow refuses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class Tile:
    x: int
    width: int
    image: Image.Image


@dataclass
class TileRow:
    y: int
    height: int
    tiles: list[Tile] = field(default_factory=list)


@dataclass
class TileGrid:
    """A1111's `images.Grid`: rows of tiles with where they came from."""

    rows: list[TileRow]
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int

    def tiles(self) -> list[Tile]:
        """Every tile, row by row (the order A1111 processes them in)."""
        return [tile for row in self.rows for tile in row.tiles]

    @property
    def shape(self) -> tuple[int, int]:
        """(columns, rows)."""
        return (len(self.rows[0].tiles) if self.rows else 0, len(self.rows))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where A1111's tiles start along one side of `length` pixels."""
    tile = min(tile, length)
    count = max(1, math.ceil((length - overlap) / (tile - overlap))) if tile > overlap else 1
    step = (length - tile) / (count - 1) if count > 1 else 0
    starts = []
    for index in range(count):
        start = int(index * step)
        if start + tile >= length:
            start = length - tile
        starts.append(start)
    return starts


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> TileGrid:
    """`image` as overlapping tiles (see the module docstring)."""
    if tile_w <= overlap or tile_h <= overlap:
        raise ValueError(f"tiles of {tile_w}x{tile_h} cannot overlap by {overlap} pixels")
    width, height = image.size
    tile_w, tile_h = min(tile_w, width), min(tile_h, height)
    grid = TileGrid([], tile_w, tile_h, width, height, overlap)
    for y in tile_starts(height, tile_h, overlap):
        row = TileRow(y, tile_h)
        for x in tile_starts(width, tile_w, overlap):
            row.tiles.append(Tile(x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))))
        grid.rows.append(row)
    return grid


def overlap_ramp(overlap: int) -> np.ndarray:
    """The blend weights across an overlap, 0..255 (A1111's `make_mask_image`: `uint8(i * 255 / overlap)`)."""
    return (np.arange(overlap, dtype=np.float32) * 255 / overlap).astype(np.uint8)


def combine_grid(grid: TileGrid) -> Image.Image:
    """The tiles (possibly replaced, same sizes) put back together with A1111's overlap blend."""
    overlap = grid.overlap
    mask_w = mask_h = None
    if overlap > 0:
        ramp = overlap_ramp(overlap)
        mask_w = Image.fromarray(np.repeat(ramp[None, :], grid.tile_h, axis=0), "L")
        mask_h = Image.fromarray(np.repeat(ramp[:, None], grid.image_w, axis=1), "L")
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for row in grid.rows:
        combined_row = Image.new("RGB", (grid.image_w, row.height))
        for tile in row.tiles:
            image = tile.image.convert("RGB")
            if tile.x == 0 or mask_w is None:
                combined_row.paste(image, (tile.x, 0))
                continue
            combined_row.paste(image.crop((0, 0, overlap, row.height)), (tile.x, 0), mask=mask_w)
            combined_row.paste(image.crop((overlap, 0, tile.width, row.height)), (tile.x + overlap, 0))
        if row.y == 0 or mask_h is None:
            combined.paste(combined_row, (0, row.y))
            continue
        combined.paste(combined_row.crop((0, 0, combined_row.width, overlap)), (0, row.y), mask=mask_h)
        combined.paste(combined_row.crop((0, overlap, combined_row.width, row.height)), (0, row.y + overlap))
    return combined


__all__ = ["Tile", "TileRow", "TileGrid", "tile_starts", "split_grid", "combine_grid", "overlap_ramp"]
