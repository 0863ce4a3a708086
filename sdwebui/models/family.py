"""Model families: what each kind of Stable Diffusion checkpoint is and needs.

Detection (which family a file is) lives in `detect.py`; this module only describes the families so that
the loader, the pipelines and the UI agree on names, native sizes and defaults.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ModelFamily(str, enum.Enum):
    SD1 = "sd1"
    SD1_INPAINT = "sd1-inpaint"
    SD2 = "sd2"
    SD2_INPAINT = "sd2-inpaint"
    SDXL = "sdxl"
    SDXL_INPAINT = "sdxl-inpaint"
    SDXL_REFINER = "sdxl-refiner"

    @property
    def spec(self) -> "FamilySpec":
        return FAMILY_SPECS[self]


@dataclass(frozen=True)
class FamilySpec:
    title: str
    native_size: int
    """Default width and height (A1111 defaults to 512; SDXL is trained at 1024)."""
    latent_scaling_factor: float
    text_encoders: tuple[str, ...]
    """Which text encoders the family conditions on, in order: "clip_l" (OpenAI CLIP ViT-L/14),
    "clip_h" (OpenCLIP ViT-H/14, SD2), "clip_g" (OpenCLIP ViT-bigG/14, SDXL)."""
    unet_in_channels: int = 4
    is_sdxl: bool = False


FAMILY_SPECS: dict[ModelFamily, FamilySpec] = {
    ModelFamily.SD1: FamilySpec("SD 1.x", 512, 0.18215, ("clip_l",)),
    ModelFamily.SD1_INPAINT: FamilySpec("SD 1.x inpainting", 512, 0.18215, ("clip_l",), unet_in_channels=9),
    ModelFamily.SD2: FamilySpec("SD 2.x", 512, 0.18215, ("clip_h",)),
    ModelFamily.SD2_INPAINT: FamilySpec("SD 2.x inpainting", 512, 0.18215, ("clip_h",), unet_in_channels=9),
    ModelFamily.SDXL: FamilySpec("SDXL", 1024, 0.13025, ("clip_l", "clip_g"), is_sdxl=True),
    ModelFamily.SDXL_INPAINT: FamilySpec(
        "SDXL inpainting", 1024, 0.13025, ("clip_l", "clip_g"), unet_in_channels=9, is_sdxl=True
    ),
    ModelFamily.SDXL_REFINER: FamilySpec("SDXL refiner", 1024, 0.13025, ("clip_g",), is_sdxl=True),
}
