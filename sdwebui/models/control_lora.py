"""Stability AI's control-LoRAs (`control-lora-canny-rank128.safetensors`, `control-lora-depth-rank256...`): a
ControlNet stored as its difference from the checkpoint's own UNet.

The file holds, in the original (`cldm`) layout: the hint encoder, the zero convolutions and whatever else the
ControlNet does not share with the UNet in full (norms, biases, SDXL's `label_emb`), a low-rank pair `X.up` /
`X.down` for each large layer of the UNet's down path, and a marker tensor `lora_controlnet`. The ControlNet is the
checkpoint's UNet encoder (`ControlNetModel.from_unet`) with `weight + up @ down` in the layers that have a pair
(scale 1: what ComfyUI's `ControlLoraOps` and sd-webui-controlnet compute, and diffusers' loader with
alpha = rank) and the file's full tensors in place of the UNet's. The keys are renamed by diffusers' own converter
(`convert_sai_sd_control_lora_state_dict_to_peft`, pure renaming); the merge is done here, so neither PEFT nor a
per-step matrix product is needed.

Where we differ: the ControlNet is built once per checkpoint from the UNet's own weights, so a LoRA in the prompt
acts on the UNet but not on the control branch (the extension shares the UNet's live layers, so there it acts on
both). A control-LoRA made for another family does not fit the UNet's shapes and is refused, naming the family.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from sdwebui.models.convert import load_into_meta_module
from sdwebui.models.files import ModelFileError

log = logging.getLogger(__name__)

MARKER = "lora_controlnet"
ENCODER_PARTS = ("conv_in.", "time_embedding.", "class_embedding.", "add_embedding.", "down_blocks.", "mid_block.")
"""The ControlNet's modules that `from_unet` takes from the UNet (same names in both)."""


def is_control_lora(sd: Mapping[str, object]) -> bool:
    return MARKER in sd


def _hint_widths(sd: Mapping[str, torch.Tensor], path: Path) -> tuple[int, tuple[int, ...]]:
    """(hint channels, `conditioning_embedding_out_channels`) of diffusers-layout hint-encoder weights."""
    conv_in = sd.get("controlnet_cond_embedding.conv_in.weight")
    if conv_in is None:
        raise ModelFileError(path, "a control-LoRA without its hint encoder (input_hint_block.0)")
    blocks = sorted(int(key.split(".")[2]) for key in sd
                    if key.startswith("controlnet_cond_embedding.blocks.") and key.endswith(".weight"))
    widths = [int(conv_in.shape[0])] + [int(sd[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0])
                                        for i in blocks if i % 2 == 1]
    return int(conv_in.shape[1]), tuple(widths)


def control_lora_family(unet_config: Mapping[str, object]) -> str:
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if unet_config.get("cross_attention_dim") == 1024 else "sd1"


def load_control_lora(path: Path, sd: dict[str, torch.Tensor], unet, *, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, str]:
    """(the diffusers `ControlNetModel`, its family) a control-LoRA file (`sd`, already read) makes with `unet`
    (the checkpoint's)."""
    from diffusers import ControlNetModel
    from diffusers.utils.state_dict_utils import convert_sai_sd_control_lora_state_dict_to_peft

    if unet is None:
        raise ModelFileError(path, "a control-LoRA is a difference from a checkpoint's UNet: load a checkpoint first")
    renamed = convert_sai_sd_control_lora_state_dict_to_peft({k: v for k, v in sd.items() if k != MARKER})
    renamed = {key: value for key, value in renamed.items() if value is not None}  # (its .get()s of absent keys)
    hint_channels, widths = _hint_widths(renamed, path)
    with torch.device("meta"):
        model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=widths,
                                          conditioning_channels=hint_channels, load_weights_from_unet=False)
    expected = model.state_dict()
    family = control_lora_family(unet.config)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    full: dict[str, torch.Tensor] = {}
    for key, value in renamed.items():
        for side in ("lora_A", "lora_B"):
            if key.endswith(f".{side}.weight"):
                pairs.setdefault(key[: -len(f".{side}.weight")], {})[side] = value
                break
        else:
            full[key] = value
    ignored = sorted(key for key in full if key not in expected)
    misfits = [key for key in full if key in expected and tuple(full[key].shape) != tuple(expected[key].shape)]
    misfits += [module for module in pairs if f"{module}.weight" not in expected]
    if misfits or any(key.startswith("add_embedding.") for key in ignored):
        raise ModelFileError(path, f"a control-LoRA made for another kind of model than this {family.upper()} "
                                   f"checkpoint ({', '.join((misfits or ignored)[:2])} does not fit its UNet): "
                                   "choose a checkpoint of the family it was made for")
    if ignored:
        log.warning("control-LoRA %s: ignored %d tensors the ControlNet has no place for (%s)", path.name,
                    len(ignored), ", ".join(ignored[:3]))
    unet_weights = {key: value for key, value in unet.state_dict().items() if key.startswith(ENCODER_PARTS)}
    weights: dict[str, torch.Tensor] = {}
    for key in expected:
        source = full.get(key, unet_weights.get(key))
        if source is None:
            raise ModelFileError(path, f"a control-LoRA without {key}, which the checkpoint's UNet does not have "
                                       "either")
        weights[key] = source.to(device="cpu", dtype=torch.float32, copy=True)
    for module, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ModelFileError(path, f"a control-LoRA with half of the low-rank pair of {module}")
        weight = weights[f"{module}.weight"]
        down, up = pair["lora_A"].to(torch.float32), pair["lora_B"].to(torch.float32)
        delta = up.flatten(1) @ down.flatten(1)
        if delta.numel() != weight.numel():
            raise ModelFileError(path, f"a control-LoRA whose pair for {module} does not fit its weight "
                                       f"{tuple(weight.shape)}")
        weight += delta.reshape(weight.shape)
    weights = {key: value.to(dtype) if value.is_floating_point() else value for key, value in weights.items()}
    model = load_into_meta_module(model, weights, "control-LoRA", path)
    return model.to(device), family


__all__ = ["is_control_lora", "load_control_lora", "control_lora_family"]
