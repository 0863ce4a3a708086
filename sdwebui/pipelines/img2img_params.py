"""img2img / inpainting parameters: the common ones plus A1111's `StableDiffusionProcessingImg2Img` fields.

They do not include txt2img's hires fix or refiner (A1111's img2img has no hires fix; our img2img has no refiner
yet), so nothing here is accepted only to be refused. The images themselves (init images, mask) are not
parameters: they are passed to `img2img(ctx, params, images, mask)` beside them, so the parameters stay small,
frozen and JSON-able (they are stored with every job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sdwebui.pipelines.params import MAX_SIDE, GenerationParams, param

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
INPAINTING_FILLS = ("fill", "original", "latent noise", "latent nothing")
"""A1111's "Masked content" choices, by `inpainting_fill` index."""
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS = ("Whole picture", "Only masked")


@dataclass(frozen=True)
class Img2ImgParams(GenerationParams):
    KIND: ClassVar[str] = "img2img"

    denoising_strength: float = param(0.75, minimum=0.0, maximum=1.0, label="Denoising strength",
                                      infotext="Denoising strength", a1111_optional=True, ui=(0.0, 1.0, 0.01))
    resize_mode: int = param(0, minimum=0, maximum=3, label="Resize mode",
                             help="0 Just resize, 1 Crop and resize, 2 Resize and fill, 3 Just resize (latent upscale)")
    """0 Just resize, 1 Crop and resize, 2 Resize and fill, 3 Just resize (latent upscale)."""
    initial_noise_multiplier: float = param(1.0, minimum=0.0, maximum=10.0, label="Noise multiplier for img2img",
                                            infotext="Noise multiplier", a1111_default=None,
                                            setting="initial_noise_multiplier")
    """A1111's "Noise multiplier for img2img" (setting `initial_noise_multiplier`)."""
    image_cfg_scale: float | None = param(None, float, minimum=0.0, maximum=100.0, nullable=True,
                                          label="Image CFG Scale", help="instruct-pix2pix models only (ignored)")
    """Only for instruct-pix2pix models (A1111 ignores it otherwise; so do we)."""
    mask_blur_x: int = param(4, minimum=0, maximum=256, label="Mask blur (x)")
    mask_blur_y: int = param(4, minimum=0, maximum=256, label="Mask blur (y)")
    inpainting_fill: int = param(1, minimum=0, maximum=3, label="Masked content", a1111_default=0,
                                 help="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    """Masked content: 0 fill, 1 original (the UI's default; A1111's API default is 0), 2 latent noise, 3 latent
    nothing."""
    inpaint_full_res: bool = param(False, label="Inpaint area", a1111_default=True,
                                   help="only masked: crop around the mask, process, paste back")
    """Inpaint area: False = whole picture, True = only masked (crop around the mask, process, paste back)."""
    inpaint_full_res_padding: int = param(32, minimum=0, maximum=MAX_SIDE, label="Only masked padding, pixels",
                                          infotext="Masked area padding", a1111_default=0, ui=(0, 256, 4))
    inpainting_mask_invert: bool = param(False, label="Mask mode", a1111_default=0, a1111_kind=int,
                                         help="inpaint the part that is not masked")
    """Mask mode: False = inpaint masked, True = inpaint not masked (A1111's API sends 0 / 1)."""
    mask_round: bool = param(True, label="Round the mask")
    fix_steps: bool = param(False, label="Do exactly the amount of steps the slider specifies", a1111=None,
                            setting="img2img_fix_steps")
    """A1111's option `img2img_fix_steps` ("do exactly the amount of steps the slider specifies")."""
    inpainting_mask_weight: float = param(1.0, minimum=0.0, maximum=1.0, a1111=None,
                                          label="Inpainting conditioning mask strength",
                                          infotext="Conditional mask weight", setting="inpainting_mask_weight")
    """A1111's "Inpainting conditioning mask strength" (setting `inpainting_mask_weight`)."""

    @property
    def mask_blur(self) -> int | None:
        """A1111's `mask_blur`: the blur when x and y agree, else None (then no "Mask blur" in the infotext)."""
        return self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None


__all__ = ["Img2ImgParams", "RESIZE_MODES", "INPAINTING_FILLS", "MASK_MODES", "INPAINT_AREAS"]
