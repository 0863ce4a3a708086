"""A1111's "Prompts from file or textbox" (`scripts/prompts_from_file.py`, v1.10): every non-empty line is a job of
its own, either a prompt or command-line style options:

    a red circle on the left
    --prompt "a blue square" --negative_prompt "green" --steps 10 --seed 5 --sampler_name "Euler a"

Arguments, in A1111's order (what `script_args` carries): "Iterate seed every line" (each line's seed is the
previous one's plus batch size x batch count), "Use same random seed for all lines" (a random seed is fixed once
for the whole list), "Insert prompts at the" start/end (a line's prompt goes before/after the tab's prompt when
both are set), and the list itself.

Where we differ: A1111 prints an error and uses a malformed line as a prompt; here a line that starts with `--`
must parse (an unknown option or a bad value is a 422 naming the line), so a typo never silently becomes a
prompt. Options that would pick files or folders (`--outpath_samples`, `--outpath_grids`) or features this server
lacks (`--styles`) are refused the same way; `--sd_model` picks a checkpoint from the
checkpoints folder, as A1111's `override_settings`.
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Callable

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.scripts import GenerationTask, JobOutcome, Script, ScriptArg

ARGS_LOC = "script_args"
PROMPT_TEXT_INDEX = 3


def _bool(text: str) -> bool:
    return text == "true"  # A1111's process_boolean_tag: anything else is false


LINE_OPTIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    # A1111's `prompt_tags`: option -> (our parameter, conversion)
    "prompt": ("prompt", str),
    "negative_prompt": ("negative_prompt", str),
    "seed": ("seed", int),
    "subseed": ("subseed", int),
    "subseed_strength": ("subseed_strength", float),
    "seed_resize_from_h": ("seed_resize_from_h", int),
    "seed_resize_from_w": ("seed_resize_from_w", int),
    "sampler_name": ("sampler", str),
    "sampler_index": ("sampler", int),
    "scheduler": ("scheduler", str),
    "batch_size": ("batch_size", int),
    "n_iter": ("batch_count", int),
    "steps": ("steps", int),
    "cfg_scale": ("cfg_scale", float),
    "width": ("width", int),
    "height": ("height", int),
    "tiling": ("tiling", _bool),
    "restore_faces": ("restore_faces", _bool),
    "sd_model": ("checkpoint", str),
    # Accepted and without effect here, as in A1111's API (no grid is saved; the display prompt is the UI's).
    "prompt_for_display": ("", str),
    "do_not_save_grid": ("", _bool),
    "do_not_save_samples": ("", _bool),
}
REFUSED_OPTIONS = {
    "outpath_samples": "images always go to the outputs folder",
    "outpath_grids": "images always go to the outputs folder",
    "styles": "apply styles with the job's Styles, not per line",
}


def parse_line(line: str) -> dict[str, object]:
    """A1111's `cmdargs`: `--name value` pairs; `--prompt` and `--negative_prompt` take every word up to the next
    option. Returns our parameter names (and "checkpoint"); ValueError with a message naming the option."""
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise ValueError(f"cannot split the line ({error})") from None
    values: dict[str, object] = {}
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("--"):
            raise ValueError(f'expected an option starting with "--", got {word!r}')
        tag = word[2:]
        if position + 1 >= len(words):
            raise ValueError(f"missing a value for {word}")
        if tag in ("prompt", "negative_prompt"):
            position += 1
            parts = []
            while position < len(words) and not words[position].startswith("--"):
                parts.append(words[position])
                position += 1
            values[tag] = " ".join(parts)
            continue
        if tag in REFUSED_OPTIONS:
            raise ValueError(f"{word} is not supported: {REFUSED_OPTIONS[tag]}")
        if tag not in LINE_OPTIONS and tag not in REFUSED_OPTIONS:
            raise ValueError(f"unknown option {word}")
        name, convert = LINE_OPTIONS.get(tag, ("", str))
        try:
            value = convert(words[position + 1])
        except ValueError:
            raise ValueError(f"{word}: not a valid value: {words[position + 1]!r}") from None
        if name:
            values[name] = value
        position += 2
    return values


def line_values(line: str) -> dict[str, object]:
    """A line's values: options when it starts with `--`, else the whole line is the prompt. (A1111 tries options
    for any line containing "--"; a prompt such as "a cat -- a dog" then falls back to being a prompt, as here.)"""
    if line.startswith("--"):
        values = parse_line(line)
    else:
        values = {"prompt": line}
    if isinstance(values.get("sampler"), int):  # --sampler_index: A1111's position in its sampler list
        values["sampler"] = _sampler_by_index(int(values["sampler"]))
    return values


def _canonical_sampling(number: int, sampler: str, scheduler: str) -> tuple[str, str]:
    from sdwebui.core.samplers import resolve_sampling  # the registry imports torch

    try:
        sampling = resolve_sampling(sampler, scheduler)
    except ParamError as error:
        raise ParamError((ARGS_LOC, PROMPT_TEXT_INDEX), f"line {number}: {error}") from None
    return sampling.sampler.name, sampling.schedule_label


def _sampler_by_index(index: int) -> str:
    from sdwebui.core.samplers import SAMPLERS  # the registry imports torch

    names = list(SAMPLERS)
    if not 0 <= index < len(names):
        raise ValueError(f"--sampler_index: {index} is not a sampler number (0 to {len(names) - 1})")
    return names[index]


class PromptsFromFile(Script):
    title = "Prompts from file or textbox"
    description = "Each line is a job: a prompt, or --prompt / --seed / --steps ... options as in A1111."
    args = (
        ScriptArg("Iterate seed every line", bool, False),
        ScriptArg("Use same random seed for all lines", bool, False),
        ScriptArg("Insert prompts at the", str, "start", choices=("start", "end")),
        ScriptArg("List of prompt inputs", str, "", lines=7),
    )

    def before_job(self, task: GenerationTask, args: tuple) -> list[GenerationTask]:
        iterate, same_seed, position, text = args
        lines = [line.strip() for line in text.splitlines()]
        numbered = [(number, line) for number, line in enumerate(lines, start=1) if line]
        if not numbered:
            raise ParamError((ARGS_LOC, PROMPT_TEXT_INDEX), "List of prompt inputs: no prompts (one per line)")
        base = task.params
        seed = base.seed
        if (iterate or same_seed) and seed == -1:
            seed = random.randrange(4294967294)  # A1111: one random seed for the whole list
        tasks = []
        for number, line in numbered:
            tasks.append(self._task(task, number, line, seed, position))
            if iterate:  # A1111 steps by the tab's batch size and count, whatever the line asked for
                seed = seed + base.batch_size * base.batch_count
        return tasks

    def _task(self, task: GenerationTask, number: int, line: str, seed: int, position: str) -> GenerationTask:
        base = task.params
        try:
            values = line_values(line)
        except ValueError as error:
            raise ParamError((ARGS_LOC, PROMPT_TEXT_INDEX), f"line {number}: {error}") from None
        checkpoint = values.pop("checkpoint", None)
        values.setdefault("seed", seed)
        if "sampler" in values or "scheduler" in values:
            values["sampler"], values["scheduler"] = _canonical_sampling(
                number, str(values.get("sampler", base.sampler)), str(values.get("scheduler", base.scheduler)))
        for name in ("prompt", "negative_prompt"):
            own, tab = values.get(name), getattr(base, name)
            if own and tab:
                values[name] = f"{own} {tab}" if position == "start" else f"{tab} {own}"
        try:
            params = base.replace(**values)
        except ParamError as error:
            raise ParamError((ARGS_LOC, PROMPT_TEXT_INDEX), f"line {number}: {error}") from None
        except TypeError as error:  # an option the job type has no parameter for
            raise ParamError((ARGS_LOC, PROMPT_TEXT_INDEX), f"line {number}: {error}") from None
        return GenerationTask(params, task.init_images, task.mask, checkpoint=checkpoint or task.checkpoint,
                              label=f"line {number}")

    def after_job(self, outcome: JobOutcome, args: tuple) -> None:
        outcome.make_grid = False  # A1111: `p.do_not_save_grid = True`


__all__ = ["PromptsFromFile", "parse_line", "line_values"]
