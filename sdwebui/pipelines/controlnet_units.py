"""ControlNet units as the sd-webui-controlnet extension takes them (v1.1.455, `internal_controlnet/args.py`,
`scripts/enums.py`), checked at the API edge, and the table of preprocessors with their sliders.

A unit is a JSON object with the extension's field names; what a client leaves out takes the extension's default
(note: `enabled` defaults to False there, so a client must say `"enabled": true`). Accepted forms, as the
extension's validators accept them:

- `resize_mode`: "Just Resize" / "Crop and Resize" / "Resize and Fill", the old names ("Inner Fit (Scale to Fit)",
  "Envelope (Outer Fit)", ...) or 0 / 1 / 2 (3, A1111's "Just Resize (Latent upscale)", is Just Resize);
- `control_mode`: "Balanced" / "My prompt is more important" / "ControlNet is more important" or 0 / 1 / 2;
- `image`: base64 (a data URL too), `{"image": b64, "mask": b64}` or `[image, mask]`; `mask` (or Forge's
  `mask_image`) beside it; the legacy aliases `input_image`, `guidance` (= guidance_end), `lowvram`;
- `processor_res`, `threshold_a`, `threshold_b`: a value outside the preprocessor's slider range (the extension
  sends -1) takes the slider's default, as the extension's `bound_check_params` does.

The checked unit is a plain dict (the job stores its scripts' arguments as JSON): images stay base64 text, the
enums become their display names.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.controlnet_annotators import missing_message
from sdwebui.pipelines.scripts import ScriptArg

API_VERSION = 3
"""`GET /controlnet/version` (the extension's `get_api_version`)."""
UNIT_COUNT = 3
"""The extension's default `control_net_unit_count` (`/controlnet/settings`): units in the UI and in the script's
positional arguments."""

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {
    "Inner Fit (Scale to Fit)": "Crop and Resize",
    "Outer Fit (Shrink to Fit)": "Resize and Fill",
    "Scale to Fit (Inner Fit)": "Crop and Resize",
    "Envelope (Outer Fit)": "Resize and Fill",
}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HIRES_OPTIONS = ("Both", "Low res only", "High res only")
MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class Slider:
    """A preprocessor parameter (the extension's `PreprocessorParameter`)."""

    label: str
    value: float
    minimum: float
    maximum: float
    step: float = 0.01

    def api_json(self) -> dict:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}


RESOLUTION = Slider("Resolution", 512, 64, 2048, 8)


@dataclass(frozen=True)
class PreprocessorSpec:
    """A preprocessor (module) as the extension lists it: its name, UI label, sliders and tags."""

    name: str
    label: str = ""
    resolution: Slider | None = RESOLUTION
    slider_1: Slider | None = None
    slider_2: Slider | None = None
    model_free: bool = False
    """The extension's `do_not_need_model` (reference_only runs without a ControlNet model)."""
    tags: tuple[str, ...] = ()
    clip: str | None = None
    """For IP-Adapter modules: the CLIP image encoder they run ("clip_h" ViT-H, "clip_g" ViT-bigG; "auto": by the
    model's name, as the extension's `ip-adapter-auto`)."""
    weights: str | None = None
    """For preprocessors that need downloaded weights: the folder below `models/` they would come from."""

    @property
    def display(self) -> str:
        return self.label or self.name

    def sliders(self) -> list[Slider]:
        return [s for s in (self.resolution, self.slider_1, self.slider_2) if s is not None]


PREPROCESSORS: tuple[PreprocessorSpec, ...] = (  # "none" first, then roughly the extension's sort (its priority)
    PreprocessorSpec("none", resolution=None, tags=("InstructP2P",)),
    PreprocessorSpec("canny", slider_1=Slider("Low Threshold", 100, 1, 255, 1),
                     slider_2=Slider("High Threshold", 200, 1, 255, 1), tags=("Canny",)),
    PreprocessorSpec("invert", "invert (from white bg & black line)", resolution=None,
                     tags=("Canny", "Lineart", "Scribble", "MLSD")),
    PreprocessorSpec("blur_gaussian", slider_1=Slider("Sigma", 9.0, 0.01, 64.0), tags=("Tile",)),
    PreprocessorSpec("tile_resample", resolution=None, slider_1=Slider("Down Sampling Rate", 1.0, 1.0, 8.0),
                     tags=("Tile",)),
    PreprocessorSpec("color", "t2ia_color_grid", tags=("T2I-Adapter",)),
    PreprocessorSpec("shuffle", resolution=None, tags=("Shuffle",)),
    PreprocessorSpec("scribble_xdog", slider_1=Slider("XDoG Threshold", 32, 1, 64), tags=("Scribble",)),
    PreprocessorSpec("lineart_standard", "lineart_standard (from white bg & black line)", resolution=None,
                     tags=("Lineart",)),
    PreprocessorSpec("threshold", slider_1=Slider("Binarization Threshold", 127, 0, 255)),
    PreprocessorSpec("binary", slider_1=Slider("Binary threshold", 0, 0, 255, 1), tags=("Scribble",)),
    # recolor: the image's lightness as the map; after decoding it replaces the image's own
    # (`controlnet_preprocess.recolor_image`)
    PreprocessorSpec("recolor_luminance", resolution=None, slider_1=Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001),
                     tags=("Recolor",)),
    PreprocessorSpec("recolor_intensity", resolution=None, slider_1=Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001),
                     tags=("Recolor",)),
    # reference: no model; the image's self-attention keys / values (and AdaIN statistics) steer the UNet
    PreprocessorSpec("reference_only", resolution=None, model_free=True, tags=("Reference",),
                     slider_1=Slider("Style Fidelity (only for Balanced mode)", 0.5, 0.0, 1.0)),
    PreprocessorSpec("reference_adain", resolution=None, model_free=True, tags=("Reference",),
                     slider_1=Slider("Style Fidelity (only for Balanced mode)", 0.5, 0.0, 1.0)),
    PreprocessorSpec("reference_adain+attn", resolution=None, model_free=True, tags=("Reference",),
                     slider_1=Slider("Style Fidelity (only for Balanced mode)", 0.5, 0.0, 1.0)),
    # IP-Adapter: the unit's image through a CLIP image encoder from models/clip_vision (no map, no control mode)
    PreprocessorSpec("ip-adapter-auto", resolution=None, tags=("IP-Adapter",), clip="auto"),
    PreprocessorSpec("ip-adapter_clip_sd15", "ip-adapter_clip_h", resolution=None, tags=("IP-Adapter",),
                     clip="clip_h"),
    PreprocessorSpec("ip-adapter_clip_sdxl", "ip-adapter_clip_g", resolution=None, tags=("IP-Adapter",),
                     clip="clip_g"),
    PreprocessorSpec("ip-adapter_clip_sdxl_plus_vith", resolution=None, tags=("IP-Adapter",), clip="clip_h"),
    # Weighted preprocessors: run from models/ControlNetAnnotators/<weights>/ where supported and present
    # (controlnet_annotators), else refused naming that folder.
    PreprocessorSpec("depth", "depth_midas", tags=("Depth",), weights="midas"),
    PreprocessorSpec("depth_anything", tags=("Depth",), weights="depth_anything"),
    PreprocessorSpec("openpose", tags=("OpenPose",), weights="openpose"),
    PreprocessorSpec("openpose_full", tags=("OpenPose",), weights="openpose"),
    PreprocessorSpec("dw_openpose_full", tags=("OpenPose",), weights="openpose"),
    PreprocessorSpec("hed", "softedge_hed", tags=("SoftEdge",), weights="hed"),
    PreprocessorSpec("lineart", "lineart_realistic", tags=("Lineart",), weights="lineart"),
    PreprocessorSpec("mlsd", slider_1=Slider("MLSD Value Threshold", 0.1, 0.01, 2.0),
                     slider_2=Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0), tags=("MLSD",),
                     weights="mlsd"),
    PreprocessorSpec("normal_bae", tags=("NormalMap",), weights="normal_bae"),
    PreprocessorSpec("segmentation", "seg_ufade20k", tags=("Segmentation",), weights="uniformer"),
)
WEIGHTS_DIR = "ControlNetAnnotators"
"""Where weighted preprocessors find their weights: `models/ControlNetAnnotators/<weights>` (the extension's
`annotator/downloads/<weights>`; sdwebui never downloads them)."""

_BY_NAME = {spec.name: spec for spec in PREPROCESSORS}
_BY_LABEL = {spec.display: spec for spec in PREPROCESSORS}


def find_preprocessor(name: str) -> PreprocessorSpec | None:
    """A module by its name or UI label (the extension's `get_preprocessor` looks up both)."""
    return _BY_LABEL.get(name) or _BY_NAME.get(name)


def module_list(alias_names: bool = False) -> list[str]:
    """`/controlnet/module_list`: "none" first, then the others as the extension sorts them."""
    return [spec.display if alias_names else spec.name for spec in PREPROCESSORS]


def module_detail(alias_names: bool = False) -> dict[str, dict]:
    return {
        (spec.display if alias_names else spec.name): {"model_free": spec.model_free,
                                                       "sliders": [s.api_json() for s in spec.sliders()]}
        for spec in PREPROCESSORS
    }


TAG_FILTERS = {"instructp2p": ("ip2p",), "segmentation": ("seg",), "normalmap": ("normal",),
               "t2i-adapter": ("t2i_adapter", "t2iadapter", "t2ia", "t2i-adapter"), "ip-adapter": ("ip_adapter",),
               "openpose": ("openpose", "densepose"),
               "scribble": ("sketch",), "tile": ("blur",)}


def control_types(model_titles: list[str]) -> dict[str, dict]:
    """`/controlnet/control_types`: for "All" and each preprocessor tag, its modules (labels), the models whose
    names mention it ("None" first), and the defaults, as the extension's `select_control_type` picks them."""
    tags = ["All", *sorted({tag for spec in PREPROCESSORS for tag in spec.tags})]
    out = {}
    for tag in tags:
        if tag == "All":
            out[tag] = {"module_list": module_list(True), "model_list": ["None", *model_titles],
                        "default_option": "none", "default_model": "None"}
            continue
        pattern = tag.lower()
        filters = (pattern, *TAG_FILTERS.get(pattern, ()))
        models = ["None", *(title for title in model_titles if any(f in title.lower() for f in filters))]
        default_model = "None" if len(models) == 1 else \
            next((m for m in models[1:] if "11" in m.split("[")[0]), models[1])
        modules = [spec.display for spec in PREPROCESSORS if tag in spec.tags or spec.name == "none"]
        out[tag] = {"module_list": modules, "model_list": models,
                    "default_option": modules[0] if len(modules) == 1 else modules[1], "default_model": default_model}
    return out


# ---- units -----------------------------------------------------------------------------------------------------

UNIT_DEFAULTS: dict[str, Any] = {
    "enabled": False, "module": "none", "model": "None", "weight": 1.0, "image": None, "mask": None,
    "resize_mode": "Crop and Resize", "low_vram": False, "processor_res": -1, "threshold_a": -1.0,
    "threshold_b": -1.0, "guidance_start": 0.0, "guidance_end": 1.0, "pixel_perfect": False,
    "control_mode": "Balanced", "hr_option": "Both", "save_detected_map": True,
}
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                   "guidance_start", "guidance_end", "pixel_perfect", "control_mode")
"""The extension's `ControlNetUnit.infotext_fields()`, in its order."""
_ALIASES = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image", "mask_image": "mask"}


def _b64_image(text: Any, loc: tuple):
    """A base64 image (a data URL too) as a PIL image, or a ParamError at `loc`."""
    if not isinstance(text, str) or not text:
        raise ParamError(loc, f"must be a base64-encoded image, got {type(text).__name__}")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=False)
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise ParamError(loc, f"image too large ({image.width}x{image.height})")
        image.load()
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise ParamError(loc, f"cannot decode the image ({error})") from None
    return image


def decode_image(text: str):
    """A unit's base64 image as an RGB / L / RGBA PIL image (checked already)."""
    return _b64_image(text, ("image",))


def _enum(value: Any, names: tuple[str, ...], loc: tuple, aliases: Mapping[str, str] | None = None) -> str:
    if isinstance(value, str):
        value = (aliases or {}).get(value, value)
        if value in names:
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        index = int(value)
        if names is RESIZE_MODES and index == 3:  # A1111's "Just Resize (Latent upscale)"
            return names[0]
        if 0 <= index < len(names):
            return names[index]
    raise ParamError(loc, f"must be one of {', '.join(names)} (or 0 to {len(names) - 1}), got {value!r}")


def _number(value: Any, loc: tuple, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(loc, f"must be a number, got {value!r}")
    if not low <= value <= high:
        raise ParamError(loc, f"must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


def _bool(value: Any, loc: tuple) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ParamError(loc, f"must be true or false, got {value!r}")


def check_unit(value: Any, loc: tuple, model_exists: Callable[[str], bool] | None = None,
               annotators: Path | None = None) -> dict[str, Any]:
    """One unit as a client sent it -> the checked unit (a dict of the extension's fields), or a ParamError at
    `loc + (field,)`. `model_exists(name)`: whether a ControlNet model of that name is installed (None: not
    checked)."""
    if isinstance(value, str):  # the web UI's unit box, or a client that sends the unit as JSON text
        if not value.strip():
            value = None
        else:
            try:
                value = json.loads(value)
            except ValueError as error:
                raise ParamError(loc, f"a ControlNet unit must be a JSON object ({error})") from None
    if value is None:
        return dict(UNIT_DEFAULTS)
    if not isinstance(value, Mapping):
        raise ParamError(loc, f"a ControlNet unit must be an object, got {type(value).__name__}")
    given = dict(value)
    for alias, field_name in _ALIASES.items():
        if alias in given:
            if given.get(field_name) is not None:
                raise ParamError((*loc, alias), f"give either {alias!r} or {field_name!r}, not both")
            given[field_name] = given.pop(alias)
    unit = dict(UNIT_DEFAULTS)
    unit.update({key: val for key, val in given.items() if key in UNIT_DEFAULTS and val is not None})

    def at(name: str) -> tuple:
        return (*loc, name)

    unit["enabled"] = _bool(unit["enabled"], at("enabled"))
    unit["pixel_perfect"] = _bool(unit["pixel_perfect"], at("pixel_perfect"))
    unit["low_vram"] = _bool(unit["low_vram"], at("low_vram"))
    unit["save_detected_map"] = _bool(unit["save_detected_map"], at("save_detected_map"))
    if not isinstance(unit["module"], str) or find_preprocessor(unit["module"]) is None:
        raise ParamError(at("module"), f"module({unit['module']}) not found in supported modules.")
    spec = find_preprocessor(unit["module"])
    unit["module"] = spec.name
    if not isinstance(unit["model"], str):
        raise ParamError(at("model"), f"must be a model name, got {unit['model']!r}")
    unit["weight"] = _number(unit["weight"], at("weight"), 0.0, 2.0)
    unit["guidance_start"] = _number(unit["guidance_start"], at("guidance_start"), 0.0, 1.0)
    unit["guidance_end"] = _number(unit["guidance_end"], at("guidance_end"), 0.0, 1.0)
    if unit["guidance_start"] > unit["guidance_end"]:
        raise ParamError(at("guidance_start"),
                         f"guidance_start({unit['guidance_start']:g}) > guidance_end({unit['guidance_end']:g})")
    unit["resize_mode"] = _enum(unit["resize_mode"], RESIZE_MODES, at("resize_mode"), RESIZE_ALIASES)
    unit["control_mode"] = _enum(unit["control_mode"], CONTROL_MODES, at("control_mode"))
    unit["hr_option"] = _enum(unit["hr_option"], HIRES_OPTIONS, at("hr_option"))
    for name, slider in (("processor_res", spec.resolution), ("threshold_a", spec.slider_1),
                         ("threshold_b", spec.slider_2)):
        number = _number(unit[name], at(name))
        if slider is None or not slider.minimum <= number <= slider.maximum:
            number = slider.value if slider is not None else -1  # the extension's bound_check_params
        unit[name] = int(number) if name == "processor_res" else float(number)
    image, mask = unit["image"], unit["mask"]
    if isinstance(image, Mapping):
        image, mask = image.get("image"), image.get("mask", mask)
    elif isinstance(image, (list, tuple)):
        if len(image) == 1 and isinstance(image[0], Mapping):
            image, mask = image[0].get("image"), image[0].get("mask", mask)
        elif len(image) == 2 and all(isinstance(part, (str, type(None))) for part in image):
            image, mask = image
        else:
            raise ParamError(at("image"), "must be a base64 image, {\"image\": ..., \"mask\": ...} or [image, mask]")
    if image is not None:
        _b64_image(image, at("image"))
    if mask is not None:
        if image is None:
            raise ParamError(at("mask"), "a mask needs an image")
        _b64_image(mask, at("mask"))
    unit["image"], unit["mask"] = image, mask
    if unit["enabled"]:
        if spec.weights is not None:
            why = missing_message(spec.name, spec.display, annotators, spec.weights)
            if why is not None:
                raise ParamError(at("module"), why)
        wants_model = not spec.model_free
        if wants_model and unit["model"] in ("None", ""):
            raise ParamError(at("model"), "the unit is enabled but names no ControlNet model")
        if wants_model and model_exists is not None and not model_exists(unit["model"]):
            raise ParamError(at("model"), f"model({unit['model']}) not found in supported models.")
    return unit


def serialize_unit(unit: Mapping[str, Any], model_title: str | None = None) -> str:
    """The extension's `ControlNetUnit.serialize()`: "Module: canny, Model: name [hash], Weight: 1.0, ..."."""
    def text(name: str) -> str:
        value = unit[name]
        if name == "model" and model_title:
            value = model_title
        return str(value)

    return ", ".join(f"{' '.join(word.capitalize() for word in name.split('_'))}: {text(name)}"
                     for name in INFOTEXT_FIELDS)


def parse_unit_infotext(text: str) -> dict[str, Any]:
    """The extension's `ControlNetUnit.parse`: an infotext entry back to unit fields (enabled)."""
    unit: dict[str, Any] = {"enabled": True}
    for item in text.split(","):
        key, sep, value = item.strip().partition(": ")
        if not sep:
            continue
        field_name = "_".join(word.lower() for word in key.split(" "))
        unit[field_name] = _parse_value(value)
    return unit


def _parse_value(value: str) -> Any:
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


@dataclass(frozen=True)
class ControlNetUnitArg(ScriptArg):
    """One ControlNet unit as a script argument (`alwayson_scripts.controlnet.args[i]`)."""

    kind: type = dict
    default: Any = None
    model_exists: Callable[[str], bool] | None = None
    annotators: Path | None = None
    """`models/ControlNetAnnotators`: where weighted preprocessors find their weights."""

    def check(self, value: Any, loc: tuple) -> Any:
        return check_unit(value, loc, self.model_exists, self.annotators)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "value": None}


__all__ = ["API_VERSION", "UNIT_COUNT", "RESIZE_MODES", "CONTROL_MODES", "PREPROCESSORS", "PreprocessorSpec",
           "Slider", "find_preprocessor", "module_list", "module_detail", "control_types", "check_unit", "serialize_unit",
           "parse_unit_infotext", "decode_image", "ControlNetUnitArg", "UNIT_DEFAULTS", "INFOTEXT_FIELDS",
           "WEIGHTS_DIR"]
