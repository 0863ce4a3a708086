"""The one error type for bad input anywhere below the server: a parameter, named by where it sits.

`ParamError(loc, message)`: `loc` is the parameter's path in engine names (`"width"`, `("init_images", 0)`,
`("script_args", 2)`, `("override_settings", "CLIP_stop_at_last_layers")`); each interface maps it to its own
names (A1111's `sampler_name`, the CLI's `--batch-count`) when it reports the error. It lives in `core` because
the sampler registry raises it too.
"""

from __future__ import annotations

from collections.abc import Sequence


class ParamError(ValueError):
    """A parameter is out of range or names something that does not exist."""

    def __init__(self, loc: str | Sequence[str | int], message: str):
        self.loc: tuple[str | int, ...] = (loc,) if isinstance(loc, str) else tuple(loc)
        self.message = message
        super().__init__(f"{self.field_path}: {message}")

    @property
    def field(self) -> str:
        """The top-level parameter ("width" for `("width",)`, "init_images" for `("init_images", 0)`)."""
        return str(self.loc[0]) if self.loc else ""

    @property
    def field_path(self) -> str:
        return ".".join(str(part) for part in self.loc)

    def under(self, *prefix: str | int) -> "ParamError":
        """The same error one level down (a script's argument error under `("script_args",)`)."""
        return ParamError((*prefix, *self.loc), self.message)


__all__ = ["ParamError"]
