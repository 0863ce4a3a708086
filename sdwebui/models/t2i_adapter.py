"""T2I-Adapter weights -> diffusers' `T2IAdapter` (`FullAdapter`, `FullAdapterXL`, `LightAdapter`), offline, with the
architecture read from the tensor shapes, as sd-webui-controlnet's `controlnet_model_guess.py` reads them.

Layouts (through the safe readers of `files.py`):

- TencentARC's original files (`t2iadapter_canny_sd15v2.pth`, `t2iadapter_color_sd14v1.pth`, ...): the full adapter
  `conv_in`, `body.{level * 2 + r}.{in_conv,block1,block2}` (two resnets a level, 1x1 skip convolutions: the
  extension's `sk=True, use_conv=False`), renamed to diffusers' `adapter.body.{level}.resnets.{r}.*`; the light
  (colour) adapter `body.{i}.{in_conv,body.{j}.block*,out_conv}` -> `adapter.body.{i}.{in_conv,resnets.{j},out_conv}`;
- the diffusers layout in one file (`t2i-adapter_diffusers_xl_canny.safetensors`: `adapter.*`), or a diffusers
  folder (`config.json` with `"_class_name": "T2IAdapter"` + weights), whose config is used as it is.

The config: the input's channels and pixel-unshuffle factor from `conv_in` (64 / 192 inputs: 1 or 3 channels
unshuffled by 8, SD 1.x / 2.x; 256 / 768: by 16, SDXL, as the extension's `is_sdxl = cin in (256, 768)`), the
widths per level, resnets per level.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdwebui.models.convert import load_into_meta_module
from sdwebui.models.files import ModelFileError, read_state_dict

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                     "diffusion_pytorch_model.bin")


@dataclass
class LoadedAdapter:
    model: Any
    """diffusers `T2IAdapter`."""
    path: Path

    @property
    def is_sdxl(self) -> bool:
        return self.model.config.adapter_type == "full_adapter_xl"

    @property
    def gray_input(self) -> bool:
        """Whether the adapter takes one channel (the extension feeds it the map's first channel)."""
        return int(self.model.config.in_channels) == 1

    @property
    def unshuffle(self) -> int:
        return int(self.model.config.downscale_factor)

    @property
    def feature_widths(self) -> list[int]:
        """The channels of each feature the adapter returns (one per UNet down level; SDXL's last goes to the mid
        block)."""
        channels = list(self.model.config.channels)
        if self.model.config.adapter_type == "light_adapter":
            return [*channels, channels[-1]]
        return channels


def is_original_full(sd: Mapping[str, Any]) -> bool:
    return "conv_in.weight" in sd and "body.0.block1.weight" in sd


def is_original_light(sd: Mapping[str, Any]) -> bool:
    return "body.0.in_conv.weight" in sd and "body.0.body.0.block1.weight" in sd


def is_diffusers_adapter(sd: Mapping[str, Any]) -> bool:
    return "adapter.body.0.resnets.0.block1.weight" in sd


def is_t2i_adapter(sd: Mapping[str, Any]) -> bool:
    return is_original_full(sd) or is_original_light(sd) or is_diffusers_adapter(sd)


def _ints_after(keys, prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m[1]) for key in keys if (m := pattern.match(key))})


RESNETS_PER_LEVEL = 2
"""TencentARC's full adapters have two resnets a level (the extension builds them with `nums_rb=2`)."""


def original_to_diffusers(sd: Mapping[str, torch.Tensor], path: Path | str) -> dict[str, torch.Tensor]:
    """TencentARC's key names -> diffusers' `T2IAdapter` ones (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    if is_original_light(sd):
        for key, value in sd.items():
            m = re.match(r"body\.(\d+)\.body\.(\d+)\.(.*)", key)
            out[f"adapter.body.{m[1]}.resnets.{m[2]}.{m[3]}" if m else f"adapter.{key}"] = value
        return out
    if any(".skep." in key for key in sd) or any(".down_opt.op." in key for key in sd):
        raise ModelFileError(path, "a T2I-Adapter with skip or strided-convolution downsampling layers (the "
                                   "research code's sk=False / use_conv=True variant), which diffusers cannot build")
    for key, value in sd.items():
        m = re.match(r"body\.(\d+)\.(in_conv|block1|block2)\.(.*)", key)
        if m is None:
            out[f"adapter.{key}"] = value
            continue
        level, r = divmod(int(m[1]), RESNETS_PER_LEVEL)
        out[f"adapter.body.{level}.{m[2]}.{m[3]}" if m[2] == "in_conv" else
            f"adapter.body.{level}.resnets.{r}.{m[2]}.{m[3]}"] = value
    return out


def infer_config(sd: Mapping[str, Any], path: Path | str = "<adapter>") -> dict[str, Any]:
    """A diffusers `T2IAdapter` config for diffusers-layout weights."""
    keys = list(sd)
    levels = _ints_after(keys, "adapter.body.")
    try:
        resnets = len(_ints_after(keys, "adapter.body.0.resnets."))
        if "adapter.conv_in.weight" in sd:  # full adapter
            cin = int(sd["adapter.conv_in.weight"].shape[1])
            channels = [int(sd[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0]) for i in levels]
            if tuple(sd["adapter.body.0.resnets.0.block2.weight"].shape[2:]) != (1, 1):
                raise ModelFileError(path, "a T2I-Adapter with 3x3 skip convolutions, which diffusers cannot build")
            factor = 16 if cin % 256 == 0 and cin // 256 in (1, 3) else 8
            kind = "full_adapter_xl" if factor == 16 else "full_adapter"
        else:  # light adapter: its last level repeats the one before
            cin = int(sd["adapter.body.0.in_conv.weight"].shape[1])
            channels = [int(sd[f"adapter.body.{i}.out_conv.weight"].shape[0]) for i in levels][:-1]
            factor, kind = 8, "light_adapter"
    except KeyError as error:
        raise ModelFileError(path, f"not a T2I-Adapter this loader understands (missing {error.args[0]})") from None
    in_channels, rest = divmod(cin, factor * factor)
    if rest or in_channels not in (1, 3):
        raise ModelFileError(path, f"a T2I-Adapter whose input has {cin} channels (expected 1 or 3 channels "
                                   f"unshuffled by 8 or 16)")
    return {"in_channels": in_channels, "channels": channels, "num_res_blocks": resnets,
            "downscale_factor": factor, "adapter_type": kind}


def read_adapter_weights(path: Path, sd: dict[str, torch.Tensor] | None = None
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(diffusers-layout weights, the folder's config or None) of a T2I-Adapter file or diffusers folder."""
    if path.is_dir():
        weights = next((path / name for name in DIFFUSERS_WEIGHTS if (path / name).is_file()), None)
        if weights is None:
            raise ModelFileError(path, "a T2I-Adapter folder needs diffusion_pytorch_model.safetensors")
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelFileError(path, f"unreadable config.json ({error})") from None
        return read_state_dict(weights), config
    sd = read_state_dict(path) if sd is None else sd
    if is_diffusers_adapter(sd):
        return dict(sd), None
    if is_original_full(sd) or is_original_light(sd):
        return original_to_diffusers(sd, path), None
    raise ModelFileError(path, "not a T2I-Adapter")


def load_adapter(path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 state_dict: dict[str, torch.Tensor] | None = None) -> LoadedAdapter:
    """Build a T2I-Adapter from `path` (or from its already read `state_dict`)."""
    from diffusers import T2IAdapter

    path = Path(path)
    sd, config = read_adapter_weights(path, state_dict)
    if config is None:
        config = infer_config(sd, path)
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    with torch.device("meta"):
        model = T2IAdapter.from_config(config)
    sd = {key: value.to(dtype) if value.is_floating_point() else value for key, value in sd.items()}
    model = load_into_meta_module(model, sd, "T2I-Adapter", path)
    return LoadedAdapter(model.to(device).eval(), path)


def check_adapter_compatible(adapter: LoadedAdapter, unet_config: Mapping[str, Any], checkpoint_family: str
                             ) -> str | None:
    """Why `adapter` cannot drive a UNet with `unet_config`, or None when it can."""
    unet_sdxl = unet_config.get("addition_embed_type") == "text_time"
    widths = [int(w) for w in unet_config.get("block_out_channels", ())]
    name = adapter.path.name
    if adapter.is_sdxl != unet_sdxl:
        made_for = "SDXL" if adapter.is_sdxl else "SD 1.x / 2.x"
        return (f"T2I-Adapter {name} is for {made_for} models; the checkpoint is {checkpoint_family}: choose an "
                "adapter made for it")
    features = adapter.feature_widths
    if features[:len(widths)] != widths or (not adapter.is_sdxl and len(features) != len(widths)):
        return (f"T2I-Adapter {name} has feature widths {features}, the checkpoint's UNet {widths}: it was made "
                "for another model")
    return None


__all__ = ["LoadedAdapter", "load_adapter", "check_adapter_compatible", "infer_config", "original_to_diffusers",
           "is_t2i_adapter", "read_adapter_weights"]
