"""Tiny real ControlNets for tests: diffusers' `ControlNetModel` built from a tiny UNet's config (its down path),
random weights (zero convolutions too, so a unit visibly changes the image), written in the layouts users
download: the original single file (`control_model.*`, LDM names) and the diffusers layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

import tiny_models
from sdwebui.models.ldm_layout import unet_to_ldm

HINT_CHANNELS = (4, 8, 8, 16)


def build_controlnet(unet: torch.nn.Module, seed: int = 11) -> torch.nn.Module:
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS,
                                           load_weights_from_unet=False)
    controlnet = tiny_models._randomize(controlnet, seed)
    with torch.no_grad():  # zero convolutions a little louder, so residuals are not lost in the noise
        for name, param in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")) and param.ndim == 4:
                param.mul_(4.0)
    return controlnet


def to_ldm(controlnet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """diffusers ControlNet keys -> the original `cldm` layout (no prefix)."""
    config = dict(controlnet.config)
    config["up_block_types"] = []
    unet_like, out = {}, {}
    for key, value in controlnet.state_dict().items():
        value = value.detach().clone().contiguous()
        if m := re.match(r"controlnet_cond_embedding\.conv_in\.(.*)", key):
            out[f"input_hint_block.0.{m[1]}"] = value
        elif m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", key):
            out[f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"] = value
        elif m := re.match(r"controlnet_cond_embedding\.conv_out\.(.*)", key):
            out[f"input_hint_block.14.{m[1]}"] = value
        elif m := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
            out[f"zero_convs.{m[1]}.0.{m[2]}"] = value
        elif m := re.match(r"controlnet_mid_block\.(.*)", key):
            out[f"middle_block_out.0.{m[1]}"] = value
        else:
            unet_like[key] = value
    out.update(unet_to_ldm(unet_like, config))
    return out


def write_original(controlnet: torch.nn.Module, path: Path, *, prefix: str = "control_model.",
                   dtype: torch.dtype | None = None) -> Path:
    sd = {prefix + key: (value.to(dtype) if dtype is not None else value) for key, value in to_ldm(controlnet).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    return path


def write_diffusers_file(controlnet: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in controlnet.state_dict().items()}, str(path))
    return path


def write_diffusers_folder(controlnet: torch.nn.Module, folder: Path) -> Path:
    write_diffusers_file(controlnet, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps(dict(controlnet.config), default=list))
    return folder
