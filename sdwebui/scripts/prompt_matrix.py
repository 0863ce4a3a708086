"""A1111's "Prompt matrix" (`scripts/prompt_matrix.py`, v1.10): the prompt's `|`-separated parts after the first are
switched on and off in every combination (2^(parts - 1) images), and the images come back with a grid whose
legends show each part, struck through where it is off (`images.draw_prompt_matrix`).

    a cat | in a hat | on a mat    ->  "a cat", "a cat, in a hat", "a cat, on a mat", "a cat, in a hat, on a mat"

Arguments, in A1111's order: "Put variable parts at start of prompt", "Use different seed for each picture",
"Select prompt" (positive / negative: which prompt holds the parts), "Select joining char" (comma / space) and
"Grid margins (px)".

Each combination is one run of one image (A1111 sets `n_iter` to cover the list and feeds a prompt per image;
the images and seeds are the same): the job's batch size and count are not used. More than `MAX_IMAGES`
combinations (13 parts) is a 422 (at "Select prompt") rather than hours of work.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.grids import GridAnnotation, draw_grid_annotations, image_grid
from sdwebui.pipelines.scripts import GenerationTask, JobOutcome, Script, ScriptArg

MAX_IMAGES = 4096
PUT_AT_START, DIFFERENT_SEEDS, PROMPT_TYPE, DELIMITER, MARGIN_SIZE = range(5)


def matrix_prompts(prompt: str, put_at_start: bool, delimiter: str) -> list[str]:
    """A1111's combinations: image `n` has part `i + 1` when bit `i` of `n` is set; the first part is always in,
    at the end with `put_at_start`; parts are stripped of spaces and commas and joined by ", " or " "."""
    parts = prompt.split("|")
    joiner = ", " if delimiter == "comma" else " "
    prompts = []
    for number in range(2 ** (len(parts) - 1)):
        chosen = [text.strip().strip(",") for bit, text in enumerate(parts[1:]) if number & (1 << bit)]
        chosen = [*chosen, parts[0]] if put_at_start else [parts[0], *chosen]
        prompts.append(joiner.join(chosen))
    return prompts


def draw_prompt_matrix(grid, width: int, height: int, parts: list[str], margin: int = 0):
    """A1111's `images.draw_prompt_matrix`: the first half of the variable parts label the columns, the rest the
    rows; a part that is off in a column / row is drawn grey and struck through."""
    variable = parts[1:]
    boundary = math.ceil(len(variable) / 2)
    across, down = variable[:boundary], variable[boundary:]
    hor = [[GridAnnotation(text, is_active=bool(pos & (1 << i))) for i, text in enumerate(across)]
           for pos in range(1 << len(across))]
    ver = [[GridAnnotation(text, is_active=bool(pos & (1 << i))) for i, text in enumerate(down)]
           for pos in range(1 << len(down))]
    return draw_grid_annotations(grid, width, height, hor, ver, margin)


@dataclass(frozen=True)
class MatrixCell:
    """`GenerationTask.script_data` of a prompt matrix task: its combination, and the job's parts."""

    index: int
    parts: tuple[str, ...]


def _random_if_unset(seed: int) -> int:
    return random.randrange(4294967294) if seed == -1 else seed


class PromptMatrix(Script):
    title = "Prompt matrix"
    description = "Separate the prompt's parts with |: an image for every combination of the parts after the first."
    args = (
        ScriptArg("Put variable parts at start of prompt", bool, False),
        ScriptArg("Use different seed for each picture", bool, False),
        ScriptArg("Select prompt", str, "positive", choices=("positive", "negative")),
        ScriptArg("Select joining char", str, "comma", choices=("comma", "space")),
        ScriptArg("Grid margins (px)", int, 0, minimum=0, maximum=500, step=2),
    )

    def before_job(self, task: GenerationTask, args: tuple) -> list[GenerationTask]:
        put_at_start, different_seeds, prompt_type, delimiter, _ = args
        base = task.params
        field = "prompt" if prompt_type == "positive" else "negative_prompt"
        parts = getattr(base, field).count("|") + 1
        if 2 ** (parts - 1) > MAX_IMAGES:
            # named at "Select prompt": the script's argument that points at the prompt with too many parts
            raise ParamError(("script_args", PROMPT_TYPE), f"Select prompt: the {prompt_type} prompt's {parts - 1} "
                             f"variable parts make {2 ** (parts - 1)} images, more than {MAX_IMAGES}")
        prompts = matrix_prompts(getattr(base, field), put_at_start, delimiter)
        parts_given = tuple(getattr(base, field).split("|"))
        seed, subseed = _random_if_unset(base.seed), _random_if_unset(base.subseed)  # A1111's fix_seed(p)
        return [
            GenerationTask(
                base.replace(**{field: text}, seed=seed + (index if different_seeds else 0), subseed=subseed + index,
                             batch_size=1, batch_count=1),
                task.init_images, task.mask, checkpoint=task.checkpoint, label=f"combination {index + 1}",
                vae=task.vae, styles=task.styles, arg_locs=task.arg_locs, script_data=MatrixCell(index, parts_given),
            )
            for index, text in enumerate(prompts)
        ]

    def after_job(self, outcome: JobOutcome, args: tuple) -> None:
        from PIL import Image

        outcome.make_grid = False  # A1111: `p.do_not_save_grid = True`; the matrix is the grid
        made, parts, at = {}, None, 0
        for task, count in zip(outcome.tasks, outcome.task_image_counts):
            if isinstance(task.script_data, MatrixCell):
                parts = list(task.script_data.parts)
                if count:
                    made[task.script_data.index] = outcome.images[at]
            at += count
        if not made or parts is None:
            return
        first = next(iter(made.values()))
        # a combination an interrupt left out is a black cell, so the legends still match the grid
        cells = [made[index] if index in made else Image.new(first.mode, first.size)
                 for index in range(2 ** (len(parts) - 1))]
        grid = image_grid(cells, rows=1 << ((len(parts) - 1) // 2))
        grid = draw_prompt_matrix(grid, first.width, first.height, parts, args[MARGIN_SIZE])
        infotext = outcome.infotexts[0] if outcome.infotexts else ""
        grid.info["parameters"] = infotext
        outcome.extra_images = [grid, *outcome.extra_images]
        outcome.infotexts = [infotext, *outcome.infotexts]
        outcome.grids_to_save = [*outcome.grids_to_save, (grid, infotext, "prompt_matrix")]


__all__ = ["PromptMatrix", "MatrixCell", "matrix_prompts", "draw_prompt_matrix"]
