"""A1111's "SD upscale" (`scripts/sd_upscale.py`, v1.10), img2img only: upscale the init image, cut it into
overlapping tiles of the job's width x height, img2img every tile, and put them back together with the overlaps
blended (`pipelines.image_tiles`, A1111's `split_grid` / `combine_grid`).

Arguments, in A1111's order (what `script_args` carries): the info note (any value, ignored), tile overlap (pixels,
0-256), the upscaler (A1111's `upscaler_index`: a position in `/sdapi/v1/upscalers`, or a name), scale factor
(1-4).

As A1111: the upscaler is applied as its `Upscaler.upscale` does (the size is scale x the image's, floored to a
multiple of 8; "None" keeps the image as it is); tiles go through img2img `batch_size` at a time (each batch's
first seed is the previous batch's first seed + 1, and image i of a batch has that seed + i, A1111's
`p.seed = processed.seed + 1`); batch count repeats the whole upscale with the seed + n; tiles are not saved, the
recombined images are (with the first tile batch's infotext, which has "SD upscale overlap" and "SD upscale
upscaler"), and no grid is made.

Where we differ: the mask of an inpainting job is not used (A1111 applies the whole image's mask to every tile);
a tile batch stopped by Skip or Interrupt leaves those tiles as upscaled (A1111 pastes black or shifts the later
tiles into the wrong places); Interrupt ends the job with the image recombined so far.
"""

from __future__ import annotations

import math
from contextvars import ContextVar

from PIL import Image

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.image_tiles import combine_grid, split_grid, tile_starts
from sdwebui.pipelines.jobs import JobScript, ScriptEnvironment, ScriptJob
from sdwebui.pipelines.masking import flatten
from sdwebui.pipelines.script_args import InfoArg, InstalledChoiceArg
from sdwebui.pipelines.scripts import GenerationTask, JobOutcome, ScriptArg

OVERLAP_INDEX, UPSCALER_INDEX, SCALE_INDEX = 1, 2, 3
BUILTIN_CHOICES = ("None", "Lanczos", "Nearest")
_UPSCALER_NAME: ContextVar[str] = ContextVar("sd_upscale_upscaler", default="None")
"""The upscaler's name for the infotext of the tile runs `run_job` makes (in its own thread; an index argument
is resolved against the list there)."""


def upscaled_size(width: int, height: int, scale: float, upscaler_is_none: bool) -> tuple[int, int]:
    """A1111 `Upscaler.upscale`'s size: scale x the image, floored to a multiple of 8 ("None": unchanged)."""
    if upscaler_is_none:
        return width, height
    return int((width * scale) // 8 * 8), int((height * scale) // 8 * 8)


def is_none_upscaler(choice) -> bool:
    """Whether an `upscaler_index` argument is "None" (the first entry of every upscaler list)."""
    return choice == 0 or isinstance(choice, str) and choice.strip().lower() in ("none", "")


class SDUpscale(JobScript):
    title = "SD upscale"
    tabs = ("img2img",)
    description = "Upscales the image by the scale factor, then redraws it in tiles of the width and height set above."
    args = (
        InfoArg("Info", help="Will upscale the image by the selected scale factor; use width and height sliders to "
                             "set tile size"),
        ScriptArg("Tile overlap", int, 64, minimum=0, maximum=256, step=16),
        InstalledChoiceArg("Upscaler", str, "None", choices=BUILTIN_CHOICES, catalog="upscalers",
                           help="an upscaler's name, or its position in the upscaler list"),
        ScriptArg("Scale Factor", float, 2.0, minimum=1.0, maximum=4.0, step=0.05),
    )

    def before_job(self, task: GenerationTask, args: tuple) -> list[GenerationTask]:
        overlap = args[OVERLAP_INDEX]
        width, height = task.params.width, task.params.height
        if overlap >= min(width, height):
            raise ParamError(("script_args", OVERLAP_INDEX),
                             f"Tile overlap: {overlap} pixels is not less than the tile size {width}x{height} "
                             "(the job's width and height)")
        return [task]

    def check(self, task: GenerationTask, args: tuple, env: ScriptEnvironment) -> None:
        self.upscaler(args[UPSCALER_INDEX], env.upscalers)

    @staticmethod
    def upscaler(choice, library):
        """The upscaler entry an `upscaler_index` argument names; ParamError at `script_args[2]`."""
        from sdwebui.models import upscalers  # torch

        loc = ("script_args", UPSCALER_INDEX)
        if library is None:
            if is_none_upscaler(choice):
                return upscalers.UpscalerEntry("None", "none")
            if isinstance(choice, str) and choice.strip().lower() in ("lanczos", "nearest"):
                return upscalers.UpscalerEntry(choice.strip().capitalize(), choice.strip().lower())
            raise ParamError(loc, f"Upscaler: {choice!r} is not installed")
        if isinstance(choice, int):
            entries = library.entries()
            if choice >= len(entries):
                raise ParamError(loc, f"Upscaler: there are {len(entries)} upscalers (0 to {len(entries) - 1}: "
                                      f"{', '.join(entry.name for entry in entries)}), got {choice}")
            return entries[choice]
        try:
            return library.find(choice)
        except upscalers.UpscalerNotFoundError as error:
            raise ParamError(loc, f"Upscaler: {error.args[0]}") from None

    def planned_batches(self, task: GenerationTask, args: tuple) -> int:
        params = task.params
        image = task.init_images[0]
        width, height = upscaled_size(image.width, image.height, args[SCALE_INDEX],
                                      is_none_upscaler(args[UPSCALER_INDEX]))
        tiles = len(tile_starts(width, params.width, args[OVERLAP_INDEX])) * len(
            tile_starts(height, params.height, args[OVERLAP_INDEX]))
        return math.ceil(tiles / params.batch_size) * params.batch_count

    def after_batch(self, batch, args: tuple) -> None:
        batch.infotext["SD upscale overlap"] = args[OVERLAP_INDEX]
        batch.infotext["SD upscale upscaler"] = _UPSCALER_NAME.get()

    def run_job(self, task: GenerationTask, args: tuple, job: ScriptJob) -> JobOutcome:
        from sdwebui.core.noise import fix_seed  # torch: the worker has it by now
        from sdwebui.pipelines.upscale import TileOptions, upscale_image

        _, overlap, choice, scale = args
        params = task.params
        seed, subseed = fix_seed(params.seed), fix_seed(params.subseed)
        entry = self.upscaler(choice, job.upscalers)
        _UPSCALER_NAME.set(entry.name)
        image = upscale_image(flatten(task.init_images[0]), entry, scale, library=job.upscalers,
                              tiles=TileOptions(*job.upscale_tile), should_stop=job.interrupted)
        grid = split_grid(image, params.width, params.height, overlap)
        tiles = grid.tiles()
        batch_size = params.batch_size
        chunks = [tiles[start:start + batch_size] for start in range(0, len(tiles), batch_size)]
        outcome = JobOutcome(params=params.replace(seed=seed, subseed=subseed), make_grid=False)
        originals = [tile.image for tile in tiles]
        first = None
        for n in range(params.batch_count):
            if job.interrupted():
                break
            start_seed = seed + n
            batch_seed = start_seed
            for index, chunk in enumerate(chunks):
                if job.interrupted():
                    break
                run = GenerationTask(
                    params.replace(seed=batch_seed, subseed=subseed, batch_size=len(chunk), batch_count=1),
                    tuple(originals[index * batch_size:index * batch_size + len(chunk)]),
                    checkpoint=task.checkpoint, label=f"tiles {index + 1}/{len(chunks)}")
                result = job.run(run, save=False)
                batch_seed += 1  # A1111: p.seed = processed.seed + 1
                first = first or (result if result.images else None)
                if len(result.images) == len(chunk):  # else skipped: those tiles stay as upscaled
                    for tile, done in zip(chunk, result.images):
                        tile.image = done if done.size == tile.image.size else done.resize(tile.image.size,
                                                                                           Image.Resampling.LANCZOS)
            combined = combine_grid(grid)
            for tile, original in zip(tiles, originals):  # the next upscale starts from the upscaled tiles again
                tile.image = original
            if first is None:  # nothing was redrawn (interrupted or skipped before the first tile)
                break
            infotext = first.infotexts[0]
            outcome.images.append(combined)
            outcome.seeds.append(start_seed)
            outcome.subseeds.append(subseed)
            outcome.prompts.append(first.prompts[0] if first.prompts else params.prompt)
            outcome.negative_prompts.append(first.negative_prompts[0] if first.negative_prompts
                                            else params.negative_prompt)
            outcome.infotexts.append(infotext)
            combined.info["parameters"] = infotext
            job.save([combined], first, [start_seed], [infotext])
        if first is not None:
            outcome.params = first.params
            outcome.notes.extend(first.notes)
        outcome.interrupted = job.interrupted()
        return outcome


__all__ = ["SDUpscale", "upscaled_size", "is_none_upscaler"]
