"""Extras (upscaling without diffusion): A1111's `/extra-single-image` and `/extra-batch-images` request bodies,
the native API's extras job, and both turned into the service's `ExtrasRequest`.

Upscaling runs models on the same device as generation, so it goes through the same queue (one thing on the
GPU at a time); the job itself is `server.payloads.ExtrasPayload`, run by `server.runners.run_extras`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.extras_params import ExtrasParams
from sdwebui.pipelines.params import MAX_SIDE
from sdwebui.server.errors import FieldError
from sdwebui.server.images import decode_base64_image
from sdwebui.server.service import ExtrasRequest

if TYPE_CHECKING:
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
    gfpgan_visibility: float = _float(0.0, ge=0.0, le=1.0)
    codeformer_visibility: float = _float(0.0, ge=0.0, le=1.0)
    codeformer_weight: float = _float(0.0, ge=0.0, le=1.0)


class ExtrasBaseRequest(ExtrasUpscaleFields):
    """A1111 `ExtrasBaseRequest` (v1.10 `modules/api/models.py`), with bounds."""

    model_config = ConfigDict(extra="allow")

    show_extras_results: bool = True
    upscale_first: bool = False
    """Ignored, as A1111 v1.10 ignores it: the upscaler runs first, then GFPGAN, then CodeFormer."""


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="base64 image (a data: URL prefix is accepted)")


class FileData(BaseModel):
    data: str
    name: str = Field("", max_length=500)


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(default_factory=list, max_length=1000)


class ExtrasJob(ExtrasUpscaleFields):
    """A native (`POST /api/v1/jobs`) extras job: the images and A1111's extras fields (upscaling, face
    restoration)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["extras"] = "extras"
    images: list[str] = Field(..., min_length=1, max_length=64, description="base64 images")
    names: list[str] = Field(default_factory=list, max_length=64,
                             description="file names for the saved results (setting use_original_name_batch)")
    caption: list[Literal["Deepbooru", "BLIP", "WD14"]] = Field(
        default_factory=list, description="A1111's Extras Caption: each result's caption written to a .txt beside it")
    save_images: bool = True


def native_extras_request(services: "Services", job: ExtrasJob) -> ExtrasRequest:
    """A native extras job as the service's request (images decoded and checked here: 422 naming `images.N`);
    its images are saved to `outputs/extras-images` and recorded in the history when `save_images` is on."""
    params = extras_params(ExtrasBaseRequest(**job.model_dump(exclude={"type", "images", "names", "caption",
                                                                       "save_images"})), caption=job.caption)
    images = [(("images", i), decode_base64_image(text, ("images", i))) for i, text in enumerate(job.images)]
    if job.names and len(job.names) != len(job.images):
        raise FieldError(("names",), f"one name per image: {len(job.names)} names for {len(job.images)} images")
    return ExtrasRequest(params, images, names=job.names, save_images=job.save_images, client="native")


class ExtrasSingleImageResponse(BaseModel):
    image: str | None = None
    html_info: str


class ExtrasBatchImagesResponse(BaseModel):
    images: list[str]
    html_info: str


def extras_params(req: ExtrasBaseRequest, caption: Sequence[str] = ()) -> ExtrasParams:
    """A1111 request (and Extras' Caption choices) -> ExtrasParams, or a FieldError naming the A1111 field."""
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
            gfpgan_visibility=float(req.gfpgan_visibility),
            codeformer_visibility=float(req.codeformer_visibility),
            codeformer_weight=float(req.codeformer_weight),
            caption=tuple(caption),
        )
    except ParamError as error:
        raise FieldError(error.loc, error.message) from None


def html_info(infotext: str) -> str:
    """A1111 `ui_common.plaintext_to_html` of the postprocessing infotext."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in infotext.split("\n")) + "</p>"


__all__ = [
    "ExtrasSingleImageRequest", "ExtrasBatchImagesRequest", "ExtrasSingleImageResponse",
    "ExtrasBatchImagesResponse", "ExtrasJob", "native_extras_request", "extras_params", "html_info",
]
