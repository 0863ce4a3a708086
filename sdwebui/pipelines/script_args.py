"""Script arguments beyond `ScriptArg`'s plain kinds, for A1111 controls whose values clients send in
`script_args` positions:

- `InfoArg`: a script's `gr.HTML` note (SD upscale's and Outpainting mk2's first argument). It holds a place in
  `script_args` (clients send None, "" or the HTML) and carries nothing; the UI shows its text.
- `InstalledChoiceArg`: a `gr.Radio(type="index")` over something installed (SD upscale's upscaler): an int is a
  position in the list the server has now (`/sdapi/v1/upscalers` order), a text a name (A1111 >= 1.6 takes names
  too). Whether it exists is the script's `check` (it needs the app); the UI lists what is installed (`catalog`)
  and takes any name.
- `ChoiceIndexArg`: a `gr.Radio(type="index")` over fixed choices (Poor man's outpainting's masked content): an int
  is a position in the choices, a text one of them; the script gets the position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.scripts import ScriptArg


@dataclass(frozen=True)
class InfoArg(ScriptArg):
    kind: type = str
    default: Any = None

    def check(self, value: Any, loc: tuple) -> Any:
        return None  # whatever a client's UI put in this slot (A1111 passes the HTML along and ignores it)


@dataclass(frozen=True)
class InstalledChoiceArg(ScriptArg):
    kind: type = str
    default: Any = None
    catalog: str | None = None
    """What the web UI lists (a `pipelines.script_ui.ScriptUI.choices` catalog); `choices` where it has none."""

    def check(self, value: Any, loc: tuple) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ParamError(loc, f"{self.label}: must be a name or a number in the list, got {value!r}")
        if isinstance(value, float):
            if not value.is_integer():
                raise ParamError(loc, f"{self.label}: must be a whole number, got {value!r}")
            value = int(value)
        if isinstance(value, int) and value < 0:
            raise ParamError(loc, f"{self.label}: must be 0 or more, got {value!r}")
        return value


@dataclass(frozen=True)
class ChoiceIndexArg(ScriptArg):
    kind: type = int
    default: Any = 0

    def check(self, value: Any, loc: tuple) -> Any:
        choices = self.choices or ()
        if isinstance(value, str) and value in choices:
            return choices.index(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() \
                and 0 <= value < len(choices):
            return int(value)
        raise ParamError(loc, f"{self.label}: must be one of {', '.join(choices)} or its position (0 to "
                              f"{len(choices) - 1}), got {value!r}")

    def info(self) -> dict[str, Any]:
        # A1111's script-info shows the radio's value, the choice's name
        return {**super().info(), "value": (self.choices or ())[self.default]}


__all__ = ["InfoArg", "InstalledChoiceArg", "ChoiceIndexArg"]
