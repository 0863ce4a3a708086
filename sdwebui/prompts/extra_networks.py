"""Extra-network tags in prompts: `<lora:name:0.8>`, `<lora:name:te:unet>`, `<hypernet:name:1>`, ...

Reference: A1111 `modules/extra_networks.py` (`re_extra_net`, `parse_prompt`, `parse_prompts`,
`ExtraNetworkParams`) and the built-in Lora extension (`extensions-builtin/Lora/extra_networks_lora.py`).

A tag is `<kind:args>`: `kind` is a word (`\\w+`), `args` anything up to the next `>`, split on `:` into
positional arguments and `key=value` named ones. The tag is removed from the prompt (replaced by nothing, so
the spaces around it stay) before the prompt is parsed and encoded; what the tags ask for is returned as
`ExtraNetworkCall`s for whoever applies networks (the LoRA / hypernetwork code). As in A1111:

- only the positive prompt is scanned (a tag in the negative prompt is encoded as text);
- for a batch, the networks of the batch's FIRST prompt are applied to the whole batch (`parse_prompts`),
  but every prompt of the batch has its own tags removed;
- the infotext keeps the prompt as the user typed it, tags included.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "ExtraNetworkCall",
    "LoraArgs",
    "parse_prompt",
    "parse_prompts",
]

_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkCall:
    """One `<kind:args>` tag. `args` are the raw `:`-separated items (A1111 `ExtraNetworkParams.items`)."""

    kind: str
    """"lora", "lyco", "hypernet", ... as written (A1111 dispatches on it case-sensitively)."""
    args: tuple[str, ...]

    positional: tuple[str, ...] = field(init=False)
    """Items without `=`; `positional[0]` is the network's name."""
    named: dict[str, str] = field(init=False, hash=False, compare=False)
    """Items `key=value` (split at the first `=`), e.g. `te=0.5`, `unet=1`, `dyn=16`."""

    def __post_init__(self) -> None:
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in self.args:
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        object.__setattr__(self, "positional", tuple(positional))
        object.__setattr__(self, "named", named)

    @property
    def name(self) -> str:
        """The network's name (first positional argument), or "" when the tag has none."""
        return self.positional[0] if self.positional else ""

    @property
    def tag(self) -> str:
        """The tag as it would be written in a prompt."""
        return f"<{self.kind}:{':'.join(self.args)}>"

    def lora_args(self) -> LoraArgs:
        """The Lora extension's reading of the arguments (`<lora:name:te:unet:dyn>`, or `te=` `unet=` `dyn=`)."""
        return LoraArgs.from_call(self)


class ExtraNetworkArgError(ValueError):
    """A tag's argument is not a number where one is needed (A1111 fails the job with a ValueError too)."""


@dataclass(frozen=True)
class LoraArgs:
    """A `<lora:...>` tag read as the A1111 Lora extension reads it (`ExtraNetworkLora.activate`).

    `te` is the text-encoder multiplier (default 1.0), `unet` the UNet multiplier (default: `te`), `dyn` the
    dynamic dimension cut (default None: all). Named arguments win over positional ones.
    """

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None

    @classmethod
    def from_call(cls, call: ExtraNetworkCall) -> LoraArgs:
        pos, named = call.positional, call.named
        te = _number(pos[1], call) if len(pos) > 1 else 1.0
        te = _number(named["te"], call) if "te" in named else te
        unet = _number(pos[2], call) if len(pos) > 2 else te
        unet = _number(named["unet"], call) if "unet" in named else unet
        dyn = int(_number(pos[3], call)) if len(pos) > 3 else None
        dyn = int(_number(named["dyn"], call)) if "dyn" in named else dyn
        return cls(call.name, te, unet, dyn)


def _number(text: str, call: ExtraNetworkCall) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ExtraNetworkArgError(f"{call.tag}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ExtraNetworkArgError(f"{call.tag}: {text!r} is not a finite number")
    return value


def parse_prompt(prompt: str) -> tuple[str, list[ExtraNetworkCall]]:
    """One prompt -> (the prompt with its tags removed, the tags in order of appearance)."""
    calls: list[ExtraNetworkCall] = []

    def found(m: re.Match) -> str:
        calls.append(ExtraNetworkCall(m.group(1), tuple(m.group(2).split(":"))))
        return ""

    return _EXTRA_NET.sub(found, prompt), calls


def parse_prompts(prompts: Sequence[str]) -> tuple[list[str], list[ExtraNetworkCall]]:
    """A batch's prompts -> (each prompt cleaned, the calls of the FIRST prompt), A1111's `parse_prompts`."""
    cleaned: list[str] = []
    first: list[ExtraNetworkCall] | None = None
    for prompt in prompts:
        text, calls = parse_prompt(prompt)
        if first is None:
            first = calls
        cleaned.append(text)
    return cleaned, first or []
