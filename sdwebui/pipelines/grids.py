"""Image grids: a job's images put together, as A1111's `images.image_grid` lays them out (returned first in the
gallery and the API's `images` when there are several, and saved to `outputs/txt2img-grids`), and the legends the
X/Y/Z plot and the prompt matrix draw around them (A1111's `images.draw_grid_annotations`).

The legends use Pillow's own scalable font (`ImageFont.load_default(size=...)`, Pillow >= 10.1 with FreeType), so
no font file has to ship or be found on the system (A1111 looks for Roboto, then DejaVuSans)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont


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


@dataclass
class GridAnnotation:
    """One line of a legend (A1111's `images.GridAnnotation`): an inactive one (a prompt matrix part that is off)
    is drawn grey and struck through."""

    text: str = ""
    is_active: bool = True


LEGEND_ACTIVE = (0, 0, 0)
LEGEND_INACTIVE = (153, 153, 153)


@lru_cache(maxsize=64)
def legend_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(1, size))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str]:
    """A1111's word wrap: words are added to a line while it fits in `width`."""
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if draw.textlength(line, font=font) <= width:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


@dataclass
class _Line:
    text: str
    active: bool
    size: tuple[int, int]
    allowed_width: float


def draw_grid_annotations(grid: Image.Image, width: int, height: int, hor_texts: Sequence[Sequence[GridAnnotation]],
                          ver_texts: Sequence[Sequence[GridAnnotation]], margin: int = 0) -> Image.Image:
    """`grid` (cells of `width` x `height`) with a legend above each column (`hor_texts`) and left of each row
    (`ver_texts`), cells `margin` pixels apart: A1111's `images.draw_grid_annotations`, with its sizes (font size
    (width + height) / 25, the left legend 3/4 of a cell wide, text wrapped to the column and shrunk until each
    line fits)."""
    cols, rows = grid.width // width, grid.height // height
    if cols != len(hor_texts) or rows != len(ver_texts):
        raise ValueError(f"{len(hor_texts)} column and {len(ver_texts)} row legends for a {cols}x{rows} grid")
    fontsize = (width + height) // 25
    line_spacing = fontsize // 2
    font = legend_font(fontsize)
    has_row_texts = any(line.text for lines in ver_texts for line in lines)
    pad_left = width * 3 // 4 if has_row_texts else 0

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1), "white"))

    def laid_out(texts: Sequence[GridAnnotation], allowed_width: float) -> list[_Line]:
        lines = []
        for annotation in texts:
            for text in _wrap(measure, annotation.text, font, allowed_width):
                box = measure.multiline_textbbox((0, 0), text, font=font)
                lines.append(_Line(text, annotation.is_active, (box[2] - box[0], box[3] - box[1]), allowed_width))
        return lines

    columns = [laid_out(texts, width) for texts in hor_texts]
    row_lines = [laid_out(texts, pad_left) for texts in ver_texts]
    column_heights = [sum(line.size[1] + line_spacing for line in lines) - line_spacing for lines in columns]
    # A1111 subtracts the spacing once per line for the rows (its centring), and so do we: same pixels.
    row_heights = [sum(line.size[1] + line_spacing for line in lines) - line_spacing * len(lines) for lines in row_lines]
    pad_top = 0 if sum(column_heights) == 0 else max(column_heights) + line_spacing * 2

    result = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1), grid.height + pad_top + margin * (rows - 1)),
                       "white")
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))

    draw = ImageDraw.Draw(result)

    def draw_lines(x: float, y: float, lines: list[_Line]) -> None:
        for line in lines:
            size, line_font = fontsize, font
            while size > 0 and draw.textlength(line.text, font=line_font) > line.allowed_width:
                size -= 1
                line_font = legend_font(size)
            colour = LEGEND_ACTIVE if line.active else LEGEND_INACTIVE
            draw.multiline_text((x, y + line.size[1] / 2), line.text, font=line_font, fill=colour, anchor="mm",
                                align="center")
            if not line.active:
                draw.line((x - line.size[0] // 2, y + line.size[1] // 2, x + line.size[0] // 2, y + line.size[1] // 2),
                          fill=LEGEND_INACTIVE, width=4)
            y += line.size[1] + line_spacing

    for col in range(cols):
        draw_lines(pad_left + (width + margin) * col + width / 2, pad_top / 2 - column_heights[col] / 2, columns[col])
    for row in range(rows):
        draw_lines(pad_left / 2, pad_top + (height + margin) * row + height / 2 - row_heights[row] / 2, row_lines[row])
    return result


__all__ = ["grid_rows", "image_grid", "GridAnnotation", "draw_grid_annotations", "legend_font"]
