"""Generation parameters: frozen, validated at construction, named as A1111 names them.

Validation happens here (not deep inside sampling) so that a bad request fails before any model work,
with an error that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


class ParamError(ValueError):
    """A generation parameter is out of range; `field` names it (as the CLI flag / API field does)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# A1111's defaults (txt2img tab and /sdapi/v1/txt2img): 20 steps, CFG 7, 512x512, DPM++ 2M (Automatic
# schedule, which is Karras for DPM++ 2M).
DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULER = "Automatic"
MAX_SIDE = 8192
MAX_STEPS = 1000


@dataclass(frozen=True)
class Txt2ImgParams:
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = DEFAULT_SAMPLER
    scheduler: str = DEFAULT_SCHEDULER
    seed: int = -1
    """-1 picks a random seed (as in A1111); image i of the job uses seed + i."""
    batch_size: int = 1
    batch_count: int = 1
    clip_skip: int = 1
    eta: float | None = None
    """Noise multiplier for ancestral samplers (A1111's `eta_ancestral`, default 1.0); None = sampler default."""

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 8 or value > MAX_SIDE:
                raise ParamError(name, f"must be an integer between 8 and {MAX_SIDE}, got {value!r}")
            if value % 8:
                raise ParamError(name, f"must be a multiple of 8, got {value}")
        _check_int_range("steps", self.steps, 1, MAX_STEPS)
        _check_int_range("batch_size", self.batch_size, 1, 64)
        _check_int_range("batch_count", self.batch_count, 1, 10_000)
        _check_int_range("clip_skip", self.clip_skip, 1, 12)
        _check_int_range("seed", self.seed, -1, 2**32 - 1)
        if not isinstance(self.cfg_scale, (int, float)) or not (0.0 <= float(self.cfg_scale) <= 100.0):
            raise ParamError("cfg_scale", f"must be a number between 0 and 100, got {self.cfg_scale!r}")
        if self.eta is not None and not (0.0 <= float(self.eta) <= 10.0):
            raise ParamError("eta", f"must be between 0 and 10, got {self.eta!r}")
        if not isinstance(self.prompt, str):
            raise ParamError("prompt", "must be text")
        if not isinstance(self.negative_prompt, str):
            raise ParamError("negative_prompt", "must be text")

    @property
    def image_count(self) -> int:
        return self.batch_size * self.batch_count

    def replace(self, **changes) -> "Txt2ImgParams":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return type(self)(**values)


def _check_int_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise ParamError(name, f"must be an integer between {low} and {high}, got {value!r}")
