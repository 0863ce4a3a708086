"""IP-Adapter weights and their CLIP image encoder, offline, as sd-webui-controlnet loads them
(`scripts/ipadapter/ipadapter_model.py`, `annotator/clipvision`).

- The adapter (`ip-adapter_sd15.safetensors` / `.bin`, `ip-adapter-plus_sd15`, `ip-adapter-plus-face_sd15`,
  `ip-adapter_sdxl`, `ip-adapter_sdxl_vit-h`, ...): `image_proj.*` (the image projection) and
  `ip_adapter.{2k+1}.to_{k,v}_ip.weight` for the k-th cross-attention of the UNet in diffusers' `attn_processors`
  order. `.safetensors` files keep the keys flat; the repository's `.bin` nests them (`{"image_proj": {...},
  "ip_adapter": {...}}`, read through the restricted unpickler). The projection is built by diffusers' own
  converter (`ImageProjection`, `IPAdapterPlusImageProjection`, `IPAdapterFullImageProjection`).
- The image encoder: a transformers `CLIPVisionModelWithProjection` from `models/clip_vision/` (A1111 / Forge) or
  the extension's download folder `models/ControlNetAnnotators/clip_vision/`: the extension's `clip_h.pth` (ViT-H,
  for `ip-adapter_clip_sd15` and `ip-adapter_clip_sdxl_plus_vith`) and `clip_g.pth` (ViT-bigG, for
  `ip-adapter_clip_sdxl`), any `.safetensors/.bin/.pth` whose name says which, or a folder with `config.json`
  (the IP-Adapter repository's `image_encoder/`). A single file's config comes from its shapes (16 heads, as all
  of them have; ViT-L's quick-GELU). Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdwebui.models.files import ModelFileError, load_pickle, read_safetensors_header, read_state_dict

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ENCODER_NAMES = {
    "clip_h": ("clip_h", "vit-h", "vit_h", "clip_vision_h", "vit-huge"),
    "clip_g": ("clip_g", "vit-bigg", "vit_bigg", "clip_vision_g", "vit-g"),
}
"""What a file's name says about the encoder it holds (lower case, anywhere in the name)."""
ENCODER_WIDTHS = {"clip_h": 1280, "clip_g": 1664}
ENCODER_FILES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def is_ip_adapter(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith("image_proj.") for k in sd) and any(k.startswith("ip_adapter.") for k in sd)


def flatten_ip_adapter(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The repository's nested `{"image_proj": {...}, "ip_adapter": {...}}` as flat `image_proj.*` keys."""
    if not isinstance(obj, Mapping) or not all(isinstance(obj.get(k), Mapping) for k in ("image_proj", "ip_adapter")):
        raise ModelFileError(path, "not an IP-Adapter (no image_proj / ip_adapter weights)")
    return {f"{group}.{key}": value for group in ("image_proj", "ip_adapter") for key, value in obj[group].items()
            if isinstance(value, torch.Tensor)}


def read_ip_adapter_file(path: Path) -> dict[str, torch.Tensor] | None:
    """A pickled file's nested IP-Adapter weights, flattened; None when the file is not one (or is safetensors)."""
    if path.suffix.lower() == ".safetensors" or path.is_dir():
        return None
    obj = load_pickle(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("ip_adapter"), Mapping):
        return flatten_ip_adapter(obj, path)
    return None


@dataclass
class LoadedIPAdapter:
    image_proj: Any
    """diffusers image projection (`ImageProjection`, `IPAdapterPlusImageProjection`, ...)."""
    kv: list[tuple[torch.nn.Linear, torch.nn.Linear]]
    """`to_k_ip`, `to_v_ip` of the k-th cross-attention."""
    path: Path

    @property
    def cross_attention_dim(self) -> int:
        return int(self.kv[0][0].in_features)

    @property
    def uses_hidden_states(self) -> bool:
        """Plus / full-face projections take the encoder's penultimate hidden states, the plain one its embeds."""
        return type(self.image_proj).__name__ != "ImageProjection"

    @property
    def image_dim(self) -> int:
        """The width of what the projection takes (the encoder's projection or hidden width)."""
        first = next(m for m in self.image_proj.modules() if isinstance(m, torch.nn.Linear))
        return int(first.in_features)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_proj(features)


def load_ip_adapter(path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    state_dict: dict[str, torch.Tensor] | None = None) -> LoadedIPAdapter:
    from diffusers.loaders.unet import UNet2DConditionLoadersMixin

    path = Path(path)
    sd = state_dict if state_dict is not None else (read_ip_adapter_file(path) or read_state_dict(path))
    if not is_ip_adapter(sd):
        raise ModelFileError(path, "not an IP-Adapter (no image_proj / ip_adapter weights)")
    proj_sd = {k[len("image_proj."):]: v.float() for k, v in sd.items() if k.startswith("image_proj.")}
    try:  # diffusers' own converter (it needs no UNet: `self` is used only for its low-memory path)
        image_proj = UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
            None, proj_sd, low_cpu_mem_usage=False)
    except (KeyError, RuntimeError, ValueError, AttributeError) as error:
        raise ModelFileError(path, f"an IP-Adapter image projection this loader cannot build ({error})") from None
    ids = sorted({int(k.split(".")[1]) for k in sd if k.startswith("ip_adapter.")})
    kv = []
    for key_id in ids:
        layers = []
        for which in ("to_k_ip", "to_v_ip"):
            weight = sd.get(f"ip_adapter.{key_id}.{which}.weight")
            if weight is None:
                raise ModelFileError(path, f"IP-Adapter layer {key_id} lacks {which}.weight")
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
            linear.weight = torch.nn.Parameter(weight.to(device, dtype), requires_grad=False)
            layers.append(linear)
        kv.append((layers[0], layers[1]))
    image_proj = image_proj.to(device, dtype).eval().requires_grad_(False)
    return LoadedIPAdapter(image_proj, kv, path)


def cross_attention_names(unet) -> list[str]:
    """The UNet's cross-attention processors, in the order IP-Adapter numbers them."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def check_ip_adapter_compatible(adapter: LoadedIPAdapter, unet, checkpoint_family: str) -> str | None:
    names = cross_attention_names(unet)
    cross = int(unet.config.cross_attention_dim)
    name = adapter.path.name
    if adapter.cross_attention_dim != cross or len(adapter.kv) != len(names):
        return (f"IP-Adapter {name} is for a model with cross-attention {adapter.cross_attention_dim} and "
                f"{len(adapter.kv)} attention layers; the checkpoint is {checkpoint_family} (cross-attention {cross}, "
                f"{len(names)} layers): choose an IP-Adapter made for it")
    widths = [int(attn.to_k.weight.shape[0]) for attn in _cross_attentions(unet)]
    if [int(k.out_features) for k, _ in adapter.kv] != widths:
        return f"IP-Adapter {name} has other attention widths than the checkpoint's UNet: it was made for another model"
    return None


def _cross_attentions(unet) -> list:
    from diffusers.models.attention_processor import Attention

    return [module for name, module in unet.named_modules() if isinstance(module, Attention)
            and name.endswith("attn2")]


# ---- the CLIP image encoder ------------------------------------------------------------------------------------


def _candidates(folders: Iterable[Path]) -> list[tuple[Path, str]]:
    """(encoder file or folder, its path below the searched folder in lower case)."""
    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if (path.is_file() and path.suffix.lower() in ENCODER_FILES and not (path.parent / "config.json").is_file()) \
                    or (path.is_dir() and (path / "config.json").is_file()):
                found.append((path, path.relative_to(folder).as_posix().lower()))
    return found


def _width(path: Path) -> int | None:
    """The encoder's hidden width from a folder's config or a safetensors header (None when unknown)."""
    try:
        if path.is_dir():
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            return int(config.get("vision_config", config).get("hidden_size"))
        if path.suffix.lower() == ".safetensors":
            info = read_safetensors_header(path).tensors.get("vision_model.embeddings.patch_embedding.weight")
            return int(info.shape[0]) if info is not None else None
    except (OSError, ValueError, TypeError, ModelFileError):
        return None
    return None


def find_clip_vision(folders: Iterable[Path], kind: str) -> Path | None:
    """The `kind` ("clip_h" / "clip_g") encoder in `folders`: by its name (or its folders' names: `ViT-H-14/
    image_encoder/`) first, then by its width."""
    candidates = _candidates(folders)
    for path, name in candidates:
        if any(word in name for word in ENCODER_NAMES[kind]):
            return path
    return next((path for path, _ in candidates if _width(path) == ENCODER_WIDTHS[kind]), None)


def infer_clip_vision_config(sd: Mapping[str, Any], path: Path) -> dict[str, Any]:
    try:
        patch = sd["vision_model.embeddings.patch_embedding.weight"].shape
        positions = int(sd["vision_model.embeddings.position_embedding.weight"].shape[0])
        layers = len({k.split(".")[3] for k in sd if k.startswith("vision_model.encoder.layers.")})
        intermediate = int(sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0])
        projection = int(sd["visual_projection.weight"].shape[0])
    except KeyError as error:
        raise ModelFileError(path, f"not a CLIP image encoder in the transformers layout (missing {error.args[0]})"
                             ) from None
    hidden, size = int(patch[0]), int(patch[2])
    side = math.isqrt(positions - 1)
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_attention_heads": 16,
            "num_hidden_layers": layers, "image_size": side * size, "patch_size": size, "projection_dim": projection,
            "hidden_act": "quick_gelu" if hidden == 1024 else "gelu", "layer_norm_eps": 1e-5}


def load_clip_vision(path: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A `CLIPVisionModelWithProjection` from a folder (config.json + weights) or a single file."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if path.is_dir():
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
        if weights is None:
            raise ModelFileError(path, "a CLIP image encoder folder needs model.safetensors or pytorch_model.bin")
        try:
            raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelFileError(path, f"unreadable config.json ({error})") from None
        raw = raw.get("vision_config", raw)
        keep = set(CLIPVisionConfig().to_dict())
        config = {k: v for k, v in raw.items() if k in keep and k not in ("architectures", "transformers_version")}
        sd = read_state_dict(weights)
    else:
        sd = read_state_dict(path)
        config = None
    sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))
          and not k.endswith("position_ids")}
    if config is None:
        config = infer_clip_vision_config(sd, path)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        raise ModelFileError(path, f"CLIP image encoder weights do not fit its config (missing {missing[:3]}, "
                                   f"wrong shape {wrong[:3]})")
    model.load_state_dict({k: sd[k] for k in expected}, strict=True, assign=True)
    embeddings = model.vision_model.embeddings
    if getattr(embeddings, "position_ids", None) is not None and embeddings.position_ids.is_meta:
        embeddings.register_buffer("position_ids", torch.arange(embeddings.num_positions).expand((1, -1)),
                                   persistent=False)
    return model.to(device, dtype).eval().requires_grad_(False)


def image_features(encoder, pixels: torch.Tensor, hidden_states: bool) -> torch.Tensor:
    """The encoder's image embeds ([B, projection]) or its penultimate hidden states ([B, tokens, width]), as
    diffusers' `encode_image` takes them for plain and plus IP-Adapters."""
    with torch.no_grad():
        output = encoder(pixels, output_hidden_states=hidden_states)
    return output.hidden_states[-2] if hidden_states else output.image_embeds


__all__ = ["LoadedIPAdapter", "load_ip_adapter", "check_ip_adapter_compatible", "cross_attention_names",
           "is_ip_adapter", "read_ip_adapter_file", "find_clip_vision", "load_clip_vision",
           "image_features", "infer_clip_vision_config"]
