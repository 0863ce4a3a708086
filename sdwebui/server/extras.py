"""Extras (upscaling without diffusion) as a queued job, and A1111's `/extra-single-image` and
`/extra-batch-images` request bodies.

Upscaling runs models on the same device as generation, so it goes through the same queue (one thing on the
GPU at a time). A job's payload holds the images as base64 PNG, checked and decoded before queueing:

    {"images": ["<b64>", ...], "names": ["a.png", ...], "params": {<ExtrasParams fields>},
     "tile": 192, "tile_overlap": 8}
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdwebui.pipelines.params import MAX_SIDE

if TYPE_CHECKING:
    from sdwebui.server.queue import JobHandle
    from sdwebui.server.services import Services


def _float(default, *, ge=None, le=None):
    return Field(default, ge=ge, le=le, allow_inf_nan=False)


class ExtrasUpscaleFields(BaseModel):
    """A1111's extras upscaling fields (names, defaults, bounds), shared by its API request and our native job."""

    resize_mode: int = Field(0, ge=0, le=1, description="0 = scale by upscaling_resize, 1 = scale to w x h")
    upscaling_resize: float = _float(2.0, ge=0.0, le=16.0)
    upscaling_resize_w: int = Field(512, ge=8, le=MAX_SIDE)
    upscaling_resize_h: int = Field(512, ge=8, le=MAX_SIDE)
    upscaling_crop: bool = True
    upscaler_1: str = Field("None", max_length=500)
    upscaler_2: str = Field("None", max_length=500)
    extras_upscaler_2_visibility: float = _float(0.0, ge=0.0, le=1.0)


class ExtrasBaseRequest(ExtrasUpscaleFields):
    """A1111 `ExtrasBaseRequest` (v1.10 `modules/api/models.py`), with bounds."""

    model_config = ConfigDict(extra="allow")

    show_extras_results: bool = True
    gfpgan_visibility: float = _float(0.0, ge=0.0, le=1.0)
    codeformer_visibility: float = _float(0.0, ge=0.0, le=1.0)
    codeformer_weight: float = _float(0.0, ge=0.0, le=1.0)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="base64 image (a data: URL prefix is accepted)")


class FileData(BaseModel):
    data: str
    name: str = Field("", max_length=500)


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(default_factory=list, max_length=1000)


class ExtrasJob(ExtrasUpscaleFields):
    """A native (`POST /api/v1/jobs`) extras job: the images and A1111's extras upscaling fields (not its face
    restoration ones, which are not available)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["extras"] = "extras"
    images: list[str] = Field(..., min_length=1, max_length=64, description="base64 images")
    save_images: bool = True


def native_extras_payload(services: "Services", job: ExtrasJob) -> dict:
    """The payload of a native extras job (images decoded and checked here: 422 naming `images.N`); its images
    are saved to `outputs/extras-images` and recorded in the history when `save_images` is on."""
    from sdwebui.server.a1111 import decode_base64_image
    from sdwebui.server.options import output_folder

    request = ExtrasBaseRequest(**job.model_dump(exclude={"type", "images", "save_images"}))
    params = extras_params(request)
    decoded = [(("images", i), decode_base64_image(text.strip(), ("images", i))) for i, text in enumerate(job.images)]
    payload = make_extras_payload(services, params, decoded, [""] * len(decoded))
    options = services.options.all()
    payload.update({
        "save_images": job.save_images,
        "outdir": output_folder(services.paths.outputs_dir, options["outdir_samples"] or "extras-images"),
        "save_to_dirs": bool(options["save_to_dirs"]),
        "client": "native",
    })
    return payload


class ExtrasSingleImageResponse(BaseModel):
    image: str | None = None
    html_info: str


class ExtrasBatchImagesResponse(BaseModel):
    images: list[str]
    html_info: str


def extras_params(req: ExtrasBaseRequest):
    """A1111 request -> ExtrasParams, or a FieldError naming the A1111 field."""
    from sdwebui.pipelines.extras import ExtrasParams
    from sdwebui.pipelines.params import ParamError
    from sdwebui.server.errors import FieldError

    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(req, name) > 0:
            raise FieldError((name,), "face restoration is not available in this server (set it to 0)")
    try:
        return ExtrasParams(
            resize_mode=req.resize_mode,
            upscaling_resize=float(req.upscaling_resize),
            upscaling_resize_w=req.upscaling_resize_w,
            upscaling_resize_h=req.upscaling_resize_h,
            upscaling_crop=req.upscaling_crop,
            upscaler_1=req.upscaler_1 or "None",
            upscaler_2=req.upscaler_2 or "None",
            upscaler_2_visibility=float(req.extras_upscaler_2_visibility),
        )
    except ParamError as error:
        raise FieldError((error.field,), error.message) from None


def make_extras_payload(services: "Services", params, images: list[tuple[tuple, Any]], names: list[str]) -> dict:
    """Check upscaler names and output sizes (FieldError) and build the job payload. `images`: (loc, PIL)."""
    from sdwebui.models.upscalers import UpscalerNotFoundError
    from sdwebui.server.errors import FieldError

    library = services.upscalers
    for field_name, value in (("upscaler_1", params.upscaler_1), ("upscaler_2", params.upscaler_2)):
        try:
            library.find(value)
        except UpscalerNotFoundError as error:
            raise FieldError((field_name,), str(error.args[0])) from None
    options = services.options.all()
    encoded = []
    for loc, image in images:
        width, height = params.output_size(image.width, image.height)
        if width * height > options["api_max_pixels"] or max(width, height) > MAX_SIDE:
            raise FieldError(loc, f"the result would be {width}x{height}, over this server's limit "
                                  f"(setting api_max_pixels, at most {MAX_SIDE} a side)")
        if width < 1 or height < 1:
            raise FieldError(("upscaling_resize",), f"the result would be {width}x{height}")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return {
        "images": encoded,
        "names": list(names),
        "infotexts": [image.info.get("parameters") if isinstance(image.info.get("parameters"), str) else None
                      for _, image in images],
        "params": dataclasses.asdict(params),
        "tile": int(options["ESRGAN_tile"]),
        "tile_overlap": int(options["ESRGAN_tile_overlap"]),
    }


def run_extras_job(job: "JobHandle", services: "Services") -> dict:
    from PIL import Image

    from sdwebui.pipelines.extras import ExtrasParams, run_extras
    from sdwebui.pipelines.upscale import TileOptions

    payload = job.payload
    params = ExtrasParams(**payload["params"])
    tiles = TileOptions(int(payload.get("tile", 192)), int(payload.get("tile_overlap", 8)))
    stop = job.stop
    out = []
    infotexts = []
    total = len(payload["images"])
    for index, (data, parameters) in enumerate(zip(payload["images"], payload.get("infotexts") or [None] * total)):
        if stop is not None and stop.interrupted.is_set():
            job.interrupted = True
            break
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        result = run_extras(image, params, services.upscalers, tiles=tiles,
                            should_stop=lambda: stop is not None and stop.interrupted.is_set())
        if parameters:
            result.image.info["parameters"] = parameters  # A1111 keeps the generation infotext
        if result.info:
            result.image.info["postprocessing"] = result.infotext
        out.append(result.image)
        infotexts.append(result.infotext)
        job.report_step(index + 1, total, 0, 1, None)
    job.images = out
    saved: list[dict] = []
    if payload.get("save_images") and out:
        from sdwebui.pipelines.output import save_image

        outputs = services.paths.outputs_dir
        outdir = outputs / payload.get("outdir", "extras-images")
        for image, info in zip(out, infotexts):
            # The saved PNG keeps the generation infotext it came with (as A1111's extras do); the history records
            # that, or the upscaling's infotext for a picture without one.
            original = image.info.get("parameters") or ""
            path = save_image(image, outdir, seed=0, infotext=original, pattern="",
                              date_subdir=bool(payload.get("save_to_dirs", True)))
            relative = path.relative_to(outputs).as_posix()
            image_id = services.store.add_image(job_id=job.id, path=relative, infotext=original or info,
                                                params=payload["params"], width=image.width, height=image.height)
            saved.append({"id": image_id, "path": relative})
    return {"infotexts": infotexts, "sizes": [list(image.size) for image in out], "images": saved}


def html_info(infotext: str) -> str:
    """A1111 `ui_common.plaintext_to_html` of the postprocessing infotext."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in infotext.split("\n")) + "</p>"


__all__ = [
    "ExtrasSingleImageRequest", "ExtrasBatchImagesRequest", "ExtrasSingleImageResponse",
    "ExtrasBatchImagesResponse", "ExtrasJob", "native_extras_payload", "extras_params", "make_extras_payload", "run_extras_job", "html_info",
]
