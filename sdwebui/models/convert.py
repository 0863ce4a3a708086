"""Single-file LDM/SGM weights -> diffusers / transformers modules, with the architecture inferred from shapes.

The key renaming is diffusers' own (`diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_open_clip_checkpoint`); those functions are pure dict transforms and are
only ever given a config dict built here, so nothing can reach for the hub. The reverse direction is
`ldm_layout.py`.

## Configs: shipped defaults + what the shapes say

`configs/*.json` hold the standard architecture of each family (SD 1.5, SD 2.x, SDXL base/refiner UNets, the
SD/SDXL VAE, CLIP ViT-L/14, OpenCLIP ViT-H/14 and bigG/14 text towers). Every quantity the weights determine is
then read from the tensor shapes, so a non-standard model of a known family (other widths, fewer blocks, fewer
transformer layers, smaller text encoder, other latent channels) loads through the same code; this is how the
tests' tiny models and the demo model load. Inferred from shapes:

- UNet: in/out channels, block_out_channels, layers_per_block, which levels have attention
  (CrossAttn*Block2D vs *Block2D), transformer_layers_per_block (per level, and mid block), cross_attention_dim,
  use_linear_projection (Linear vs 1x1-conv proj_in), time-embedding width, SDXL's
  projection_class_embeddings_input_dim and addition_time_embed_dim
  (= (adm_in - pooled width) / 6 for SDXL, / 5 for the refiner, whose time ids include an aesthetic score).
- VAE: in/out/latent channels, block_out_channels, layers_per_block, mid-block attention, quant convs.
- Text encoders: vocab size, width, layers, MLP width, max positions, projection width.

Not inferable from shapes (Q/K/V projections are square whatever the head count), so a family rule is used:

- Attention heads: SD 1.x uses 8 heads in every UNet attention (LDM's `num_heads: 8`); SD 2.x and SDXL use
  64-channel heads (`num_head_channels: 64`), i.e. channels/64 heads per level. A width that is not a multiple
  of 64 gets a single head. Text encoders: max(1, width // 64) heads (CLIP-L 12, ViT-H 16, bigG 20), one
  head when that does not divide the width.
- GroupNorm groups: 32 (every SD model).
- Activations: CLIP-L quick_gelu, OpenCLIP gelu.
- SD 2's text encoder is the OpenCLIP tower minus its last block (SD 2 conditions on the penultimate layer).

A safetensors metadata entry `sdwebui.config` (JSON: `{"unet": {...}, "vae": {...}, "clip_l": {...}, ...}`)
overrides any of these, for models built with other choices.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from sdwebui.models.family import ModelFamily
from sdwebui.models.files import ModelFileError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

UNET_CONFIG = {
    ModelFamily.SD1: "unet_sd1",
    ModelFamily.SD1_INPAINT: "unet_sd1",
    ModelFamily.SD2: "unet_sd2",
    ModelFamily.SD2_INPAINT: "unet_sd2",
    ModelFamily.SDXL: "unet_sdxl",
    ModelFamily.SDXL_INPAINT: "unet_sdxl",
    ModelFamily.SDXL_REFINER: "unet_sdxl_refiner",
}
VAE_CONFIG = {family: "vae_sdxl" if family.spec.is_sdxl else "vae_sd" for family in ModelFamily}

_FIXED_HEAD_FAMILIES = (ModelFamily.SD1, ModelFamily.SD1_INPAINT)
SD1_HEADS = 8
HEAD_CHANNELS = 64


def shipped_config(name: str) -> dict[str, Any]:
    """A fresh copy of a config from `configs/` ("unet_sd1", "vae_sdxl", "clip_g", ...); a few KB, read each time."""
    return json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


def _ints_after(keys: Iterable[str], prefix: str) -> list[int]:
    found = set()
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    for key in keys:
        if key.startswith(prefix) and (m := pattern.match(key)):
            found.add(int(m[1]))
    return sorted(found)


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def text_heads_for(width: int) -> int:
    heads = max(1, width // HEAD_CHANNELS)
    return heads if width % heads == 0 else 1


def unet_heads_for(family: ModelFamily, channels: list[int]) -> int | list[int]:
    if family in _FIXED_HEAD_FAMILIES:
        return SD1_HEADS
    return [c // HEAD_CHANNELS if c % HEAD_CHANNELS == 0 else 1 for c in channels]


def apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    if overrides:
        config.update(overrides)
    return config


def config_overrides_from_metadata(metadata: Mapping[str, str] | None, path: Path | str) -> dict[str, dict]:
    raw = (metadata or {}).get("sdwebui.config")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ModelFileError(path, f"metadata sdwebui.config is not valid JSON ({error})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ModelFileError(path, "metadata sdwebui.config must map component names to objects")
    return value


# ---------------------------------------------------------------------------------------------------- UNet


def infer_unet_config(
    sd: Mapping[str, Any],
    family: ModelFamily,
    *,
    pooled_dim: int | None = None,
    path: Path | str = "<checkpoint>",
) -> dict[str, Any]:
    """A diffusers `UNet2DConditionModel` config for LDM UNet weights `sd` (keys without `model.diffusion_model.`)."""

    def fail(what: str) -> ModelFileError:
        return ModelFileError(path, f"unsupported UNet layout ({what})")

    cfg = shipped_config(UNET_CONFIG[family])
    keys = list(sd.keys())
    in_ch, model_ch = _shape(sd, "input_blocks.0.0.weight")[1], _shape(sd, "input_blocks.0.0.weight")[0]
    levels: list[list[int]] = [[]]
    for index in _ints_after(keys, "input_blocks.")[1:]:
        if f"input_blocks.{index}.0.op.weight" in sd:
            levels.append([])
        else:
            levels[-1].append(index)
    per_level = {len(level) for level in levels}
    if len(per_level) != 1 or 0 in per_level:
        raise fail(f"resnets per level {sorted(len(level) for level in levels)}")
    lpb = per_level.pop()
    try:
        channels = [_shape(sd, f"input_blocks.{level[0]}.0.out_layers.3.weight")[0] for level in levels]
    except KeyError as error:
        raise fail(f"missing {error.args[0]}") from None
    if channels[0] != model_ch:
        raise fail("first level width differs from conv_in")
    has_attn = [f"input_blocks.{level[0]}.1.proj_in.weight" in sd for level in levels]
    depth = [len(_ints_after(keys, f"input_blocks.{level[0]}.1.transformer_blocks.")) for level in levels]
    if "middle_block.1.proj_in.weight" not in sd:
        raise fail("mid block without attention")
    mid_depth = len(_ints_after(keys, "middle_block.1.transformer_blocks."))
    # diffusers gives the mid block transformer_layers_per_block[-1]; levels without attention ignore their
    # entry, so they carry the mid-block depth (the SDXL refiner's last level has no attention).
    layers = [d if a else mid_depth for d, a in zip(depth, has_attn)]
    if layers[-1] != mid_depth:
        raise fail(f"mid block has {mid_depth} transformer layers, last level {layers[-1]}")

    n_out = len(_ints_after(keys, "output_blocks."))
    if n_out != len(levels) * (lpb + 1):
        raise fail(f"{n_out} output blocks for {len(levels)} levels of {lpb} resnets")
    for block, (attn, layer_count) in enumerate(zip(reversed(has_attn), reversed(layers))):
        first = block * (lpb + 1)
        up_attn = f"output_blocks.{first}.1.proj_in.weight" in sd
        if up_attn != attn:
            raise fail(f"up block {block} attention does not mirror the down path")
        if attn and len(_ints_after(keys, f"output_blocks.{first}.1.transformer_blocks.")) != layer_count:
            raise fail(f"up block {block} transformer depth does not mirror the down path")

    cfg["in_channels"] = in_ch
    cfg["out_channels"] = _shape(sd, "out.2.weight")[0]
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = lpb
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)]
    cfg["transformer_layers_per_block"] = layers[0] if len(set(layers)) == 1 else layers
    cfg["use_linear_projection"] = len(_shape(sd, "middle_block.1.proj_in.weight")) == 2
    cfg["cross_attention_dim"] = _shape(sd, "middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
    cfg["attention_head_dim"] = unet_heads_for(family, channels)
    cfg.pop("num_attention_heads", None)
    time_dim, time_in = _shape(sd, "time_embed.0.weight")
    if time_in != channels[0]:
        raise fail("time embedding input differs from the first level width")
    cfg["time_embedding_dim"] = None if time_dim == channels[0] * 4 else time_dim

    if "label_emb.0.0.weight" in sd:
        if not family.spec.is_sdxl:
            raise fail("class-conditioned UNet (unCLIP / upscaler models are not supported)")
        adm_in = _shape(sd, "label_emb.0.0.weight")[1]
        n_ids = 5 if family == ModelFamily.SDXL_REFINER else 6
        if pooled_dim is None:
            pooled_dim = adm_in - n_ids * 256
        time_embed_dim, remainder = divmod(adm_in - pooled_dim, n_ids)
        if remainder or time_embed_dim <= 0:
            raise fail(f"SDXL conditioning width {adm_in} does not fit pooled width {pooled_dim} + {n_ids} time ids")
        cfg["addition_embed_type"] = "text_time"
        cfg["addition_time_embed_dim"] = time_embed_dim
        cfg["projection_class_embeddings_input_dim"] = adm_in
    else:
        if family.spec.is_sdxl:
            raise fail("SDXL UNet without its size/crop conditioning (label_emb)")
        cfg["addition_embed_type"] = None
        cfg["addition_time_embed_dim"] = None
        cfg["projection_class_embeddings_input_dim"] = None
    return cfg


def convert_unet(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """LDM UNet keys (without prefix) -> diffusers keys, via diffusers' converter."""
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    prefixed = {LDM_UNET_KEY + k: v for k, v in sd.items()}
    return convert_ldm_unet_checkpoint(prefixed, dict(config))


# ---------------------------------------------------------------------------------------------------- VAE


def is_diffusers_vae_layout(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd)


def infer_vae_config(
    sd: Mapping[str, Any], family: ModelFamily, *, scaling_factor: float | None = None, path: Path | str = "<vae>"
) -> dict[str, Any]:
    """A diffusers `AutoencoderKL` config for VAE weights in LDM or diffusers layout (keys without prefix)."""
    cfg = shipped_config(VAE_CONFIG[family])
    keys = list(sd.keys())
    try:
        if is_diffusers_vae_layout(sd):
            levels = _ints_after(keys, "encoder.down_blocks.")
            channels = [_shape(sd, f"encoder.down_blocks.{i}.resnets.0.conv2.weight")[0] for i in levels]
            lpb = len(_ints_after(keys, "encoder.down_blocks.0.resnets."))
            mid_attention = "encoder.mid_block.attentions.0.to_q.weight" in sd
        else:
            levels = _ints_after(keys, "encoder.down.")
            channels = [_shape(sd, f"encoder.down.{i}.block.0.conv2.weight")[0] for i in levels]
            lpb = len(_ints_after(keys, "encoder.down.0.block."))
            mid_attention = "encoder.mid.attn_1.q.weight" in sd
        cfg.update(
            in_channels=_shape(sd, "encoder.conv_in.weight")[1],
            out_channels=_shape(sd, "decoder.conv_out.weight")[0],
            latent_channels=_shape(sd, "decoder.conv_in.weight")[1],
        )
    except KeyError as error:
        raise ModelFileError(path, f"not a VAE this loader understands (missing {error.args[0]})") from None
    if not channels or lpb == 0:
        raise ModelFileError(path, "not a VAE this loader understands (no encoder blocks)")
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = lpb
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * len(channels)
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * len(channels)
    cfg["mid_block_add_attention"] = mid_attention
    cfg["use_quant_conv"] = "quant_conv.weight" in sd
    cfg["use_post_quant_conv"] = "post_quant_conv.weight" in sd
    if scaling_factor is not None:
        cfg["scaling_factor"] = scaling_factor
    return cfg


def convert_vae(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """LDM VAE keys (without prefix) -> diffusers keys; diffusers-layout input is returned as is."""
    if is_diffusers_vae_layout(sd):
        return dict(sd)
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(dict(sd), dict(config))


# ---------------------------------------------------------------------------------------------- text encoders


def convert_clip_l(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FrozenCLIPEmbedder keys (after `...transformer.`) -> transformers `CLIPTextModel` keys.

    Handles A1111's `checkpoint_dict_replacements_sd1` case (old files without the `text_model.` level) and drops
    `position_ids`, which transformers rebuilds (some old files carry them as broken floats)."""
    out = {}
    for key, value in sd.items():
        key = key.removeprefix("text_model.")
        if key.endswith("position_ids"):
            continue
        out[key] = value
    return out


def convert_openclip(sd: Mapping[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """OpenCLIP text-tower keys (after `...model.`) -> transformers CLIP keys (`text_model.*`, `text_projection.*`)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    prefix = "openclip."  # any prefix but SD2's, whose hard-coded ignore list we apply ourselves
    prefixed = {prefix + k: v for k, v in sd.items()}
    text_model = SimpleNamespace(config=SimpleNamespace(hidden_size=width))
    return convert_open_clip_checkpoint(text_model, prefixed, prefix=prefix)


def infer_text_config(name: str, sd: Mapping[str, Any], path: Path | str = "<checkpoint>") -> dict[str, Any]:
    """A transformers `CLIPTextConfig` dict for converted text-encoder weights (keys without `text_model.`)."""
    cfg = shipped_config(name)
    keys = list(sd.keys())
    try:
        vocab, width = _shape(sd, "embeddings.token_embedding.weight")
        positions = _shape(sd, "embeddings.position_embedding.weight")[0]
        intermediate = _shape(sd, "encoder.layers.0.mlp.fc1.weight")[0]
    except KeyError as error:
        raise ModelFileError(path, f"damaged {name} text encoder (missing {error.args[0]})") from None
    cfg.update(
        vocab_size=vocab,
        hidden_size=width,
        max_position_embeddings=positions,
        intermediate_size=intermediate,
        num_hidden_layers=len(_ints_after(keys, "encoder.layers.")),
        num_attention_heads=text_heads_for(width),
    )
    if "text_projection.weight" in sd:
        cfg["projection_dim"] = _shape(sd, "text_projection.weight")[0]
    return cfg


# ----------------------------------------------------------------------------------------------- building


def _materialize_buffers(module: torch.nn.Module, device: torch.device) -> None:
    """Non-persistent buffers are not in any state dict, so after a meta-device build they must be rebuilt."""
    from transformers.models.clip.modeling_clip import CLIPTextEmbeddings

    for sub in module.modules():
        for name, buffer in list(sub.named_buffers(recurse=False)):
            if not buffer.is_meta:
                continue
            if isinstance(sub, CLIPTextEmbeddings) and name == "position_ids":
                value = torch.arange(buffer.shape[-1], device=device).expand((1, -1))
                sub.register_buffer(name, value, persistent=False)
            else:
                raise RuntimeError(f"buffer {type(sub).__name__}.{name} left on the meta device")


def load_into_meta_module(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, path: Path | str
) -> torch.nn.Module:
    """Load `state_dict` into a module built on the meta device: tensors are adopted as they are (no copy)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                parts.append(f"{label}: {', '.join(items[:3])}{'…' if len(items) > 3 else ''} ({len(items)})")
        raise ModelFileError(path, f"{what} weights do not fit the inferred architecture; {'; '.join(parts)}")
    module.load_state_dict(state_dict, strict=True, assign=True)
    device = next(iter(state_dict.values())).device if state_dict else torch.device("cpu")
    _materialize_buffers(module, device)
    module.eval()
    module.requires_grad_(False)
    return module


def build_unet(config: Mapping[str, Any], state_dict: dict[str, torch.Tensor], path: Path | str = "<checkpoint>"):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(config))
    return load_into_meta_module(unet, state_dict, "UNet", path)


def build_vae(config: Mapping[str, Any], state_dict: dict[str, torch.Tensor], path: Path | str = "<checkpoint>"):
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(dict(config))
    return load_into_meta_module(vae, state_dict, "VAE", path)


def build_text_encoder(
    config: Mapping[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    with_projection: bool,
    what: str = "text encoder",
    path: Path | str = "<checkpoint>",
):
    """`CLIPTextModel` (keys without `text_model.`) or `CLIPTextModelWithProjection` (keys with it)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        model = cls(cfg)
    return load_into_meta_module(model, state_dict, what, path)


__all__ = [
    "CONFIG_DIR",
    "shipped_config",
    "infer_unet_config",
    "infer_vae_config",
    "infer_text_config",
    "convert_unet",
    "convert_vae",
    "convert_clip_l",
    "convert_openclip",
    "build_unet",
    "build_vae",
    "build_text_encoder",
    "load_into_meta_module",
    "config_overrides_from_metadata",
    "apply_overrides",
    "text_heads_for",
    "unet_heads_for",
]
