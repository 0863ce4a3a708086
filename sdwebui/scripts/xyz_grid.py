"""A1111's "X/Y/Z plot" (`scripts/xyz_grid.py`, v1.10): one job makes an image for every combination of up to three
axes of values (seeds, steps, CFG, samplers, checkpoints, prompt search/replace, ...) and returns a grid per Z value
with legends, and the grid of those grids first.

Arguments, in A1111's order (what `script_args` carries; clients send them by position):

    x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values, z_values_dropdown,
    draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z,
    margin_size, csv_mode

An axis type is an index into A1111's axis list *for the tab* (`AXES`, filtered as A1111's `current_axis_options`:
txt2img leaves out the img2img-only axes and the other way round). Values are A1111's syntax: a CSV list
(`1, 2, "a, b"`), integer ranges `1-5`, `1-5 (+2)`, `10-1 (-3)`, counted ranges `1-10 [5]` (numpy's linspace, as
A1111), the same for floats (`0.5-1.5 (+0.25)`, `1-2 [3]`); Prompt S/R replaces its first value by each value in
the prompt and negative prompt; Prompt order tries every order of its values. List axes (samplers, checkpoints,
VAEs, ...) take `x_values_dropdown` unless `csv_mode` is on.

Where we differ from A1111, and why:
- A value that does not parse, a value out of the parameter's range, an unknown sampler, schedule, checkpoint,
  VAE, upscaler or style, or more than `MAX_CELLS` cells is a 422 naming `script_args[i]` before anything runs
  (A1111 raises in the middle of the job, or prints and falls back to "Automatic" for an unknown VAE).
- A list axis whose dropdown is empty takes its text values even without `csv_mode` (A1111 would run an empty
  axis): API clients often send only the text.
- Axes of features this server does not have (UniPC order, extra noise, beta schedule α/β, ...), or that cannot
  change per cell here (FP8 mode: a load-time setting), are refused with a 422, rather than accepted and ignored.
- A1111 sets the batch size to 1 when "Show grid in gallery" is off; we keep the job's batch size. A cell of
  several images shows their grid, as A1111's does with the setting on (its default).
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.grids import GridAnnotation, draw_grid_annotations, grid_rows, image_grid
from sdwebui.pipelines.infotext import add_params
from sdwebui.pipelines.params import SEED_MAX, spec_of
from sdwebui.pipelines.script_ui import ScriptUI
from sdwebui.pipelines.scripts import GenerationTask, JobOutcome, Script, ScriptArg

TITLE = "X/Y/Z plot"
ARGS = "script_args"
MAX_CELLS = 4096
"""At most this many cells (A1111 bounds the grid's megapixels; a job of thousands of runs is a mistake)."""
PERMUTATIONS = "permutations"
"""The kind of the Prompt order axis (A1111's `str_permutations`): every order of the values given."""

# Positions of the arguments (A1111's order).
X_TYPE, X_VALUES, X_DROPDOWN, Y_TYPE, Y_VALUES, Y_DROPDOWN, Z_TYPE, Z_VALUES, Z_DROPDOWN = range(9)
(DRAW_LEGEND, INCLUDE_LONE_IMAGES, INCLUDE_SUB_GRIDS, NO_FIXED_SEEDS, VARY_SEEDS_X, VARY_SEEDS_Y, VARY_SEEDS_Z,
 MARGIN_SIZE, CSV_MODE) = range(9, 18)


# ---- how an axis changes a cell --------------------------------------------------------------------------------


@dataclass
class Cell:
    """One cell's changes to the job, built by its axes in X, Y, Z order (A1111 copies `p` and applies each)."""

    prompt: str
    negative_prompt: str
    values: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    vae: str | None = None
    styles: list[str] = field(default_factory=list)
    locs: dict[str, tuple] = field(default_factory=dict)
    """Parameter (or "checkpoint", "vae", "styles") -> the script argument that set it, for errors."""
    loc: tuple = (ARGS,)
    """The argument of the axis being applied."""

    def set(self, name: str, value: Any) -> None:
        self.values[name] = value
        self.locs[name] = self.loc


Apply = Callable[[Cell, Any, Sequence[Any]], None]


def set_field(name: str) -> Apply:
    def apply(cell: Cell, value: Any, _values: Sequence[Any]) -> None:
        cell.set(name, value)

    return apply


def apply_prompt_sr(cell: Cell, value: str, values: Sequence[str]) -> None:
    """A1111's `apply_prompt`: the first value is what is searched for, in the prompt and the negative prompt."""
    cell.prompt = cell.prompt.replace(values[0], value)
    cell.negative_prompt = cell.negative_prompt.replace(values[0], value)


def apply_prompt_order(cell: Cell, order: Sequence[str], _values: Sequence[Any]) -> None:
    """A1111's `apply_order`: the tokens are taken out of the prompt and put back in the order given."""
    prompt = cell.prompt
    found = sorted((prompt.find(token), token) for token in order)
    parts = []
    for _, token in found:
        at = prompt.find(token)
        parts.append(prompt[:at])
        prompt = prompt[at + len(token):]
    cell.prompt = "".join(part + order[index] for index, part in enumerate(parts)) + prompt


def apply_checkpoint(cell: Cell, value: str, _values: Sequence[Any]) -> None:
    cell.checkpoint = value
    cell.locs["checkpoint"] = cell.loc


def apply_vae(cell: Cell, value: str, _values: Sequence[Any]) -> None:
    """A1111's `find_vae`: "auto" / "automatic" and "none" in any case are the two special choices."""
    lowered = value.strip().lower()
    cell.vae = "Automatic" if lowered in ("auto", "automatic") else "None" if lowered == "none" else value.strip()
    cell.locs["vae"] = cell.loc


def apply_styles(cell: Cell, value: str, _values: Sequence[Any]) -> None:
    """A1111's `apply_styles`: one value may name several styles, comma-separated."""
    cell.styles.extend(name.strip() for name in value.split(",") if name.strip())
    cell.locs["styles"] = cell.loc


def apply_refiner(cell: Cell, value: str, _values: Sequence[Any]) -> None:
    cell.set("refiner_checkpoint", None if value in ("", "None", "none") else value)


def apply_size(cell: Cell, value: tuple[int, int], _values: Sequence[Any]) -> None:
    cell.set("width", value[0])
    cell.set("height", value[1])


def apply_bool(name: str) -> Apply:
    def apply(cell: Cell, value: str, _values: Sequence[Any]) -> None:
        cell.set(name, value.lower() == "true")

    return apply


def apply_face_restore(cell: Cell, value: str, _values: Sequence[Any]) -> None:
    """A1111's `apply_face_restore`: a restorer's name turns restoration on with that model; true / yes / y / 1
    turn it on with the setting's model; anything else turns it off."""
    models = {"codeformer": "CodeFormer", "gfpgan": "GFPGAN", "restoreformer": "RestoreFormer"}
    wanted = value.strip().lower()
    if wanted in models:
        cell.set("face_restoration_model", models[wanted])
        cell.set("restore_faces", True)
    else:
        cell.set("restore_faces", wanted in ("true", "yes", "y", "1"))


def apply_rng(cell: Cell, value: str, _values: Sequence[Any]) -> None:
    cell.set("rng", value.lower())


# ---- legends --------------------------------------------------------------------------------------------------


def _rounded(value: Any) -> Any:
    return round(value, 8) if isinstance(value, float) else value


def with_label(axis: "Axis", value: Any) -> str:
    return f"{axis.label}: {_rounded(value)}"


def plain(axis: "Axis", value: Any) -> str:
    return str(_rounded(value))


def joined(axis: "Axis", value: Sequence[str]) -> str:
    return ", ".join(value)


def no_label(axis: "Axis", value: Any) -> str:
    return ""


def file_name(axis: "Axis", value: Any) -> str:
    return os.path.basename(str(value))


def size_label(axis: "Axis", value: tuple[int, int]) -> str:
    return f"{axis.label}: {value[0]}x{value[1]}"


# ---- the axes ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One of A1111's `AxisOption`s."""

    label: str
    kind: Any
    """int, float, str or PERMUTATIONS: how the values are parsed (A1111's `type`)."""
    apply: Apply | None
    only: str | None = None
    """"txt2img" / "img2img": A1111's `AxisOptionTxt2Img` / `AxisOptionImg2Img` (listed in that tab only)."""
    format: Callable[["Axis", Any], str] = with_label
    choices: str | tuple[str, ...] | None = None
    """The values a list axis offers: a fixed tuple, or the name of a list the UI fills from the server
    ("samplers", "checkpoints", ...; see `CATALOGS`)."""
    cost: float = 0.0
    """A1111's cost: the costliest axis (checkpoint, VAE) is the outer loop, so models switch least."""
    param: str | None = None
    """The parameter each value is checked against (its declared bounds)."""
    missing: str = ""
    """Why this server has no such axis (a 422 when it is chosen)."""
    tab_missing: tuple[str, str] | None = None
    """(tab, reason): the axis exists in A1111 for that tab but the feature is not in our pipeline for it."""


def _field(label: str, kind: type, name: str, **more: Any) -> Axis:
    return Axis(label, kind, set_field(name), param=name, **more)


def _missing(label: str, kind: type, reason: str, **more: Any) -> Axis:
    return Axis(label, kind, None, missing=reason, **more)


CATALOGS = ("samplers", "checkpoints", "schedulers", "hires_upscalers", "vaes", "styles", "refiner_checkpoints")
"""Lists a list axis can name; the UI asks the server for them (`ScriptUI.choices`)."""
BOOLEAN_CHOICES = ("False", "True")

AXES: tuple[Axis, ...] = (
    Axis("Nothing", str, None, format=no_label),
    _field("Seed", int, "seed"),
    _field("Var. seed", int, "subseed"),
    _field("Var. strength", float, "subseed_strength"),
    _field("Steps", int, "steps"),
    _field("Hires steps", int, "hr_second_pass_steps", only="txt2img"),
    _field("CFG Scale", float, "cfg_scale"),
    _field("Image CFG Scale", float, "image_cfg_scale", only="img2img"),
    Axis("Prompt S/R", str, apply_prompt_sr, format=plain),
    Axis("Prompt order", PERMUTATIONS, apply_prompt_order, format=joined),
    Axis("Sampler", str, set_field("sampler"), only="txt2img", format=plain, choices="samplers", param="sampler"),
    Axis("Hires sampler", str, set_field("hr_sampler"), only="txt2img", choices="samplers", param="hr_sampler"),
    Axis("Sampler", str, set_field("sampler"), only="img2img", format=plain, choices="samplers", param="sampler"),
    Axis("Checkpoint name", str, apply_checkpoint, format=file_name, choices="checkpoints", cost=1.0),
    _missing("Negative Guidance minimum sigma", float, "this server does not skip the negative prompt at low "
             "sigmas (A1111's s_min_uncond)"),
    _field("Sigma Churn", float, "s_churn"),
    _field("Sigma min", float, "s_tmin"),
    _field("Sigma max", float, "s_tmax"),
    _field("Sigma noise", float, "s_noise"),
    Axis("Schedule type", str, set_field("scheduler"), choices="schedulers", param="scheduler"),
    _field("Schedule min sigma", float, "sigma_min"),
    _field("Schedule max sigma", float, "sigma_max"),
    _field("Schedule rho", float, "rho"),
    _missing("Beta schedule alpha", float, "the Beta schedule's alpha is not a parameter here (it is fixed at 0.6)"),
    _missing("Beta schedule beta", float, "the Beta schedule's beta is not a parameter here (it is fixed at 0.6)"),
    _field("Eta", float, "eta"),
    _field("Clip skip", int, "clip_skip"),
    _field("Denoising", float, "denoising_strength"),
    _field("Initial noise multiplier", float, "initial_noise_multiplier",
           tab_missing=("txt2img", "the noise multiplier applies to img2img only")),
    _missing("Extra noise", float, "img2img extra noise is not implemented here"),
    Axis("Hires upscaler", str, set_field("hr_upscaler"), only="txt2img", choices="hires_upscalers",
         param="hr_upscaler"),
    _field("Cond. Image Mask Weight", float, "inpainting_mask_weight", only="img2img"),
    Axis("VAE", str, apply_vae, choices="vaes", cost=0.7),
    Axis("Styles", str, apply_styles, choices="styles"),
    _missing("UniPC Order", int, "the UniPC order is not a parameter here (A1111's setting uni_pc_order)",
             cost=0.5),
    Axis("Face restore", str, apply_face_restore, format=plain),
    _field("Token merging ratio", float, "token_merging_ratio"),
    _field("Token merging ratio high-res", float, "token_merging_ratio_hr",
           tab_missing=("img2img", "img2img has no high-res pass here")),
    Axis("Always discard next-to-last sigma", str, apply_bool("discard_penultimate_sigma"), choices=BOOLEAN_CHOICES),
    _missing("SGM noise multiplier", str, "the SGM noise multiplier is not available in this server",
             choices=BOOLEAN_CHOICES),
    Axis("Refiner checkpoint", str, apply_refiner, format=file_name, choices="refiner_checkpoints", cost=1.0,
         tab_missing=("img2img", "img2img has no refiner here")),
    _field("Refiner switch at", float, "refiner_switch_at", tab_missing=("img2img", "img2img has no refiner here")),
    Axis("RNG source", str, apply_rng, choices=("GPU", "CPU", "NV")),
    _missing("FP8 mode", str, "FP8 weight storage is chosen when a checkpoint is loaded (setting fp8_storage), not "
             "per cell", cost=0.9,
             choices=("Disable", "Enable for SDXL", "Enable")),
    Axis("Size", str, apply_size, format=size_label),
)
"""A1111 1.10's `axis_options`, in its order (indices into `axes_for(tab)` are what clients send)."""


def axes_for(tab: str) -> tuple[Axis, ...]:
    """A1111's `current_axis_options`: every axis but the other tab's only ones."""
    return tuple(axis for axis in AXES if axis.only in (None, tab))


# ---- values ----------------------------------------------------------------------------------------------------

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:.\d*)?"  # A1111's pattern (its "." matches any character; so does ours)
RE_RANGE = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
RE_RANGE_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
RE_RANGE_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[(\d+)\s*])?\s*")
RE_RANGE_COUNT_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")
RE_SIZE = re.compile(r"\s*(\d+)\s*x\s*(\d+)\s*")


def csv_values(text: str) -> list[str]:
    """A1111's `csv_string_to_list_strip`: CSV (quotes protect commas), every value stripped."""
    return [value.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for value in row]


def csv_text(values: Sequence[str]) -> str:
    """A1111's `list_to_csv_string` (what the infotext's "X Values" holds for a dropdown axis)."""
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue().strip()


def _number(text: str, kind: type) -> Any:
    return kind(text.replace(" ", ""))


def _linspace(start: float, stop: float, count: int) -> list[float]:
    import numpy as np  # numpy's rounding, as A1111's values (numpy comes with torch; not at start-up)

    return np.linspace(start=start, stop=stop, num=count).tolist()


def _arange(start: float, stop: float, step: float) -> list[float]:
    import numpy as np

    return np.arange(start, stop, step).tolist()


def expand_numbers(items: Sequence[str], kind: type) -> list[Any]:
    """A1111's range syntax: "1-5" (inclusive), "1-5 (+2)" (a step), "1-10 [4]" (a count, numpy's linspace;
    integers truncated); other items are single numbers. ValueError names the item that is not a number."""
    out: list[Any] = []
    ranged, counted = (RE_RANGE, RE_RANGE_COUNT) if kind is int else (RE_RANGE_FLOAT, RE_RANGE_COUNT_FLOAT)
    for item in items:
        if item.strip() == "":
            continue
        try:
            if (match := ranged.fullmatch(item)) is not None:
                start, end = _number(match.group(1), kind), _number(match.group(2), kind)
                step = _number(match.group(3), kind) if match.group(3) is not None else 1
                if step == 0:
                    raise ValueError(f"{item!r}: the step must not be 0")
                count = math.ceil(((end + 1 if kind is int else end + step) - start) / step)
                _check_count(count, item)
                if kind is int:
                    out.extend(range(start, end + 1, step))
                else:
                    out.extend(_arange(start, end + step, step))
            elif (match := counted.fullmatch(item)) is not None:
                start, end = _number(match.group(1), kind), _number(match.group(2), kind)
                count = int(_number(match.group(3), float)) if match.group(3) is not None else 1
                _check_count(count, item)
                values = _linspace(start, end, count)
                out.extend(int(value) for value in values) if kind is int else out.extend(values)
            else:
                out.append(kind(item))
        except ValueError as error:
            if "must" in str(error) or "more than" in str(error):
                raise
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"{item!r} is not {what} or a range (1-5, 1-5 (+2), 1-10 [5])") from None
    return out


def _check_count(count: float, item: str) -> None:
    if count > MAX_CELLS:
        raise ValueError(f"{item!r} makes more than {MAX_CELLS} values")


@dataclass(frozen=True)
class AxisChoice:
    """An axis as a request chose it: its type, its values (parsed and checked), its text for the infotext."""

    axis: Axis
    values: tuple
    text: str
    """A1111's `x_values` as written into the infotext (a dropdown axis: its values as CSV)."""
    type_loc: tuple
    values_loc: tuple

    @property
    def labels(self) -> list[str]:
        return [self.axis.format(self.axis, value) for value in self.values]


def parse_axis(tab: str, params_cls: type, base_prompt: tuple[str, str], name: str, type_index: int, text: str,
               dropdown: Sequence[str], csv_mode: bool, arg: int) -> AxisChoice:
    """One axis of a request (`name` "X", "Y" or "Z"; its type at `script_args[arg]`), A1111's `process_axis`:
    the values parsed, expanded and checked. ParamError at the argument that is wrong."""
    axes = axes_for(tab)
    type_loc, text_loc, dropdown_loc = (ARGS, arg), (ARGS, arg + 1), (ARGS, arg + 2)
    if not 0 <= type_index < len(axes):
        raise ParamError(type_loc, f"{name} type: {type_index} is not an axis type of {tab} "
                                   f"(0 to {len(axes) - 1})")
    axis = axes[type_index]
    if axis.missing or axis.tab_missing and axis.tab_missing[0] == tab:
        reason = axis.missing or axis.tab_missing[1]
        raise ParamError(type_loc, f"{name} type: {axis.label} is not available here ({reason})")
    if axis.label == "Nothing":
        return AxisChoice(axis, (0,), "", type_loc, text_loc)
    use_dropdown = axis.choices is not None and not csv_mode and bool(dropdown)
    values_loc = dropdown_loc if use_dropdown else text_loc
    items = list(dropdown) if use_dropdown else csv_values(text)
    if use_dropdown:
        text = csv_text(items)

    def fail(message: str) -> ParamError:
        return ParamError(values_loc, f"{name} values: {message}")

    try:
        if axis.kind in (int, float):
            values: list[Any] = expand_numbers(items, axis.kind)
        elif axis.kind == PERMUTATIONS:
            if math.factorial(len(items)) > MAX_CELLS:
                raise ValueError(f"{len(items)} values have {math.factorial(len(items))} orders, more than "
                                 f"{MAX_CELLS}")
            values = list(permutations(items))
        else:
            values = items  # text values are kept as given, "" too (a Styles value "" is "no style")
    except ValueError as error:
        raise fail(str(error)) from None
    if not values:
        raise fail(f"no values for {axis.label}")
    checked = [_checked_value(axis, value, params_cls, base_prompt, values, fail) for value in values]
    return AxisChoice(axis, tuple(checked), text, type_loc, values_loc)


def _checked_value(axis: Axis, value: Any, params_cls: type, base_prompt: tuple[str, str], values: list,
                   fail: Callable[[str], ParamError]) -> Any:
    """A value as the axis applies it, or `fail(message)`: in the parameter's bounds, a sampler or schedule that
    exists, a Prompt S/R search text that is in the prompt (A1111's `confirm` functions, before the job)."""
    label = axis.label
    if label == "Prompt S/R":
        if values[0] not in base_prompt[0] and values[0] not in base_prompt[1]:
            raise fail(f"Prompt S/R did not find {values[0]} in prompt or negative prompt.")
        return value
    if label == "Size":
        match = RE_SIZE.fullmatch(value)
        if match is None:
            raise fail(f"{value!r} is not a size (WIDTHxHEIGHT, e.g. 512x768)")
        size = int(match.group(1)), int(match.group(2))
        for name, side in zip(("width", "height"), size):
            try:
                spec_of(params_cls, name).check(side)
            except ParamError as error:
                raise fail(f"{value}: {name} {error.message}") from None
        return size
    if isinstance(axis.choices, tuple):
        found = next((choice for choice in axis.choices if choice.lower() == value.lower()), None)
        if found is None:
            raise fail(f"{value!r} is not one of {', '.join(axis.choices)}")
        return found
    if axis.param in ("sampler", "hr_sampler"):
        from sdwebui.core.samplers import resolve_sampling  # the registry imports torch

        try:
            resolve_sampling(value, "Automatic")
        except ParamError:
            raise fail(f"Unknown sampler: {value}") from None
        return value
    if axis.param == "scheduler":
        from sdwebui.core.schedules import find_schedule  # torch

        try:
            return find_schedule(value).label
        except KeyError:
            raise fail(f"Unknown schedule type: {value}") from None
    if label in ("Seed", "Var. seed") and value in (-1, None):
        return value  # fixed later (or kept, "Keep -1 for seeds")
    if axis.param is not None and axis.kind in (int, float):
        try:
            spec_of(params_cls, axis.param).check(value)
        except ParamError as error:
            raise fail(f"{label} {_rounded(value)}: {error.message}") from None
    return value


# ---- the plan: cells, their order, and what after_job needs -----------------------------------------------------


@dataclass(frozen=True, eq=False)
class Plan:
    """A job's axes as run (seeds fixed), shared by its tasks so `after_job` draws what was run."""

    x: AxisChoice
    y: AxisChoice
    z: AxisChoice
    x_labels: tuple[str, ...]
    y_labels: tuple[str, ...]
    z_labels: tuple[str, ...]
    sub_grid_params: dict
    """Infotext entries of each Z's grid: Script, X Type, X Values (Fixed X Values), Y ... (A1111's)."""
    grid_params: dict
    """...and of the grid of grids: the same and the Z entries."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.x.values), len(self.y.values), len(self.z.values)

    def index(self, ix: int, iy: int, iz: int) -> int:
        nx, ny, _ = self.shape
        return ix + iy * nx + iz * nx * ny


@dataclass(frozen=True)
class CellRef:
    """`GenerationTask.script_data` of an X/Y/Z task: its plan and its cell."""

    plan: Plan
    ix: int
    iy: int
    iz: int


def processing_order(costs: tuple[float, float, float], shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """The cells in the order A1111 runs them: the costliest axis outermost (checkpoints, then VAEs switch as
    seldom as can be), then the next; by default Z, then Y, then X (the grid's reading order)."""
    x, y, z = costs
    first, second = "z", "y"
    if x > y and x > z:
        first, second = "x", "y" if y > z else "z"
    elif y > x and y > z:
        first, second = "y", "x" if x > z else "z"
    elif z > x and z > y:
        first, second = "z", "x" if x > y else "y"
    third = next(name for name in "xyz" if name not in (first, second))
    sizes = dict(zip("xyz", shape))
    order = []
    for a in range(sizes[first]):
        for b in range(sizes[second]):
            for c in range(sizes[third]):
                where = {first: a, second: b, third: c}
                order.append((where["x"], where["y"], where["z"]))
    return order


def _fixed_seeds(choice: AxisChoice) -> AxisChoice:
    """A1111's `fix_axis_seeds`: -1 on a Seed / Var. seed axis becomes a random seed."""
    if choice.axis.label not in ("Seed", "Var. seed"):
        return choice
    values = tuple(random.randrange(4294967294) if value in (None, -1) else value for value in choice.values)
    return AxisChoice(choice.axis, values, choice.text, choice.type_loc, choice.values_loc)


def _axis_params(name: str, choice: AxisChoice, fixed_seeds: bool) -> dict:
    if choice.axis.label == "Nothing":
        return {}
    entries = {f"{name} Type": choice.axis.label, f"{name} Values": choice.text}
    if choice.axis.label in ("Seed", "Var. seed") and fixed_seeds:
        entries[f"Fixed {name} Values"] = ", ".join(str(value) for value in choice.values)
    return entries


class XYZPlot(Script):
    title = TITLE
    description = ("An image for every combination of the X, Y and Z values, in a grid per Z value with legends. "
                   "Values: lists (1, 2, 3), ranges (1-5, 1-5 (+2), 1-10 [5]).")
    args = (
        ScriptArg("X type", int, 1, minimum=0, maximum=len(AXES) - 1),
        ScriptArg("X values", str, ""),
        ScriptArg("X values", list, ()),
        ScriptArg("Y type", int, 0, minimum=0, maximum=len(AXES) - 1),
        ScriptArg("Y values", str, ""),
        ScriptArg("Y values", list, ()),
        ScriptArg("Z type", int, 0, minimum=0, maximum=len(AXES) - 1),
        ScriptArg("Z values", str, ""),
        ScriptArg("Z values", list, ()),
        ScriptArg("Draw legend", bool, True),
        ScriptArg("Include Sub Images", bool, False),
        ScriptArg("Include Sub Grids", bool, False),
        ScriptArg("Keep -1 for seeds", bool, False),
        ScriptArg("Vary seeds for X", bool, False, help="Use different seeds for images along X axis."),
        ScriptArg("Vary seeds for Y", bool, False, help="Use different seeds for images along Y axis."),
        ScriptArg("Vary seeds for Z", bool, False, help="Use different seeds for images along Z axis."),
        ScriptArg("Grid margins (px)", int, 0, minimum=0, maximum=500, step=2),
        ScriptArg("Use text inputs instead of dropdowns", bool, False),
    )

    # ---- before the job: one task per cell ----------------------------------------------------------------
    def before_job(self, task: GenerationTask, args: tuple) -> list[GenerationTask]:
        base = task.params
        tab = base.KIND or "txt2img"
        csv_mode, no_fixed_seeds = args[CSV_MODE], args[NO_FIXED_SEEDS]
        prompts = (base.prompt, base.negative_prompt)
        choices = [parse_axis(tab, type(base), prompts, name, args[at], args[at + 1], args[at + 2], csv_mode, at)
                   for name, at in (("X", X_TYPE), ("Y", Y_TYPE), ("Z", Z_TYPE))]
        cells = math.prod(len(choice.values) for choice in choices)
        if cells > MAX_CELLS:
            last = next(choice for choice in reversed(choices) if choice.axis.label != "Nothing")
            raise ParamError(last.values_loc, f"{' x '.join(str(len(c.values)) for c in choices)} = {cells} cells, "
                                              f"more than {MAX_CELLS}")
        if not no_fixed_seeds:  # A1111's fix_seed(p): one seed for the whole plot
            base = base.replace(seed=_random_if_unset(base.seed), subseed=_random_if_unset(base.subseed))
            choices = [_fixed_seeds(choice) for choice in choices]
        x, y, z = choices
        sub_params = {"Script": TITLE, **_axis_params("X", x, not no_fixed_seeds),
                      **_axis_params("Y", y, not no_fixed_seeds)}
        plan = Plan(x, y, z, tuple(x.labels), tuple(y.labels), tuple(z.labels), sub_params,
                    {**sub_params, **_axis_params("Z", z, not no_fixed_seeds)})
        order = processing_order((x.axis.cost, y.axis.cost, z.axis.cost), plan.shape)
        return [self._cell_task(task, base, plan, ix, iy, iz, args) for ix, iy, iz in order]

    def _cell_task(self, task: GenerationTask, base, plan: Plan, ix: int, iy: int, iz: int,
                   args: tuple) -> GenerationTask:
        cell = Cell(base.prompt, base.negative_prompt)
        picked = ((plan.x, ix), (plan.y, iy), (plan.z, iz))
        for choice, index in picked:
            if choice.axis.apply is not None:
                cell.loc = choice.values_loc
                choice.axis.apply(cell, choice.values[index], choice.values)
        seed = cell.values.get("seed", base.seed)
        nx, ny, _ = plan.shape
        x_dim = nx if args[VARY_SEEDS_X] else 1
        y_dim = ny if args[VARY_SEEDS_Y] else 1
        seed += (ix if args[VARY_SEEDS_X] else 0) + (iy * x_dim if args[VARY_SEEDS_Y] else 0) + \
            (iz * x_dim * y_dim if args[VARY_SEEDS_Z] else 0)
        values = {**cell.values, "prompt": cell.prompt, "negative_prompt": cell.negative_prompt,
                  "seed": min(seed, SEED_MAX)}
        label = ", ".join(f"{name}={choice.labels[index] or choice.values[index]}"
                          for name, (choice, index) in zip("xyz", picked) if choice.axis.label != "Nothing")
        if "sampler" in values or "scheduler" in values:
            values["sampler"], values["scheduler"] = _sampling(values.get("sampler", base.sampler),
                                                               values.get("scheduler", base.scheduler), cell.locs,
                                                               label)
        try:
            params = base.replace(**values)
        except ParamError as error:
            raise ParamError(cell.locs.get(error.field, (ARGS,)), f"{label}: {error.message}") from None
        return GenerationTask(
            params, task.init_images, task.mask, checkpoint=cell.checkpoint or task.checkpoint, label=label,
            vae=cell.vae or task.vae, styles=(*task.styles, *cell.styles),
            arg_locs={**task.arg_locs, **{k: v for k, v in cell.locs.items() if k in SERVER_NAMES}},
            script_data=CellRef(plan, ix, iy, iz),
        )

    # ---- the UI: A1111's layout ---------------------------------------------------------------------------
    def build_ui(self, ui: ScriptUI) -> list:
        """A1111's controls: per axis a type dropdown, a values box (or, for a list axis, a multi-select of what
        is installed) and the fill button that puts every choice in; the options; the swap buttons."""
        import gradio as gr  # only the web UI calls this; the server never imports Gradio

        axes = axes_for(ui.tab)
        labels = [axis.label for axis in axes]

        def choices_of(axis_type) -> list[str] | None:
            axis = axes[int(axis_type or 0)]
            if axis.choices is None:
                return None
            return list(axis.choices) if isinstance(axis.choices, tuple) else ui.choices(axis.choices)

        rows = []
        for name, default in (("x", 1), ("y", 0), ("z", 0)):
            with gr.Row():
                kind = gr.Dropdown(labels, value=labels[default], type="index", label=f"{name.upper()} type",
                                   elem_id=ui.elem_id(f"{name}_type"), scale=2)
                values = gr.Textbox(label=f"{name.upper()} values", lines=1, elem_id=ui.elem_id(f"{name}_values"),
                                    scale=5)
                dropdown = gr.Dropdown([], value=[], label=f"{name.upper()} values", multiselect=True,
                                       visible=False, elem_id=ui.elem_id(f"{name}_values_dropdown"), scale=5)
                fill = ui.icon_button("fill", "Fill values", f"fill_{name}", visible=False, scale=0, min_width=40)
            rows.append((kind, values, dropdown, fill))
        with gr.Row(variant="compact"):
            with gr.Column():
                draw_legend = gr.Checkbox(label="Draw legend", value=True, elem_id=ui.elem_id("draw_legend"))
                no_fixed_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False,
                                             elem_id=ui.elem_id("no_fixed_seeds"))
                with gr.Row():
                    vary = [gr.Checkbox(label=f"Vary seeds for {name}", value=False, min_width=80,
                                        info=f"Use different seeds for images along {name} axis.",
                                        elem_id=ui.elem_id(f"vary_seeds_{name.lower()}")) for name in "XYZ"]
            with gr.Column():
                include_lone_images = gr.Checkbox(label="Include Sub Images", value=False,
                                                  elem_id=ui.elem_id("include_lone_images"))
                include_sub_grids = gr.Checkbox(label="Include Sub Grids", value=False,
                                                elem_id=ui.elem_id("include_sub_grids"))
                csv_mode = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                       elem_id=ui.elem_id("csv_mode"))
            with gr.Column():
                margin_size = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)",
                                        elem_id=ui.elem_id("margin_size"))
        with gr.Row(variant="compact"):
            swaps = [gr.Button(f"Swap {a}/{b} axes", size="sm", elem_id=ui.elem_id(f"swap_{a}{b}".lower()))
                     for a, b in (("X", "Y"), ("Y", "Z"), ("X", "Z"))]

        def swap(type_a, values_a, dropdown_a, type_b, values_b, dropdown_b):
            return labels[int(type_b or 0)], values_b, dropdown_b, labels[int(type_a or 0)], values_a, dropdown_a

        for button, (a, b) in zip(swaps, ((0, 1), (1, 2), (0, 2))):
            both = [*rows[a][:3], *rows[b][:3]]
            button.click(swap, both, both, show_progress="hidden", queue=False)

        def fill(axis_type, csv):
            found = choices_of(axis_type)
            if not found:
                return gr.update(), gr.update()
            return (csv_text(found), gr.update()) if csv else (gr.update(), gr.update(choices=found, value=found))

        def select_axis(axis_type, text, picked, csv):
            """A1111's `select_axis`: a list axis shows its dropdown (or, in text mode, its values as CSV); what
            was entered carries over where it is one of the new axis's choices."""
            found = choices_of(axis_type)
            converted = {}  # the values box is written only when its text moves to the dropdown or back: this
            # answer may arrive after the user has typed into it
            if found is not None:
                if csv and picked:
                    converted = {"value": csv_text([value for value in picked if value in found])}
                    picked = []
                elif not csv and text:
                    picked, converted = [value for value in csv_values(text) if value in found], {"value": ""}
            listed = found is not None
            return (gr.update(visible=listed), gr.update(visible=not listed or csv, **converted),
                    gr.update(choices=found or [], visible=listed and not csv,
                              value=[value for value in picked or [] if value in (found or [])]))

        for kind, values, dropdown, fill_button in rows:
            fill_button.click(fill, [kind, csv_mode], [values, dropdown], show_progress="hidden", queue=False)
            kind.change(select_axis, [kind, values, dropdown, csv_mode], [fill_button, values, dropdown],
                        show_progress="hidden", queue=False)
            csv_mode.change(select_axis, [kind, values, dropdown, csv_mode], [fill_button, values, dropdown],
                            show_progress="hidden", queue=False)

        (x_type, x_values, x_dropdown, _), (y_type, y_values, y_dropdown, _), (z_type, z_values, z_dropdown, _) = rows
        return [x_type, x_values, x_dropdown, y_type, y_values, y_dropdown, z_type, z_values, z_dropdown,
                draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, *vary, margin_size, csv_mode]

    # ---- after the job: the grids -------------------------------------------------------------------------
    def after_job(self, outcome: JobOutcome, args: tuple) -> None:
        outcome.make_grid = False  # the plot is the grid
        runs = _cells_by_plan(outcome)
        if not runs:
            return
        grids, rest, grid_infotexts, rest_infotexts = [], [], [], []
        seeds, subseeds, prompts, negatives, to_save = [], [], [], [], []
        for plan, cells in runs.items():
            drawn = _draw_plan(plan, cells, outcome, args)
            if drawn is None:
                continue
            grids.append(drawn.grid)
            grid_infotexts.append(drawn.grid_infotext)
            to_save.append((drawn.grid, drawn.grid_infotext, "xyz_grid"))
            if args[INCLUDE_SUB_GRIDS]:
                rest.extend(drawn.sub_grids)
                rest_infotexts.extend(drawn.sub_infotexts)
                seeds.extend(drawn.sub_seeds)
                prompts.extend(drawn.sub_prompts)
                if len(drawn.sub_grids) > 1:
                    to_save.extend((grid, info, "xyz_grid") for grid, info in zip(drawn.sub_grids, drawn.sub_infotexts))
            if args[INCLUDE_LONE_IMAGES]:
                rest.extend(drawn.cells)
            rest_infotexts.extend(drawn.cell_infotexts)
            seeds.extend(drawn.cell_seeds)
            subseeds.extend(drawn.cell_subseeds)
            prompts.extend(drawn.cell_prompts)
            negatives.extend(drawn.cell_negatives)
        if not grids:
            return
        # As A1111's Processed: the grid of grids first (index_of_first_image 1), then sub-grids and cells as
        # asked; the infotexts of every cell follow the grids' even when the cells are not returned.
        outcome.extra_images = [*grids, *outcome.extra_images]
        outcome.images = rest
        outcome.infotexts = [*grid_infotexts, *rest_infotexts]
        outcome.seeds, outcome.subseeds, outcome.prompts, outcome.negative_prompts = seeds, subseeds, prompts, negatives
        outcome.grids_to_save = [*outcome.grids_to_save, *to_save]


SERVER_NAMES = ("checkpoint", "vae", "styles", "refiner_checkpoint", "hr_upscaler", "hr_sampler", "restore_faces")
"""What the server resolves for a task (installed files, styles): where each came from is kept for its errors."""


def _random_if_unset(seed: int) -> int:
    return random.randrange(4294967294) if seed == -1 else seed


def _sampling(sampler: str, scheduler: str, locs: dict, label: str) -> tuple[str, str]:
    from sdwebui.core.samplers import resolve_sampling  # the registry imports torch

    try:
        resolved = resolve_sampling(sampler, scheduler)
    except ParamError as error:
        raise ParamError(locs.get(error.field, (ARGS,)), f"{label}: {error.message}") from None
    return resolved.sampler.name, resolved.schedule_label


@dataclass
class _CellRun:
    images: list
    infotexts: list
    seeds: list
    subseeds: list
    prompts: list
    negatives: list


def _cells_by_plan(outcome: JobOutcome) -> dict[Plan, dict[int, _CellRun]]:
    """Each plan's cells that ran (cell index -> its images), from the tasks and how many images each made."""
    runs: dict[Plan, dict[int, _CellRun]] = {}
    at = 0
    for task, count in zip(outcome.tasks, outcome.task_image_counts):
        ref = task.script_data
        part = slice(at, at + count)
        at += count
        if not isinstance(ref, CellRef):
            continue
        cells = runs.setdefault(ref.plan, {})
        if count:
            cells[ref.plan.index(ref.ix, ref.iy, ref.iz)] = _CellRun(
                outcome.images[part], outcome.infotexts[part], outcome.seeds[part], outcome.subseeds[part],
                outcome.prompts[part], outcome.negative_prompts[part])
    return runs


@dataclass
class _Drawn:
    grid: Any
    grid_infotext: str
    sub_grids: list
    sub_infotexts: list
    sub_seeds: list
    sub_prompts: list
    cells: list
    cell_infotexts: list
    cell_seeds: list
    cell_subseeds: list
    cell_prompts: list
    cell_negatives: list


def _draw_plan(plan: Plan, runs: dict[int, _CellRun], outcome: JobOutcome, args: tuple) -> _Drawn | None:
    """A1111's `draw_xyz_grid`: each cell's image (its batch's grid when it made several), a black one for a
    cell that did not run (interrupted), a grid per Z with the X and Y legends, and those grids side by side
    under the Z legends."""
    from PIL import Image

    if not runs:
        return None
    nx, ny, nz = plan.shape
    batch_size = outcome.params.batch_size
    made = {index: run.images[0] if len(run.images) == 1 else
            image_grid(run.images, grid_rows(len(run.images), batch_size)) for index, run in runs.items()}
    first = next(iter(made.values()))
    cells = [made[index] if index in made else Image.new(first.mode, first.size) for index in range(nx * ny * nz)]
    empty = _CellRun([], [""], [None], [None], [""], [""])
    infos = [runs.get(index, empty) for index in range(nx * ny * nz)]
    hor = [[GridAnnotation(label)] for label in plan.x_labels]
    ver = [[GridAnnotation(label)] for label in plan.y_labels]
    titles = [[GridAnnotation(label)] for label in plan.z_labels]
    sub_grids, sub_infotexts = [], []
    for iz in range(nz):
        part = cells[iz * nx * ny:(iz + 1) * nx * ny]
        grid = image_grid(part, rows=ny)
        if args[DRAW_LEGEND]:
            width, height = (max(sides) for sides in zip(*(image.size for image in part)))
            grid = draw_grid_annotations(grid, width, height, hor, ver, args[MARGIN_SIZE])
        sub_grids.append(grid)
        corner = runs.get(plan.index(0, 0, iz)) or next((infos[i] for i in range(iz * nx * ny, (iz + 1) * nx * ny)
                                                        if i in runs), empty)
        sub_infotexts.append(add_params(corner.infotexts[0], plan.sub_grid_params))
    grid = image_grid(sub_grids, rows=1)
    if args[DRAW_LEGEND]:
        width, height = (max(sides) for sides in zip(*(image.size for image in sub_grids)))
        grid = draw_grid_annotations(grid, width, height, titles, [[GridAnnotation()]])
    corner = runs.get(plan.index(0, 0, 0)) or next(iter(runs.values()))
    grid_infotext = add_params(corner.infotexts[0], plan.grid_params)
    grid.info["parameters"] = grid_infotext
    for sub_grid, infotext in zip(sub_grids, sub_infotexts):
        sub_grid.info["parameters"] = infotext
    return _Drawn(
        grid=grid, grid_infotext=grid_infotext, sub_grids=sub_grids, sub_infotexts=sub_infotexts,
        sub_seeds=[infos[iz * nx * ny].seeds[0] for iz in range(nz)],
        sub_prompts=[infos[iz * nx * ny].prompts[0] for iz in range(nz)],
        cells=cells, cell_infotexts=[info.infotexts[0] for info in infos],
        cell_seeds=[info.seeds[0] for info in infos], cell_subseeds=[info.subseeds[0] for info in infos],
        cell_prompts=[info.prompts[0] for info in infos], cell_negatives=[info.negatives[0] for info in infos],
    )


__all__ = ["XYZPlot", "AXES", "axes_for", "parse_axis", "expand_numbers", "csv_values", "csv_text",
           "processing_order", "MAX_CELLS"]
