"""Extras (A1111's "postprocessing"): upscale images with one or two upscalers, without diffusion, then restore
their faces with GFPGAN and CodeFormer.

Reference: A1111 `modules/postprocessing.py` and `scripts/postprocessing_upscale.py`: "Scale by" multiplies the
size; "Scale to" upscales by the larger of the two factors and, with "Crop to fit", centres the result on a
canvas of exactly the asked size; a second upscaler's result is blended over the first with its visibility.
The infotext keys are A1111's (`Postprocess upscale by`, `Postprocess upscale to`, `Postprocess crop to`,
`Postprocess upscaler`, `Postprocess upscaler 2`). Face restoration follows in A1111's order of its
postprocessing scripts (upscale 1000, `postprocessing_gfpgan.py` 2000, `postprocessing_codeformer.py` 3000): each
restorer's result is blended over the image with its visibility, and the infotext gets `GFPGAN visibility`,
`CodeFormer visibility` and `CodeFormer weight` (rounded to 3 places). An image without a face is left as it is,
with a note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from sdwebui.models.upscalers import UpscalerLibrary
from sdwebui.pipelines.extras_params import ExtrasParams
from sdwebui.pipelines.face_restoration import FaceRestoration
from sdwebui.pipelines.infotext import build_params_line
from sdwebui.pipelines.upscale import TileOptions, upscale_image


@dataclass(frozen=True)
class ExtrasResult:
    image: Image.Image
    info: dict[str, object]
    notes: list[str] = field(default_factory=list)

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
    faces: FaceRestoration | None = None,
) -> ExtrasResult:
    """One image through the upscalers, then the face restorers. Upscaler names must exist (`library.find` raises
    LookupError); `faces` is needed when `params` restore faces (FaceRestorationError when a restorer is not
    installed)."""
    image = image.convert("RGB")
    result = upscale_extras(image, params, library, tiles=tiles, should_stop=should_stop)
    notes: list[str] = []
    for name, visibility in (("GFPGAN", params.gfpgan_visibility), ("CodeFormer", params.codeformer_visibility)):
        if visibility <= 0:
            continue
        if faces is None:
            raise ValueError("face restoration needs the installed restorers (faces=)")
        restored, count = faces.extras(result.image, name, float(visibility), float(params.codeformer_weight))
        if count == 0:
            notes.append(f"{name}: no face found; the image is unchanged")
        result.info[f"{name} visibility"] = round(float(visibility), 3)
        if name == "CodeFormer":
            result.info["CodeFormer weight"] = round(float(params.codeformer_weight), 3)
        result = ExtrasResult(restored.convert("RGB"), result.info)
    return ExtrasResult(result.image, result.info, notes)


def upscale_extras(
    image: Image.Image,
    params: ExtrasParams,
    library: UpscalerLibrary,
    *,
    tiles: TileOptions = TileOptions(),
    should_stop: Callable[[], bool] | None = None,
) -> ExtrasResult:
    """The upscaling step (A1111's `postprocessing_upscale.py`)."""
    first = library.find(params.upscaler_1)
    second = library.find(params.upscaler_2)
    info: dict[str, object] = {}
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


__all__ = ["ExtrasParams", "ExtrasResult", "run_extras", "upscale_extras"]
