"""A1111's "Loopback" (`scripts/loopback.py`, v1.10), img2img only: each iteration's output is the next one's init
image, with the denoising strength moving from the job's towards "Final denoising strength" along a curve.

Arguments, in A1111's order (what `script_args` carries): loops (1-32), final denoising strength, denoising strength
curve ("Aggressive", "Linear", "Lazy"), append interrogated prompt at each iteration ("None", "CLIP",
"DeepBooru": before each iteration the prompt becomes the job's prompt, ", ", and what `/sdapi/v1/interrogate` says
of that iteration's init image; a 422 naming `script_args[3]` when that interrogator's models are not installed).

As A1111: the seed is fixed once and goes up by one per iteration (across batches too); each iteration is one
image (batch size 1); batch count repeats the whole loop from the original image, keeping every iteration's image
when batch count is 1 and only each loop's last image otherwise; after the first iteration an inpainting job's
masked content becomes "original"; the images are saved as they are made; a grid of them in one row comes first
(when there are several and grids are shown / saved). Each image's infotext has "Final denoising strength" and
"Denoising curve". Skip ends the current loop (with batch count > 1 it then adds no image), Interrupt ends the job.

Where we differ: an iteration stopped by Interrupt keeps its image (it was saved, as in A1111, which leaves it out
of the result); each image keeps its own seed and infotext in the result (A1111 reports the first one's for all).
"""

from __future__ import annotations

import math

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.jobs import JobScript, ScriptEnvironment, ScriptJob, add_result
from sdwebui.pipelines.scripts import GenerationTask, JobOutcome, ScriptArg

CURVES = ("Aggressive", "Linear", "Lazy")
INTERROGATORS = ("None", "CLIP", "DeepBooru")
INTERROGATION_INDEX = 3
INTERROGATOR_MODELS = {"CLIP": ("clip", ("blip", "clip")), "DeepBooru": ("deepdanbooru", ("deepdanbooru",))}
"""The choice -> (the `/interrogate` model, the models it needs)."""


def denoising_strength(loop: int, loops: int, initial: float, final: float, curve: str) -> float:
    """A1111's `calculate_denoising_strength(loop)`: the strength of iteration `loop` (0-based) of `loops`."""
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        strength = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        strength = 1 - math.cos(progress * math.pi * 0.5)
    else:
        strength = progress
    return initial + (final - initial) * strength


class Loopback(JobScript):
    title = "Loopback"
    tabs = ("img2img",)
    description = "Each iteration's image is the next one's input; the denoising strength follows the curve."
    args = (
        ScriptArg("Loops", int, 4, minimum=1, maximum=32, step=1),
        ScriptArg("Final denoising strength", float, 0.5, minimum=0.0, maximum=1.0, step=0.01),
        ScriptArg("Denoising strength curve", str, "Linear", choices=CURVES),
        ScriptArg("Append interrogated prompt at each iteration", str, "None", choices=INTERROGATORS),
    )

    def check(self, task: GenerationTask, args: tuple, env: ScriptEnvironment) -> None:
        choice = args[INTERROGATION_INDEX]
        if choice == "None":
            return
        library = getattr(env, "interrogate_models", None)
        installed = library.installed() if library is not None else {}
        missing = [kind for kind in INTERROGATOR_MODELS[choice][1] if not installed.get(kind)]
        if missing:
            folders = {"blip": "models/BLIP/", "clip": "models/CLIP/", "deepdanbooru": "models/torch_deepdanbooru/"}
            raise ParamError(("script_args", INTERROGATION_INDEX),
                             f"{self.args[INTERROGATION_INDEX].label}: {choice} needs "
                             + " and ".join(f"a {kind} model in {folders[kind]}" for kind in missing))

    def planned_batches(self, task: GenerationTask, args: tuple) -> int:
        return args[0] * task.params.batch_count

    def after_batch(self, batch, args: tuple) -> None:
        batch.infotext["Final denoising strength"] = args[1]
        batch.infotext["Denoising curve"] = args[2]

    def run_job(self, task: GenerationTask, args: tuple, job: ScriptJob) -> JobOutcome:
        from sdwebui.core.noise import fix_seed  # torch: the worker has it by now

        loops, final_strength, curve, interrogator = args
        params = task.params
        original_prompt = params.prompt
        batch_count = params.batch_count
        initial_strength = params.denoising_strength
        seed = fix_seed(params.seed)
        base = task.with_params(seed=seed, subseed=fix_seed(params.subseed), batch_size=1, batch_count=1)
        outcome: JobOutcome | None = None
        history: list = []
        for _ in range(batch_count):
            current = base
            last = None
            skipped = False
            for loop in range(loops):
                current = current.with_params(seed=seed)
                if interrogator != "None":  # A1111: the job's prompt, then what the interrogator sees now
                    caption = job.interrogate(current.init_images[0], INTERROGATOR_MODELS[interrogator][0])
                    current = current.with_params(prompt=f"{original_prompt}, {caption}" if original_prompt
                                                  else caption)
                result = job.run(current)
                seed += 1
                if not result.images:  # Skip: this loop ends here
                    skipped = not job.interrupted()
                    break
                last = result
                if batch_count == 1:
                    outcome = add_result(outcome, result)
                    history.append(result.images[0])
                if job.interrupted() or loop + 1 == loops:
                    break  # (past the last loop the curve leaves 0..1: A1111 computes it and never uses it)
                strength = denoising_strength(loop + 1, loops, initial_strength, final_strength, curve)
                current = GenerationTask(  # masked content "original" from now on, as A1111
                    current.params.replace(denoising_strength=strength, inpainting_fill=1),
                    (result.images[0],), current.mask, checkpoint=current.checkpoint, label=f"loop {loop + 2}")
            if batch_count > 1 and last is not None and not skipped:
                outcome = add_result(outcome, last)
                history.append(last.images[0])
            if job.interrupted():
                break
        if outcome is None:
            outcome = JobOutcome(params=base.params)
        outcome.interrupted = job.interrupted()
        outcome.make_grid = False  # its own grid: one row
        if len(history) > 1:
            grid = job.grid(history, 1, outcome.infotexts[0], outcome.seeds[0])
            if grid is not None:
                outcome.extra_images.insert(0, grid)
                outcome.infotexts.insert(0, outcome.infotexts[0])
        return outcome


__all__ = ["Loopback", "denoising_strength", "CURVES"]
