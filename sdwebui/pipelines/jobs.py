"""One job, many runs: the tasks a job's scripts made (or an img2img folder batch) run one after another and
their images are put together as one outcome (A1111's selectable scripts call `process_images` once per variant
and return one `Processed`).

`run_tasks(tasks, run)` calls `run(task, batch_offset)` for each task in order (`batch_offset`: batches done by
the earlier tasks, so progress counts over the whole job) and stops when the job is interrupted; a skipped batch
only ends that batch. The caller (the server's job runner) turns a task into an engine run.

Scripts that drive their job (A1111's `Script.run(p, *args)`: loopback, SD upscale, outpainting) subclass
`JobScript`. Their runs depend on earlier runs' images, so they cannot be listed up front as `before_job` tasks:

    check(task, args, env)             when the job is submitted (no images yet): what needs the app's installed
                                       parts (an upscaler's name) -> ParamError at `script_args.i`
    planned_batches(task, args)        the engine batches `run_job` will run for `task` (A1111's
                                       `state.job_count`): the job's one progress bar counts them
    run_job(task, args, job) -> JobOutcome
                                       the job itself: `job.run(task, save=...)` is one engine run with the job's
                                       progress, previews, Interrupt / Skip, hooks and saving; `job.save(...)`
                                       saves an image the script made (a recombined upscale); `job.interrupted()`

`drive_tasks` runs a `JobScript` over each task of the job (one per image of an img2img folder batch, as A1111
calls `run` per image) with a `TaskRunner`, the `ScriptJob` the server's runner builds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sdwebui.pipelines.scripts import BoundScripts, GenerationTask, JobOutcome, Script

if TYPE_CHECKING:  # annotations only: the server imports this module at start-up, before torch
    from sdwebui.pipelines.sampling import GenerationResult


def total_batches(tasks: Sequence[GenerationTask]) -> int:
    """Batches the whole job runs (its progress bar's length in batches)."""
    return sum(task.params.batch_count for task in tasks)


def run_tasks(tasks: Sequence[GenerationTask], run: Callable[[GenerationTask, int], GenerationResult],
              interrupted: Callable[[], bool]) -> JobOutcome:
    """Run every task and collect their images."""
    outcome: JobOutcome | None = None
    offset = 0
    for task in tasks:
        if interrupted():
            if outcome is not None:
                outcome.interrupted = True
            break
        result = run(task, offset)
        offset += task.params.batch_count
        outcome = add_result(outcome, result)
        if result.interrupted and interrupted():
            break
    if outcome is None:  # interrupted before the first task started
        outcome = JobOutcome(params=tasks[0].params, interrupted=True)
    return outcome


def add_result(outcome: JobOutcome | None, result: GenerationResult) -> JobOutcome:
    """`outcome` with one run's images, seeds, prompts, infotexts and notes appended."""
    if outcome is None:
        outcome = JobOutcome(params=result.params)
    outcome.images.extend(result.images)
    outcome.seeds.extend(result.seeds)
    outcome.subseeds.extend(result.subseeds)
    outcome.prompts.extend(result.prompts)
    outcome.negative_prompts.extend(result.negative_prompts)
    outcome.infotexts.extend(result.infotexts)
    outcome.notes.extend(note for note in result.notes if note not in outcome.notes)
    outcome.interrupted = outcome.interrupted or bool(result.interrupted)
    return outcome


class ScriptEnvironment(Protocol):
    """What the app lends a driving script: its upscalers (`models.upscalers.UpscalerLibrary`: `entries()`,
    `find(name)`), or None where there are none."""

    upscalers: Any


class ScriptJob(ScriptEnvironment, Protocol):
    """What a `JobScript`'s `run_job` is given: the job's engine runs, counted over the whole job."""

    upscale_tile: tuple[int, int]
    """The job's tile size and overlap for upscaler models (settings `ESRGAN_tile`, `ESRGAN_tile_overlap`)."""

    def run(self, task: GenerationTask, *, save: bool = True) -> GenerationResult:
        """One engine run (txt2img or img2img, as the job's kind): the job's scripts' hooks, progress over the
        whole job, previews, Interrupt / Skip; its images are saved as they are decoded unless `save` is False
        (A1111's `do_not_save_samples`). A skipped batch brings no images."""
        ...

    def save(self, images: Sequence[Any], result: GenerationResult, seeds: Sequence[int],
             infotexts: Sequence[str]) -> None:
        """Save and record images the script made itself (as the job saves its samples), with the parameters and
        prompt of `result`, the run they came from."""
        ...

    def grid(self, images: Sequence[Any], rows: int | None, infotext: str, seed: int) -> Any:
        """A grid of `images` that the script makes itself (Loopback's in one row; `rows` None: as the grid
        settings say), saved to the job's grids folder when the grid settings say so; returned when they say
        grids are shown (then the script puts it in `extra_images`), else None. A script that makes its own grid
        sets `make_grid` False."""
        ...

    def interrupted(self) -> bool: ...

    def interrogate(self, image: Any, model: str) -> str:
        """The image's caption from interrogator `model` ("clip", "deepdanbooru"), as `/sdapi/v1/interrogate`
        gives it (Loopback's "Append interrogated prompt")."""
        ...


class JobScript(Script):
    """A selectable script that runs its job itself (see the module docstring)."""

    def check(self, task: GenerationTask, args: tuple, env: ScriptEnvironment) -> None:
        return None

    def planned_batches(self, task: GenerationTask, args: tuple) -> int:
        return task.params.batch_count

    def run_job(self, task: GenerationTask, args: tuple, job: ScriptJob) -> JobOutcome:
        raise NotImplementedError


def job_script(scripts: BoundScripts) -> tuple[JobScript, tuple] | None:
    """The job's driving script and its arguments, if its selectable script is one."""
    return next(((script, args) for script, args in scripts.bound if isinstance(script, JobScript)), None)


class TaskRunner:
    """The `ScriptJob` of a job: `run(task, batch_offset, save)` is the server's engine run; this counts the
    batches done so progress spans the whole job."""

    def __init__(self, run: Callable[[GenerationTask, int, bool], GenerationResult],
                 save: Callable[[Sequence[Any], GenerationResult, Sequence[int], Sequence[str]], None],
                 grid: Callable[[Sequence[Any], int, str, int], Any], interrupted: Callable[[], bool], *,
                 upscalers: Any = None, upscale_tile: tuple[int, int] = (192, 8),
                 interrogate: Callable[[Any, str], str] | None = None):
        self._run, self._save, self._grid, self._interrupted = run, save, grid, interrupted
        self._interrogate = interrogate
        self.upscalers = upscalers
        self.upscale_tile = upscale_tile
        self.batches_done = 0

    def run(self, task: GenerationTask, *, save: bool = True) -> GenerationResult:
        result = self._run(task, self.batches_done, save)
        self.batches_done += task.params.batch_count
        return result

    def save(self, images, result, seeds, infotexts) -> None:
        self._save(images, result, seeds, infotexts)

    def grid(self, images, rows, infotext, seed):
        return self._grid(images, rows, infotext, seed)

    def interrupted(self) -> bool:
        return self._interrupted()

    def interrogate(self, image, model: str) -> str:
        if self._interrogate is None:
            raise RuntimeError("this job has no interrogator")
        return self._interrogate(image, model)


def drive_tasks(tasks: Sequence[GenerationTask], script: JobScript, args: tuple, job: TaskRunner) -> JobOutcome:
    """`script.run_job` over every task, their outcomes put together; stops when the job is interrupted."""
    outcome: JobOutcome | None = None
    for task in tasks:
        if job.interrupted() and outcome is not None:
            outcome.interrupted = True
            break
        part = script.run_job(task, args, job)
        outcome = part if outcome is None else merge_outcomes(outcome, part)
    assert outcome is not None  # a job has at least one task
    return outcome


def merge_outcomes(outcome: JobOutcome, more: JobOutcome) -> JobOutcome:
    for name in ("images", "seeds", "subseeds", "prompts", "negative_prompts", "infotexts", "extra_images"):
        getattr(outcome, name).extend(getattr(more, name))
    outcome.notes.extend(note for note in more.notes if note not in outcome.notes)
    outcome.interrupted = outcome.interrupted or more.interrupted
    outcome.make_grid = outcome.make_grid and more.make_grid
    return outcome


__all__ = ["run_tasks", "add_result", "total_batches", "JobScript", "ScriptJob", "ScriptEnvironment", "TaskRunner",
           "drive_tasks", "job_script", "merge_outcomes"]
