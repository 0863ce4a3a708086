"""The A1111 prompt language as tables: prompt -> schedule, text -> weighted spans, prompt -> AND parts.

The first tables are A1111's own doctests from `modules/prompt_parser.py` (v1.10), written the same way
(`g(prompt)` with 10 steps); the rest cover every construct, escapes, nesting and malformed input.
"""

from __future__ import annotations

import random

import pytest

from sdwebui.prompts.parser import (
    ComposablePrompt,
    ScheduledPrompt,
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    parse_prompt_attention,
    prompt_schedule,
    schedule_index_at_step,
    split_composable,
)


def g(prompt: str, steps: int = 10, hires_steps: int | None = None, old: bool = False) -> list[list]:
    schedule = get_learned_conditioning_prompt_schedules([prompt], steps, hires_steps, old)[0]
    return [[entry.end_at_step, entry.text] for entry in schedule]


def alternating(a: str, b: str, steps: int = 10) -> list[list]:
    return [[i, a if i % 2 else b] for i in range(1, steps + 1)]


# A1111 v1.10 `get_learned_conditioning_prompt_schedules` doctests, verbatim (10 steps).
A1111_DOCTESTS = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", alternating("a", "(b:1.1)")),
    ("[fe|]male", alternating("female", "male")),
    (
        "[fe|||]male",
        [[i, "female" if i % 4 == 1 else "male"] for i in range(1, 11)],
    ),
]


@pytest.mark.parametrize("prompt,expected", A1111_DOCTESTS)
def test_a1111_doctests(prompt, expected):
    assert g(prompt) == expected


def test_a1111_doctest_that_a1111_does_not_pass():
    # A1111's docstring says `[[5, 'a  c'], [10, 'a {b|d{ c']]` ("not handling this right now"); its lark
    # grammar rejects the whole prompt (a '|' outside an alternation), so the prompt is used unchanged.
    assert g("a [{b|d{:.5] c") == [[10, "a [{b|d{:.5] c"]]


@pytest.mark.parametrize(
    "prompt,expected",
    [
        # A1111 doctests with hires steps: the numbers count on from the first pass.
        ("a [b:.5] c", [[10, "a b c"]]),
        ("a [b:1.5] c", [[5, "a  c"], [10, "a b c"]]),
        # an integer: step 15 overall = step 5 of the hires pass
        ("a [b:15] c", [[5, "a  c"], [10, "a b c"]]),
        ("a [b:5] c", [[10, "a b c"]]),
    ],
)
def test_hires_schedules(prompt, expected):
    assert g(prompt, 10, hires_steps=10) == expected


def test_old_scheduling_ignores_hires_offsets():
    assert g("a [b:.5] c", 10, hires_steps=20, old=True) == [[5, "a  c"], [10, "a b c"]]
    assert g("a [b:3] c", 10, hires_steps=20, old=True) == [[3, "a  c"], [10, "a b c"]]


SCHEDULES = [
    # [from:to:when], fraction and step number
    ("a [cat:dog:0.5]", 20, [[10, "a cat"], [20, "a dog"]]),
    ("a [cat:dog:5]", 20, [[5, "a cat"], [20, "a dog"]]),
    ("a [cat:dog:0.25] b", 8, [[2, "a cat b"], [8, "a dog b"]]),
    # [to:when] adds, [from::when] removes
    ("a [dog:4]", 10, [[4, "a "], [10, "a dog"]]),
    ("a [dog::4]", 10, [[4, "a dog"], [10, "a "]]),
    # when with "." is a fraction even when >= 1; without "." a step number; clamped to the step count
    ("[a:b:1.0]", 10, [[10, "a"]]),
    ("[a:b:1]", 10, [[1, "a"], [10, "b"]]),
    ("[a:b:100]", 10, [[10, "a"]]),
    ("[a:b:0]", 10, [[10, "b"]]),
    ("[a:b:-3]", 10, [[10, "b"]]),
    ("[a:b:0.04]", 10, [[10, "b"]]),  # int(0.4) = 0: never the "from" text
    ("[a:b:1e1]", 20, [[10, "a"], [20, "b"]]),
    # whitespace around the number
    ("[a:b: 3 ]", 10, [[3, "a"], [10, "b"]]),
    # several edits: one entry per distinct step, sorted
    (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][: in background:0.25] [shoddy:masterful:0.5]",
        100,
        [
            [25, "fantasy landscape with a mountain and an oak in foreground shoddy"],
            [50, "fantasy landscape with a lake and an oak in foreground in background shoddy"],
            [60, "fantasy landscape with a lake and an oak in foreground in background masterful"],
            [75, "fantasy landscape with a lake and an oak in background masterful"],
            [100, "fantasy landscape with a lake and a christmas tree in background masterful"],
        ],
    ),
    # nesting: an edit inside an edit, an alternation inside an edit, an edit inside an alternation
    ("[[a:b:2]:c:4]", 6, [[2, "a"], [4, "b"], [6, "c"]]),
    ("[x:[a|b]:2]", 4, [[1, "x"], [2, "x"], [3, "a"], [4, "b"]]),
    ("[[a:b:2]|c]", 4, [[1, "a"], [2, "c"], [3, "b"], [4, "c"]]),
    # emphasis inside an edit stays in the text for the emphasis pass
    ("[(cat:1.3):[dog]:2]", 4, [[2, "(cat:1.3)"], [4, "[dog]"]]),
    # alternation with three options, and an empty option
    ("[a|b|c] d", 4, [[1, "a d"], [2, "b d"], [3, "c d"], [4, "a d"]]),
    ("[|b]", 2, [[1, ""], [2, "b"]]),
    # escapes: literal brackets are plain text and keep their backslash for the emphasis pass
    (r"a \[b:c:2\]", 10, [[10, r"a \[b:c:2\]"]]),
    (r"\(a\) [b:2]", 10, [[2, r"\(a\) "], [10, r"\(a\) b"]]),
    (r"[a\:b:c:2]", 10, [[2, r"a\:b"], [10, "c"]]),
    (r"[a\|b|c]", 2, [[1, r"a\|b"], [2, "c"]]),
    # emphasis groups are not schedules
    ("(a:1.2) [b]", 10, [[10, "(a:1.2) [b]"]]),
    ("[a:b]", 10, [[10, "[a:b]"]]),  # no number: emphasis-like group, left as it is
]


@pytest.mark.parametrize("prompt,steps,expected", SCHEDULES)
def test_schedules(prompt, steps, expected):
    assert g(prompt, steps) == expected


MALFORMED = [
    "a [unbalanced",
    "a (unbalanced",
    "a ]b) c",
    "a [b:c:d",
    "[a:b:]",
    "[a:b:x]",
    "[a:b:0.5",
    "a | b",
    "trailing backslash \\",
    "]]]][[[[",
    "(((:::)))",
    "[a|b",
    "[[a|b]:c:0.5",
    ":",
    "",
    "[:]",
    "[::5]",
    "[a:b:1e999]",
    "[a:b:-1e999]",
    "a\\\nb",
]


@pytest.mark.parametrize("prompt", MALFORMED)
def test_malformed_prompts_never_crash(prompt):
    schedule = get_learned_conditioning_prompt_schedules([prompt], 10)[0]
    assert schedule and schedule[-1].end_at_step == 10
    assert all(isinstance(entry.text, str) for entry in schedule)
    for entry in schedule:
        spans = parse_prompt_attention(entry.text)
        assert spans and all(isinstance(t, str) and isinstance(w, float) for t, w in spans)
    assert split_composable(prompt)


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("a [b:c:d", [[10, "a [b:c:d"]]),  # no closing bracket: literal
        ("[a:b:]", [[10, "[a:b:]"]]),
        ("[::5]", [[5, ""], [10, ""]]),
        ("[a:b:1e999]", [[10, "a"]]),
        ("[a:b:-1e999]", [[10, "b"]]),
        ("a | b", [[10, "a | b"]]),  # '|' outside [...] makes the prompt unparsable: used as written
    ],
)
def test_malformed_prompt_schedules(prompt, expected):
    assert g(prompt) == expected


def test_random_prompts_never_crash():
    rng = random.Random(1234)
    alphabet = "ab :|[]()\\.0123456789e-AND BREAK,"
    for _ in range(2000):
        prompt = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        for steps in (1, 7):
            schedule = get_learned_conditioning_prompt_schedules([prompt], steps)[0]
            ends = [entry.end_at_step for entry in schedule]
            assert ends == sorted(set(ends)) and ends[-1] == steps, prompt
            for entry in schedule:
                parse_prompt_attention(entry.text)
        plan = ComposablePrompt.plan([prompt], steps=5)
        plan.texts_at_step(0)


def test_schedules_are_per_prompt_and_cached():
    prompts = ["a [b:2]", "plain", "a [b:2]"]
    schedules = get_learned_conditioning_prompt_schedules(prompts, 4)
    assert [[tuple(e) for e in s] for s in schedules] == [
        [(2, "a "), (4, "a b")],
        [(4, "plain")],
        [(2, "a "), (4, "a b")],
    ]
    assert schedules[0] is not schedules[2]  # callers may mutate their copy
    assert isinstance(schedules[0][0], ScheduledPrompt)


def test_prompt_schedule_matches_batch_function():
    assert prompt_schedule("a [b:c:0.5]", 10) == get_learned_conditioning_prompt_schedules(["a [b:c:0.5]"], 10)[0]


@pytest.mark.parametrize(
    "step,index",
    [(0, 0), (1, 0), (2, 0), (3, 1), (5, 1), (6, 2), (10, 2), (11, 0), (99, 0)],
)
def test_schedule_index_at_step(step, index):
    # A1111 reconstruct_cond_batch: the first entry whose end_at_step >= step; past the end, entry 0.
    schedule = [ScheduledPrompt(2, "a"), ScheduledPrompt(5, "b"), ScheduledPrompt(10, "c")]
    assert schedule_index_at_step(schedule, step) == index


# ----------------------------------------------------------------------------------------------- emphasis

ATTENTION = [
    # A1111 `parse_prompt_attention` doctests
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
    # more constructs
    ("((a))", [("a", 1.2100000000000002)]),
    ("[a]", [("a", 1 / 1.1)]),
    ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
    ("(a:1.3)", [("a", 1.3)]),
    ("(a: 0.5 )", [("a", 0.5)]),
    ("(a:-1)", [("a", -1.0)]),
    ("(a:.5)", [("a", 0.5)]),
    ("((a:1.5))", [("a", 1.5 * 1.1)]),
    ("[a:2]", [("a:2", 1 / 1.1)]),  # a weight only closes a round bracket
    ("a:1.2)", [("a:1.2)", 1.0)]),  # nothing open: the weight is text
    ("a ) b ] c", [("a ) b ] c", 1.0)]),
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ("([a)]", [("a", 1.1 / 1.1)]),
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    ("a:b", [("a:b", 1.0)]),
    # escapes
    ("\\(a\\)", [("(a)", 1.0)]),
    ("\\[a\\]", [("[a]", 1.0)]),
    ("a\\\\b", [("a\\b", 1.0)]),
    ("(\\(a\\))", [("(a)", 1.1)]),
    ("\\a", [("a", 1.0)]),  # a backslash before anything else is dropped
    ("\\:", [(":", 1.0)]),
    # BREAK: a word of its own, upper case
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a BREAKb", [("a BREAKb", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
]


@pytest.mark.parametrize("text,expected", ATTENTION)
def test_parse_prompt_attention(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_a1111_doctest_weights_are_bit_exact():
    # A1111 multiplies in the same order; the doctest prints these exact floats.
    got = dict(parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."))
    assert got["house"] == 1.5730000000000004
    assert got["sky"] == 1.4641000000000006


def test_bad_weight_is_text_not_an_error():
    # A1111 raises ValueError on float("1.2.3"); we keep the text (documented deviation).
    assert parse_prompt_attention("(a:1.2.3)") == [("a:1.2.3", 1.1)]


# ------------------------------------------------------------------------------------- composable (AND)

COMPOSABLE = [
    ("a cat", [("a cat", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
    ("a cat :1.2 AND a dog", [("a cat", 1.2), (" a dog", 1.0)]),
    ("a cat AND a dog :1.2", [("a cat", 1.0), (" a dog", 1.2)]),
    ("a cat AND a dog:0.03", [("a cat", 1.0), (" a dog", 0.03)]),
    ("a AND b:-0.5", [("a", 1.0), (" b", -0.5)]),
    ("a AND b :.5", [("a", 1.0), (" b", 0.5)]),
    ("a AND b :2.", [("a", 1.0), (" b", 2.0)]),
    ("a and b", [("a and b", 1.0)]),  # lower-case "and" is a word
    ("a ANDROID", [("a ANDROID", 1.0)]),
    ("(a:1.2) AND b", [("(a:1.2)", 1.0), (" b", 1.0)]),  # emphasis weight is not an AND weight
    ("a:1.5", [("a", 1.5)]),
    ("AND", [("", 1.0), ("", 1.0)]),
    ("a [b:c:0.5] AND d", [("a [b:c:0.5]", 1.0), (" d", 1.0)]),
]


@pytest.mark.parametrize("prompt,expected", COMPOSABLE)
def test_split_composable(prompt, expected):
    assert split_composable(prompt) == expected


def test_multicond_prompt_list_dedupes_subprompts():
    indexes, flat, index_of = get_multicond_prompt_list(["a AND b :2", "b AND c", "a AND b :2"])
    # A1111's re_weight drops trailing whitespace and keeps leading whitespace: "b" and " b" differ.
    assert flat == ["a", " b", "b", " c"]
    assert indexes == [[(0, 1.0), (1, 2.0)], [(2, 1.0), (3, 1.0)], [(0, 1.0), (1, 2.0)]]
    assert index_of == {"a": 0, " b": 1, "b": 2, " c": 3}


def test_composable_plan():
    plan = ComposablePrompt.plan(["a [x:y:2] AND b :0.5", "b"], steps=4)
    assert plan.subprompts == ("a [x:y:2]", " b", "b")
    assert plan.batch == (((0, 1.0), (1, 0.5)), ((2, 1.0),))
    assert plan.distinct_texts() == ["a x", "a y", " b", "b"]
    assert plan.texts_at_step(0) == [[("a x", 1.0), (" b", 0.5)], [("b", 1.0)]]
    assert plan.texts_at_step(2) == [[("a x", 1.0), (" b", 0.5)], [("b", 1.0)]]
    assert plan.texts_at_step(3) == [[("a y", 1.0), (" b", 0.5)], [("b", 1.0)]]
