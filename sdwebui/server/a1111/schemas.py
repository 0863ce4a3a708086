"""Request and response bodies of the A1111-compatible API (`/sdapi/v1`), with A1111's field names and defaults.

A1111 generates its txt2img request model from `StableDiffusionProcessingTxt2Img.__init__` (v1.10) plus a few
API-only fields (`modules/api/models.py`). Here the generation parameters come from their one declaration
(`pipelines.params`, with A1111's names and defaults: note `steps=50` and `sampler_index="Euler"`, so a request
without `sampler_name` runs Euler, which differ from the UI's defaults); the classes below add only what is not a
generation parameter (styles, scripts, saving, images, ...).

Unlike A1111 (every field `Optional`, no bounds), values are checked here: sizes are multiples of 8 within range,
counts and steps are bounded, floats must be finite. Unknown keys are accepted (clients send fields of
extensions and forks) and listed back under `warnings`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.params import MAX_SIDE, PROMPT_MAX, Txt2ImgParams
from sdwebui.server.schemas import params_model


def _float(default, *, ge=None, le=None, **kw):
    return Field(default, ge=ge, le=le, allow_inf_nan=False, **kw)


class _RequestFields(BaseModel):
    """A1111's request fields that are not generation parameters (both routes)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    styles: list[str] | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    s_min_uncond: float | None = _float(None, ge=0.0, le=100.0)
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    force_task_id: str | None = Field(None, max_length=200)
    sampler_index: str = Field("Euler", max_length=200)
    script_name: str | None = None
    script_args: list = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict = Field(default_factory=dict)
    infotext: str | None = Field(None, max_length=PROMPT_MAX * 2)


class _Txt2ImgFields(_RequestFields):
    firstpass_image: str | None = None
    firstphase_width: int = Field(0, ge=0, le=MAX_SIDE)
    firstphase_height: int = Field(0, ge=0, le=MAX_SIDE)


class _Img2ImgFields(_RequestFields):
    """Defaults are A1111's API defaults, which differ from its UI's: `inpainting_fill` 0 (fill),
    `inpaint_full_res` true (only masked), padding 0."""

    init_images: list[str] = Field(default_factory=list, max_length=64,
                                   description="base64 images (data: URL prefix accepted)")
    mask: str | None = Field(None, description="base64 mask image; white = repaint")
    mask_blur: int | None = Field(None, ge=0, le=256)
    latent_mask: str | None = None
    include_init_images: bool = Field(False, description="echo init_images and mask back in `parameters`")
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = _float(None, ge=0.0, le=1.0)


Txt2ImgRequest = params_model("Txt2ImgRequest", Txt2ImgParams, _Txt2ImgFields, names="a1111",
                              doc="A1111's txt2img request (`StableDiffusionProcessingTxt2Img` fields plus the API's).")
Img2ImgRequest = params_model("Img2ImgRequest", Img2ImgParams, _Img2ImgFields, names="a1111",
                              doc="A1111's img2img request (`StableDiffusionProcessingImg2Img` fields plus the API's).")


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="The generated images, base64 PNG")
    parameters: dict
    info: str
    warnings: list[str] | None = Field(default=None, description="sdwebui: request keys that were ignored")


class ImageToImageResponse(TextToImageResponse):
    pass


class PNGInfoRequest(BaseModel):
    image: str = Field(description="base64 image (a data: URL prefix is accepted)")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict
    parameters: dict


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SDVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    filename: str


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list, description="titles in lower case")
    img2img: list[str] = Field(default_factory=list, description="titles in lower case")


class ScriptArg(BaseModel):
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg]


class MemoryResponse(BaseModel):
    ram: dict
    cuda: dict


__all__ = [
    "Txt2ImgRequest", "Img2ImgRequest", "ImageToImageResponse", "TextToImageResponse", "PNGInfoRequest", "PNGInfoResponse", "ProgressResponse",
    "SamplerItem", "SchedulerItem", "UpscalerItem", "SDModelItem", "SDVaeItem", "MemoryResponse",
]
