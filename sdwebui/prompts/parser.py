"""The A1111 prompt language: prompt editing / alternation schedules, emphasis weights, composable `AND`.

Reference: AUTOMATIC1111 `modules/prompt_parser.py` (v1.10.1). A1111 parses schedules with a lark Earley
grammar; this module is a hand-written recursive-descent parser that accepts the same language and resolves
it the same way, without the dependency:

    start:       (prompt | stray bracket characters [ ] ( ) :)*        -- stray ones only at the top level
    prompt:      (emphasized | scheduled | alternate | plain | whitespace)*
    emphasized:  "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled:   "[" [prompt ":"] prompt ":" [ws] NUMBER [ws] "]"
    alternate:   "[" prompt ("|" [prompt])+ "]"
    plain:       runs of anything but \\ [ ] ( ) : |, or a backslash and the next character (not a newline)

Consequences that users see and that this module reproduces (all checked against A1111's own code):

- A bracket group that does not fit the grammar is kept as literal text ("a [unbalanced").
- A prompt that cannot be parsed at all is used as it is, with no schedule: a `|` outside `[...]`, a
  trailing backslash. (A1111's docstring example `a [{b|d{:.5] c` claims a schedule; A1111's code gives the
  prompt unchanged, as here.)
- `when`: with a "." it is a fraction of the steps, without it a step number (`[a:b:1.0]` switches at the last
  step, `[a:b:1]` after step 1). With hires steps the numbers count on from the first pass (`1.5` = half way
  through the hires pass, `25` = step 5 of the hires pass after 20 base steps), unless `use_old_scheduling`.
- Alternation `[a|b]` changes every step; schedules are listed for every step then.

Emphasis (`parse_prompt_attention`) is a separate pass on each scheduled text, as in A1111.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ROUND_BRACKET_MULTIPLIER",
    "SQUARE_BRACKET_MULTIPLIER",
    "ComposablePrompt",
    "ScheduledPrompt",
    "get_learned_conditioning_prompt_schedules",
    "get_multicond_prompt_list",
    "parse_prompt_attention",
    "prompt_schedule",
    "schedule_index_at_step",
    "split_composable",
]

ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1


class ScheduledPrompt(NamedTuple):
    """One entry of a prompt schedule: `text` is used up to and including sampler step `end_at_step`."""

    end_at_step: int
    text: str


# ------------------------------------------------------------------------------------------ schedule tree


@dataclass(frozen=True)
class _Scheduled:
    before: tuple[_Node, ...] | None
    after: tuple[_Node, ...]
    number: str
    """The NUMBER token as written; how it maps to a step depends on the hires settings."""


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Scheduled | _Alternate


class _NoParse(Exception):
    """The text does not fit the grammar at this point."""


_SPECIAL = frozenset("\\[]():|")
# lark's common.SIGNED_NUMBER, alternatives in the order lark tries them (it sorts them longest first), so the
# token is the same one lark's dynamic lexer takes at that position.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)")
_WHITESPACE = re.compile(r"\s+")


class _ScheduleParser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)

    def peek(self, pos: int) -> str:
        return self.s[pos] if pos < self.n else ""

    def plain(self, pos: int) -> int:
        """End of the plain run starting at `pos` (whitespace included)."""
        s, n = self.s, self.n
        while pos < n:
            c = s[pos]
            if c == "\\":
                if pos + 1 >= n or s[pos + 1] == "\n":
                    raise _NoParse  # nothing in the grammar matches a lone backslash
                pos += 2
            elif c in _SPECIAL:
                break
            else:
                pos += 1
        return pos

    def top(self) -> list[_Node]:
        nodes: list[_Node] = []
        pos = 0
        while pos < self.n:
            c = self.s[pos]
            if c in "[(":
                try:
                    group, pos = self.group(pos)
                    nodes.extend(group)
                    continue
                except _NoParse:
                    pass  # not a well-formed group: its bracket is a literal character
            if c in "[]():":
                nodes.append(c)
                pos += 1
            elif c == "|":
                raise _NoParse  # '|' is only valid inside an alternation
            else:
                end = self.plain(pos)
                nodes.append(self.s[pos:end])
                pos = end
        return nodes

    def prompt(self, pos: int) -> tuple[list[_Node], int]:
        """A run of text and well-formed groups; stops at ':', '|', ']', ')' or the end."""
        nodes: list[_Node] = []
        while pos < self.n:
            c = self.s[pos]
            if c in "[(":
                group, pos = self.group(pos)
                nodes.extend(group)
            elif c in ":|])":
                break
            else:
                end = self.plain(pos)
                nodes.append(self.s[pos:end])
                pos = end
        return nodes, pos

    def number_close(self, pos: int) -> tuple[str, int] | None:
        """`[ws] NUMBER [ws] "]"` at pos -> (number, position after "]")."""
        m = _WHITESPACE.match(self.s, pos)
        if m:
            pos = m.end()
        m = _NUMBER.match(self.s, pos)
        if not m:
            return None
        number, pos = m.group(0), m.end()
        m = _WHITESPACE.match(self.s, pos)
        if m:
            pos = m.end()
        return (number, pos + 1) if self.peek(pos) == "]" else None

    def group(self, pos: int) -> tuple[list[_Node], int]:
        opener = self.s[pos]
        first, pos = self.prompt(pos + 1)
        c = self.peek(pos)
        if opener == "(":
            if c == ")":
                return ["(", *first, ")"], pos + 1
            if c == ":":
                second, pos = self.prompt(pos + 1)
                if self.peek(pos) == ")":
                    return ["(", *first, ":", *second, ")"], pos + 1
            raise _NoParse
        if c == "]":
            return ["[", *first, "]"], pos + 1
        if c == "|":
            options = [tuple(first)]
            while self.peek(pos) == "|":
                option, pos = self.prompt(pos + 1)
                options.append(tuple(option))
            if self.peek(pos) != "]":
                raise _NoParse
            return [_Alternate(tuple(options))], pos + 1
        if c == ":":
            closed = self.number_close(pos + 1)
            if closed is not None:  # [to:when]
                number, end = closed
                return [_Scheduled(None, tuple(first), number)], end
            second, pos = self.prompt(pos + 1)
            if self.peek(pos) == ":":  # [from:to:when]
                closed = self.number_close(pos + 1)
                if closed is not None:
                    number, end = closed
                    return [_Scheduled(tuple(first), tuple(second), number)], end
        raise _NoParse


def _parse_schedule_tree(prompt: str) -> list[_Node] | None:
    try:
        return _ScheduleParser(prompt).top()
    except _NoParse:
        return None


def _walk(nodes: Iterable[_Node]) -> Iterable[_Scheduled | _Alternate]:
    for node in nodes:
        if isinstance(node, _Scheduled):
            yield node
            if node.before is not None:
                yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _render(nodes: Iterable[_Node], step: int, whens: dict[int, int], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            if step <= whens[id(node)]:
                if node.before is not None:
                    _render(node.before, step, whens, out)
            else:
                _render(node.after, step, whens, out)
        else:
            _render(node.options[(step - 1) % len(node.options)], step, whens, out)


def _when_to_step(number: str, steps: int, *, int_offset: int, flt_offset: float, old: bool) -> int:
    """A1111's step for a `when` token: min(steps, int(value)); values below 1 never end a schedule entry."""
    v = float(number)
    if old:
        v = v * steps if v < 1 else v
    elif "." in number:
        v = (v - flt_offset) * steps
    else:
        v = v - int_offset
    if v >= steps:
        return steps
    # A1111 raises OverflowError on int(-inf) ("-1e999"); every value below 1 behaves the same.
    return int(v) if math.isfinite(v) else -1


def prompt_schedule(
    prompt: str, base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[ScheduledPrompt]:
    """One prompt -> its schedule [(end_at_step, text), ...] (see `get_learned_conditioning_prompt_schedules`)."""
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps

    tree = _parse_schedule_tree(prompt)
    if tree is None:
        return [ScheduledPrompt(steps, prompt)]

    whens: dict[int, int] = {}
    ends = {steps}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            when = _when_to_step(
                node.number, steps, int_offset=int_offset, flt_offset=flt_offset, old=use_old_scheduling
            )
            whens[id(node)] = when
            if when >= 1:
                ends.add(when)
        else:
            ends.update(range(1, steps + 1))

    schedule = []
    for end in sorted(ends):
        out: list[str] = []
        _render(tree, end, whens, out)
        schedule.append(ScheduledPrompt(end, "".join(out)))
    return schedule


def get_learned_conditioning_prompt_schedules(
    prompts: Sequence[str], base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[list[ScheduledPrompt]]:
    """A1111's function of the same name: for each prompt, the texts to condition on and up to which step.

    `[from:to:when]`, `[to:when]` (nothing before), `[from::when]` (nothing after), nestable; `[a|b|c]`
    alternates every step. With `hires_steps` the schedule is for the hires pass. The texts still carry their
    emphasis syntax; `parse_prompt_attention` handles that.
    """
    cache: dict[str, list[ScheduledPrompt]] = {}
    result = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = prompt_schedule(prompt, base_steps, hires_steps, use_old_scheduling)
        result.append(list(cache[prompt]))
    return result


def schedule_index_at_step(schedule: Sequence[ScheduledPrompt], step: int) -> int:
    """Which entry of a schedule conditions sampler step `step` (A1111 `reconstruct_cond_batch`).

    `step` is A1111's 0-based counter of denoiser calls, so an entry with `end_at_step = 3` is used for steps
    0..3 (four steps). Past the last entry A1111 falls back to the first one; so does this.
    """
    for i, entry in enumerate(schedule):
        if step <= entry.end_at_step:
            return i
    return 0


# ----------------------------------------------------------------------------------------- emphasis


_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_TEXT_RUN = re.compile(r"[^\\()\[\]:]+")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ESCAPABLE = frozenset("()[]\\")


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    r"""Text with emphasis syntax -> [(text, weight), ...], A1111's `parse_prompt_attention`.

    `(a)` multiplies by 1.1, `[a]` divides by 1.1, `(a:1.3)` multiplies by 1.3; `\(` `\)` `\[` `\]` `\\` are
    literal characters and a backslash before anything else is dropped. Brackets that are never closed apply to
    everything after them (round ones first); closing brackets that were never opened are text. `BREAK`
    (a word of its own) becomes the span ("BREAK", -1). Neighbouring spans of equal weight are merged.

    One deviation: a weight such as `(a:1.2.3)` makes A1111 raise ValueError; here `:1.2.3` is text and the `)`
    an ordinary closing bracket.
    """
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for item in res[start:]:
            item[1] *= multiplier

    def add_text(chunk: str) -> None:
        for i, part in enumerate(_BREAK.split(chunk)):
            if i:
                res.append(["BREAK", -1.0])
            res.append([part, 1.0])

    pos, n = 0, len(text)
    while pos < n:
        c = text[pos]
        if c == "\\":
            nxt = text[pos + 1 : pos + 2]
            if nxt and nxt in _ESCAPABLE:
                res.append([nxt, 1.0])
                pos += 2
            else:
                res.append(["", 1.0])
                pos += 1
        elif c == "(":
            round_open.append(len(res))
            pos += 1
        elif c == "[":
            square_open.append(len(res))
            pos += 1
        elif c == ":":
            m = _WEIGHT_CLOSE.match(text, pos)
            weight = _to_float(m.group(1)) if m else None
            if m and weight is not None and round_open:
                multiply_from(round_open.pop(), weight)
                pos = m.end()
            elif m and weight is not None:
                add_text(m.group(0))  # a weight with no '(' to close is text
                pos = m.end()
            else:
                add_text(":")
                pos += 1
        elif c == ")":
            if round_open:
                multiply_from(round_open.pop(), ROUND_BRACKET_MULTIPLIER)
            else:
                add_text(c)
            pos += 1
        elif c == "]":
            if square_open:
                multiply_from(square_open.pop(), SQUARE_BRACKET_MULTIPLIER)
            else:
                add_text(c)
            pos += 1
        else:
            m = _TEXT_RUN.match(text, pos)
            assert m is not None
            add_text(m.group(0))
            pos = m.end()

    for start in round_open:
        multiply_from(start, ROUND_BRACKET_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_BRACKET_MULTIPLIER)

    if not res:
        return [("", 1.0)]
    merged: list[list] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(t, float(w)) for t, w in merged]


def _to_float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------- composable diffusion


_AND = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def split_composable(prompt: str) -> list[tuple[str, float]]:
    """`a cat AND a dog :1.2` -> [("a cat", 1.0), (" a dog", 1.2)] (A1111 `re_AND` / `re_weight`).

    `AND` must be upper case and a word of its own; a sub-prompt's trailing `:number` is its weight; the text
    keeps its leading whitespace, as in A1111 (it is part of what gets encoded).
    """
    parts = []
    for sub in _AND.split(prompt):
        m = _SUBPROMPT_WEIGHT.search(sub)
        assert m is not None  # `(.*?)` can take everything, so the pattern always matches
        text, weight = m.groups()
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def get_multicond_prompt_list(
    prompts: Sequence[str],
) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """A1111's function: prompts -> (per prompt [(index into the flat list, weight)], flat list of distinct
    sub-prompts, sub-prompt -> index). Each distinct sub-prompt is encoded (and scheduled) once."""
    res_indexes: list[list[tuple[int, float]]] = []
    flat: list[str] = []
    index_of: dict[str, int] = {}
    for prompt in prompts:
        indexes = []
        for text, weight in split_composable(prompt):
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            indexes.append((index_of[text], weight))
        res_indexes.append(indexes)
    return res_indexes, flat, index_of


@dataclass(frozen=True)
class ComposablePrompt:
    """A batch's prompts planned for conditioning: what to encode, once each, and how to combine it.

    `schedules[i]` is the schedule of distinct sub-prompt `subprompts[i]`; `batch[b]` lists, for prompt b of
    the batch, (sub-prompt index, weight) pairs whose conditionings the denoiser combines (A1111
    `MulticondLearnedConditioning`).
    """

    subprompts: tuple[str, ...]
    schedules: tuple[tuple[ScheduledPrompt, ...], ...]
    batch: tuple[tuple[tuple[int, float], ...], ...]

    @classmethod
    def plan(
        cls,
        prompts: Sequence[str],
        steps: int,
        hires_steps: int | None = None,
        use_old_scheduling: bool = False,
    ) -> ComposablePrompt:
        res_indexes, flat, _ = get_multicond_prompt_list(prompts)
        schedules = get_learned_conditioning_prompt_schedules(flat, steps, hires_steps, use_old_scheduling)
        return cls(
            subprompts=tuple(flat),
            schedules=tuple(tuple(s) for s in schedules),
            batch=tuple(tuple(ix) for ix in res_indexes),
        )

    def distinct_texts(self) -> list[str]:
        """Every text any step needs, once each, in first-use order: what to encode before sampling."""
        seen: dict[str, None] = {}
        for schedule in self.schedules:
            for entry in schedule:
                seen.setdefault(entry.text, None)
        return list(seen)

    def texts_at_step(self, step: int) -> list[list[tuple[str, float]]]:
        """For each batch prompt, the (text, weight) pairs that condition 0-based sampler step `step`."""
        current = [s[schedule_index_at_step(s, step)].text for s in self.schedules]
        return [[(current[i], w) for i, w in pairs] for pairs in self.batch]
