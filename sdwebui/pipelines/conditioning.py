"""A batch's prompts -> the conditioning every denoiser call of a sampling run needs.

Reference: A1111 `modules/prompt_parser.py` (`get_learned_conditioning`, `get_multicond_learned_conditioning`,
`reconstruct_cond_batch`, `reconstruct_multicond_batch`) and `processing.setup_conds`:

1. Each prompt is split on `AND` into weighted sub-prompts; distinct sub-prompts are kept once.
2. Each distinct sub-prompt (and each distinct negative prompt) gets its prompt-editing / alternation schedule
   over the sampler's `total_steps`, and the distinct texts of that schedule are encoded in one text-encoder
   batch, once per job: never once per step. (Encoding a schedule's texts together is what A1111 does; it
   matters for the "Original" emphasis, which restores the mean over the whole batch. A1111 puts a text that
   recurs in the schedule, as in `[a|b]`, into that batch once per occurrence; we encode it once, so with
   "Original" emphasis and a schedule that repeats texts unevenly the restored mean can differ in the last
   digits.)
3. At denoiser call `step`, each schedule contributes the entry that covers it (`schedule_index_at_step`); the
   cond rows are listed image by image with their `AND` weights, the uncond rows one per image.

Everything is padded to one chunk count with empty chunks (so cond and uncond share one UNet batch), as the
text encoder pads the negative prompt to the prompt's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sdwebui.models.text_encoding import Conditioning, TextEncoderStack, WeightedText
from sdwebui.pipelines.params import EMPHASIS_MODES
from sdwebui.prompts.parser import (
    ComposablePrompt,
    ScheduledPrompt,
    get_learned_conditioning_prompt_schedules,
    parse_prompt_attention,
    schedule_index_at_step,
)

__all__ = [
    "EMPHASIS_MODES",
    "BatchConditioning",
    "ScheduledConditioning",
    "build_conditioning",
    "prompt_spans",
    "uses_emphasis",
]

_ENCODER_EMPHASIS = {"Original": "Original", "No norm": "No norm", "Ignore": "None", "None": "None"}


def prompt_spans(text: str, emphasis: str = "Original") -> list[WeightedText]:
    """One scheduled text -> weighted spans for the encoder, as A1111's `tokenize_line` reads it."""
    if emphasis not in EMPHASIS_MODES:
        raise ValueError(f"unknown emphasis mode {emphasis!r}; expected one of {EMPHASIS_MODES}")
    if emphasis == "None":
        return [(text, 1.0)]
    return parse_prompt_attention(text)


def uses_emphasis(text: str) -> bool:
    """A1111 writes "Emphasis" in the infotext (when not Original) if any encoded text has "(" or "["."""
    return "(" in text or "[" in text


@dataclass(frozen=True)
class ScheduledConditioning:
    """One prompt's schedule, encoded: entry k (text `texts[k]`, used up to call `ends[k]`) is row `rows[k]` of
    `conditioning`, which holds each distinct text once (an alternation over 20 steps encodes 2 texts)."""

    ends: tuple[int, ...]
    texts: tuple[str, ...]
    rows: tuple[int, ...]
    conditioning: Conditioning

    def index_at(self, step: int) -> int:
        """The row of `conditioning` for denoiser call `step`."""
        entry = schedule_index_at_step([ScheduledPrompt(e, t) for e, t in zip(self.ends, self.texts)], step)
        return self.rows[entry]


@dataclass(frozen=True)
class BatchConditioning:
    """Everything one sampling run of a batch conditions on (A1111's `MulticondLearnedConditioning` + uncond)."""

    cond: tuple[ScheduledConditioning, ...]
    """One per distinct `AND` sub-prompt of the batch."""
    batch: tuple[tuple[tuple[int, float], ...], ...]
    """Per image: (index into `cond`, weight) of each of its sub-prompts."""
    uncond: tuple[ScheduledConditioning, ...]
    """One per distinct negative prompt of the batch."""
    uncond_index: tuple[int, ...]
    """Per image: its negative prompt's index into `uncond`."""
    texts_encoded: tuple[str, ...]
    """Every distinct text that was encoded (prompt side first)."""
    embeddings_used: tuple = ()
    """The textual-inversion embeddings the texts call (prompt and negative), in order of first use."""

    @property
    def batch_size(self) -> int:
        return len(self.batch)

    @property
    def weights(self) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(w for _, w in pairs) for pairs in self.batch)

    def selection(self, step: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Which schedule entry each cond and uncond schedule uses at call `step` (a cache key)."""
        return tuple(c.index_at(step) for c in self.cond), tuple(u.index_at(step) for u in self.uncond)

    def at_step(self, step: int) -> tuple[Conditioning, Conditioning]:
        """(cond rows image by image, uncond rows one per image) for denoiser call `step`
        (A1111 `reconstruct_multicond_batch` / `reconstruct_cond_batch`)."""
        cond_sel, uncond_sel = self.selection(step)
        cond = _gather([(self.cond[i].conditioning, cond_sel[i]) for pairs in self.batch for i, _ in pairs])
        uncond = _gather([(self.uncond[u].conditioning, uncond_sel[u]) for u in self.uncond_index])
        return cond, uncond


def _gather(rows: Sequence[tuple[Conditioning, int]]) -> Conditioning:
    cross = torch.cat([c.cross_attn[k : k + 1] for c, k in rows])
    pooled = None
    if rows[0][0].pooled is not None:
        pooled = torch.cat([c.pooled[k : k + 1] for c, k in rows])  # type: ignore[index]
    return Conditioning(cross, pooled)


def build_conditioning(
    encoder: TextEncoderStack,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    steps: int,
    *,
    clip_skip: int = 1,
    emphasis: str = "Original",
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
    embeddings=None,
) -> BatchConditioning:
    """Plan and encode a batch's prompts (one prompt and one negative prompt per image).

    `steps` is the number of denoiser calls the schedule is laid out over (A1111: the sampler's `total_steps`).
    Prompts must already be free of extra-network tags (`sdwebui.prompts.extra_networks`). `embeddings`: an
    `EmbeddingDatabase` whose embeddings' names in the texts become their vectors.
    """
    if len(prompts) != len(negative_prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(negative_prompts)} negative prompts")
    if not prompts:
        raise ValueError("no prompts to encode")
    plan = ComposablePrompt.plan(prompts, steps, hires_steps, use_old_scheduling)
    negatives = list(dict.fromkeys(negative_prompts))
    negative_schedules = get_learned_conditioning_prompt_schedules(negatives, steps, hires_steps, use_old_scheduling)

    # Each schedule's distinct texts, encoded together in one batch (A1111 encodes a prompt's schedule texts
    # as one batch; it dedupes their tokenization but encodes repeats again, which only the "Original"
    # emphasis's mean restoration could tell apart).
    def distinct(schedule) -> list[str]:
        return list(dict.fromkeys(e.text for e in schedule))

    cond_spans = [[prompt_spans(t, emphasis) for t in distinct(schedule)] for schedule in plan.schedules]
    uncond_spans = [[prompt_spans(t, emphasis) for t in distinct(schedule)] for schedule in negative_schedules]
    # One chunk count for everything, so that every row fits one tensor and cond / uncond batch together.
    tokenized = [
        encoder.tokenize_weighted(spans, embeddings=embeddings)[0]
        for group in (*cond_spans, *uncond_spans)
        for spans in group
    ]
    n_chunks = max(len(chunks) for chunks in tokenized)
    used: dict[str, object] = {}
    for chunks in tokenized:
        for chunk in chunks:
            for fix in getattr(chunk, "fixes", ()):
                used.setdefault(fix.embedding.name, fix.embedding)
    mode = _ENCODER_EMPHASIS[emphasis]

    def encode(schedule, spans, negative: bool) -> ScheduledConditioning:
        conditioning = encoder.encode_weighted(
            spans, clip_skip=clip_skip, min_chunks=n_chunks, negative=negative, emphasis=mode, embeddings=embeddings
        )
        row_of = {text: i for i, text in enumerate(distinct(schedule))}
        return ScheduledConditioning(
            ends=tuple(e.end_at_step for e in schedule),
            texts=tuple(e.text for e in schedule),
            rows=tuple(row_of[e.text] for e in schedule),
            conditioning=conditioning,
        )

    cond = tuple(encode(s, spans, False) for s, spans in zip(plan.schedules, cond_spans))
    uncond = tuple(encode(s, spans, True) for s, spans in zip(negative_schedules, uncond_spans))
    index_of = {text: i for i, text in enumerate(negatives)}
    texts = dict.fromkeys([*plan.distinct_texts(), *(e.text for s in negative_schedules for e in s)])
    return BatchConditioning(
        cond=cond,
        batch=plan.batch,
        uncond=uncond,
        uncond_index=tuple(index_of[n] for n in negative_prompts),
        texts_encoded=tuple(texts),
        embeddings_used=tuple(used.values()),
    )
