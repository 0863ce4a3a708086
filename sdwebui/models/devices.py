"""Device and precision choice, made once by the composition root and passed down (no import-time probing)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePlan:
    device: torch.device
    dtype: torch.dtype
    """UNet and text encoder precision."""
    vae_dtype: torch.dtype

    def describe(self) -> str:
        name = lambda dtype: str(dtype).removeprefix("torch.")  # noqa: E731
        return f"{self.device} (UNet {name(self.dtype)}, VAE {name(self.vae_dtype)})"


def plan_devices(device: str | None = None, *, precision: str = "auto", vae_precision: str = "auto") -> DevicePlan:
    """Pick the device and dtypes the way users expect from A1111 / Forge.

    - CUDA: fp16 UNet (bf16 with `precision="bf16"`); the VAE runs in bf16 where the GPU supports it, since
      SD's VAE overflows in fp16 (A1111 needs `--no-half-vae` for that), else fp32.
    - Apple MPS: fp16 UNet, fp32 VAE.
    - CPU: fp32 everywhere (CPU half precision is slow and lossy).
    `precision="full"` (A1111's `--no-half`) forces fp32 everywhere.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    target = torch.device(device)
    if target.type == "cpu" or precision == "full":
        dtype = torch.float32
    elif precision == "bf16":
        dtype = torch.bfloat16
    elif precision in ("auto", "half", "fp16"):
        dtype = torch.float16
    else:
        raise ValueError(f"unknown precision {precision!r}: use auto, half, bf16 or full")

    if vae_precision == "full" or dtype == torch.float32:
        vae_dtype = torch.float32
    elif vae_precision == "bf16":
        vae_dtype = torch.bfloat16
    elif vae_precision == "half":
        vae_dtype = torch.float16
    elif target.type == "cuda" and torch.cuda.is_bf16_supported():
        vae_dtype = torch.bfloat16
    else:
        vae_dtype = torch.float32
    return DevicePlan(target, dtype, vae_dtype)
