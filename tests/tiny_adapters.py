"""Tiny real T2I-Adapters and IP-Adapters (with their CLIP image encoder) for tests: diffusers / transformers classes
with small configs and random weights, written in the layouts users download (TencentARC's original `.pth`,
diffusers single files and folders; `ip-adapter_sd15.safetensors` / `.bin`, the extension's `clip_h.pth`, the
IP-Adapter repository's `image_encoder/` folder)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

import tiny_models


def build_adapter(unet: torch.nn.Module, *, kind: str = "full_adapter", in_channels: int = 3, seed: int = 21):
    from diffusers import T2IAdapter

    widths = list(unet.config.block_out_channels)
    if kind == "light_adapter":
        widths = widths[:-1]
    factor = 16 if kind == "full_adapter_xl" else 8
    adapter = T2IAdapter(in_channels=in_channels, channels=widths, num_res_blocks=2,
                         downscale_factor=factor, adapter_type=kind)
    adapter = tiny_models._randomize(adapter, seed)
    with torch.no_grad():  # louder features, so a unit visibly changes the image
        for param in adapter.parameters():
            param.mul_(3.0)
    return adapter


def adapter_to_original(adapter: torch.nn.Module) -> dict[str, torch.Tensor]:
    """diffusers T2IAdapter keys -> TencentARC's (the inverse of the loader's renaming)."""
    out = {}
    light = adapter.config.adapter_type == "light_adapter"
    for key, value in adapter.state_dict().items():
        value = value.detach().clone().contiguous()
        key = key.removeprefix("adapter.")
        if light:
            key = re.sub(r"body\.(\d+)\.resnets\.(\d+)\.", r"body.\1.body.\2.", key)
        elif m := re.match(r"body\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            key = f"body.{int(m[1]) * 2 + int(m[2])}.{m[3]}"
        elif m := re.match(r"body\.(\d+)\.in_conv\.(.*)", key):
            key = f"body.{int(m[1]) * 2}.in_conv.{m[2]}"
        out[key] = value
    return out


def write_adapter_original(adapter, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = adapter_to_original(adapter)
    if path.suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    return path


def write_adapter_diffusers(adapter, path: Path, *, folder: bool = False) -> Path:
    sd = {k: v.detach().clone().contiguous() for k, v in adapter.state_dict().items()}
    if folder:
        path.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(path / "diffusion_pytorch_model.safetensors"))
        (path / "config.json").write_text(json.dumps({"_class_name": "T2IAdapter", **dict(adapter.config)},
                                                     default=list))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


# ---- IP-Adapter --------------------------------------------------------------------------------------------------

CLIP_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 16, "num_hidden_layers": 2,
               "image_size": 28, "patch_size": 14, "projection_dim": 24, "hidden_act": "gelu", "layer_norm_eps": 1e-5}


def build_clip_vision(seed: int = 31):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_CONFIG))
    return tiny_models._randomize(model, seed).eval()


def write_clip_vision(model, path: Path, *, folder: bool = False) -> Path:
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if folder:  # the IP-Adapter repository's models/image_encoder/
        path.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps({**model.config.to_dict()}))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    return path


def build_ip_adapter(unet: torch.nn.Module, clip_dim: int = CLIP_CONFIG["projection_dim"], *, plus: bool = False,
                     seed: int = 41) -> dict[str, torch.Tensor]:
    """An IP-Adapter state dict in the original layout: `image_proj.*` and `ip_adapter.{2k+1}.to_{k,v}_ip.weight`
    for the k-th cross-attention of the UNet (diffusers' `attn_processors` order)."""
    generator = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)

    def rand(*shape, scale=0.3):
        return (torch.randn(*shape, generator=generator) * scale).contiguous()

    sd: dict[str, torch.Tensor] = {}
    if plus:  # IPAdapterPlusImageProjection (Resampler): dim = cross here, 4 query tokens, 1 layer
        hidden = CLIP_CONFIG["hidden_size"]
        dim, queries = cross, 4
        sd.update({"image_proj.latents": rand(1, queries, dim), "image_proj.proj_in.weight": rand(dim, hidden),
                   "image_proj.proj_in.bias": rand(dim), "image_proj.proj_out.weight": rand(cross, dim),
                   "image_proj.proj_out.bias": rand(cross), "image_proj.norm_out.weight": 1 + rand(cross),
                   "image_proj.norm_out.bias": rand(cross)})
        inner = 64  # one 64-channel head: diffusers' converter reads heads as to_q's rows // 64
        for index in range(4):  # IPAdapterPlusImageProjection's default depth, which its converter assumes
            layer = f"image_proj.layers.{index}."
            sd.update({layer + "0.norm1.weight": 1 + rand(dim), layer + "0.norm1.bias": rand(dim),
                       layer + "0.norm2.weight": 1 + rand(dim), layer + "0.norm2.bias": rand(dim),
                       layer + "0.to_q.weight": rand(inner, dim), layer + "0.to_kv.weight": rand(2 * inner, dim),
                       layer + "0.to_out.weight": rand(dim, inner),
                       layer + "1.0.weight": 1 + rand(dim), layer + "1.0.bias": rand(dim),
                       layer + "1.1.weight": rand(4 * dim, dim), layer + "1.3.weight": rand(dim, 4 * dim)})
    else:
        sd.update({"image_proj.proj.weight": rand(4 * cross, clip_dim), "image_proj.proj.bias": rand(4 * cross),
                   "image_proj.norm.weight": 1 + rand(cross), "image_proj.norm.bias": rand(cross)})
    names = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    for k, name in enumerate(names):
        width = _hidden_size(unet, name)
        sd[f"ip_adapter.{2 * k + 1}.to_k_ip.weight"] = rand(width, cross, scale=1.0)
        sd[f"ip_adapter.{2 * k + 1}.to_v_ip.weight"] = rand(width, cross, scale=1.0)
    return sd


def _hidden_size(unet, name: str) -> int:
    widths = list(unet.config.block_out_channels)
    if name.startswith("mid_block"):
        return widths[-1]
    block = int(name.split(".")[1])
    return widths[block] if name.startswith("down_blocks") else list(reversed(widths))[block]


def write_ip_adapter(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """`.safetensors`: flat `image_proj.*` / `ip_adapter.*` keys; `.bin`: `{"image_proj": {...}, "ip_adapter":
    {...}}` as the IP-Adapter repository saves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".bin":
        nested: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in sd.items():
            group, rest = key.split(".", 1)
            nested[group][rest] = value
        torch.save(nested, path)
    else:
        save_file(sd, str(path))
    return path
