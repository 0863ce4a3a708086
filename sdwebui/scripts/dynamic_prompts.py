"""Dynamic prompts, as the sd-dynamic-prompts extension (adieyal/sd-dynamic-prompts v2.17.1,
`sd_dynamic_prompts/dynamic_prompting.py`) does it in A1111: an always-on script that resolves `{a|b}`,
`{2$$a|b|c}`, `{2::a|b}` and `__wildcards__` in each image's prompt (the language: `prompts.dynamic`).

- *Random* (the default): each image's prompt and negative prompt are drawn with that image's seed, so the same
  seed gives the same prompt and the images of a batch (seed, seed + 1, ...) differ; with a variation seed every
  image shares one seed and so one prompt (the extension "freezes" the prompt then). "Unlink seed from prompt"
  draws without the seed; "Fixed seed" gives every image the job's seed (one run per image).
- *Combinatorial generation*: every combination of the prompt (crossed with the negative prompt's) is one image
  of the job, at most "Max generations" (0: all; the batch count is then not used), the whole list repeated
  "Combinatorial batches" times; seeds go up by one per image, or by one per repetition with "Fixed seed".

The infotext records each image's resolved prompt and, as the extension writes them, `Template: <prompt as
typed>` and `Negative Template: ...`. The extension writes them only with its "Save template to metadata"
setting; we write them whenever the template changed the prompt, so an image always tells how it was made (and
an image whose prompt had nothing to resolve keeps A1111's plain infotext).

Its arguments are the extension's 18, in its order, so API clients that send them positionally work
(`alwayson_scripts: {"Dynamic Prompts v2.17.1": {"args": [true, false, 1, ...]}}`, or "dynamic prompts").
Magic prompt, I'm feeling lucky, attention grabber, Jinja2 templates and "Don't generate images" need the
extension's models or network access; asking for them is a 422 at that argument. A wildcard with no file is a
422 at `prompt` (or `negative_prompt`) that names it, before the job is queued.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.scripts import GenerationTask, Script, ScriptArg
from sdwebui.prompts.dynamic import DynamicPromptError, Resolver, WildcardLibrary, has_syntax

VERSION = "2.17.1"
"""The extension version whose arguments and title we follow (A1111 lists it as "dynamic prompts v2.17.1")."""
MAX_COMBINATIONS = 10_000
"""At most this many images from one combinatorial job (a job's most batches): more is a 422, not days of work."""

(ENABLED, COMBINATORIAL, COMBINATORIAL_BATCHES, MAGIC_PROMPT, FEELING_LUCKY, ATTENTION_GRABBER, MIN_ATTENTION,
 MAX_ATTENTION, MAGIC_LENGTH, MAGIC_TEMPERATURE, FIXED_SEED, UNLINK_SEED, DISABLE_NEGATIVE, JINJA, NO_IMAGES,
 MAX_GENERATIONS, MAGIC_MODEL, MAGIC_BLOCKLIST) = range(18)
UNSUPPORTED = (MAGIC_PROMPT, FEELING_LUCKY, ATTENTION_GRABBER, JINJA, NO_IMAGES)


@dataclass(frozen=True)
class Combinations:
    """`GenerationTask.script_data` of a combinatorial run: the prompts of its images, in order."""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]


class DynamicPrompts(Script):
    title = f"Dynamic Prompts v{VERSION}"
    aliases = ("dynamic prompts",)
    alwayson = True
    description = ("{a|b} picks one, {2$$a|b|c} two, {2::a|b} weighs, __name__ picks a line of wildcards/name.txt; "
                   "each image's choices follow its seed.")
    args = (
        ScriptArg("Dynamic Prompts enabled", bool, True),
        ScriptArg("Combinatorial generation", bool, False),
        ScriptArg("Combinatorial batches", int, 1, minimum=1, maximum=10, step=1),
        ScriptArg("Magic prompt", bool, False, help="not supported (needs the extension's language models)"),
        ScriptArg("I'm feeling lucky", bool, False, help="not supported (needs network access)"),
        ScriptArg("Attention grabber", bool, False, help="not supported"),
        ScriptArg("Minimum attention", float, 1.1, minimum=-1, maximum=2, step=0.1),
        ScriptArg("Maximum attention", float, 1.5, minimum=-1, maximum=2, step=0.1),
        ScriptArg("Max magic prompt length", int, 100, minimum=30, maximum=300, step=10),
        ScriptArg("Magic prompt creativity", float, 0.7, minimum=0.1, maximum=3.0, step=0.1),
        ScriptArg("Fixed seed", bool, False),
        ScriptArg("Unlink seed from prompt", bool, False),
        ScriptArg("Don't apply to negative prompts", bool, True, help="applies to prompt magic only"),
        ScriptArg("Enable Jinja2 templates", bool, False, help="not supported"),
        ScriptArg("Don't generate images", bool, False, help="not supported"),
        ScriptArg("Max generations (0 = all combinations - the batch count value is ignored)", int, 0, minimum=0,
                  maximum=1000, step=1),
        ScriptArg("Magic prompt model", str, ""),
        ScriptArg("Magic prompt blocklist regex", str, ""),
    )

    def __init__(self, wildcards: WildcardLibrary | Path | str | None = None):
        library = wildcards if isinstance(wildcards, WildcardLibrary) else WildcardLibrary(wildcards)
        self.resolver = Resolver(library)

    @property
    def wildcards(self) -> WildcardLibrary:
        return self.resolver.library

    def _loc(self, index: int) -> tuple:
        return ("alwayson_scripts", self.name, "args", index)

    # ---- the job -----------------------------------------------------------------------------------------------
    def before_job(self, task: GenerationTask, args: tuple) -> list[GenerationTask]:
        if not args[ENABLED]:
            return [task]
        for index in UNSUPPORTED:
            if args[index]:
                raise ParamError(self._loc(index), f"{self.args[index].label}: not supported by sdwebui")
        params = task.params
        for field in ("prompt", "negative_prompt"):
            try:
                self.resolver.check(getattr(params, field))
            except DynamicPromptError as error:
                raise ParamError((field,), str(error)) from None
        if args[COMBINATORIAL]:
            return self._combinatorial(task, args)
        if args[FIXED_SEED] and params.image_count > 1 and has_syntax(params.prompt + params.negative_prompt):
            seed = _fixed(params.seed)  # the extension's `all_seeds = [seed] * n`: one run per image
            return [replace_task(task, params.replace(seed=seed, batch_size=1, batch_count=1),
                                 f"image {index + 1}") for index in range(params.image_count)]
        return [task]

    def _combinatorial(self, task: GenerationTask, args: tuple) -> list[GenerationTask]:
        params = task.params
        wanted = args[MAX_GENERATIONS] or None
        limit = wanted or MAX_COMBINATIONS + 1
        try:
            prompts = self.resolver.combinations(params.prompt, limit) or [""]
            negatives = self.resolver.combinations(params.negative_prompt, limit) or [""]
        except DynamicPromptError as error:
            raise ParamError(("prompt",), str(error)) from None
        if wanted is None:  # every prompt with every negative prompt (the extension's cross product)
            pairs = list(itertools.islice(itertools.product(prompts, negatives), MAX_COMBINATIONS + 1))
        else:
            pairs = list(zip(prompts, itertools.islice(itertools.cycle(negatives), len(prompts))))[:wanted]
        repeats = args[COMBINATORIAL_BATCHES]
        if len(pairs) * repeats > MAX_COMBINATIONS:
            raise ParamError(self._loc(MAX_GENERATIONS),
                             f"the prompt makes more than {MAX_COMBINATIONS} images in combinatorial generation; "
                             "set Max generations (or Combinatorial batches) lower")
        seed = _fixed(params.seed)
        if args[FIXED_SEED]:  # every image of a repetition on one seed: a run per image
            return [
                replace_task(task, params.replace(seed=seed + repeat, batch_size=1, batch_count=1),
                             f"prompt {index + 1}", Combinations((prompt,), (negative,)))
                for repeat in range(repeats) for index, (prompt, negative) in enumerate(pairs)
            ]
        pairs = pairs * repeats
        size = min(params.batch_size, len(pairs))
        full, rest = divmod(len(pairs), size)
        tasks = [replace_task(task, params.replace(seed=seed, batch_size=size, batch_count=full),
                              "combinations", _combinations(pairs[:full * size]))]
        if rest:
            tasks.append(replace_task(task, params.replace(seed=seed + full * size, batch_size=rest, batch_count=1),
                                      "combinations", _combinations(pairs[full * size:])))
        return tasks

    # ---- each batch ------------------------------------------------------------------------------------------
    def before_batch(self, batch, args: tuple) -> None:
        if not args[ENABLED]:
            return
        task = getattr(batch, "task", None)
        chosen = task.script_data if task is not None and isinstance(task.script_data, Combinations) else None
        if chosen is not None:
            start = batch.batch_index * task.params.batch_size
            for index in range(len(batch.prompts)):
                batch.prompts[index] = chosen.prompts[start + index]
                batch.negative_prompts[index] = chosen.negative_prompts[start + index]
            return
        for index, seed in enumerate(batch.seeds):
            draw = None if args[UNLINK_SEED] else seed
            try:
                batch.prompts[index] = self.resolver.resolve(batch.prompts[index], draw)
                # the extension draws the negative prompt with the same seeds
                batch.negative_prompts[index] = self.resolver.resolve(batch.negative_prompts[index], draw)
            except DynamicPromptError as error:  # a prompt a selectable script made (a line of a prompts file)
                raise ParamError(("prompt",), str(error)) from None

    def after_batch(self, batch, args: tuple) -> None:
        if not args[ENABLED]:
            return
        params = batch.params
        if has_syntax(params.prompt):
            batch.infotext["Template"] = params.prompt
        if has_syntax(params.negative_prompt):
            batch.infotext["Negative Template"] = params.negative_prompt


def _fixed(seed: int) -> int:
    """A1111's `fix_seed`: a random seed for -1, so every run of the job is worked out from the same one."""
    return random.randrange(4294967294) if seed == -1 else seed


def _combinations(pairs: list[tuple[str, str]]) -> Combinations:
    return Combinations(tuple(prompt for prompt, _ in pairs), tuple(negative for _, negative in pairs))


def replace_task(task: GenerationTask, params, label: str, data=None) -> GenerationTask:
    return GenerationTask(params, task.init_images, task.mask, checkpoint=task.checkpoint, label=label, vae=task.vae,
                          styles=task.styles, arg_locs=task.arg_locs,
                          script_data=data if data is not None else task.script_data)


__all__ = ["DynamicPrompts", "Combinations", "VERSION", "MAX_COMBINATIONS"]
