"""Extras (A1111's "postprocessing"): upscale images with one or two upscalers, without diffusion.

Reference: A1111 `modules/postprocessing.py` and `scripts/postprocessing_upscale.py`: "Scale by" multiplies the
size; "Scale to" upscales by the larger of the two factors and, with "Crop to fit", centres the result on a
canvas of exactly the asked size; a second upscaler's result is blended over the first with its visibility.
The infotext keys are A1111's (`Postprocess upscale by`, `Postprocess upscale to`, `Postprocess crop to`,
`Postprocess upscaler`, `Postprocess upscaler 2`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from sdwebui.models.upscalers import UpscalerLibrary
from sdwebui.pipelines.infotext import build_params_line
from sdwebui.pipelines.params import MAX_SIDE, ParamError
from sdwebui.pipelines.upscale import TileOptions, upscale_image


@dataclass(frozen=True)
class ExtrasParams:
    resize_mode: int = 0
    """0 = scale by `upscaling_resize`; 1 = scale to `upscaling_resize_w` x `upscaling_resize_h`."""
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    upscaler_2_visibility: float = 0.0

    def __post_init__(self) -> None:
        if self.resize_mode not in (0, 1):
            raise ParamError("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {self.resize_mode!r}")
        if isinstance(self.upscaling_resize, bool) or not isinstance(self.upscaling_resize, (int, float)) or not (
            0 < float(self.upscaling_resize) <= 16
        ):
            raise ParamError("upscaling_resize", f"must be a number above 0 and at most 16, got {self.upscaling_resize!r}")
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not (8 <= value <= MAX_SIDE):
                raise ParamError(name, f"must be an integer between 8 and {MAX_SIDE}, got {value!r}")
        if not (0.0 <= float(self.upscaler_2_visibility) <= 1.0):
            raise ParamError("extras_upscaler_2_visibility", "must be between 0 and 1")

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """The size an image of (width, height) comes out at (for limits checked before any work)."""
        if self.upscaler_1 in ("", "None"):
            return width, height
        if self.resize_mode == 1:
            if self.upscaling_crop:
                return self.upscaling_resize_w, self.upscaling_resize_h
            scale = max(self.upscaling_resize_w / width, self.upscaling_resize_h / height)
        else:
            scale = float(self.upscaling_resize)
        return int(width * scale // 8 * 8), int(height * scale // 8 * 8)


@dataclass(frozen=True)
class ExtrasResult:
    image: Image.Image
    info: dict[str, object]

    @property
    def infotext(self) -> str:
        return build_params_line(self.info)


def run_extras(
    image: Image.Image,
    params: ExtrasParams,
    library: UpscalerLibrary,
    *,
    tiles: TileOptions = TileOptions(),
    should_stop: Callable[[], bool] | None = None,
) -> ExtrasResult:
    """One image through the upscalers. Upscaler names must exist (`library.find` raises LookupError)."""
    first = library.find(params.upscaler_1)
    second = library.find(params.upscaler_2)
    info: dict[str, object] = {}
    image = image.convert("RGB")
    if first.kind == "none":
        return ExtrasResult(image, info)
    if params.resize_mode == 1:
        w, h = params.upscaling_resize_w, params.upscaling_resize_h
        scale = max(w / image.width, h / image.height)
        info["Postprocess upscale to"] = f"{w}x{h}"
    else:
        scale = float(params.upscaling_resize)
        info["Postprocess upscale by"] = params.upscaling_resize

    def upscale(entry) -> Image.Image:
        out = upscale_image(image, entry, scale, library=library, tiles=tiles, should_stop=should_stop)
        if params.resize_mode == 1 and params.upscaling_crop:
            cropped = Image.new("RGB", (w, h))
            cropped.paste(out, box=(w // 2 - out.width // 2, h // 2 - out.height // 2))
            out = cropped
        return out

    result = upscale(first)
    if params.resize_mode == 1 and params.upscaling_crop:
        info["Postprocess crop to"] = f"{w}x{h}"
    info["Postprocess upscaler"] = first.name
    if second.kind != "none" and params.upscaler_2_visibility > 0:
        blended = upscale(second)
        if blended.size != result.size:
            blended = blended.resize(result.size, Image.Resampling.LANCZOS)
        result = Image.blend(result, blended, float(params.upscaler_2_visibility))
        info["Postprocess upscaler 2"] = second.name
    return ExtrasResult(result, info)


__all__ = ["ExtrasParams", "ExtrasResult", "run_extras"]
