"""Separate VAE files: discovery, A1111's "Automatic" rule, loading, and swapping one into a loaded model.

Accepted layouts (A1111 and ComfyUI accept the same): LDM (`encoder.down.0.block.0...`, as in
`vae-ft-mse-840000-ema-pruned.safetensors`), the same with the `first_stage_model.` prefix (a VAE cut out of a
checkpoint), and diffusers (`encoder.down_blocks.0.resnets.0...`, e.g. `sdxl_vae.safetensors`). Training
leftovers (`loss.*`, `model_ema.*`) are ignored, as in A1111's `sd_vae.load_vae_dict`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from sdwebui.models.family import ModelFamily
from sdwebui.models.files import ModelFileError, read_state_dict
from sdwebui.models.hashing import sha256_later
from sdwebui.models.sd_model import CheckpointInfo, SDModel

VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
AUTOMATIC_VAE_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
"""A1111's `<checkpoint>.vae.*` files beside the checkpoint; safetensors first (it is the safe format)."""

_STRIP_PREFIXES = ("first_stage_model.", "vae.")


def find_vaes(vae_dir: str | Path, ckpt_dir: str | Path | None = None) -> list[Path]:
    """VAE files A1111 lists: every `.safetensors/.pt/.ckpt` under `vae_dir` (recursive) and the
    `*.vae.safetensors/.pt/.ckpt` files under `ckpt_dir`. Sorted by name, case-insensitively."""
    found: list[Path] = []
    for root, suffixes in ((vae_dir, VAE_EXTENSIONS), (ckpt_dir, AUTOMATIC_VAE_SUFFIXES)):
        if root is None or not Path(root).is_dir():
            continue
        for folder, _dirs, files in os.walk(root, followlinks=True):
            for name in files:
                if name.lower().endswith(suffixes):
                    found.append(Path(folder) / name)
    return sorted(dict.fromkeys(found), key=lambda p: (p.name.lower(), str(p).lower()))


def find_automatic_vae(checkpoint: str | Path) -> Path | None:
    """A1111's "Automatic" VAE: `<checkpoint name>.vae.safetensors` (or `.vae.pt`, `.vae.ckpt`) beside it.

    (A1111 also matches any known VAE whose file name starts with the checkpoint name; we only look beside the
    checkpoint, which is the documented behaviour and cannot pick a surprising file.)"""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return None
    stem = checkpoint.name.rsplit(".", 1)[0] if checkpoint.suffix else checkpoint.name
    for suffix in AUTOMATIC_VAE_SUFFIXES:
        candidate = checkpoint.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _vae_keys(key: str) -> bool:
    return not key.startswith(("loss", "model_ema."))


def vae_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the `first_stage_model.` / `vae.` prefix when the whole VAE carries one; drop non-VAE keys."""
    for prefix in _STRIP_PREFIXES:
        if any(k.startswith(prefix) for k in raw):
            return {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    return {k: v for k, v in raw.items() if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}


def load_vae_file(
    path: str | Path,
    *,
    family: ModelFamily,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    scaling_factor: float | None = None,
):
    """Read a VAE file and build a diffusers `AutoencoderKL` (architecture inferred from its shapes)."""
    from sdwebui.models.convert import build_vae, convert_vae, infer_vae_config

    path = Path(path)
    raw = read_state_dict(path, device=device, dtype=dtype, keys=_vae_keys)
    sd = vae_state_dict(raw)
    del raw
    if not any(k.startswith("decoder.") for k in sd):
        raise ModelFileError(path, "not a VAE (no decoder weights)")
    config = infer_vae_config(sd, family, scaling_factor=scaling_factor, path=path)
    return build_vae(config, convert_vae(sd, config), path)


def apply_vae(
    model: SDModel,
    vae_path: str | Path,
    *,
    hash_cache_dir: str | Path | None = None,
) -> SDModel:
    """A copy of `model` that decodes with the VAE in `vae_path` (the original `model` is left as it was).

    The latent scaling factor stays the checkpoint's (a VAE file does not carry one; A1111 behaves the same)."""

    vae_path = Path(vae_path)
    vae = load_vae_file(
        vae_path,
        family=model.family,
        device=model.device,
        dtype=model.vae_dtype,
        scaling_factor=float(model.vae.config.scaling_factor),
    )
    needed = int(model.unet.config.out_channels)
    if int(vae.config.latent_channels) != needed:
        raise ModelFileError(
            vae_path, f"VAE has {vae.config.latent_channels} latent channels; this model needs {needed}"
        )
    info = CheckpointInfo(vae_path, vae_path.stem, sha256_later(vae_path, hash_cache_dir))
    notes = [*model.config_notes, f"VAE from {vae_path.name}"]
    return dataclasses.replace(model, vae=vae, vae_info=info, config_notes=notes)


__all__ = ["find_vaes", "find_automatic_vae", "load_vae_file", "apply_vae", "vae_state_dict", "VAE_EXTENSIONS"]
