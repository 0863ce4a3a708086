"""img2img / inpainting parameters: txt2img's plus A1111's `StableDiffusionProcessingImg2Img` fields.

The images themselves (init images, mask) are not parameters: they are passed to `img2img(ctx, params, images,
mask)` beside them, so the parameters stay small, frozen and JSON-able (they are stored with every job).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdwebui.pipelines.params import MAX_SIDE, ParamError, Txt2ImgParams, _check_float_range, _check_int_range

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
INPAINTING_FILLS = ("fill", "original", "latent noise", "latent nothing")
"""A1111's "Masked content" choices, by `inpainting_fill` index."""


@dataclass(frozen=True)
class Img2ImgParams(Txt2ImgParams):
    denoising_strength: float = 0.75
    resize_mode: int = 0
    """0 Just resize, 1 Crop and resize, 2 Resize and fill, 3 Just resize (latent upscale)."""
    initial_noise_multiplier: float = 1.0
    """A1111's "Noise multiplier for img2img" (setting `initial_noise_multiplier`)."""
    image_cfg_scale: float | None = None
    """Only for instruct-pix2pix models (A1111 ignores it otherwise; so do we)."""
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 1
    """Masked content: 0 fill, 1 original (the UI's default), 2 latent noise, 3 latent nothing."""
    inpaint_full_res: bool = False
    """Inpaint area: False = whole picture, True = only masked (crop around the mask, process, paste back)."""
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    """Mask mode: False = inpaint masked, True = inpaint not masked."""
    mask_round: bool = True
    fix_steps: bool = False
    """A1111's option `img2img_fix_steps` ("do exactly the amount of steps the slider specifies")."""
    inpainting_mask_weight: float = 1.0
    """A1111's "Inpainting conditioning mask strength" (setting `inpainting_mask_weight`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if getattr(self, "enable_hr", False):
            raise ParamError("enable_hr", "hires fix is a txt2img option (A1111's img2img has none)")
        if getattr(self, "refiner_checkpoint", None):
            raise ParamError("refiner_checkpoint", "the refiner is not available for img2img yet")
        _check_float_range("denoising_strength", self.denoising_strength, 0.0, 1.0)
        _check_int_range("resize_mode", self.resize_mode, 0, 3)
        _check_float_range("initial_noise_multiplier", self.initial_noise_multiplier, 0.0, 10.0)
        if self.image_cfg_scale is not None:
            _check_float_range("image_cfg_scale", self.image_cfg_scale, 0.0, 100.0)
        _check_int_range("mask_blur_x", self.mask_blur_x, 0, 256)
        _check_int_range("mask_blur_y", self.mask_blur_y, 0, 256)
        _check_int_range("inpainting_fill", self.inpainting_fill, 0, 3)
        _check_int_range("inpaint_full_res_padding", self.inpaint_full_res_padding, 0, MAX_SIDE)
        _check_float_range("inpainting_mask_weight", self.inpainting_mask_weight, 0.0, 1.0)
        for name in ("inpaint_full_res", "inpainting_mask_invert", "mask_round", "fix_steps"):
            if not isinstance(getattr(self, name), bool):
                raise ParamError(name, f"must be true or false, got {getattr(self, name)!r}")

    @property
    def mask_blur(self) -> int | None:
        """A1111's `mask_blur`: the blur when x and y agree, else None (then no "Mask blur" in the infotext)."""
        return self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None


__all__ = ["Img2ImgParams", "RESIZE_MODES", "INPAINTING_FILLS"]
