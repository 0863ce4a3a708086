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
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
"""A1111's "Emphasis mode" setting (`modules/sd_emphasis.py`): Original = weights, then the chunk mean restored;
No norm = weights only; Ignore = brackets are parsed away but carry no weight; None = no emphasis syntax at all,
brackets (and BREAK) are text."""


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
    subseed: int = -1
    """A1111's variation seed (-1 = random when a strength is set); image i uses subseed + i."""
    subseed_strength: float = 0.0
    """0 = no variation; 1 = the variation seed's noise alone (slerp between the two noises)."""
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    """"Resize seed from width/height": make the noise as if the image were this size (0 = off)."""
    eta: float | None = None
    """Noise multiplier of ancestral/SDE samplers (A1111 default 1.0) or DDIM (default 0); None = default."""
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    """Karras et al.'s stochasticity options for Euler / Heun / DPM2 (A1111's "Sigma churn" etc.)."""
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    """Schedule overrides (A1111 settings "sigma min/max", "rho"); None or 0 = the model's / schedule's own."""
    discard_penultimate_sigma: bool = False
    """A1111's "Always discard next-to-last sigma"."""
    emphasis: str = "Original"
    """A1111's "Emphasis mode" setting: Original, No norm, Ignore or None (see `pipelines.conditioning`)."""
    tiling: bool = False
    """Seamless images: circular padding in the UNet's and VAE's convolutions (A1111's "Tiling")."""
    enable_hr: bool = False
    """Hires fix: a second pass at a larger size (A1111's `enable_hr`); the `hr_*` fields below shape it."""
    denoising_strength: float = 0.7
    """Strength of the hires pass (A1111's UI default 0.7; img2img overrides the field with its own default)."""
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    """A latent mode ("Latent", "Latent (bicubic)", ...) or an image upscaler's name (Lanczos, an ESRGAN file...)."""
    hr_second_pass_steps: int = 0
    """0 = as many as the first pass."""
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    """"Resize width/height to" (0 = from `hr_scale`; one of them 0 = keep the aspect ratio)."""
    hr_checkpoint: str | None = None
    """Checkpoint for the hires pass (None = the same; A1111's "Use same checkpoint")."""
    hr_sampler: str | None = None
    hr_scheduler: str | None = None
    """None = the first pass's (A1111's "Use same sampler" / "Use same scheduler")."""
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    """Empty = the first pass's prompt (as A1111)."""
    refiner_checkpoint: str | None = None
    """SDXL refiner (or any checkpoint) that takes over sampling at `refiner_switch_at` (None = no refiner)."""
    refiner_switch_at: float = 0.8
    """Fraction of the model's noise levels done when the refiner takes over (A1111: measured by sigma)."""

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
        _check_int_range("subseed", self.subseed, -1, 2**32 - 1)
        _check_float_range("subseed_strength", self.subseed_strength, 0.0, 1.0)
        for name in ("seed_resize_from_w", "seed_resize_from_h"):
            value = getattr(self, name)
            _check_int_range(name, value, 0, MAX_SIDE)
        for name, high in (("eta", 10.0), ("s_churn", 100.0), ("s_tmin", 1000.0), ("s_tmax", float("inf")),
                           ("s_noise", 10.0), ("sigma_min", 1000.0), ("sigma_max", 1000.0), ("rho", 100.0)):
            if getattr(self, name) is not None:
                _check_float_range(name, getattr(self, name), 0.0, high)
        if self.emphasis not in EMPHASIS_MODES:
            raise ParamError("emphasis", f"must be one of {', '.join(EMPHASIS_MODES)}, got {self.emphasis!r}")
        for name in ("tiling", "enable_hr"):
            if not isinstance(getattr(self, name), bool):
                raise ParamError(name, f"must be true or false, got {getattr(self, name)!r}")
        _check_float_range("denoising_strength", self.denoising_strength, 0.0, 1.0)
        _check_float_range("hr_scale", self.hr_scale, 1.0 if self.enable_hr else 0.0, 16.0)
        _check_int_range("hr_second_pass_steps", self.hr_second_pass_steps, 0, MAX_STEPS)
        for name in ("hr_resize_x", "hr_resize_y"):
            _check_int_range(name, getattr(self, name), 0, MAX_SIDE)
        _check_float_range("refiner_switch_at", self.refiner_switch_at, 0.0, 1.0)
        for name in ("hr_prompt", "hr_negative_prompt", "hr_upscaler"):
            if not isinstance(getattr(self, name), str):
                raise ParamError(name, "must be text")
        if self.enable_hr:
            width, height = self.hires_size
            if max(width, height) > MAX_SIDE or min(width, height) < 8:
                raise ParamError("hr_scale", f"the hires size {width}x{height} is outside 8..{MAX_SIDE}")
        if not isinstance(self.prompt, str):
            raise ParamError("prompt", "must be text")
        if not isinstance(self.negative_prompt, str):
            raise ParamError("negative_prompt", "must be text")

    @property
    def image_count(self) -> int:
        return self.batch_size * self.batch_count

    @property
    def seed_resize_from(self) -> tuple[int, int] | None:
        """(width, height) when A1111's "resize seed from" is on (both sides > 0)."""
        if self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0:
            return self.seed_resize_from_w, self.seed_resize_from_h
        return None

    @property
    def hires_target(self) -> tuple[int, int, int, int]:
        """(upscale to width, upscale to height, truncate x, truncate y): A1111's `calculate_target_resolution`.

        With both "resize to" sides given, the image is upscaled to cover them keeping its aspect ratio, and the
        latent is then cropped (`truncate_x/y`, in latent pixels) to the asked size."""
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            return int(self.width * self.hr_scale), int(self.height * self.hr_scale), 0, 0
        if self.hr_resize_y == 0:
            return self.hr_resize_x, self.hr_resize_x * self.height // self.width, 0, 0
        if self.hr_resize_x == 0:
            return self.hr_resize_y * self.width // self.height, self.hr_resize_y, 0, 0
        if self.width / self.height < self.hr_resize_x / self.hr_resize_y:
            to_x, to_y = self.hr_resize_x, self.hr_resize_x * self.height // self.width
        else:
            to_x, to_y = self.hr_resize_y * self.width // self.height, self.hr_resize_y
        return to_x, to_y, (to_x - self.hr_resize_x) // 8, (to_y - self.hr_resize_y) // 8

    @property
    def hires_size(self) -> tuple[int, int]:
        """The final size of a hires-fixed image (after the crop of "resize to")."""
        to_x, to_y, truncate_x, truncate_y = self.hires_target
        return (to_x // 8 - truncate_x) * 8, (to_y // 8 - truncate_y) * 8

    @property
    def hires_steps(self) -> int:
        return self.hr_second_pass_steps or self.steps

    def replace(self, **changes) -> "Txt2ImgParams":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return type(self)(**values)


def _check_float_range(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= float(value) <= high):
        raise ParamError(name, f"must be a number between {low:g} and {high:g}, got {value!r}")


def _check_int_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise ParamError(name, f"must be an integer between {low} and {high}, got {value!r}")
