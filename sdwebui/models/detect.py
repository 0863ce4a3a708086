"""Which Stable Diffusion family a single-file checkpoint is, from its keys and shapes only; and its prediction type.

Works on any mapping of key -> object with a `.shape` (tensors, or `files.TensorInfo` from a safetensors
header, so `sdwebui models` can describe a 7 GB file without reading it).

Family rules (the same signals A1111's `sd_models_config.guess_model_config_from_state_dict`, diffusers'
`infer_diffusers_model_type` and ComfyUI use, but keyed on *which* encoders are present rather than on their
widths, so that small models of the same families are recognised too):

| signal | family |
|---|---|
| `conditioner.embedders.1.model.*` (OpenCLIP bigG beside CLIP-L) | SDXL (9 UNet input channels: SDXL inpainting) |
| `conditioner.embedders.0.model.*` only, UNet has `label_emb` | SDXL refiner |
| `conditioner.embedders.0.model.*` only, no `label_emb` | SD 2.x in SGM layout (SD 2.1 Turbo; A1111 converts it) |
| `cond_stage_model.model.*` (OpenCLIP ViT-H) | SD 2.x (9 channels: SD 2 inpainting) |
| `cond_stage_model.transformer.*` (OpenAI CLIP ViT-L) | SD 1.x (9 channels: SD 1 inpainting) |
| no text encoder: UNet context width 768 / 1024 / 2048 / 1280 | SD1 / SD2 / SDXL / refiner (describe only) |

Prediction type, first match wins:
1. the `prediction_type=` argument (CLI `--prediction-type`);
2. a `<checkpoint>.yaml` beside the file (A1111): `model.params.parameterization: "v"` -> v-prediction,
   any other LDM config -> epsilon;
3. a `v_pred` key in the weights (SDXL v-prediction fine-tunes; ComfyUI/Forge convention), with `ztsnr`
   marking a zero-terminal-SNR schedule;
4. safetensors metadata `sdwebui.prediction_type` or `modelspec.prediction_type`;
5. SD 2.x (not inpainting) only: A1111's `is_using_v_parameterization_for_sd2` test, run on the loaded UNet
   (`sd2_uses_v_prediction`). It is calibrated on the real SD2 UNet, so it is only trusted for the standard
   SD 2 architecture (context width 1024); smaller SD2-shaped models default to epsilon with a note;
6. epsilon (SD 1.x, SDXL, inpainting models).
"""

from __future__ import annotations

import functools

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdwebui.filestat import file_versions
from sdwebui.models.family import ModelFamily
from sdwebui.models.files import ModelFileError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SGM_EMBEDDER0_CLIP = "conditioner.embedders.0.transformer."
SGM_EMBEDDER0_OPENCLIP = "conditioner.embedders.0.model."
SGM_EMBEDDER1_OPENCLIP = "conditioner.embedders.1.model."

PREDICTION_TYPES = ("epsilon", "v_prediction")
_PREDICTION_ALIASES = {
    "eps": "epsilon",
    "epsilon": "epsilon",
    "v": "v_prediction",
    "v_prediction": "v_prediction",
    "v-prediction": "v_prediction",
    "vpred": "v_prediction",
    "v_pred": "v_prediction",
}

_CONTEXT_WIDTH_FAMILY = {768: ModelFamily.SD1, 1024: ModelFamily.SD2, 2048: ModelFamily.SDXL, 1280: ModelFamily.SDXL_REFINER}


@dataclass(frozen=True)
class Detection:
    family: ModelFamily
    text_encoder_prefixes: dict[str, str]
    """Encoder name ("clip_l", "clip_h", "clip_g") -> the key prefix its weights use in this file."""
    unet_in_channels: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PredictionDecision:
    prediction_type: str | None
    """"epsilon", "v_prediction", or None when only running the UNet can tell (SD2 without other hints)."""
    source: str
    """Why, in words (goes into `SDModel.config_notes`)."""
    zero_terminal_snr: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def _has_prefix(keys, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(state_dict[key].shape)


def _guess_other_kind(keys: list[str]) -> str:
    """A hint for a file that is not an SD checkpoint, so the error tells the user what they picked."""
    joined = keys[:2000]
    if any(k.startswith(("lora_unet_", "lora_te", "lora_te1_", "lora_te2_")) or ".lora_down." in k for k in joined):
        return "it looks like a LoRA; put it in models/Lora"
    if any(k in ("string_to_param", "emb_params", "clip_l", "clip_g") or k.startswith("string_to_param") for k in joined):
        return "it looks like a textual-inversion embedding; put it in embeddings/"
    if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks.")) for k in joined):
        return "it looks like a VAE; put it in models/VAE"
    if any(k.startswith("control_model.") for k in joined):
        return "it looks like a ControlNet"
    if any(k.startswith(("down_blocks.", "conv_in.", "time_embedding.")) for k in joined):
        return "it looks like a diffusers-layout UNet; load the whole diffusers folder instead"
    if any("joint_blocks." in k or "double_blocks." in k for k in joined):
        return "it looks like an SD3 / Flux model, which are not supported"
    return f"no `{UNET_PREFIX}*` weights"


def detect(state_dict: Mapping[str, Any], path: str | Path = "<checkpoint>") -> Detection:
    """Identify the family of a single-file LDM/SGM checkpoint from keys and shapes."""
    keys = list(state_dict.keys())
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in not in state_dict:
        raise ModelFileError(path, f"not a Stable Diffusion checkpoint ({_guess_other_kind(keys)})")
    in_channels = _shape(state_dict, conv_in)[1]
    if in_channels not in (4, 9):
        kind = " (instruct-pix2pix?)" if in_channels == 8 else ""
        raise ModelFileError(
            path, f"not a supported Stable Diffusion checkpoint (UNet takes {in_channels} input channels{kind})"
        )
    inpaint = in_channels == 9
    has_label_emb = UNET_PREFIX + "label_emb.0.0.weight" in state_dict

    if _has_prefix(keys, SGM_EMBEDDER1_OPENCLIP):
        family = ModelFamily.SDXL_INPAINT if inpaint else ModelFamily.SDXL
        prefixes = {"clip_l": SGM_EMBEDDER0_CLIP, "clip_g": SGM_EMBEDDER1_OPENCLIP}
        if not _has_prefix(keys, SGM_EMBEDDER0_CLIP):
            raise ModelFileError(path, "damaged SDXL checkpoint (has OpenCLIP bigG but no CLIP-L text encoder)")
        return Detection(family, prefixes, in_channels)
    if _has_prefix(keys, SGM_EMBEDDER0_OPENCLIP):
        if has_label_emb:
            return Detection(ModelFamily.SDXL_REFINER, {"clip_g": SGM_EMBEDDER0_OPENCLIP}, in_channels)
        family = ModelFamily.SD2_INPAINT if inpaint else ModelFamily.SD2
        # SD 2.1 Turbo ships in the SGM layout; A1111 renames `conditioner.embedders.0.` to `cond_stage_model.`.
        return Detection(family, {"clip_h": SGM_EMBEDDER0_OPENCLIP}, in_channels, ("SD 2.x in SGM layout",))
    if _has_prefix(keys, SD2_OPENCLIP_PREFIX):
        family = ModelFamily.SD2_INPAINT if inpaint else ModelFamily.SD2
        return Detection(family, {"clip_h": SD2_OPENCLIP_PREFIX}, in_channels)
    if _has_prefix(keys, SD1_CLIP_PREFIX):
        family = ModelFamily.SD1_INPAINT if inpaint else ModelFamily.SD1
        return Detection(family, {"clip_l": SD1_CLIP_PREFIX}, in_channels)

    # No text encoder in the file: fall back on the UNet's cross-attention width (standard sizes only).
    context = _context_width(state_dict)
    family = _CONTEXT_WIDTH_FAMILY.get(context) if context else None
    if family is None:
        raise ModelFileError(
            path, f"not a Stable Diffusion checkpoint (no text encoder weights and UNet context width {context})"
        )
    if inpaint:
        family = {
            ModelFamily.SD1: ModelFamily.SD1_INPAINT,
            ModelFamily.SD2: ModelFamily.SD2_INPAINT,
            ModelFamily.SDXL: ModelFamily.SDXL_INPAINT,
        }.get(family, family)
    return Detection(family, {}, in_channels, ("the file holds no text encoder weights",))


def detect_family(state_dict: Mapping[str, Any], path: str | Path = "<checkpoint>") -> ModelFamily:
    return detect(state_dict, path).family


def _context_width(state_dict: Mapping[str, Any]) -> int | None:
    for key in state_dict:
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return _shape(state_dict, key)[1]
    return None


def normalize_prediction_type(value: str) -> str:
    try:
        return _PREDICTION_ALIASES[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown prediction type {value!r}: use epsilon or v_prediction") from None


def read_ldm_yaml_parameterization(yaml_path: Path) -> str:
    """The prediction type an LDM `.yaml` config declares ("eps" is LDM's default)."""
    import yaml

    try:
        config = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ModelFileError(yaml_path, f"unreadable model config ({str(error).splitlines()[0]})") from None
    params = ((config or {}).get("model") or {}).get("params") or {} if isinstance(config, dict) else {}
    parameterization = params.get("parameterization", "eps") if isinstance(params, dict) else "eps"
    try:
        return normalize_prediction_type(parameterization)
    except ValueError:
        raise ModelFileError(yaml_path, f"unsupported parameterization {parameterization!r}") from None


def config_yaml_beside(path: Path) -> Path | None:
    """A1111 reads `<checkpoint name>.yaml` next to the checkpoint as its config."""
    candidate = path.with_suffix(".yaml") if path.suffix else path.parent / (path.name + ".yaml")
    return candidate if candidate.is_file() else None


def decide_prediction_type(
    path: Path,
    state_dict: Mapping[str, Any],
    family: ModelFamily,
    *,
    metadata: Mapping[str, str] | None = None,
    override: str | None = None,
) -> PredictionDecision:
    """Steps 1-4 and 6 of the module docstring; returns `prediction_type=None` where step 5 must decide."""
    ztsnr = "ztsnr" in state_dict
    if override:
        return PredictionDecision(normalize_prediction_type(override), "prediction type set explicitly", ztsnr)
    yaml_path = config_yaml_beside(Path(path))
    if yaml_path is not None:
        kind = read_ldm_yaml_parameterization(yaml_path)
        return PredictionDecision(kind, f"{kind} from {yaml_path.name} beside the checkpoint", ztsnr)
    if "v_pred" in state_dict:
        note = "v_prediction from the checkpoint's `v_pred` key"
        return PredictionDecision("v_prediction", note + (" (zero terminal SNR)" if ztsnr else ""), ztsnr)
    for meta_key in ("sdwebui.prediction_type", "modelspec.prediction_type"):
        value = (metadata or {}).get(meta_key)
        if value:
            try:
                kind = normalize_prediction_type(value)
            except ValueError:
                continue
            return PredictionDecision(kind, f"{kind} from the file's {meta_key} metadata", ztsnr)
    if family == ModelFamily.SD2:
        if _context_width(state_dict) == 1024:
            return PredictionDecision(None, "SD 2.x: epsilon or v decided by running the UNet once", ztsnr)
        return PredictionDecision(
            "epsilon",
            "SD 2.x-shaped model of non-standard size: assumed epsilon (put a .yaml with parameterization "
            '"v" beside it, or pass --prediction-type, for a v model)',
            ztsnr,
        )
    return PredictionDecision("epsilon", f"epsilon ({family.spec.title} default)", ztsnr)


@torch.no_grad()
def sd2_uses_v_prediction(unet: torch.nn.Module) -> bool:
    """A1111's `is_using_v_parameterization_for_sd2`, on a diffusers UNet.

    Run the UNet once at t=999 on a constant latent (0.5) with a constant context (0.5); an epsilon model
    returns something close to its input (at t=999 the latent is nearly pure noise, so eps ~ x), while a
    768-v model's output is far below it. A1111's threshold: mean(out - x) < -1 means v-prediction.
    The forward pass is 8x8 latents, a fraction of a second even on a CPU.
    """
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    context_width = int(unet.config.cross_attention_dim)
    in_channels = int(unet.config.in_channels)
    x = torch.full((1, in_channels, 8, 8), 0.5, device=device, dtype=dtype)
    context = torch.full((1, 2, context_width), 0.5, device=device, dtype=dtype)
    timestep = torch.tensor([999], device=device)
    out = unet(x, timestep, encoder_hidden_states=context, return_dict=False)[0]
    return (out.float() - x.float()).mean().item() < -1


__all__ = [
    "Detection",
    "PredictionDecision",
    "detect",
    "detect_family",
    "decide_prediction_type",
    "normalize_prediction_type",
    "read_ldm_yaml_parameterization",
    "config_yaml_beside",
    "sd2_uses_v_prediction",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "native_size_from_metadata",
    "peek_native_size",
]


def native_size_from_metadata(metadata: Mapping[str, str]) -> int | None:
    """The training resolution a file's safetensors metadata states, if any: our `sdwebui.native_size`,
    `modelspec.resolution` ("1024x1024") or kohya's `ss_resolution` ("(1024, 1024)"); the width is taken."""
    import re

    for key in ("sdwebui.native_size", "modelspec.resolution", "ss_resolution"):
        value = metadata.get(key)
        if value:
            numbers = [int(n) for n in re.findall(r"\d+", value)]
            if numbers and 8 <= numbers[0] <= 16384:
                return numbers[0]
    return None


def peek_native_size(path: str | Path) -> int | None:
    """A checkpoint's native size (what the loader will set as `SDModel.native_size`) from the `.safetensors`
    header alone: its metadata, else its family's (SD 1/2 512, SDXL 1024). None for other formats.
    Remembered per file version (size and modification time, the checkpoint's and its yaml's): the API asks
    on every request that leaves the size out."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return None
    yaml_path = config_yaml_beside(path)
    return _peek_native_size(path, yaml_path, file_versions(p for p in (path, yaml_path) if p is not None))


@functools.lru_cache(maxsize=64)
def _peek_native_size(path: Path, yaml_path: Path | None, versions: tuple) -> int:
    from sdwebui.models.files import read_safetensors_header

    header = read_safetensors_header(path)
    native = native_size_from_metadata(header.metadata)
    if native is not None:
        return native
    family = detect(header.tensors, path).family
    if family == ModelFamily.SD2 and yaml_path is not None and read_ldm_yaml_parameterization(yaml_path) == "v":
        return 768  # SD 2.x 768-v, as the loader decides (without a yaml only the weights can tell)
    return family.spec.native_size

