"""Request and response bodies of the A1111-compatible API (`/sdapi/v1`), with A1111's field names and defaults.

A1111 generates its txt2img request model from `StableDiffusionProcessingTxt2Img.__init__` (v1.10) plus a few
API-only fields (`modules/api/models.py`); the defaults below are those: note `steps=50` and
`sampler_index="Euler"` (a request without `sampler_name` runs Euler), which differ from the UI's defaults.

Unlike A1111 (every field `Optional`, no bounds), values are checked here: sizes are multiples of 8 within range,
counts and steps are bounded, floats must be finite. Unknown keys are accepted (clients send fields of
extensions and forks) and listed back under `warnings`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdwebui.pipelines.params import MAX_SIDE, MAX_STEPS

SEED_MAX = 2**32 - 1
PROMPT_MAX = 65536


def _float(default, *, ge=None, le=None, **kw):
    return Field(default, ge=ge, le=le, allow_inf_nan=False, **kw)


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    prompt: str = Field("", max_length=PROMPT_MAX)
    negative_prompt: str = Field("", max_length=PROMPT_MAX)
    styles: list[str] | None = None
    seed: int = Field(-1, ge=-1, le=SEED_MAX)
    subseed: int = Field(-1, ge=-1, le=SEED_MAX)
    subseed_strength: float = _float(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = Field(-1, ge=-1, le=MAX_SIDE)
    seed_resize_from_w: int = Field(-1, ge=-1, le=MAX_SIDE)
    sampler_name: str | None = Field(None, max_length=200)
    scheduler: str | None = Field(None, max_length=200)
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=10_000)
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: float = _float(7.0, ge=0.0, le=100.0)
    width: int = Field(512, ge=8, le=MAX_SIDE, multiple_of=8)
    height: int = Field(512, ge=8, le=MAX_SIDE, multiple_of=8)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = _float(None, ge=0.0, le=10.0)
    denoising_strength: float | None = _float(0.75, ge=0.0, le=1.0)
    s_min_uncond: float | None = _float(None, ge=0.0, le=100.0)
    s_churn: float | None = _float(None, ge=0.0, le=100.0)
    s_tmax: float | None = _float(None, ge=0.0)
    s_tmin: float | None = _float(None, ge=0.0, le=1000.0)
    s_noise: float | None = _float(None, ge=0.0, le=10.0)
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = _float(None, ge=0.0, le=1.0)
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = Field(0, ge=0, le=MAX_SIDE)
    firstphase_height: int = Field(0, ge=0, le=MAX_SIDE)
    hr_scale: float = _float(2.0, ge=0.0, le=16.0)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS)
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = Field("", max_length=PROMPT_MAX)
    hr_negative_prompt: str = Field("", max_length=PROMPT_MAX)
    force_task_id: str | None = Field(None, max_length=200)
    sampler_index: str = Field("Euler", max_length=200)
    script_name: str | None = None
    script_args: list = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict = Field(default_factory=dict)
    infotext: str | None = Field(None, max_length=PROMPT_MAX * 2)


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's img2img request (`StableDiffusionProcessingImg2Img` fields plus the API's). Defaults are A1111's
    API defaults, which differ from its UI's: `inpainting_fill` 0 (fill), `inpaint_full_res` true (only masked),
    padding 0."""

    init_images: list[str] = Field(default_factory=list, max_length=64,
                                   description="base64 images (data: URL prefix accepted)")
    resize_mode: int = Field(0, ge=0, le=3)
    image_cfg_scale: float | None = _float(None, ge=0.0, le=100.0)
    mask: str | None = Field(None, description="base64 mask image; white = repaint")
    mask_blur_x: int = Field(4, ge=0, le=256)
    mask_blur_y: int = Field(4, ge=0, le=256)
    mask_blur: int | None = Field(None, ge=0, le=256)
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(0, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = _float(None, ge=0.0, le=10.0)
    latent_mask: str | None = None
    include_init_images: bool = Field(False, description="echo init_images and mask back in `parameters`")


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


class MemoryResponse(BaseModel):
    ram: dict
    cuda: dict


__all__ = [
    "Txt2ImgRequest", "TextToImageResponse", "PNGInfoRequest", "PNGInfoResponse", "ProgressResponse",
    "SamplerItem", "SchedulerItem", "UpscalerItem", "SDModelItem", "SDVaeItem", "MemoryResponse",
]
