"""Full-size SD1.5-architecture checkpoints with random weights, in the single-file LDM layout users download.

Real weights cannot be downloaded here; speed and memory depend only on the architecture and dtype, so random
weights measure the same thing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sdwebui.models.convert import shipped_config
from sdwebui.models.family import ModelFamily
from sdwebui.models.ldm_layout import diffusers_to_ldm_checkpoint


def write_random_sd15(path: Path, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """UNet 860M + VAE 84M + CLIP ViT-L text 123M parameters; written once, atomically, and reused."""
    if path.exists():
        return path
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(shipped_config("unet_sd1"))
    vae = AutoencoderKL.from_config(shipped_config("vae_sd"))
    text_config = {k: v for k, v in shipped_config("clip_l").items() if not k.startswith("_") and k != "architectures"}
    text = CLIPTextModel(CLIPTextConfig(**text_config))
    state = diffusers_to_ldm_checkpoint(ModelFamily.SD1, unet=unet, vae=vae, text_encoders={"clip_l": text})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)
    return path


def write_random_sdxl(path: Path, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """SDXL base: UNet 2.6B + VAE 84M + CLIP ViT-L 123M + OpenCLIP ViT-bigG 695M parameters (about 6.9 GB in fp16);
    written once, atomically, and reused."""
    if path.exists():
        return path
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text_config(name: str) -> CLIPTextConfig:
        return CLIPTextConfig(**{k: v for k, v in shipped_config(name).items()
                                 if not k.startswith("_") and k != "architectures"})

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(shipped_config("unet_sdxl"))
    vae = AutoencoderKL.from_config(shipped_config("vae_sdxl"))
    encoders = {"clip_l": CLIPTextModel(text_config("clip_l")),
                "clip_g": CLIPTextModelWithProjection(text_config("clip_g"))}
    state = diffusers_to_ldm_checkpoint(ModelFamily.SDXL, unet=unet, vae=vae, text_encoders=encoders)
    state["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6052)
    del unet, vae, encoders
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)
    return path
