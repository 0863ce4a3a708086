"""Tiny real Stable Diffusion models for tests: the real diffusers / transformers classes with small configs.

Every family keeps its real block structure (which levels have cross-attention, linear vs conv projections,
SDXL's size conditioning, SD 2's OpenCLIP tower) so that the modules map onto the single-file LDM/SGM layout
users download; `ldm_state_dict()` writes them through `sdwebui.models.ldm_layout`. Text encoders keep CLIP's
real 49408-token vocabulary and 77 positions, so the shipped tokenizer works with them. The VAE keeps SD's
factor-8 downsampling (4 levels), so 64x64 images give 8x8 latents as pipelines expect.

Weights are random but deterministic (seeded per module); biases and norm scales are randomised too, so a
conversion that swapped or dropped a tensor changes the outputs.

Shapes (all families): UNet widths (32, 64) with 1 resnet per level (the refiner: (32, 64, 64)); text
encoders width 32, 2 layers, MLP 64, 1 head; pooled/projection width 32; SDXL time embedding 8 per id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdwebui.models.family import ModelFamily

TEXT_WIDTH = 32
TEXT_LAYERS = 2
POOLED_WIDTH = 32
TIME_EMBED = 8
VOCAB = 49408
NATIVE_SIZE = 64


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Deterministic random weights (fan-in scaled), including biases and norm scales."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(noise / fan_in**0.5)
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
    return module.eval().requires_grad_(False)


def text_config(*, hidden_act: str, layers: int = TEXT_LAYERS, width: int = TEXT_WIDTH):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=VOCAB,
        max_position_embeddings=77,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=1,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        projection_dim=POOLED_WIDTH,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def tiny_clip_l(seed: int = 1, **kw):
    from transformers import CLIPTextModel

    return _randomize(CLIPTextModel(text_config(hidden_act="quick_gelu", **kw)), seed)


def tiny_clip_h(seed: int = 2, **kw):
    """SD 2's encoder as diffusers holds it: the OpenCLIP tower without its last block."""
    from transformers import CLIPTextModel

    return _randomize(CLIPTextModel(text_config(hidden_act="gelu", **kw)), seed)


def tiny_clip_g(seed: int = 3, **kw):
    from transformers import CLIPTextModelWithProjection

    return _randomize(CLIPTextModelWithProjection(text_config(hidden_act="gelu", **kw)), seed)


def tiny_vae(seed: int = 4, *, scaling_factor: float = 0.18215, channels=(32, 32, 64, 64)):
    from diffusers import AutoencoderKL

    n = len(channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=NATIVE_SIZE,
        scaling_factor=scaling_factor,
    )
    return _randomize(vae, seed)


def unet_config(family: ModelFamily) -> dict:
    in_channels = family.spec.unet_in_channels
    base = dict(
        sample_size=NATIVE_SIZE // 8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
    )
    if family in (ModelFamily.SD1, ModelFamily.SD1_INPAINT):
        return dict(
            base,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_WIDTH,
            attention_head_dim=8,  # SD 1.x: 8 heads in every attention
        )
    if family in (ModelFamily.SD2, ModelFamily.SD2_INPAINT):
        return dict(
            base,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_WIDTH,
            attention_head_dim=[1, 1],  # 64-channel heads; narrower levels get one head
            use_linear_projection=True,
        )
    if family in (ModelFamily.SDXL, ModelFamily.SDXL_INPAINT):
        return dict(
            base,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=[1, 2],
            cross_attention_dim=2 * TEXT_WIDTH,  # CLIP-L and CLIP-G hidden states side by side
            attention_head_dim=[1, 1],
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED,
            projection_class_embeddings_input_dim=6 * TIME_EMBED + POOLED_WIDTH,
        )
    if family == ModelFamily.SDXL_REFINER:
        return dict(
            base,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=2,
            cross_attention_dim=TEXT_WIDTH,
            attention_head_dim=[1, 1, 1],
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED,
            projection_class_embeddings_input_dim=5 * TIME_EMBED + POOLED_WIDTH,  # 5 ids: aesthetic score
        )
    raise ValueError(family)


def tiny_unet(family: ModelFamily, seed: int = 5, **overrides):
    from diffusers import UNet2DConditionModel

    return _randomize(UNet2DConditionModel(**{**unet_config(family), **overrides}), seed)


@dataclass
class TinyModel:
    """The original modules of a tiny checkpoint (compare a loaded model against these)."""

    family: ModelFamily
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: dict[str, torch.nn.Module]
    prediction_type: str = "epsilon"
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """Keys a real file carries that the diffusers modules do not hold (SD 2's last OpenCLIP block, ...)."""

    def ldm_state_dict(self) -> dict[str, torch.Tensor]:
        from sdwebui.models.ldm_layout import diffusers_to_ldm_checkpoint

        sd = diffusers_to_ldm_checkpoint(
            self.family, unet=self.unet, vae=self.vae, text_encoders=self.text_encoders, extra=self.extra
        )
        return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def _sd2_extra(seed: int = 6) -> dict[str, torch.Tensor]:
    """What a real SD 2 file holds beyond diffusers' text encoder: one more OpenCLIP block, the projection."""
    generator = torch.Generator().manual_seed(seed)
    w, prefix = TEXT_WIDTH, f"cond_stage_model.model.transformer.resblocks.{TEXT_LAYERS}."

    def rnd(*shape):
        return torch.randn(shape, generator=generator) * 0.1

    block = {
        "ln_1.weight": 1 + rnd(w), "ln_1.bias": rnd(w), "ln_2.weight": 1 + rnd(w), "ln_2.bias": rnd(w),
        "attn.in_proj_weight": rnd(3 * w, w), "attn.in_proj_bias": rnd(3 * w),
        "attn.out_proj.weight": rnd(w, w), "attn.out_proj.bias": rnd(w),
        "mlp.c_fc.weight": rnd(2 * w, w), "mlp.c_fc.bias": rnd(2 * w),
        "mlp.c_proj.weight": rnd(w, 2 * w), "mlp.c_proj.bias": rnd(w),
    }
    extra = {prefix + k: v for k, v in block.items()}
    extra["cond_stage_model.model.text_projection"] = rnd(w, w)
    extra["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052)
    return extra


def build_tiny(family: ModelFamily, seed: int = 0) -> TinyModel:
    """A tiny model of `family`; the same `seed` gives the same weights."""
    s = 10 * seed
    scaling = family.spec.latent_scaling_factor
    encoders: dict[str, torch.nn.Module] = {}
    extra: dict[str, torch.Tensor] = {}
    for name in family.spec.text_encoders:
        encoders[name] = {"clip_l": tiny_clip_l, "clip_h": tiny_clip_h, "clip_g": tiny_clip_g}[name](seed=s + 1 + len(encoders))
    if "clip_h" in encoders:
        extra = _sd2_extra(s + 6)
    if family == ModelFamily.SDXL:
        extra["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6052)
    prediction = "v_prediction" if family == ModelFamily.SD2 else "epsilon"
    return TinyModel(
        family,
        tiny_unet(family, seed=s + 5),
        tiny_vae(seed=s + 4, scaling_factor=scaling),
        encoders,
        prediction,
        extra,
    )


SD2_V_YAML = """\
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
"""


def write_single_file(
    model: TinyModel,
    path: Path,
    *,
    dtype: torch.dtype | None = None,
    extra: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `model` as a single-file `.safetensors` (LDM/SGM layout) or `.ckpt` (`{"state_dict": ...}`)."""
    sd = model.ldm_state_dict()
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    sd.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={"sdwebui.native_size": str(NATIVE_SIZE), **(metadata or {})})
    else:
        torch.save({"state_dict": sd, "global_step": 1, "epoch": 0}, path)
    return path


def write_diffusers_folder(model: TinyModel, folder: Path) -> Path:
    """A diffusers pipeline folder (`model_index.json` + component subfolders), written offline."""
    folder.mkdir(parents=True, exist_ok=True)
    model.unet.save_pretrained(folder / "unet")
    model.vae.save_pretrained(folder / "vae")
    index = {
        "_class_name": "StableDiffusionXLPipeline" if model.family.spec.is_sdxl else "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": [None, None],
        "tokenizer": [None, None],
    }
    names = {"clip_l": "text_encoder", "clip_h": "text_encoder", "clip_g": "text_encoder_2"}
    for name, module in model.text_encoders.items():
        sub = names[name]
        module.save_pretrained(folder / sub)
        index[sub] = ["transformers", type(module).__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "scheduler").mkdir(exist_ok=True)
    scheduler = {
        "_class_name": "EulerDiscreteScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": model.prediction_type,
    }
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    return folder


def write_vae_file(vae: torch.nn.Module, path: Path, *, layout: str = "ldm") -> Path:
    """A standalone VAE file: "ldm" (`encoder.down.*`), "prefixed" (`first_stage_model.` + LDM) or "diffusers"."""
    from safetensors.torch import save_file

    from sdwebui.models.ldm_layout import vae_to_ldm

    if layout == "diffusers":
        sd = dict(vae.state_dict())
    else:
        sd = vae_to_ldm(vae.state_dict())
        if layout == "prefixed":
            sd = {"first_stage_model." + k: v for k, v in sd.items()}
    sd = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, path)
    return path


# ------------------------------------------------------------------------------------- comparison helpers


def unet_inputs(model_or_family, *, batch: int = 1, seed: int = 0) -> tuple:
    """(sample, timestep, encoder_hidden_states, added_cond_kwargs) matching a tiny UNet."""
    unet = model_or_family.unet if isinstance(model_or_family, TinyModel) else model_or_family
    generator = torch.Generator().manual_seed(seed)
    cfg = unet.config
    x = torch.randn((batch, cfg.in_channels, 8, 8), generator=generator)
    context = torch.randn((batch, 77, cfg.cross_attention_dim), generator=generator)
    added = None
    if cfg.addition_embed_type == "text_time":
        n_ids = (cfg.projection_class_embeddings_input_dim - POOLED_WIDTH) // cfg.addition_time_embed_dim
        pooled_width = cfg.projection_class_embeddings_input_dim - n_ids * cfg.addition_time_embed_dim
        added = {
            "text_embeds": torch.randn((batch, pooled_width), generator=generator),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0][:n_ids]] * batch),
        }
    return x, torch.tensor([500] * batch), context, added


@torch.no_grad()
def unet_output(unet: torch.nn.Module, inputs: tuple) -> torch.Tensor:
    x, t, context, added = inputs
    return unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)[0]


def token_ids(seed: int = 0, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49406, (batch, 77), generator=generator)
    ids[:, 0] = 49406
    ids[:, 20:] = 49407
    return ids


__all__ = [
    "TinyModel",
    "build_tiny",
    "write_single_file",
    "write_diffusers_folder",
    "write_vae_file",
    "unet_inputs",
    "unet_output",
    "token_ids",
    "tiny_unet",
    "tiny_vae",
    "tiny_clip_l",
    "tiny_clip_h",
    "tiny_clip_g",
    "SD2_V_YAML",
    "NATIVE_SIZE",
]
