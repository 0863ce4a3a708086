"""Extras (upscaling, face restoration) parameters: A1111's extras fields, frozen and validated when made (no torch here: the
server builds them while answering a request)."""

from __future__ import annotations

from dataclasses import dataclass

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.params import MAX_SIDE

CAPTIONERS = {"Deepbooru": "deepdanbooru", "BLIP": "blip", "WD14": "wd14"}
"""Extras' "Caption" choices (A1111's `postprocessing_caption.py` offers the first two; WD14 is the tagger extension's)
and the interrogation model each runs."""


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
    gfpgan_visibility: float = 0.0
    """GFPGAN's restored faces blended over the upscaled image (0 = off)."""
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    """CodeFormer's restored faces blended over the image (0 = off), and its fidelity (0 = maximum effect); A1111's
    extras default is 0 for both."""
    caption: tuple[str, ...] = ()
    """A1111's Extras "Caption": each result captioned by these (`CAPTIONERS`), joined with ", ", and written to a
    `.txt` beside the saved image (what LoRA trainers read)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "caption", tuple(self.caption))
        unknown = [name for name in self.caption if name not in CAPTIONERS]
        if unknown:
            raise ParamError("caption", f"unknown captioner {unknown[0]!r} (choose from {', '.join(CAPTIONERS)})")
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
        for name in ("gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ParamError(name, f"must be a number between 0 and 1, got {value!r}")

    @property
    def restores_faces(self) -> bool:
        return self.gfpgan_visibility > 0 or self.codeformer_visibility > 0

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


__all__ = ["CAPTIONERS", "ExtrasParams"]
