"""A loaded Stable Diffusion checkpoint: the modules plus what the pipelines need to know about them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdwebui.models.family import ModelFamily
from sdwebui.models.hashing import PendingHash


class CheckpointInfo:
    """Identity of a checkpoint file, as A1111 shows it (infotext `Model` and `Model hash`).

    The hash may still be being computed when the model is ready (`hashing.sha256_later`): `sha256` waits for
    it, `sha256_if_ready` does not."""

    __slots__ = ("path", "name", "_sha256")

    def __init__(self, path: Path, name: str, sha256: "str | PendingHash"):
        self.path = Path(path)
        self.name = name
        """File name without extension (A1111's infotext `Model:` value)."""
        self._sha256 = sha256

    @property
    def sha256(self) -> str:
        """Full SHA-256 of the file (hex); `short_hash` is what the infotext carries."""
        value = self._sha256
        if isinstance(value, PendingHash):
            value = value.result()
            self._sha256 = value
        return value

    @property
    def sha256_if_ready(self) -> str | None:
        """The full SHA-256 when it is known, without waiting; None while it is being computed."""
        value = self._sha256
        if isinstance(value, PendingHash):
            return self.sha256 if value.ready else None
        return value

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]

    def __repr__(self) -> str:
        return f"CheckpointInfo(path={self.path!r}, name={self.name!r}, sha256={self.sha256_if_ready!r})"


@dataclass
class SDModel:
    """Everything one generation needs from a checkpoint.

    `unet`, `vae` and the text encoders are ordinary diffusers / transformers modules, already on
    `device` in `dtype` (the VAE may use `vae_dtype`).
    """

    family: ModelFamily
    prediction_type: str
    """"epsilon" or "v_prediction"."""
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: "TextEncoderStack"  # noqa: F821  (sdwebui.models.text_encoding)
    alphas_cumprod: torch.Tensor
    """Training noise schedule, float32 on the CPU, 1000 entries (SD's scaled-linear betas)."""
    info: CheckpointInfo
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype
    vae_info: CheckpointInfo | None = None
    """The separate VAE file in use, or None for the checkpoint's own VAE."""
    native_size: int = 512
    """Default width/height: the family's, or the size the model was trained at when that is known."""
    config_notes: list[str] = field(default_factory=list)
    """Human-readable notes from loading (e.g. "v-prediction detected from the .yaml beside the file")."""
    placement: "ModelPlacement | None" = None  # noqa: F821  (sdwebui.models.memory)
    """The memory mode (`--medvram`, `--lowvram`) and its hooks; None: every module stays on `device`."""
    fp8: "Fp8Storage | None" = None  # noqa: F821  (sdwebui.models.fp8)
    """FP8 weight storage (A1111's "FP8 weight" setting) of the UNet and text encoders; None: off."""
    unet_cuda_graphs: bool = False
    """The UNet is compiled to replay CUDA graphs (`--compile-mode reduce-overhead`, `models.fast_paths`): each
    call must start a new graph step, and its output is overwritten by the next replay, so callers copy it."""

    @property
    def latent_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)
