"""Checkpoint file or diffusers folder -> `SDModel`: discovery, description and loading.

Loading never random-initialises a module and never holds two full copies of the weights: modules are built on
the meta device (shapes only), the file is read tensor by tensor straight into the target device and dtype,
keys are renamed (a dict of references, no copies; diffusers' OpenCLIP converter splits each fused QKV matrix),
and `load_state_dict(assign=True)` adopts the tensors as the module's parameters.

What A1111 does and we do too: EMA weights (`model_ema.*`) are ignored (A1111's default), `alphas_cumprod` is
taken from the file when it is there, a `<checkpoint>.yaml` beside the file decides v-prediction, a
`<checkpoint>.vae.safetensors` beside it is the "Automatic" VAE.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdwebui.models import convert
from sdwebui.models.detect import (
    UNET_PREFIX,
    VAE_PREFIX,
    PredictionDecision,
    decide_prediction_type,
    detect,
    native_size_from_metadata,
    normalize_prediction_type,
    sd2_uses_v_prediction,
)
from sdwebui.models.family import ModelFamily
from sdwebui.models.files import (
    PICKLE_EXTENSIONS,
    SAFETENSORS_EXTENSIONS,
    ModelFileError,
    read_safetensors_header,
    read_state_dict,
)
from sdwebui.models.hashing import sha256_later
from sdwebui.models.sd_model import CheckpointInfo, SDModel

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")
"""What A1111 lists in models/Stable-diffusion (`.vae.*` files excluded)."""
_EXCLUDED_SUFFIXES = (".vae.safetensors", ".vae.ckpt", ".vae.pt")
_MODEL_KEY_PREFIXES = (UNET_PREFIX, VAE_PREFIX, "cond_stage_model.", "conditioner.")
_SCHEDULE_KEYS = ("alphas_cumprod", "v_pred", "ztsnr")


# --------------------------------------------------------------------------------------------- discovery


def is_diffusers_folder(path: str | Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


def find_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoints under `ckpt_dir` (A1111's models/Stable-diffusion): `.safetensors` and `.ckpt` files at any
    depth (not `*.vae.*`), and diffusers folders (a folder with `model_index.json`, not searched further).
    Sorted by path relative to `ckpt_dir`, case-insensitively."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        folder_path = Path(folder)
        if "model_index.json" in files and folder_path != root:
            found.append(folder_path)
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            lower = name.lower()
            if lower.endswith(CHECKPOINT_EXTENSIONS) and not lower.endswith(_EXCLUDED_SUFFIXES):
                found.append(folder_path / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix().lower())


@dataclass(frozen=True)
class CheckpointSummary:
    path: Path
    format: str
    """"safetensors", "ckpt" or "diffusers"."""
    family: ModelFamily
    prediction_type: str
    """"epsilon", "v_prediction", or "auto" (SD 2.x without hints: decided by running the UNet at load)."""
    prediction_source: str
    metadata: Mapping[str, str]


def describe_checkpoint(path: str | Path, *, prediction_type: str | None = None) -> CheckpointSummary:
    """Family and prediction type without loading the model (a safetensors file: its header only)."""
    path = Path(path)
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise ModelFileError(path, "a folder without model_index.json is not a diffusers model")
        family, decision, _ = _diffusers_family_and_prediction(path, prediction_type)
        return CheckpointSummary(path, "diffusers", family, decision.prediction_type or "auto", decision.source, {})
    if path.suffix.lower() in SAFETENSORS_EXTENSIONS:
        header = read_safetensors_header(path)
        shapes, metadata, fmt = header.tensors, header.metadata, "safetensors"
    else:
        shapes, metadata, fmt = read_state_dict(path), {}, "ckpt"
    detection = detect(shapes, path)
    decision = decide_prediction_type(path, shapes, detection.family, metadata=metadata, override=prediction_type)
    return CheckpointSummary(
        path, fmt, detection.family, decision.prediction_type or "auto", decision.source, metadata
    )


# ------------------------------------------------------------------------------------------------ schedule


def default_alphas_cumprod(
    num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, schedule: str = "scaled_linear"
) -> torch.Tensor:
    """SD's training schedule: LDM `make_beta_schedule("linear")`, i.e. betas linear in sqrt space
    (diffusers calls this "scaled_linear"), computed in float64 as LDM does, returned as float32."""
    if schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta schedule {schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's `rescale_zero_terminal_snr_abar` (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed", Alg. 1), with the last value set to A1111's small positive constant so sigma_max is finite."""
    sqrt_abar = alphas_cumprod.double().sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    abar[-1] = 4.8973451890853435e-08
    return abar.to(torch.float32)


# ------------------------------------------------------------------------------------------------- loading


def _default_dtypes(
    device: torch.device, dtype: torch.dtype | None, vae_dtype: torch.dtype | None
) -> tuple[torch.dtype, torch.dtype]:
    """Fill in what the caller left out with the same rule the app uses (`devices.plan_devices`)."""
    from sdwebui.models.devices import plan_devices

    plan = plan_devices(str(device))
    dtype = plan.dtype if dtype is None else dtype
    if vae_dtype is None:
        vae_dtype = plan.vae_dtype if dtype == plan.dtype else (dtype if dtype != torch.float16 else torch.float32)
    return dtype, vae_dtype


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    vae_path: str | Path | None = None,
    automatic_vae: bool = True,
    prediction_type: str | None = None,
    hash_cache_dir: str | Path | None = None,
) -> SDModel:
    """Load a checkpoint (`.safetensors`/`.ckpt` single file in LDM/SGM layout, or a diffusers folder).

    - `dtype`: UNet and text encoders (default fp16 on CUDA, fp32 elsewhere); `vae_dtype`: default `dtype`,
      except that an fp16 model gets a bf16 VAE where CUDA supports it, else fp32.
    - `vae_path`: a separate VAE; when None and `automatic_vae`, A1111's "Automatic" rule applies
      (`<name>.vae.safetensors` beside the checkpoint), else the checkpoint's own VAE.
    - `prediction_type`: "epsilon" / "v_prediction" override (wins over every detection rule).
    - `hash_cache_dir`: where the SHA-256 cache lives (None: hash without caching).
    """
    from sdwebui.models.vae import find_automatic_vae

    path = Path(path)
    device = torch.device(device)
    dtype, vae_dtype = _default_dtypes(device, dtype, vae_dtype)
    if prediction_type is not None:
        prediction_type = normalize_prediction_type(prediction_type)
    if not path.exists():
        raise ModelFileError(path, "file not found")
    if vae_path is None and automatic_vae:
        vae_path = find_automatic_vae(path)
    vae_path = Path(vae_path) if vae_path is not None else None

    if path.is_dir():
        if not is_diffusers_folder(path):
            raise ModelFileError(path, "a folder without model_index.json is not a diffusers model")
        parts = _load_diffusers_folder(path, device, dtype, vae_dtype, prediction_type, vae_path)
    elif path.suffix.lower() in SAFETENSORS_EXTENSIONS + PICKLE_EXTENSIONS:
        parts = _load_single_file(path, device, dtype, vae_dtype, prediction_type, vae_path)
    else:
        raise ModelFileError(path, f"unsupported file type {path.suffix!r}: use .safetensors, .ckpt or a diffusers folder")

    info = CheckpointInfo(path, path.stem if path.is_file() else path.name, sha256_later(path, hash_cache_dir))
    vae_info = None
    if vae_path is not None:
        vae_info = CheckpointInfo(vae_path, vae_path.stem, sha256_later(vae_path, hash_cache_dir))
    return SDModel(
        family=parts.family,
        prediction_type=parts.prediction_type,
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=_text_encoder_stack(parts.family, parts.text_encoders),
        alphas_cumprod=parts.alphas_cumprod,
        info=info,
        device=device,
        dtype=dtype,
        vae_dtype=vae_dtype,
        vae_info=vae_info,
        native_size=parts.native_size,
        config_notes=parts.notes,
    )


@dataclass
class _Parts:
    family: ModelFamily
    prediction_type: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: dict[str, torch.nn.Module]
    alphas_cumprod: torch.Tensor
    native_size: int
    notes: list[str]


def _text_encoder_stack(family: ModelFamily, encoders: Mapping[str, torch.nn.Module]):
    # Imported here: text_encoding sits beside this module and owns tokenizers; keep loader import-light.
    from sdwebui.models.text_encoding import TextEncoderStack

    return TextEncoderStack(
        family, clip_l=encoders.get("clip_l"), clip_g=encoders.get("clip_g"), clip_h=encoders.get("clip_h")
    )


def _dtype_rule(dtype: torch.dtype, vae_dtype: torch.dtype):
    def rule(key: str) -> torch.dtype | None:
        if key.startswith(VAE_PREFIX):
            return vae_dtype
        if key.startswith(_MODEL_KEY_PREFIXES):
            return dtype
        return None  # schedule buffers keep the file's dtype (alphas_cumprod is made float32 below)

    return rule


def _wanted_key(key: str) -> bool:
    return key.startswith(_MODEL_KEY_PREFIXES) or key in _SCHEDULE_KEYS


def _take(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Move the entries under `prefix` out of `sd` (so `sd` drops its references as we go)."""
    keys = [k for k in sd if k.startswith(prefix)]
    return {k[len(prefix) :]: sd.pop(k) for k in keys}


def _load_single_file(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
    prediction_override: str | None,
    vae_path: Path | None,
) -> _Parts:
    notes: list[str] = []
    metadata: dict[str, str] = {}
    skipped_ema = 0
    if path.suffix.lower() in SAFETENSORS_EXTENSIONS:
        header = read_safetensors_header(path)
        metadata = header.metadata
        detection = detect(header.tensors, path)
        decision = decide_prediction_type(
            path, header.tensors, detection.family, metadata=metadata, override=prediction_override
        )
        skipped_ema = sum(1 for k in header.tensors if k.startswith("model_ema."))
        sd = read_state_dict(path, device, _dtype_rule(dtype, vae_dtype), keys=_wanted_key)
    else:
        sd = read_state_dict(path, device, _dtype_rule(dtype, vae_dtype))
        skipped_ema = sum(1 for k in sd if k.startswith("model_ema."))
        for key in [k for k in sd if not _wanted_key(k)]:
            del sd[key]
        detection = detect(sd, path)
        decision = decide_prediction_type(path, sd, detection.family, override=prediction_override)
    family = detection.family
    notes.append(f"{family.spec.title} detected from the checkpoint's keys")
    notes.extend(detection.notes)
    if skipped_ema:
        notes.append(f"ignored {skipped_ema} model_ema.* tensors (A1111's default: the non-EMA weights)")
    if not detection.text_encoder_prefixes:
        raise ModelFileError(path, "the checkpoint holds no text encoder weights, which this loader needs")
    overrides = convert.config_overrides_from_metadata(metadata, path)

    # Text encoders first: SDXL's UNet config needs CLIP-G's pooled width.
    text_encoders: dict[str, torch.nn.Module] = {}
    pooled_dim = None
    for name, prefix in detection.text_encoder_prefixes.items():
        module = _build_text_encoder(name, _take(sd, prefix), overrides.get(name), path)
        text_encoders[name] = module
        if name == "clip_g":
            pooled_dim = int(module.config.projection_dim)

    unet_sd = _take(sd, UNET_PREFIX)
    unet_config = convert.apply_overrides(
        convert.infer_unet_config(unet_sd, family, pooled_dim=pooled_dim, path=path), overrides.get("unet")
    )
    unet = convert.build_unet(unet_config, convert.convert_unet(unet_sd, unet_config), path)
    del unet_sd

    vae_sd = _take(sd, VAE_PREFIX)
    vae_config = None
    if vae_sd:
        vae_config = convert.apply_overrides(convert.infer_vae_config(vae_sd, family, path=path), overrides.get("vae"))
    scaling = float(vae_config["scaling_factor"]) if vae_config else float(family.spec.latent_scaling_factor)
    if vae_path is not None:
        from sdwebui.models.vae import load_vae_file

        del vae_sd
        vae = load_vae_file(vae_path, family=family, device=device, dtype=vae_dtype, scaling_factor=scaling)
        notes.append(f"VAE from {vae_path.name}")
    elif vae_config is not None:
        vae = convert.build_vae(vae_config, convert.convert_vae(vae_sd, vae_config), path)
        del vae_sd
    else:
        raise ModelFileError(path, "the checkpoint holds no VAE weights: choose a VAE file")
    if int(vae.config.latent_channels) != int(unet.config.out_channels):
        raise ModelFileError(
            vae_path or path,
            f"VAE has {vae.config.latent_channels} latent channels; the UNet predicts {unet.config.out_channels}",
        )

    prediction = _finish_prediction(decision, unet, notes)
    alphas = _alphas_from_state_dict(sd, decision, notes)
    native = native_size_from_metadata(metadata)
    if native is not None:
        notes.append(f"native size {native} from the file's metadata")
    elif family == ModelFamily.SD2 and prediction == "v_prediction" and unet_config["cross_attention_dim"] == 1024:
        native = 768  # SD 2.x 768-v (diffusers' single-file loader makes the same choice)
    else:
        native = family.spec.native_size
    if sd:
        notes.append(f"ignored {len(sd)} other tensors ({', '.join(sorted(sd)[:3])}…)")
    return _Parts(family, prediction, unet, vae, text_encoders, alphas, native, notes)


def _build_text_encoder(name: str, sd: dict[str, torch.Tensor], overrides, path: Path) -> torch.nn.Module:
    if name == "clip_l":
        converted = convert.convert_clip_l(sd)
        config = convert.apply_overrides(convert.infer_text_config("clip_l", converted, path), overrides)
        return convert.build_text_encoder(config, converted, with_projection=False, what="CLIP-L text encoder", path=path)
    # OpenCLIP towers
    if "token_embedding.weight" not in sd:
        raise ModelFileError(path, f"damaged {name} text encoder (no token_embedding)")
    width = int(sd["token_embedding.weight"].shape[1])
    sd.pop("logit_scale", None)
    if name == "clip_h":
        # SD 2 conditions on the penultimate layer: drop the last block and the (unused) projection, as diffusers does.
        blocks = convert._ints_after(sd.keys(), "transformer.resblocks.")
        if len(blocks) < 2:
            raise ModelFileError(path, "SD 2 text encoder with fewer than 2 layers")
        last = f"transformer.resblocks.{blocks[-1]}."
        for key in [k for k in sd if k.startswith(last) or k == "text_projection"]:
            del sd[key]
    converted = convert.convert_openclip(sd, width)
    del sd
    if name == "clip_h":
        converted = {k.removeprefix("text_model."): v for k, v in converted.items() if k != "text_projection.weight"}
        config = convert.apply_overrides(convert.infer_text_config("clip_h", converted, path), overrides)
        return convert.build_text_encoder(config, converted, with_projection=False, what="OpenCLIP ViT-H text encoder", path=path)
    if "text_projection.weight" not in converted:
        raise ModelFileError(path, "SDXL OpenCLIP text encoder without text_projection")
    view = {k.removeprefix("text_model."): v for k, v in converted.items()}
    config = convert.apply_overrides(convert.infer_text_config("clip_g", view, path), overrides)
    return convert.build_text_encoder(config, converted, with_projection=True, what="OpenCLIP bigG text encoder", path=path)


def _finish_prediction(decision: PredictionDecision, unet: torch.nn.Module, notes: list[str]) -> str:
    if decision.prediction_type is not None:
        notes.append(decision.source)
        return decision.prediction_type
    v = sd2_uses_v_prediction(unet)
    kind = "v_prediction" if v else "epsilon"
    notes.append(f"{kind}: SD 2.x prediction type found by A1111's UNet test (no .yaml beside the file)")
    return kind


def _alphas_from_state_dict(sd: dict[str, torch.Tensor], decision: PredictionDecision, notes: list[str]) -> torch.Tensor:
    stored = sd.pop("alphas_cumprod", None)
    sd.pop("v_pred", None)
    sd.pop("ztsnr", None)
    if stored is not None and stored.numel() == 1000 and stored.is_floating_point():
        alphas = stored.detach().to("cpu", torch.float32).reshape(1000)
        notes.append("alphas_cumprod from the checkpoint")
    else:
        alphas = default_alphas_cumprod()
    if decision.zero_terminal_snr:
        alphas = rescale_zero_terminal_snr(alphas)
        notes.append("zero-terminal-SNR schedule (the checkpoint's `ztsnr` key)")
    return alphas


# ------------------------------------------------------------------------------------------ diffusers folders


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(path, "missing") from None
    except (OSError, ValueError) as error:
        raise ModelFileError(path, f"unreadable JSON ({error})") from None
    if not isinstance(value, dict):
        raise ModelFileError(path, "not a JSON object")
    return value


def _diffusers_family_and_prediction(
    folder: Path, override: str | None
) -> tuple[ModelFamily, PredictionDecision, dict[str, Any]]:
    index = _read_json(folder / "model_index.json")
    unet_config = _read_json(folder / "unet" / "config.json")

    def present(name: str) -> bool:
        entry = index.get(name)
        return isinstance(entry, list) and entry[0] is not None and (folder / name / "config.json").is_file()

    inpaint = int(unet_config.get("in_channels", 4)) == 9
    if present("text_encoder") and present("text_encoder_2"):
        family = ModelFamily.SDXL_INPAINT if inpaint else ModelFamily.SDXL
    elif present("text_encoder_2"):
        family = ModelFamily.SDXL_REFINER
    elif present("text_encoder"):
        text_config = _text_config_dict(_read_json(folder / "text_encoder" / "config.json"))
        openclip = text_config.get("hidden_act") == "gelu"  # OpenAI CLIP-L uses quick_gelu
        if openclip:
            family = ModelFamily.SD2_INPAINT if inpaint else ModelFamily.SD2
        else:
            family = ModelFamily.SD1_INPAINT if inpaint else ModelFamily.SD1
    else:
        raise ModelFileError(folder, "not a Stable Diffusion diffusers folder (no text encoder)")

    scheduler = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(scheduler) if scheduler.is_file() else {}
    if override:
        decision = PredictionDecision(override, "prediction type set explicitly")
    elif scheduler_config.get("prediction_type"):
        kind = normalize_prediction_type(scheduler_config["prediction_type"])
        decision = PredictionDecision(kind, f"{kind} from scheduler/scheduler_config.json")
    else:
        decision = PredictionDecision("epsilon", f"epsilon ({family.spec.title} default)")
    if scheduler_config.get("rescale_betas_zero_snr"):
        decision = PredictionDecision(decision.prediction_type, decision.source, zero_terminal_snr=True)
    return family, decision, scheduler_config


def _text_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config", config) if config.get("model_type") == "clip" else config


def _component_weights(folder: Path, bases: tuple[str, ...]) -> list[Path]:
    """The weight file(s) of a diffusers/transformers component: safetensors first, fp16 variant second,
    sharded (`*.index.json`) supported, `.bin` last (read with the restricted unpickler)."""
    for ext in (".safetensors", ".bin"):
        for base in bases:
            for variant in ("", ".fp16"):
                single = folder / f"{base}{variant}{ext}"
                if single.is_file():
                    return [single]
                index = folder / f"{base}{variant}{ext}.index.json"
                if index.is_file():
                    weight_map = _read_json(index).get("weight_map", {})
                    return [folder / name for name in sorted(set(weight_map.values()))]
    raise ModelFileError(folder, "no weights found (expected diffusion_pytorch_model.safetensors or model.safetensors)")


def _read_component(folder: Path, bases: tuple[str, ...], device, dtype) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for file in _component_weights(folder, bases):
        sd.update(read_state_dict(file, device, dtype))
    return sd


def _load_diffusers_folder(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
    prediction_override: str | None,
    vae_path: Path | None,
) -> _Parts:
    """Configs from the folder, weights through `read_state_dict` onto meta-built modules (diffusers'
    `from_pretrained` would random-initialise first without `accelerate`, and would unpickle `.bin` itself)."""
    family, decision, scheduler_config = _diffusers_family_and_prediction(folder, prediction_override)
    notes = [f"{family.spec.title} diffusers folder"]
    unet_config = _read_json(folder / "unet" / "config.json")
    unet = convert.build_unet(
        unet_config, _read_component(folder / "unet", ("diffusion_pytorch_model",), device, dtype), folder / "unet"
    )
    vae_config = _read_json(folder / "vae" / "config.json")
    if vae_path is not None:
        from sdwebui.models.vae import load_vae_file

        scaling = float(vae_config.get("scaling_factor", family.spec.latent_scaling_factor))
        vae = load_vae_file(vae_path, family=family, device=device, dtype=vae_dtype, scaling_factor=scaling)
        notes.append(f"VAE from {vae_path.name}")
    else:
        vae = convert.build_vae(
            vae_config, _read_component(folder / "vae", ("diffusion_pytorch_model",), device, vae_dtype), folder / "vae"
        )

    text_encoders: dict[str, torch.nn.Module] = {}
    slots = {"text_encoder": family.spec.text_encoders[0], "text_encoder_2": "clip_g"}
    for sub, name in slots.items():
        if name not in family.spec.text_encoders or (sub == "text_encoder" and name == "clip_g"):
            continue
        sub_dir = folder / sub
        config = _text_config_dict(_read_json(sub_dir / "config.json"))
        weights = _read_component(sub_dir, ("model", "pytorch_model"), device, dtype)
        with_projection = name == "clip_g"
        if with_projection:
            weights = {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v for k, v in weights.items()}
        else:
            weights = {k.removeprefix("text_model."): v for k, v in weights.items() if not k.startswith("text_projection.")}
        weights = {k: v for k, v in weights.items() if not k.endswith("position_ids")}
        text_encoders[name] = convert.build_text_encoder(
            config, weights, with_projection=with_projection, what=f"{sub} ({name})", path=sub_dir
        )

    alphas = default_alphas_cumprod(
        int(scheduler_config.get("num_train_timesteps", 1000)),
        float(scheduler_config.get("beta_start", 0.00085)),
        float(scheduler_config.get("beta_end", 0.012)),
        str(scheduler_config.get("beta_schedule", "scaled_linear")),
    )
    if decision.zero_terminal_snr:
        alphas = rescale_zero_terminal_snr(alphas)
        notes.append("zero-terminal-SNR schedule (rescale_betas_zero_snr)")
    notes.append(decision.source)
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    sample_size = unet.config.sample_size
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    native = int(sample_size) * vae_scale if sample_size else family.spec.native_size
    return _Parts(family, decision.prediction_type, unet, vae, text_encoders, alphas, native, notes)


__all__ = [
    "load_checkpoint",
    "find_checkpoints",
    "describe_checkpoint",
    "CheckpointSummary",
    "is_diffusers_folder",
    "default_alphas_cumprod",
    "rescale_zero_terminal_snr",
]
