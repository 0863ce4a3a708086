"""`<lora:...>` / `<hypernet:...>` tags: extraction from prompts, as A1111's `extra_networks.parse_prompt(s)`."""

from __future__ import annotations

import pytest

from sdwebui.prompts.extra_networks import (
    ExtraNetworkArgError,
    ExtraNetworkCall,
    LoraArgs,
    parse_prompt,
    parse_prompts,
)


@pytest.mark.parametrize(
    "prompt,cleaned,calls",
    [
        ("a cat", "a cat", []),
        ("a cat <lora:film:0.8>", "a cat ", [("lora", ("film", "0.8"))]),
        ("<lora:a:1> x <lora:b:0.5:0.2>, y", " x , y", [("lora", ("a", "1")), ("lora", ("b", "0.5", "0.2"))]),
        ("<hypernet:anime:1>cat", "cat", [("hypernet", ("anime", "1"))]),
        ("<lyco:name:te=0.5:unet=1>", "", [("lyco", ("name", "te=0.5", "unet=1"))]),
        ("<lora:my lora v1.2:1>", "", [("lora", ("my lora v1.2", "1"))]),
        ("<lora:name>", "", [("lora", ("name",))]),
        # not tags: no kind, no args, a non-word kind, an unclosed tag
        ("<:x:1>", "<:x:1>", []),
        ("<lora:>", "<lora:>", []),
        ("<lo-ra:x>", "<lo-ra:x>", []),
        ("<lora:x", "<lora:x", []),
        ("a > b < c", "a > b < c", []),
        # tags and the prompt language side by side
        ("[a:b:0.5] <lora:x:1> (c:1.2) AND d", "[a:b:0.5]  (c:1.2) AND d", [("lora", ("x", "1"))]),
    ],
)
def test_parse_prompt(prompt, cleaned, calls):
    text, found = parse_prompt(prompt)
    assert text == cleaned
    assert [(c.kind, c.args) for c in found] == calls


def test_positional_and_named_arguments():
    call = ExtraNetworkCall("lora", ("name", "0.5", "te=0.7", "dyn=8"))
    assert call.name == "name"
    assert call.positional == ("name", "0.5")
    assert call.named == {"te": "0.7", "dyn": "8"}
    assert call.tag == "<lora:name:0.5:te=0.7:dyn=8>"
    assert ExtraNetworkCall("lora", ("a=b=c",)).positional == ("a=b=c",)  # A1111 splits at most twice


@pytest.mark.parametrize(
    "tag,expected",
    [
        ("<lora:x>", LoraArgs("x", 1.0, 1.0, None)),
        ("<lora:x:0.8>", LoraArgs("x", 0.8, 0.8, None)),  # one weight: both encoders and UNet
        ("<lora:x:0.8:0.3>", LoraArgs("x", 0.8, 0.3, None)),  # te, then unet
        ("<lora:x:1:1:16>", LoraArgs("x", 1.0, 1.0, 16)),
        ("<lora:x:te=0.2>", LoraArgs("x", 0.2, 0.2, None)),
        ("<lora:x:0.5:unet=0>", LoraArgs("x", 0.5, 0.0, None)),
        ("<lora:x:0.5:te=0.1:unet=0.9:dyn=4>", LoraArgs("x", 0.1, 0.9, 4)),
        ("<lora:x:-1>", LoraArgs("x", -1.0, -1.0, None)),
    ],
)
def test_lora_args(tag, expected):
    _, (call,) = parse_prompt(tag)
    assert call.lora_args() == expected


def test_lora_arg_that_is_not_a_number_is_a_clear_error():
    _, (call,) = parse_prompt("<lora:x:strong>")
    with pytest.raises(ExtraNetworkArgError, match="<lora:x:strong>"):
        call.lora_args()


def test_parse_prompts_uses_the_first_prompts_networks_for_the_batch():
    cleaned, calls = parse_prompts(["a <lora:x:1>", "b <lora:y:1>", "c"])
    assert cleaned == ["a ", "b ", "c"]
    assert [c.name for c in calls] == ["x"]
    assert parse_prompts([]) == ([], [])
