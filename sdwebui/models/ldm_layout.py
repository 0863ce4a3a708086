"""diffusers / transformers modules -> the single-file LDM/SGM layout (what A1111, ComfyUI and Civitai use).

The exact inverse of `convert.py`'s LDM -> diffusers direction (which uses diffusers' own
`single_file_utils` functions), key for key and value for value: the tests round-trip
LDM -> diffusers -> LDM and compare. Used by the test fixtures to write tiny models in the layout users download,
and later by checkpoint merging / saving.

Keys the diffusers modules do not hold cannot be produced here; pass them via `extra` when writing a complete
file: SD 2.x's last OpenCLIP block and its `text_projection` (SD 2 conditions on the penultimate layer, so the
converted text encoder stops one layer early, as in diffusers), `position_ids`, EMA weights, DDPM buffers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from sdwebui.models.family import ModelFamily

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

TEXT_ENCODER_PREFIXES: dict[ModelFamily, dict[str, str]] = {
    ModelFamily.SD1: {"clip_l": "cond_stage_model.transformer."},
    ModelFamily.SD1_INPAINT: {"clip_l": "cond_stage_model.transformer."},
    ModelFamily.SD2: {"clip_h": "cond_stage_model.model."},
    ModelFamily.SD2_INPAINT: {"clip_h": "cond_stage_model.model."},
    ModelFamily.SDXL: {"clip_l": "conditioner.embedders.0.transformer.", "clip_g": "conditioner.embedders.1.model."},
    ModelFamily.SDXL_INPAINT: {
        "clip_l": "conditioner.embedders.0.transformer.",
        "clip_g": "conditioner.embedders.1.model.",
    },
    ModelFamily.SDXL_REFINER: {"clip_g": "conditioner.embedders.0.model."},
}

_RESNET_TO_LDM = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)

_UNET_DIRECT = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "class_embedding.linear_1.": "label_emb.0.0.",
    "class_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def _resnet_to_ldm(rest: str) -> str:
    for new, old in _RESNET_TO_LDM:
        if rest.startswith(new):
            return old + rest[len(new) :]
    return rest


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """A diffusers `UNet2DConditionModel` state dict -> LDM `openaimodel.UNetModel` keys (no prefix)."""
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError("only a single layers_per_block maps to the LDM layout")
    up_has_attention = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = None
        for prefix, ldm in _UNET_DIRECT.items():
            if key.startswith(prefix):
                new = ldm + key[len(prefix) :]
                break
        if new is None and (m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + block * (lpb + 1) + layer
            new = f"input_blocks.{index}.0.{_resnet_to_ldm(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
        elif new is None and (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)):
            index = 1 + int(m[1]) * (lpb + 1) + lpb
            new = f"input_blocks.{index}.0.op.{m[2]}"
        elif new is None and (m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key)):
            new = f"middle_block.{0 if m[1] == '0' else 2}.{_resnet_to_ldm(m[2])}"
        elif new is None and (m := re.match(r"mid_block\.attentions\.0\.(.*)", key)):
            new = f"middle_block.1.{m[1]}"
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = block * (lpb + 1) + layer
            new = f"output_blocks.{index}.0.{_resnet_to_ldm(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key)):
            block = int(m[1])
            index = block * (lpb + 1) + lpb
            new = f"output_blocks.{index}.{2 if up_has_attention[block] else 1}.conv.{m[2]}"
        if new is None:
            raise ValueError(f"no LDM name for UNet key {key!r}")
        out[new] = value
    return out


_VAE_ATTENTION_TO_LDM = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers `AutoencoderKL` state dict -> LDM `AutoencoderKL` keys (no prefix)."""
    num_up = 1 + max(
        (int(m[1]) for k in state_dict if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))), default=-1
    )
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        if m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut.', 'nin_shortcut.')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut.', 'nin_shortcut.')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            new = f"decoder.up.{num_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut.', 'nin_shortcut.')}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            rest = m[2]
            for diffusers_name, ldm_name in _VAE_ATTENTION_TO_LDM.items():
                if rest.startswith(diffusers_name):
                    rest = ldm_name + rest[len(diffusers_name) :]
                    break
            new = f"{m[1]}.mid.attn_1.{rest}"
            if rest.endswith("weight") and not rest.startswith("norm.") and value.ndim == 2:
                value = value[:, :, None, None]  # LDM uses 1x1 convolutions where diffusers uses Linear
        out[new] = value
    return out


def clip_l_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `CLIPTextModel` keys -> the `transformer.text_model.*` keys under LDM's FrozenCLIPEmbedder."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        if key.startswith("text_projection."):
            continue  # CLIP-L's projection is not part of SD checkpoints
        out["text_model." + key.removeprefix("text_model.")] = value
    return out


_OPENCLIP_LAYER = (
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
    ("self_attn.out_proj.", "attn.out_proj."),
)


def openclip_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `CLIPTextModel(WithProjection)` keys -> OpenCLIP text-tower keys (`transformer.resblocks.*`)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("text_model.")
        if key.endswith("position_ids"):
            continue
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.removeprefix("final_layer_norm.")] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", key):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.*)", key):
            rest = m[2]
            for hf, oc in _OPENCLIP_LAYER:
                if rest.startswith(hf):
                    rest = oc + rest[len(hf) :]
                    break
            else:
                raise ValueError(f"no OpenCLIP name for text encoder key {key!r}")
            out[f"transformer.resblocks.{m[1]}.{rest}"] = value
        else:
            raise ValueError(f"no OpenCLIP name for text encoder key {key!r}")
    for (layer, kind), parts in sorted(qkv.items()):
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def diffusers_to_ldm_checkpoint(
    family: ModelFamily,
    *,
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    text_encoders: Mapping[str, torch.nn.Module],
    extra: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Whole-model state dict in the single-file layout of `family` (LDM for SD1/SD2, SGM for SDXL).

    `text_encoders` maps "clip_l" / "clip_h" / "clip_g" to transformers modules (as `TextEncoderStack` holds them).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in unet_to_ldm(unet.state_dict(), unet.config).items():
        out[UNET_PREFIX + key] = value
    for key, value in vae_to_ldm(vae.state_dict()).items():
        out[VAE_PREFIX + key] = value
    prefixes = TEXT_ENCODER_PREFIXES[family]
    for name, prefix in prefixes.items():
        module = text_encoders.get(name)
        if module is None:
            raise ValueError(f"{family.value} needs a {name} text encoder")
        converted = clip_l_to_ldm(module.state_dict()) if name == "clip_l" else openclip_to_ldm(module.state_dict())
        for key, value in converted.items():
            out[prefix + key] = value
    if extra:
        out.update(extra)
    return out


__all__ = [
    "unet_to_ldm",
    "vae_to_ldm",
    "clip_l_to_ldm",
    "openclip_to_ldm",
    "diffusers_to_ldm_checkpoint",
    "TEXT_ENCODER_PREFIXES",
    "UNET_PREFIX",
    "VAE_PREFIX",
]
