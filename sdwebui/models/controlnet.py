"""ControlNet weights -> diffusers' `ControlNetModel`, offline, with the architecture read from the tensor shapes.

Layouts (all through the safe readers of `files.py`: safetensors, or the restricted unpickler for `.pth/.ckpt`):

- the original single file (`control_v11p_sd15_canny.pth/.safetensors`, the fp16 "pruned" ones, SDXL ControlNets
  in the LDM layout): keys `control_model.input_blocks...`, `zero_convs`, `input_hint_block`, `middle_block_out`
  (also without the `control_model.` prefix); renamed with diffusers' own `convert_controlnet_checkpoint`, given a
  config built here (so nothing reaches for the hub), plus SDXL's `label_emb` which that converter leaves out;
- the diffusers layout in one file (`diffusion_pytorch_model.safetensors` renamed), or a diffusers folder
  (`config.json` + weights), whose config is used as it is;
- Stability's control-LoRAs, made into a ControlNet with the checkpoint's UNet (`control_lora.py`).

Config inference follows `convert.infer_unet_config`: levels, widths, resnets per level, which levels attend,
transformer depth, linear vs conv projections, cross-attention width, the hint encoder's widths, SDXL's size
conditioning; attention heads by the family rule (SD 1.x: 8 heads; SD 2.x / SDXL: 64-channel heads).

What family a ControlNet is for is read from the same shapes (SDXL: the size conditioning; SD 2.x: 1024-wide
cross-attention; else SD 1.x) and checked against the checkpoint's UNet (`check_compatible`) before any step, so a
ControlNet for another family is a clear error rather than a shape mismatch deep in the UNet.

`load_control_model` is what a unit's model file goes through: it reads the file once and decides, from its
weights as the extension's `controlnet_model_guess.py` does, whether it is an IP-Adapter (`ip_adapter.py`), a
T2I-Adapter (`t2i_adapter.py`) or a ControlNet; `check_model_compatible` checks any of them against the UNet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdwebui.models.control_lora import is_control_lora, load_control_lora
from sdwebui.models.controlnet_files import DIFFUSERS_WEIGHTS
from sdwebui.models.convert import load_into_meta_module
from sdwebui.models.files import ModelFileError, load_pickle, read_state_dict, unwrap_state_dict
from sdwebui.models.ip_adapter import (
    LoadedIPAdapter,
    check_ip_adapter_compatible,
    flatten_ip_adapter,
    is_ip_adapter,
    load_ip_adapter,
)
from sdwebui.models.t2i_adapter import LoadedAdapter, check_adapter_compatible, is_t2i_adapter, load_adapter

LDM_PREFIX = "control_model."
SD1_HEADS = 8
HEAD_CHANNELS = 64


@dataclass
class LoadedControlNet:
    model: Any
    """diffusers `ControlNetModel`."""
    family: str
    """"sd1", "sd2" or "sdxl": what the weights say they are for."""
    path: Path

    @property
    def cross_attention_dim(self) -> int:
        return int(self.model.config.cross_attention_dim)

    @property
    def is_sdxl(self) -> bool:
        return self.model.config.addition_embed_type == "text_time"


FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def _ints_after(keys, prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m[1]) for key in keys if (m := pattern.match(key))})


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(key.startswith(LDM_PREFIX) for key in sd):
        return {key[len(LDM_PREFIX):]: value for key, value in sd.items() if key.startswith(LDM_PREFIX)}
    return sd


def is_ldm_controlnet(sd: Mapping[str, Any]) -> bool:
    return "input_hint_block.0.weight" in sd and "zero_convs.0.0.weight" in sd


def is_diffusers_controlnet_dict(sd: Mapping[str, Any]) -> bool:
    return "controlnet_cond_embedding.conv_in.weight" in sd and "controlnet_down_blocks.0.weight" in sd


def ldm_to_diffusers(sd: dict[str, torch.Tensor], path: Path | str) -> dict[str, torch.Tensor]:
    """LDM ControlNet keys (no prefix) -> diffusers `ControlNetModel` keys."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    levels: list[list[int]] = [[]]
    for index in _ints_after(sd, "input_blocks.")[1:]:
        if f"input_blocks.{index}.0.op.weight" in sd:
            levels.append([])
        else:
            levels[-1].append(index)
    per_level = {len(level) for level in levels}
    if len(per_level) != 1 or 0 in per_level:
        raise ModelFileError(path, f"unsupported ControlNet layout (resnets per level {[len(x) for x in levels]})")
    hint = _ints_after(sd, "input_hint_block.")
    if hint != list(range(0, 15, 2)):
        raise ModelFileError(path, f"unsupported ControlNet hint encoder (convolutions {hint}; expected 8)")
    converted = convert_controlnet_checkpoint(dict(sd), {"layers_per_block": per_level.pop()})
    for ldm, new in (("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")):
        for suffix in ("weight", "bias"):
            if ldm + suffix in sd:
                converted[new + suffix] = sd[ldm + suffix]
    return {key: value for key, value in converted.items() if value is not None}


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def family_of(sd: Mapping[str, Any]) -> str:
    """Which family diffusers-layout ControlNet weights are for."""
    if "add_embedding.linear_1.weight" in sd:
        return "sdxl"
    key = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    if key in sd and _shape(sd, key)[1] == 1024:
        return "sd2"
    return "sd1"


def infer_config(sd: Mapping[str, Any], *, addition_time_embed_dim: int | None = None,
                 path: Path | str = "<controlnet>") -> dict[str, Any]:
    """A diffusers `ControlNetModel` config for diffusers-layout weights."""
    keys = list(sd)
    try:
        channels_in = _shape(sd, "conv_in.weight")[1]
        levels = _ints_after(keys, "down_blocks.")
        widths = [_shape(sd, f"down_blocks.{i}.resnets.0.conv2.weight")[0] for i in levels]
        layers_per_block = len(_ints_after(keys, "down_blocks.0.resnets."))
        attends = [f"down_blocks.{i}.attentions.0.proj_in.weight" in sd for i in levels]
        depth = [len(_ints_after(keys, f"down_blocks.{i}.attentions.0.transformer_blocks.")) for i in levels]
        mid_depth = len(_ints_after(keys, "mid_block.attentions.0.transformer_blocks."))
        cross = _shape(sd, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight")[1]
        linear = len(_shape(sd, "mid_block.attentions.0.proj_in.weight")) == 2
        hint_in = _shape(sd, "controlnet_cond_embedding.conv_in.weight")
        blocks = _ints_after(keys, "controlnet_cond_embedding.blocks.")
        hint_widths = [hint_in[0], *(_shape(sd, f"controlnet_cond_embedding.blocks.{i}.weight")[0]
                                     for i in blocks[1::2])]
    except KeyError as error:
        raise ModelFileError(path, f"not a ControlNet this loader understands (missing {error.args[0]})") from None
    family = family_of(sd)
    heads: int | list[int] = SD1_HEADS if family == "sd1" else \
        [w // HEAD_CHANNELS if w % HEAD_CHANNELS == 0 else 1 for w in widths]
    config: dict[str, Any] = {
        "in_channels": channels_in,
        "conditioning_channels": hint_in[1],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "block_out_channels": widths,
        "layers_per_block": layers_per_block,
        "cross_attention_dim": cross,
        "transformer_layers_per_block": [d if a else mid_depth for d, a in zip(depth, attends)],
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "conditioning_embedding_out_channels": hint_widths,
    }
    if family == "sdxl":
        adm_in = _shape(sd, "add_embedding.linear_1.weight")[1]
        config.update(addition_embed_type="text_time", addition_time_embed_dim=addition_time_embed_dim or 256,
                      projection_class_embeddings_input_dim=adm_in)
    return config


def read_controlnet_weights(path: Path, state_dict: dict[str, torch.Tensor] | None = None
                            ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(diffusers-layout weights, the folder's config or None) of a ControlNet file or diffusers folder (or of the
    file's already read `state_dict`)."""
    if path.is_dir():
        weights = next((path / name for name in DIFFUSERS_WEIGHTS if (path / name).is_file()), None)
        if weights is None:
            raise ModelFileError(path, "a ControlNet folder needs diffusion_pytorch_model.safetensors")
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelFileError(path, f"unreadable config.json ({error})") from None
        return read_state_dict(weights), config
    sd = _strip_prefix(read_state_dict(path) if state_dict is None else state_dict)
    if is_ldm_controlnet(sd):
        return ldm_to_diffusers(sd, path), None
    if is_diffusers_controlnet_dict(sd):
        return sd, None
    kind = "a T2I-Adapter" if any(k.startswith(("adapter.", "body.")) for k in sd) else \
        "an IP-Adapter" if any(k.startswith(("image_proj.", "ip_adapter.")) for k in sd) else \
        "a LoRA" if any(k.endswith((".up", ".down", ".lora_up.weight")) for k in sd) else "not a ControlNet"
    raise ModelFileError(path, f"{kind} in a layout this loader does not know (ControlNets, control-LoRAs, "
                               "TencentARC / diffusers T2I-Adapters and IP-Adapters are supported)"
                         if kind != "not a ControlNet" else
                         "not a ControlNet model (no input_hint_block / controlnet_cond_embedding weights)")


def load_controlnet(path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    unet_config: Mapping[str, Any] | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None) -> LoadedControlNet:
    """Build a ControlNet from `path`; `unet_config` (the checkpoint's UNet config) fills what the weights cannot
    say (SDXL's time-id embedding width)."""
    from diffusers import ControlNetModel

    path = Path(path)
    sd, config = read_controlnet_weights(path, state_dict)
    if config is None:
        time_dim = (unet_config or {}).get("addition_time_embed_dim")
        config = infer_config(sd, addition_time_embed_dim=time_dim, path=path)
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    with torch.device("meta"):
        model = ControlNetModel.from_config(config)
    sd = {key: value.to(dtype) if value.is_floating_point() else value for key, value in sd.items()}
    model = load_into_meta_module(model, sd, "ControlNet", path)
    return LoadedControlNet(model.to(device), family_of(sd), path)


def read_control_file(path: Path) -> dict[str, torch.Tensor]:
    """A control model file's tensors, read once (safetensors, or the restricted unpickler; an IP-Adapter `.bin`'s
    nested groups flattened to `image_proj.*` / `ip_adapter.*`)."""
    if path.suffix.lower() == ".safetensors":
        return read_state_dict(path)
    obj = load_pickle(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("ip_adapter"), Mapping):
        return flatten_ip_adapter(obj, path)
    sd = unwrap_state_dict(obj)
    if sd is None:
        raise ModelFileError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    return {str(key): value for key, value in sd.items() if isinstance(value, torch.Tensor)}


def _folder_class(path: Path) -> str:
    try:
        return str(json.loads((path / "config.json").read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        return ""


ControlModel = LoadedControlNet | LoadedAdapter | LoadedIPAdapter


def load_control_model(path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       unet_config: Mapping[str, Any] | None = None, unet=None) -> ControlModel:
    """What a unit's model file is, as the extension decides it from the weights (`controlnet_model_guess.py`): an
    IP-Adapter, a T2I-Adapter, a control-LoRA (a ControlNet made from `unet`, the checkpoint's: `control_lora.py`),
    or else a ControlNet."""
    path = Path(path)
    if path.is_dir():
        if _folder_class(path) == "T2IAdapter":
            return load_adapter(path, device=device, dtype=dtype)
        return load_controlnet(path, device=device, dtype=dtype, unet_config=unet_config)
    sd = read_control_file(path)
    if is_ip_adapter(sd):
        return load_ip_adapter(path, device=device, dtype=dtype, state_dict=sd)
    if is_t2i_adapter(sd):
        return load_adapter(path, device=device, dtype=dtype, state_dict=sd)
    if is_control_lora(sd):
        model, family = load_control_lora(path, sd, unet, device=device, dtype=dtype)
        return LoadedControlNet(model, family, path)
    return load_controlnet(path, device=device, dtype=dtype, unet_config=unet_config, state_dict=sd)


def check_model_compatible(loaded: ControlModel, unet, checkpoint_family: str) -> str | None:
    """Why a loaded control model cannot drive `unet`, or None when it can."""
    if isinstance(loaded, LoadedAdapter):
        return check_adapter_compatible(loaded, unet.config, checkpoint_family)
    if isinstance(loaded, LoadedIPAdapter):
        return check_ip_adapter_compatible(loaded, unet, checkpoint_family)
    return check_compatible(loaded, unet.config, checkpoint_family)


def check_compatible(controlnet: LoadedControlNet, unet_config: Mapping[str, Any], checkpoint_family: str) -> str | None:
    """Why `controlnet` cannot drive a UNet with `unet_config`, or None when it can."""
    unet_sdxl = unet_config.get("addition_embed_type") == "text_time"
    unet_cross = unet_config.get("cross_attention_dim")
    name = FAMILY_NAMES[controlnet.family]
    if controlnet.is_sdxl != unet_sdxl or controlnet.cross_attention_dim != unet_cross:
        return (f"ControlNet {controlnet.path.name} is for {name} models (cross-attention "
                f"{controlnet.cross_attention_dim}); the checkpoint is {checkpoint_family} (cross-attention "
                f"{unet_cross}): choose a ControlNet made for it")
    if tuple(controlnet.model.config.block_out_channels) != tuple(unet_config.get("block_out_channels", ())):
        return (f"ControlNet {controlnet.path.name} has block widths "
                f"{list(controlnet.model.config.block_out_channels)}, the checkpoint's UNet "
                f"{list(unet_config.get('block_out_channels', ()))}: it was made for another model")
    return None


__all__ = ["LoadedControlNet", "load_controlnet", "check_compatible", "load_control_model", "check_model_compatible",
           "ControlModel", "read_control_file", "infer_config", "ldm_to_diffusers",
           "family_of", "read_controlnet_weights", "FAMILY_NAMES"]
