"""Generation parameters, each declared once: type, default, bounds, A1111 request name and default, infotext
label, the setting that supplies it, CLI flag and UI control.

`GenerationParams` holds what txt2img and img2img share; `Txt2ImgParams` adds hires fix and the refiner,
`Img2ImgParams` (`pipelines.img2img_params`) the images' options. Every interface reads these declarations:

- the native API's job bodies and the `/sdapi/v1` request bodies are pydantic models made from them
  (`server.schemas`), with the engine's or A1111's names and defaults;
- the CLI's flags (`cli.add_param_flags`), the UI's sliders (`ui.controls`) and the infotext tables
  (`infotext_fields`, `infotext_settings`) likewise;
- a request that leaves a setting-backed parameter out gets the setting's value (`settings_defaults`).

Validation happens at construction (a frozen dataclass whose `__post_init__` checks every declared bound), so a
bad request fails before any model work, with a `ParamError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from sdwebui.core.errors import ParamError

# A1111's defaults (txt2img tab and /sdapi/v1/txt2img): 20 steps, CFG 7, 512x512, DPM++ 2M (Automatic
# schedule, which is Karras for DPM++ 2M).
DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULER = "Automatic"
MAX_SIDE = 8192
MAX_STEPS = 1000
SEED_MAX = 2**32 - 1
PROMPT_MAX = 65536
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
"""A1111's "Emphasis mode" setting (`modules/sd_emphasis.py`): Original = weights, then the chunk mean restored;
No norm = weights only; Ignore = brackets are parsed away but carry no weight; None = no emphasis syntax at all,
brackets (and BREAK) are text."""
RNG_SOURCES = ("gpu", "cpu", "nv")

SAME: Any = object()
"""`a1111=` / `a1111_default=` left as is: A1111 uses the engine's name / default."""


@dataclass(frozen=True)
class ParamSpec:
    """One generation parameter. `name` is filled in from the dataclass field it is attached to."""

    kind: type
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    max_length: int | None = None
    choices: tuple | None = None
    nullable: bool = False
    """None is a value: "the sampler's / schedule's own" (eta, sigma_min, ...) or "the first pass's" (hires)."""
    label: str = ""
    """A1111's UI label ("Sampling steps")."""
    help: str = ""
    a1111: str | None = SAME
    """The field of A1111's txt2img/img2img request that carries it; None: not a request field (a setting)."""
    a1111_default: Any = SAME
    a1111_minimum: Any = SAME
    """A1111's looser lower bound where its clients send a sentinel (-1 for "resize seed from")."""
    a1111_optional: bool = False
    """A1111's request takes null here (as "the default") although its default is a value."""
    a1111_kind: type | None = None
    """A1111's type where it differs (`inpainting_mask_invert` is 0 / 1 there)."""
    infotext: str | None = None
    """The infotext label ("Steps"; "Size-1" for the width, as the parser splits "Size: 512x768")."""
    setting: str | None = None
    """The A1111 option that supplies the value when a request leaves it out (`CLIP_stop_at_last_layers`)."""
    from_setting: Callable[[Any], Any] | None = None
    """Turns the setting's value into the parameter's ("GPU" -> "gpu")."""
    infotext_settings: tuple[tuple[str, str], ...] | None = None
    """(infotext label, setting) pairs a pasted infotext sets (A1111's `infotext_to_setting_name_mapping`);
    default: `(infotext, setting)` when both are declared."""
    cli: tuple[str, ...] | None = SAME
    """Command-line flags; default `--name-with-dashes`; None: not on the command line."""
    group: str = ""
    """Command-line help group."""
    ui: tuple[float, float, float] | None = None
    """(minimum, maximum, step) of the UI's slider (narrower than the API's bounds, as A1111's)."""
    name: str = ""

    @property
    def a1111_name(self) -> str | None:
        return self.name if self.a1111 is SAME else self.a1111

    @property
    def a1111_default_value(self) -> Any:
        return self.default if self.a1111_default is SAME else self.a1111_default

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return ("--" + self.name.replace("_", "-"),) if self.cli is SAME else (self.cli or ())

    @property
    def setting_pairs(self) -> tuple[tuple[str, str], ...]:
        if self.infotext_settings is not None:
            return self.infotext_settings
        return ((self.infotext, self.setting),) if self.infotext and self.setting else ()

    def check(self, value: Any, loc: str | None = None) -> None:
        """Raise ParamError naming the field when `value` is outside this declaration."""
        name = loc or self.name
        if value is None and self.nullable:
            return
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ParamError(name, f"must be true or false, got {value!r}")
        elif self.kind is int:
            low = -math.inf if self.minimum is None else self.minimum
            high = math.inf if self.maximum is None else self.maximum
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ParamError(name, f"must be an integer between {_bound(low)} and {_bound(high)}, got {value!r}")
            if self.multiple_of and value % self.multiple_of:
                raise ParamError(name, f"must be a multiple of {self.multiple_of}, got {value}")
        elif self.kind is float:
            low = -math.inf if self.minimum is None else self.minimum
            high = math.inf if self.maximum is None else self.maximum
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
                raise ParamError(name, f"must be a number between {low:g} and {high:g}, got {value!r}")
        elif self.kind is str:
            if not isinstance(value, str):
                raise ParamError(name, "must be text")
            if self.max_length is not None and len(value) > self.max_length:
                raise ParamError(name, f"must be at most {self.max_length} characters")
        if self.choices is not None and value not in self.choices:
            raise ParamError(name, f"must be one of {', '.join(map(str, self.choices))}, got {value!r}")


def _bound(value: float) -> str:
    return str(int(value)) if math.isfinite(value) else str(value)


def param(default: Any, kind: type | None = None, **spec: Any) -> Any:
    """A dataclass field declared as a generation parameter (see `ParamSpec` for the keywords)."""
    kind = kind or type(default)
    return field(default=default, metadata={"param": ParamSpec(kind=kind, default=default, **spec)})


P = TypeVar("P", bound="GenerationParams")


@dataclass(frozen=True)
class GenerationParams:
    """What every generation job takes (A1111's `StableDiffusionProcessing`). Frozen; validated when made."""

    KIND: ClassVar[str] = ""

    prompt: str = param("", max_length=PROMPT_MAX, label="Prompt", infotext="Prompt", cli=None)
    negative_prompt: str = param("", max_length=PROMPT_MAX, label="Negative prompt", infotext="Negative prompt",
                                 cli=("-n", "--negative-prompt"))
    width: int = param(512, minimum=8, maximum=MAX_SIDE, multiple_of=8, label="Width", infotext="Size-1",
                       ui=(64, 2048, 8), help="multiple of 8 (default: the model's native size)")
    height: int = param(512, minimum=8, maximum=MAX_SIDE, multiple_of=8, label="Height", infotext="Size-2",
                        ui=(64, 2048, 8), help="multiple of 8 (default: the model's native size)")
    steps: int = param(20, minimum=1, maximum=MAX_STEPS, label="Sampling steps", infotext="Steps",
                       a1111_default=50, ui=(1, 150, 1))
    cfg_scale: float = param(7.0, minimum=0.0, maximum=100.0, label="CFG Scale", infotext="CFG scale",
                             ui=(1.0, 30.0, 0.5))
    sampler: str = param(DEFAULT_SAMPLER, max_length=200, label="Sampling method", infotext="Sampler",
                         a1111="sampler_name", a1111_default=None,
                         help='A1111 sampler name or alias, e.g. "Euler a", k_dpmpp_2m')
    scheduler: str = param(DEFAULT_SCHEDULER, max_length=200, label="Schedule type", infotext="Schedule type",
                           a1111_default=None, help="schedule type, e.g. Karras, Uniform")
    seed: int = param(-1, minimum=-1, maximum=SEED_MAX, label="Seed", infotext="Seed",
                      help="-1 = random; image i uses seed + i")
    """-1 picks a random seed (as in A1111); image i of the job uses seed + i."""
    batch_size: int = param(1, minimum=1, maximum=64, label="Batch size", ui=(1, 8, 1))
    batch_count: int = param(1, minimum=1, maximum=10_000, label="Batch count", a1111="n_iter", ui=(1, 100, 1))
    clip_skip: int = param(1, minimum=1, maximum=12, label="Clip skip", infotext="Clip skip", a1111=None,
                           setting="CLIP_stop_at_last_layers",
                           help="stop at the n-th last CLIP layer (A1111's CLIP skip)")
    subseed: int = param(-1, minimum=-1, maximum=SEED_MAX, label="Variation seed", infotext="Variation seed",
                         group="seed extras (A1111's Extra checkbox)", help="variation seed (-1 = random)")
    """A1111's variation seed (-1 = random when a strength is set); image i uses subseed + i."""
    subseed_strength: float = param(0.0, minimum=0.0, maximum=1.0, label="Variation strength",
                                    infotext="Variation seed strength", group="seed extras (A1111's Extra checkbox)",
                                    ui=(0.0, 1.0, 0.01), help="variation strength 0..1")
    """0 = no variation; 1 = the variation seed's noise alone (slerp between the two noises)."""
    seed_resize_from_w: int = param(0, minimum=0, maximum=MAX_SIDE, label="Resize seed from width",
                                    infotext="Seed resize from-1", a1111_default=-1, a1111_minimum=-1,
                                    group="seed extras (A1111's Extra checkbox)", ui=(0, 2048, 8),
                                    help="resize seed from width (0 = off)")
    seed_resize_from_h: int = param(0, minimum=0, maximum=MAX_SIDE, label="Resize seed from height",
                                    infotext="Seed resize from-2", a1111_default=-1, a1111_minimum=-1,
                                    group="seed extras (A1111's Extra checkbox)", ui=(0, 2048, 8),
                                    help="resize seed from height (0 = off)")
    """"Resize seed from width/height": make the noise as if the image were this size (0 = off)."""
    eta_noise_seed_delta: int = param(0, minimum=0, maximum=SEED_MAX, label="Eta noise seed delta", infotext="ENSD",
                                      a1111=None, setting="eta_noise_seed_delta", cli=("--ensd",),
                                      group="seed extras (A1111's Extra checkbox)",
                                      help="eta noise seed delta (A1111 setting)")
    """A1111's ENSD setting: ancestral/SDE samplers draw their step noise from seed + this."""
    rng: str = param("gpu", choices=RNG_SOURCES, label="Random number generator source", infotext="RNG", a1111=None,
                     setting="randn_source", from_setting=str.lower, group="seed extras (A1111's Extra checkbox)",
                     help="A1111's RNG source; nv = NVIDIA's GPU noise reproduced on any device")
    eta: float | None = param(None, float, minimum=0.0, maximum=10.0, nullable=True, label="Eta", infotext="Eta",
                              setting="eta_ancestral", infotext_settings=(("Eta", "eta_ancestral"),
                                                                          ("Eta DDIM", "eta_ddim")),
                              group="sampler parameters (A1111 settings; default: the sampler's own)",
                              help="noise multiplier of ancestral/SDE samplers (1.0) or DDIM (0)")
    """Noise multiplier of ancestral/SDE samplers (A1111 default 1.0) or DDIM (default 0); None = default."""
    s_churn: float | None = param(None, float, minimum=0.0, maximum=100.0, nullable=True, infotext="Sigma churn",
                                  setting="s_churn", group="sampler parameters (A1111 settings; default: the sampler's own)")
    s_tmin: float | None = param(None, float, minimum=0.0, maximum=1000.0, nullable=True, infotext="Sigma tmin",
                                 setting="s_tmin", group="sampler parameters (A1111 settings; default: the sampler's own)")
    s_tmax: float | None = param(None, float, minimum=0.0, nullable=True, infotext="Sigma tmax", setting="s_tmax",
                                 group="sampler parameters (A1111 settings; default: the sampler's own)")
    s_noise: float | None = param(None, float, minimum=0.0, maximum=10.0, nullable=True, infotext="Sigma noise",
                                  setting="s_noise", group="sampler parameters (A1111 settings; default: the sampler's own)")
    """Karras et al.'s stochasticity options for Euler / Heun / DPM2 (A1111's "Sigma churn" etc.)."""
    sigma_min: float | None = param(None, float, minimum=0.0, maximum=1000.0, nullable=True, a1111=None,
                                    infotext="Schedule min sigma", setting="sigma_min",
                                    group="sampler parameters (A1111 settings; default: the sampler's own)",
                                    help="schedule min sigma (0 = the model's)")
    sigma_max: float | None = param(None, float, minimum=0.0, maximum=1000.0, nullable=True, a1111=None,
                                    infotext="Schedule max sigma", setting="sigma_max",
                                    group="sampler parameters (A1111 settings; default: the sampler's own)",
                                    help="schedule max sigma (0 = the model's)")
    rho: float | None = param(None, float, minimum=0.0, maximum=100.0, nullable=True, a1111=None,
                              infotext="Schedule rho", setting="rho",
                              group="sampler parameters (A1111 settings; default: the sampler's own)",
                              help="schedule rho (0 = the schedule's)")
    """Schedule overrides (A1111 settings "sigma min/max", "rho"); None or 0 = the model's / schedule's own."""
    discard_penultimate_sigma: bool = param(False, a1111=None, infotext="Discard penultimate sigma",
                                            setting="always_discard_next_to_last_sigma",
                                            group="sampler parameters (A1111 settings; default: the sampler's own)",
                                            help="A1111's 'Always discard next-to-last sigma'")
    emphasis: str = param("Original", choices=EMPHASIS_MODES, label="Emphasis mode", infotext="Emphasis", a1111=None,
                          setting="emphasis", help="A1111's emphasis mode for (word:1.2) / [word]")
    """A1111's "Emphasis mode" setting: Original, No norm, Ignore or None (see `pipelines.conditioning`)."""
    tiling: bool = param(False, label="Tiling", infotext="Tiling", a1111_default=None,
                         help="seamless images: the picture wraps around at its edges")
    """Seamless images: circular padding in the UNet's and VAE's convolutions (A1111's "Tiling")."""
    token_merging_ratio: float = param(0.0, minimum=0.0, maximum=0.9, label="Token merging ratio",
                                       infotext="Token merging ratio", a1111=None, setting="token_merging_ratio",
                                       group="speed (A1111 settings)",
                                       help="merge this fraction of the tokens in the UNet's full-resolution "
                                            "self-attention: faster, less detail (0 = off; A1111's setting)")
    """A1111's `token_merging_ratio` (img2img: `token_merging_ratio_img2img` when it is not 0): ToMe SD
    (`models.token_merging`) in the first pass. Infotext `Token merging ratio` when not 0."""
    restore_faces: bool = param(False, label="Restore faces", a1111_default=None, setting="face_restoration",
                                group="face restoration",
                                help="restore faces in each image (GFPGAN, CodeFormer or RestoreFormer)")
    """A1111's "Restore faces": each image's faces restored before it is saved (`pipelines.face_restoration`);
    the infotext says `Face restoration: <model>`. Default: the setting `face_restoration`."""
    face_restoration_model: str = param("CodeFormer", max_length=200, choices=("CodeFormer", "GFPGAN", "RestoreFormer"),
                                        label="Face restoration model", a1111=None, setting="face_restoration_model",
                                        group="face restoration")
    code_former_weight: float = param(0.5, minimum=0.0, maximum=1.0, label="CodeFormer weight", a1111=None,
                                      setting="code_former_weight", group="face restoration", ui=(0.0, 1.0, 0.01),
                                      help="CodeFormer's fidelity: 0 = maximum effect, 1 = minimum")
    """A1111's settings `face_restoration_model` and `code_former_weight`, as parameters so that a job (and
    X/Y/Z's "Face restore" axis) can choose them."""
    denoising_strength: float = param(0.7, minimum=0.0, maximum=1.0, label="Denoising strength",
                                      infotext="Denoising strength", a1111_default=0.75, a1111_optional=True,
                                      ui=(0.0, 1.0, 0.01),
                                      group="hires fix")
    """How much of the image is repainted: the hires pass's (A1111's UI default 0.7), img2img's own (0.75)."""

    def __post_init__(self) -> None:
        for spec in param_specs(type(self)):
            value = getattr(self, spec.name)
            if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, spec.name, float(value))  # 7 -> 7.0, as a JSON client sends it
            spec.check(value)

    @property
    def image_count(self) -> int:
        return self.batch_size * self.batch_count

    @property
    def seed_resize_from(self) -> tuple[int, int] | None:
        """(width, height) when A1111's "resize seed from" is on (both sides > 0)."""
        if self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0:
            return self.seed_resize_from_w, self.seed_resize_from_h
        return None

    def replace(self: P, **changes) -> P:
        """A copy with `changes`, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[P], values: Mapping[str, Any]) -> P:
        """From stored values; keys this class does not declare are left out (a parameter that was removed)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


@dataclass(frozen=True)
class Txt2ImgParams(GenerationParams):
    """txt2img: the common parameters plus hires fix and the refiner (A1111's `StableDiffusionProcessingTxt2Img`)."""

    KIND: ClassVar[str] = "txt2img"

    enable_hr: bool = param(False, label="Hires. fix", group="hires fix", help="a second pass at a larger size")
    """Hires fix: a second pass at a larger size (A1111's `enable_hr`); the `hr_*` fields below shape it."""
    hr_scale: float = param(2.0, minimum=0.0, maximum=16.0, label="Upscale by", infotext="Hires upscale",
                            a1111_minimum=0.0, group="hires fix", ui=(1.0, 4.0, 0.05))
    hr_upscaler: str = param("Latent", max_length=500, label="Upscaler", infotext="Hires upscaler",
                             a1111_default=None, group="hires fix",
                             help="a latent mode or an upscaler's name (Lanczos, an ESRGAN file, ...)")
    """A latent mode ("Latent", "Latent (bicubic)", ...) or an image upscaler's name (Lanczos, an ESRGAN file...)."""
    hr_second_pass_steps: int = param(0, minimum=0, maximum=MAX_STEPS, label="Hires steps", infotext="Hires steps",
                                      group="hires fix", ui=(0, 150, 1), help="0 = as many as the first pass")
    hr_resize_x: int = param(0, minimum=0, maximum=MAX_SIDE, label="Resize width to", infotext="Hires resize-1",
                             group="hires fix", ui=(0, 2048, 8))
    hr_resize_y: int = param(0, minimum=0, maximum=MAX_SIDE, label="Resize height to", infotext="Hires resize-2",
                             group="hires fix", ui=(0, 2048, 8))
    """"Resize width/height to" (0 = from `hr_scale`; one of them 0 = keep the aspect ratio)."""
    hr_checkpoint: str | None = param(None, str, max_length=500, nullable=True, label="Hires checkpoint",
                                      infotext="Hires checkpoint", a1111="hr_checkpoint_name", group="hires fix",
                                      help="checkpoint for the hires pass (default: the job's)")
    hr_sampler: str | None = param(None, str, max_length=200, nullable=True, label="Hires sampling method",
                                   infotext="Hires sampler", a1111="hr_sampler_name", group="hires fix")
    hr_scheduler: str | None = param(None, str, max_length=200, nullable=True, label="Hires schedule type",
                                     infotext="Hires schedule type", group="hires fix")
    """None = the first pass's (A1111's "Use same sampler" / "Use same scheduler")."""
    hr_prompt: str = param("", max_length=PROMPT_MAX, label="Hires prompt", infotext="Hires prompt", group="hires fix")
    hr_negative_prompt: str = param("", max_length=PROMPT_MAX, label="Hires negative prompt",
                                    infotext="Hires negative prompt", group="hires fix")
    """Empty = the first pass's prompt (as A1111)."""
    token_merging_ratio_hr: float = param(0.0, minimum=0.0, maximum=0.9, label="Token merging ratio for high-res pass",
                                          infotext="Token merging ratio hr", a1111=None,
                                          setting="token_merging_ratio_hr", group="hires fix",
                                          help="token merging in the hires pass (0 = the first pass's ratio)")
    """A1111's `token_merging_ratio_hr`: the hires pass's ratio; 0 = the first pass's (`hires_token_merging_ratio`)."""
    refiner_checkpoint: str | None = param(None, str, max_length=500, nullable=True, label="Refiner",
                                           infotext="Refiner", group="refiner",
                                           help="checkpoint that takes over sampling at --refiner-switch-at")
    """SDXL refiner (or any checkpoint) that takes over sampling at `refiner_switch_at` (None = no refiner)."""
    refiner_switch_at: float = param(0.8, minimum=0.0, maximum=1.0, label="Switch at", infotext="Refiner switch at",
                                     a1111_default=None, group="refiner", ui=(0.01, 1.0, 0.01))
    """Fraction of the model's noise levels done when the refiner takes over (A1111: measured by sigma)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.enable_hr:
            if self.hr_scale < 1.0:
                raise ParamError("hr_scale", f"must be a number between 1 and 16, got {self.hr_scale!r}")
            width, height = self.hires_size
            if max(width, height) > MAX_SIDE or min(width, height) < 8:
                raise ParamError("hr_scale", f"the hires size {width}x{height} is outside 8..{MAX_SIDE}")

    @property
    def hires_token_merging_ratio(self) -> float:
        """A1111's `get_token_merging_ratio(for_hr=True)`: the hires ratio, else the first pass's."""
        return self.token_merging_ratio_hr or self.token_merging_ratio

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


# ---- reading the declarations ------------------------------------------------------------------------------------


def param_specs(cls: type[GenerationParams]) -> tuple[ParamSpec, ...]:
    """The declarations of a parameters class, in field order, with their names."""
    found = _SPECS.get(cls)
    if found is None:
        found = tuple(dataclasses.replace(f.metadata["param"], name=f.name)
                      for f in dataclasses.fields(cls) if "param" in f.metadata)
        _SPECS[cls] = found
    return found


_SPECS: dict[type, tuple[ParamSpec, ...]] = {}
"""Per-class cache of `param_specs` (the declarations never change after import)."""


def spec_of(cls: type[GenerationParams], name: str) -> ParamSpec:
    for spec in param_specs(cls):
        if spec.name == name:
            return spec
    raise KeyError(name)


def infotext_fields(cls: type[GenerationParams]) -> dict[str, ParamSpec]:
    """Infotext label -> the request parameter it fills (A1111's `paste_fields`); setting-backed parameters are
    left out (`infotext_settings` has them)."""
    return {spec.infotext: spec for spec in param_specs(cls) if spec.infotext and not spec.setting_pairs}


def infotext_labels(*classes: type[GenerationParams]) -> dict[str, str]:
    """Parameter name -> the infotext key it is written under: the label its declaration gives, with the parser's
    "-1" / "-2" halves joined ("width" and "height" are written together as "Size: 512x768")."""
    labels: dict[str, str] = {}
    for cls in classes or (Txt2ImgParams,):
        for spec in param_specs(cls):
            if spec.infotext:
                base, _, half = spec.infotext.rpartition("-")
                labels[spec.name] = base if half in ("1", "2") and base else spec.infotext
    return labels


def infotext_settings(*classes: type[GenerationParams]) -> dict[str, tuple[str, type]]:
    """Infotext label -> (setting, type) for the parameters a pasted infotext sets as settings (A1111's
    `infotext_to_setting_name_mapping`: Clip skip, ENSD, RNG, Eta, the schedule and sigma options, img2img's noise
    multiplier and mask weight), over the given parameter classes."""
    return {label: (setting, spec.kind) for cls in classes for spec in param_specs(cls)
            for label, setting in spec.setting_pairs}


def value_from_text(kind: type, text: object) -> object:
    """An infotext value (always text) as a parameter of type `kind`; ValueError when it is not one."""
    if kind is bool:
        if str(text) not in ("True", "False", "true", "false"):
            raise ValueError(f"not true or false: {text!r}")
        return str(text).lower() == "true"
    if kind is int:
        number = float(str(text))
        if not number.is_integer():
            raise ValueError(f"not a whole number: {text!r}")
        return int(number)
    return kind(text)


def settings_defaults(cls: type[GenerationParams], given: Mapping[str, Any], settings: Mapping[str, Any],
                      sampler_options: Mapping[str, Any]) -> dict[str, Any]:
    """The values `settings` supply for the parameters a request left out (`given` holds what it gave).

    A1111 reads these from its options at generation time. Sampler parameters (eta, sigma churn/tmin/tmax/noise,
    schedule sigma range and rho) are taken only where they differ from what the sampler does anyway, so a job
    that never touched them keeps the sampler's own defaults in its infotext; `sampler_options` are the chosen
    sampler's defaults."""
    values: dict[str, Any] = {}
    for spec in param_specs(cls):
        if spec.setting is None or given.get(spec.name) is not None or spec.setting not in settings:
            continue
        value = settings[spec.setting]
        if spec.name == "eta":
            default_eta = sampler_options.get("eta", 1.0)
            value = settings["eta_ddim"] if default_eta == 0.0 else settings["eta_ancestral"]
            if "eta" not in sampler_options or float(value) == float(default_eta):
                continue
        elif spec.name in NEUTRAL_SAMPLER_SETTINGS:
            if float(value) == NEUTRAL_SAMPLER_SETTINGS[spec.name]:
                continue
        elif spec.name in ("s_tmax", "sigma_min", "sigma_max", "rho") and not float(value) > 0:
            continue  # 0 = the sampler's / schedule's own
        elif spec.kind is bool and not value:
            continue
        elif spec.name == "token_merging_ratio":
            # A1111's img2img takes `token_merging_ratio_img2img` when it is not 0 (a request's override_settings
            # of `token_merging_ratio` win over it: the service clears the img2img one in `settings` then; X/Y/Z's
            # axis sets the parameter itself, which wins too).
            if cls.KIND == "img2img" and settings.get("token_merging_ratio_img2img"):
                value = settings["token_merging_ratio_img2img"]
            if not float(value):
                continue
        elif spec.name == "token_merging_ratio_hr" and not float(value):
            continue
        values[spec.name] = spec.from_setting(value) if spec.from_setting else spec.kind(value)
    return values


NEUTRAL_SAMPLER_SETTINGS = {"s_churn": 0.0, "s_tmin": 0.0, "s_noise": 1.0}
"""Settings values that mean "no change" to the samplers that take them."""


__all__ = [
    "ParamError", "ParamSpec", "param", "GenerationParams", "Txt2ImgParams", "param_specs", "spec_of",
    "infotext_fields", "infotext_labels", "infotext_settings", "settings_defaults", "value_from_text", "EMPHASIS_MODES", "MAX_SIDE", "MAX_STEPS",
    "SEED_MAX", "PROMPT_MAX", "DEFAULT_SAMPLER", "DEFAULT_SCHEDULER", "RNG_SOURCES",
]
