"""Scripts: the plug-in point for everything that changes how a job runs (A1111's `modules/scripts.py`).

A script declares its arguments once (`ScriptArg`: label, type, default, bounds, choices); the API validates a
request's `script_args` / `alwayson_scripts.NAME.args` against them (a `ParamError` naming `script_args.i`), and
the UI builds its controls from them. A1111's two kinds, with its semantics (clients depend on them):

- *selectable* scripts: at most one per job, chosen by `script_name` (its title, case-insensitive) with
  positional `script_args` (A1111 API `init_script_args`);
- *always-on* scripts: every one runs on every job of its tabs, with the arguments a request gives under
  `alwayson_scripts: {"name": {"args": [...]}}` or its defaults (extra arguments are ignored, as A1111's
  `min(...)` does; a missing tail takes the defaults).

Hooks (all optional; the job runner calls them in order: always-on scripts first, then the selectable one):

    before_job(task, args) -> [tasks]   expand one job into runs (X/Y/Z, prompts from file) or change its
                                        parameters (A1111's `run` for selectable scripts, `before_process`)
    before_batch(batch, args)            change a batch's prompts (A1111's `process_batch`)
    wrap_model_call(model, call, args)   around every UNet call (ControlNet residuals)
    after_batch(batch, args)             post-process decoded images, add infotext (`postprocess_image`)
    after_job(outcome, args)             after every run: grids, summaries (A1111's `postprocess`)

Scripts know nothing of the server: a `GenerationTask` is parameters plus images; the server's runner turns
each task into an engine run (`pipelines.jobs.run_tasks`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.params import GenerationParams

if TYPE_CHECKING:  # annotations only: this module is read by the server at start-up, before torch is imported
    from sdwebui.models.sd_model import SDModel
    from sdwebui.pipelines.context import BatchImages, BatchPrompts, ModelCall

TABS = ("txt2img", "img2img")


@dataclass(frozen=True)
class ScriptArg:
    """One argument of a script, as A1111's `script-info` lists it and the UI shows it."""

    label: str
    kind: type
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    lines: int = 1
    """Text arguments: the height of the UI's text box."""
    help: str = ""

    def check(self, value: Any, loc: tuple) -> Any:
        """`value` as this argument's type, or a ParamError at `loc`. JSON numbers that are whole count as ints,
        and a checkbox may come as 0 / 1 (A1111's UI sends both). A `list` argument is a list of texts (a
        multi-select dropdown: X/Y/Z's `x_values_dropdown`), kept as a tuple so the stored job stays hashable."""
        if self.kind is list:
            if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
                raise ParamError(loc, f"{self.label}: must be a list of texts, got {value!r}")
            if self.choices is not None and (unknown := [item for item in value if item not in self.choices]):
                raise ParamError(loc, f"{self.label}: {', '.join(unknown)} not among {', '.join(self.choices)}")
            return tuple(value)
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ParamError(loc, f"{self.label}: must be true or false, got {value!r}")
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ParamError(loc, f"{self.label}: must be a number, got {value!r}")
            if self.kind is int:
                if float(value) != int(value):
                    raise ParamError(loc, f"{self.label}: must be a whole number, got {value!r}")
                value = int(value)
            low = -math.inf if self.minimum is None else self.minimum
            high = math.inf if self.maximum is None else self.maximum
            if not low <= value <= high:
                raise ParamError(loc, f"{self.label}: must be between {low:g} and {high:g}, got {value!r}")
            return value
        if not isinstance(value, str):
            raise ParamError(loc, f"{self.label}: must be text, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ParamError(loc, f"{self.label}: must be one of {', '.join(self.choices)}, got {value!r}")
        return value

    def info(self) -> dict[str, Any]:
        """A1111's `ScriptArg` (`/sdapi/v1/script-info`)."""
        default = list(self.default) if isinstance(self.default, tuple) else self.default
        return {"label": self.label, "value": default, "minimum": self.minimum, "maximum": self.maximum,
                "step": self.step, "choices": list(self.choices) if self.choices is not None else None}


@dataclass(frozen=True)
class GenerationTask:
    """One run of the engine: its parameters, the images img2img starts from, and the checkpoint when a script
    picks another one for it (a name as a client would give it; the server resolves it)."""

    params: GenerationParams
    init_images: tuple = ()
    mask: Any = None
    checkpoint: str | None = None
    label: str = ""
    """What the task is (for progress text and errors): "line 3", "x=2, y=Euler"."""
    vae: str | None = None
    """The VAE a script picks for this task ("Automatic", "None" or a VAE's name; the server resolves it); None: the
    job's."""
    styles: tuple[str, ...] = ()
    """Styles applied to this task's prompts on top of the job's (the server has the styles files)."""
    arg_locs: Mapping[str, tuple] = field(default_factory=dict)
    """Which script argument gave each name the server resolves ("checkpoint", "vae", "styles",
    "refiner_checkpoint", "hr_checkpoint", "hr_upscaler", "hr_sampler" -> ("script_args", 1)), so a name that is
    not installed is reported where the client wrote it."""
    script_data: Any = None
    """What the script that made this task wants to read back in `after_job` (X/Y/Z: the cell it is)."""

    def with_params(self, **changes: Any) -> "GenerationTask":
        return replace(self, params=self.params.replace(**changes))


@dataclass
class JobOutcome:
    """Every image a job made, in order, with what the API and the UI show of it (A1111's `Processed`)."""

    params: GenerationParams
    """The first run's parameters as run (seed resolved)."""
    images: list = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    extra_images: list = field(default_factory=list)
    """Images that are not generations (grids), shown before the others; `index_of_first_image` counts them."""
    make_grid: bool = True
    """Whether the job's own grid is made (A1111's `do_not_save_grid`: a script that makes its own, or wants
    none, says False in `after_job`)."""
    tasks: list = field(default_factory=list)
    """Every task of the job, in the order they ran (the job runner fills it before `after_job`)."""
    task_image_counts: list[int] = field(default_factory=list)
    """How many images each task made, in task order (the job runner fills it before `after_job`): a task stopped
    by Skip or Interrupt made fewer, and tasks after an interrupt none, so a script can tell which image is whose."""
    grids_to_save: list = field(default_factory=list)
    """(image, infotext, basename) of grids a script made that the server saves to the job's grids folder when
    the grid settings say so (A1111's `xyz_grid-0000.png`)."""


class Script:
    """Base class of a script: a title, arguments, and the hooks it overrides (the others do nothing)."""

    title: ClassVar[str] = ""
    """A1111's `title()`: shown in the UI; the API's `script_name` is matched against it case-insensitively."""
    alwayson: ClassVar[bool] = False
    tabs: ClassVar[tuple[str, ...]] = TABS
    args: ClassVar[tuple[ScriptArg, ...]] = ()
    description: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    """Other names (lower case) `script_name` / `alwayson_scripts` may use (dynamic prompts: its title without the
    version that A1111's extension puts in it)."""

    @property
    def name(self) -> str:
        """A1111's `script.name`: the title in lower case (how `/sdapi/v1/scripts` lists it)."""
        return self.title.lower()

    def before_job(self, task: GenerationTask, args: tuple) -> list[GenerationTask]:
        return [task]

    def before_batch(self, batch: BatchPrompts, args: tuple) -> None:
        return None

    def wrap_model_call(self, model: SDModel, call: ModelCall, args: tuple) -> ModelCall:
        return call

    def check_checkpoint(self, args: tuple, checkpoint: str) -> None:
        """Before the job is queued: raise a ParamError for arguments that cannot work with the checkpoint file a
        task will run on (ControlNet: a model made for another family), as far as the files tell without loading
        anything. Run for each task of the job; the default checks nothing."""
        return None

    def after_batch(self, batch: BatchImages, args: tuple) -> None:
        return None

    def after_job(self, outcome: JobOutcome, args: tuple) -> None:
        return None

    def info(self, tab: str) -> dict[str, Any]:
        """A1111's `ScriptInfo` (`/sdapi/v1/script-info`)."""
        return {"name": self.name, "is_alwayson": self.alwayson, "is_img2img": tab == "img2img",
                "args": [arg.info() for arg in self.args]}


@dataclass(frozen=True)
class ScriptCall:
    """A script and its checked arguments, as a job stores them (JSON-able)."""

    name: str
    args: tuple

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": list(self.args)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ScriptCall":
        return cls(str(data["name"]), tuple(data.get("args") or ()))


class ScriptRegistry:
    """The scripts of an app (built in `app.py`: the built-in ones, later extensions'), looked up by tab."""

    def __init__(self, scripts: Iterable[Script] = ()):
        self._scripts: list[Script] = []
        for script in scripts:
            self.register(script)

    def register(self, script: Script) -> None:
        if not script.title:
            raise ValueError(f"{type(script).__name__} has no title")
        if any(other.name == script.name for other in self._scripts):
            raise ValueError(f"a script named {script.title!r} is already registered")
        self._scripts.append(script)

    def scripts(self, tab: str) -> list[Script]:
        return [script for script in self._scripts if tab in script.tabs]

    def selectable(self, tab: str) -> list[Script]:
        return [script for script in self.scripts(tab) if not script.alwayson]

    def alwayson(self, tab: str) -> list[Script]:
        return [script for script in self.scripts(tab) if script.alwayson]

    def find(self, tab: str, name: str) -> Script | None:
        wanted = name.strip().lower()
        return next((script for script in self.scripts(tab) if script.name == wanted), None) or \
            next((script for script in self.scripts(tab) if wanted in script.aliases), None)

    def check_calls(self, tab: str, script_name: str | None, script_args: Sequence[Any] | None,
                    alwayson: Mapping[str, Any] | None) -> tuple[ScriptCall | None, tuple[ScriptCall, ...]]:
        """A request's scripts, checked: the selectable one (None when `script_name` is empty) and every
        always-on script of the tab with its arguments (the request's, else the defaults). ParamError at
        `script_name`, `script_args.i` or `alwayson_scripts.NAME.args.i`."""
        selected = None
        if script_name:
            script = self.find(tab, script_name)
            if script is None or script.alwayson:
                raise ParamError(("script_name",), f"Script '{script_name}' not found")
            given = list(script_args or [])
            if len(given) > len(script.args):
                raise ParamError(("script_args",), f"{script.title} takes {len(script.args)} arguments, "
                                 f"got {len(given)}")
            selected = ScriptCall(script.name, _checked_args(script, given, ("script_args",)))
        requested = {}
        for name, entry in (alwayson or {}).items():
            script = self.find(tab, name)
            if script is None:
                raise ParamError(("alwayson_scripts", name), f"always on script {name} not found")
            if not script.alwayson:
                raise ParamError(("alwayson_scripts", name),
                                 "Cannot have a selectable script in the always on scripts params")
            args = entry.get("args", []) if isinstance(entry, Mapping) else entry
            if not isinstance(args, (list, tuple)):
                raise ParamError(("alwayson_scripts", name, "args"), "must be a list")
            requested[script.name] = list(args)[: len(script.args)]  # A1111 ignores extra arguments
        calls = tuple(
            ScriptCall(script.name, _checked_args(script, requested.get(script.name, []),
                                                  ("alwayson_scripts", script.name, "args")))
            for script in self.alwayson(tab)
        )
        return selected, calls

    def bind(self, tab: str, selected: ScriptCall | None, alwayson: Sequence[ScriptCall]) -> "BoundScripts":
        """The scripts a stored job asked for, ready to run. A script that is no longer installed is a
        ParamError (the job fails with that message, rather than running differently from what was asked)."""
        bound = []
        for call in (*alwayson, *([selected] if selected else [])):
            script = self.find(tab, call.name)
            if script is None:
                raise ParamError(("script_name",), f"Script '{call.name}' is not installed any more")
            bound.append((script, _checked_args(script, list(call.args), ("script_args",))))
        return BoundScripts(bound)


def _checked_args(script: Script, given: list, loc: tuple) -> tuple:
    values = []
    for index, arg in enumerate(script.args):
        value = given[index] if index < len(given) and given[index] is not None else arg.default
        values.append(arg.check(value, (*loc, index)))
    return tuple(values)


class BoundScripts:
    """A job's scripts with their arguments; also the `GenerationHooks` the engine calls during each run."""

    def __init__(self, bound: Sequence[tuple[Script, tuple]] = (), task: GenerationTask | None = None):
        self.bound = list(bound)
        self.task = task

    def for_task(self, task: GenerationTask) -> "BoundScripts":
        """The same scripts as the hooks of one task's run: its batches carry the task (`BatchPrompts.task`)."""
        return BoundScripts(self.bound, task)

    def __bool__(self) -> bool:
        return bool(self.bound)

    def expand(self, task: GenerationTask) -> list[GenerationTask]:
        """Each script's `before_job` applied to every task the previous ones made."""
        tasks = [task]
        for script, args in self.bound:
            tasks = [expanded for each in tasks for expanded in script.before_job(each, args)]
        return tasks

    def before_batch(self, batch: BatchPrompts) -> None:
        if self.task is not None:
            batch.task = self.task
        for script, args in self.bound:
            script.before_batch(batch, args)

    def wrap_model_call(self, model: SDModel, call: ModelCall) -> ModelCall:
        for script, args in self.bound:
            call = script.wrap_model_call(model, call, args)
        return call

    def after_batch(self, batch: BatchImages) -> None:
        if self.task is not None:
            batch.task = self.task
        for script, args in self.bound:
            script.after_batch(batch, args)

    def after_job(self, outcome: JobOutcome) -> None:
        for script, args in self.bound:
            script.after_job(outcome, args)


__all__ = ["Script", "ScriptArg", "ScriptCall", "ScriptRegistry", "BoundScripts", "GenerationTask", "JobOutcome",
           "TABS"]
