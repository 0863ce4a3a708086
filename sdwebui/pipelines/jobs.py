"""One job, many runs: the tasks a job's scripts made (or an img2img folder batch) run one after another and
their images are put together as one outcome (A1111's selectable scripts call `process_images` once per variant
and return one `Processed`).

`run_tasks(tasks, run)` calls `run(task, batch_offset)` for each task in order (`batch_offset`: batches done by
the earlier tasks, so progress counts over the whole job) and stops when the job is interrupted; a skipped batch
only ends that batch. The caller (the server's job runner) turns a task into an engine run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sdwebui.pipelines.scripts import GenerationTask, JobOutcome

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


__all__ = ["run_tasks", "add_result", "total_batches"]
