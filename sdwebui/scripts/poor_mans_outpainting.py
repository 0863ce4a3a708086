"""A1111's "Poor man's outpainting" (`scripts/poor_mans_outpainting.py`, v1.10), img2img only: the canvas grows by
"Pixels to expand" on the chosen sides (rounded up to a multiple of 64 in all), and every tile of the job's
width x height that touches the new border is inpainted, one at a time.

Arguments, in A1111's order (what `script_args` carries): pixels to expand (8-256), mask blur (0-64), masked
content (A1111's radio index: 0 fill, 1 original, 2 latent noise, 3 latent nothing; a name is taken too),
outpainting direction (a list of "left", "right", "up", "down").

As A1111: the image is placed on a black canvas; the mask covers the new border, reaching `mask blur x 2` pixels
further in on each side that grows, and is blurred by `mask blur x 2`; tiles overlap by "Pixels to expand"
(`split_grid`), the ones entirely inside the original image are left alone; each tile's seed is the previous one's
+ 1; one image comes out (batch size and count are 1), recombined with the overlaps blended and saved, no grid.

Where we differ: A1111 also gives the sampler a "latent mask" a little smaller than the image mask (inset by
`mask blur / 2`); here the latent blend follows the blurred image mask, as an inpainting job's does.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.image_tiles import combine_grid, split_grid
from sdwebui.pipelines.img2img_params import INPAINTING_FILLS
from sdwebui.pipelines.jobs import JobScript, ScriptJob
from sdwebui.pipelines.masking import flatten
from sdwebui.pipelines.script_args import ChoiceIndexArg
from sdwebui.pipelines.scripts import GenerationTask, JobOutcome, ScriptArg

DIRECTIONS = ("left", "right", "up", "down")
PIXELS_INDEX = 0


def expansion(width: int, height: int, pixels: int, directions) -> tuple[int, int, int, int, int, int]:
    """A1111's canvas: (target width, target height, left, right, up, down). The sides asked for grow by `pixels`,
    then the canvas is rounded up to a multiple of 64 and the rounding shared out between them."""
    left = pixels if "left" in directions else 0
    right = pixels if "right" in directions else 0
    up = pixels if "up" in directions else 0
    down = pixels if "down" in directions else 0
    target_w = math.ceil((width + left + right) / 64) * 64
    target_h = math.ceil((height + up + down) / 64) * 64
    if left > 0:
        left = left * (target_w - width) // (left + right)
    if right > 0:
        right = target_w - width - left
    if up > 0:
        up = up * (target_h - height) // (up + down)
    if down > 0:
        down = target_h - height - up
    return target_w, target_h, left, right, up, down


class PoorMansOutpainting(JobScript):
    title = "Poor man's outpainting"
    tabs = ("img2img",)
    description = "Extends the image on the chosen sides and inpaints the new border tile by tile."
    args = (
        ScriptArg("Pixels to expand", int, 128, minimum=8, maximum=256, step=8),
        ScriptArg("Mask blur", int, 4, minimum=0, maximum=64, step=1),
        ChoiceIndexArg("Masked content", int, 0, choices=INPAINTING_FILLS),
        ScriptArg("Outpainting direction", list, DIRECTIONS, choices=DIRECTIONS),
    )

    def before_job(self, task: GenerationTask, args: tuple) -> list[GenerationTask]:
        pixels = args[PIXELS_INDEX]
        if pixels >= min(task.params.width, task.params.height):
            raise ParamError(("script_args", PIXELS_INDEX),
                             f"Pixels to expand: the tiles (the job's {task.params.width}x{task.params.height}) "
                             f"overlap by this much, so it must be less than their sides, got {pixels}")
        return [task]

    def canvas(self, image: Image.Image, args: tuple) -> tuple[Image.Image, Image.Image, tuple]:
        """The grown image (black border) and its mask (white = inpaint), and (left, right, up, down)."""
        pixels, mask_blur, _, directions = args
        target_w, target_h, left, right, up, down = expansion(image.width, image.height, pixels, directions)
        canvas = Image.new("RGB", (target_w, target_h))
        canvas.paste(image, (left, up))
        mask = Image.new("L", (target_w, target_h), "white")
        ImageDraw.Draw(mask).rectangle((
            left + (mask_blur * 2 if left > 0 else 0),
            up + (mask_blur * 2 if up > 0 else 0),
            mask.width - right - (mask_blur * 2 if right > 0 else 0),
            mask.height - down - (mask_blur * 2 if down > 0 else 0),
        ), fill="black")
        return canvas, mask, (left, right, up, down)

    def _work(self, task: GenerationTask, args: tuple):

        params = task.params
        canvas, mask, (left, right, up, down) = self.canvas(flatten(task.init_images[0]), args)
        grid = split_grid(canvas, params.width, params.height, overlap=args[PIXELS_INDEX])
        mask_grid = split_grid(mask, params.width, params.height, overlap=args[PIXELS_INDEX])
        work = []
        for row, mask_row in zip(grid.rows, mask_grid.rows):
            for tile, mask_tile in zip(row.tiles, mask_row.tiles):
                inside = (tile.x >= left and tile.x + tile.width <= canvas.width - right and row.y >= up
                          and row.y + row.height <= canvas.height - down)
                if not inside:
                    work.append((tile, mask_tile.image))
        return grid, work

    def planned_batches(self, task: GenerationTask, args: tuple) -> int:
        return len(self._work(task, args)[1])

    def run_job(self, task: GenerationTask, args: tuple, job: ScriptJob) -> JobOutcome:
        from sdwebui.core.noise import fix_seed  # torch: the worker has it by now

        _, mask_blur, inpainting_fill, _ = args
        params = task.params.replace(mask_blur_x=mask_blur * 2, mask_blur_y=mask_blur * 2,
                                     inpainting_fill=inpainting_fill, inpaint_full_res=False, batch_size=1,
                                     batch_count=1, subseed=fix_seed(task.params.subseed))
        seed = fix_seed(params.seed)
        grid, work = self._work(task, args)
        first = None
        for index, (tile, tile_mask) in enumerate(work):
            if job.interrupted():
                break
            run = GenerationTask(params.replace(seed=seed), (tile.image,), tile_mask, checkpoint=task.checkpoint,
                                 label=f"tile {index + 1}/{len(work)}")
            result = job.run(run, save=False)
            seed += 1  # A1111: p.seed = processed.seed + 1
            if result.images:  # else skipped: the tile stays as it was
                first = first or result
                done = result.images[0]
                tile.image = done if done.size == tile.image.size else done.resize(tile.image.size,
                                                                                   Image.Resampling.LANCZOS)
        outcome = JobOutcome(params=first.params if first else params, make_grid=False,
                             interrupted=job.interrupted())
        if first is None:
            return outcome
        combined = combine_grid(grid)
        infotext = first.infotexts[0]
        combined.info["parameters"] = infotext
        outcome.images.append(combined)
        outcome.seeds.append(first.seeds[0])
        outcome.subseeds.extend(first.subseeds[:1])
        outcome.prompts.append(first.prompts[0] if first.prompts else params.prompt)
        outcome.negative_prompts.append(first.negative_prompts[0] if first.negative_prompts
                                        else params.negative_prompt)
        outcome.infotexts.append(infotext)
        outcome.notes.extend(first.notes)
        job.save([combined], first, [first.seeds[0]], [infotext])
        return outcome


__all__ = ["PoorMansOutpainting", "expansion", "DIRECTIONS"]
