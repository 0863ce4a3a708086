"""The ControlNet models folder(s), listed and named as sd-webui-controlnet does (`scripts/global_state.py`):
every `.pt/.pth/.ckpt/.safetensors/.bin` below `models/ControlNet/` (and `--controlnet-dir`), recursively, plus
diffusers folders (`config.json` + `diffusion_pytorch_model.*`), each named `"<file stem> [<hash>]"` with A1111's
old 8-hex model hash (`control_v11p_sd15_canny [d14c016b]`), sorted by name; a unit's `model` may give that title,
the name without the hash, or either in another case (the extension's `find_closest_lora_model_name`).

Light on purpose (no torch): the server lists models and the API checks names with it.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sdwebui.filestat import file_versions
from sdwebui.models.hashing import legacy_model_hash

EXTENSIONS = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                     "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class ControlNetEntry:
    name: str
    """The file's stem (a folder's name)."""
    title: str
    """`name [hash]`: what `/controlnet/model_list` lists and the infotext records."""
    path: Path


def is_diffusers_controlnet(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any((path / n).is_file() for n in DIFFUSERS_WEIGHTS)


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        return next(path / n for n in DIFFUSERS_WEIGHTS if (path / n).is_file())
    return path


class ControlNetLibrary:
    """The installed ControlNet models of one or more folders (the first folder's name wins on a clash)."""

    def __init__(self, folders: Iterable[Path | str | None]):
        self.folders = tuple(Path(folder) for folder in folders if folder)
        self._lock = threading.Lock()
        self._hashes: dict[Path, tuple[object, str]] = {}

    def _hash(self, path: Path) -> str:
        weights = _weights_file(path)
        stamp = file_versions([weights])
        with self._lock:
            cached = self._hashes.get(weights)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        value = legacy_model_hash(weights)
        with self._lock:
            self._hashes[weights] = (stamp, value)
        return value

    def _paths(self) -> list[Path]:
        found: list[Path] = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if is_diffusers_controlnet(path):
                    found.append(path)
                elif path.is_file() and path.suffix.lower() in EXTENSIONS and path.stem != "None" \
                        and not any(parent in found for parent in path.parents):
                    found.append(path)
        return found

    def entries(self) -> list[ControlNetEntry]:
        """Every model, by name (the extension's default `control_net_models_sort_models_by: name`)."""
        seen: dict[str, ControlNetEntry] = {}
        for path in self._paths():
            name = path.name if path.is_dir() else path.stem
            if name.lower() not in seen:
                seen[name.lower()] = ControlNetEntry(name, f"{name} [{self._hash(path)}]", path)
        return sorted(seen.values(), key=lambda entry: entry.name)

    def titles(self) -> list[str]:
        return [entry.title for entry in self.entries()]

    def find(self, wanted: str) -> ControlNetEntry | None:
        """A model by its title, its name, or either case-insensitively; a title whose hash no longer matches
        still finds the model by its name (the extension strips the hash and looks again)."""
        wanted = wanted.strip()
        if not wanted or wanted == "None":
            return None
        entries = self.entries()
        for entry in entries:
            if wanted in (entry.title, entry.name):
                return entry
        lowered = wanted.lower()
        bare = lowered.rsplit(" [", 1)[0] if lowered.endswith("]") else lowered
        return next((entry for entry in entries if entry.name.lower() in (lowered, bare)), None)

    def exists(self, wanted: str) -> bool:
        return self.find(wanted) is not None


# ---- what a file is for, from its header (before a job is queued) ------------------------------------------------

CROSS_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "SDXL refiner"}
"""Cross-attention width -> the family it belongs to."""


@dataclass(frozen=True)
class ModelTarget:
    """What a model file says about the UNet it fits, as far as its header tells."""

    kind: str
    """"ControlNet", "T2I-Adapter", "IP-Adapter" or "checkpoint"."""
    cross: int | None = None
    """Its cross-attention width (None: it does not say)."""
    sdxl: bool | None = None


def _header_shapes(path: Path) -> dict[str, list[int]] | None:
    """A safetensors file's tensor shapes from its JSON header (None for other files or a damaged header)."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with open(path, "rb") as file:
            (size,) = struct.unpack("<Q", file.read(8))
            if size > 100_000_000:
                return None
            header = json.loads(file.read(size))
    except (OSError, ValueError, struct.error):
        return None
    return {key: list(value.get("shape", [])) for key, value in header.items()
            if key != "__metadata__" and isinstance(value, dict)}


def _cross(shapes: dict[str, list[int]], prefix: str = "") -> int | None:
    return next((shape[1] for key, shape in shapes.items()
                 if key.startswith(prefix) and key.endswith("attn2.to_k.weight") and len(shape) == 2), None)


def control_model_target(path: Path) -> ModelTarget | None:
    """What a ControlNet / T2I-Adapter / IP-Adapter file (or diffusers folder) is for; None when its header (or
    config) does not tell (a pickled `.pth`: the job checks it when it loads the model)."""
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if config.get("_class_name") == "T2IAdapter":
            return ModelTarget("T2I-Adapter", sdxl=config.get("adapter_type") == "full_adapter_xl")
        cross = config.get("cross_attention_dim")
        return ModelTarget("ControlNet", cross if isinstance(cross, int) else None,
                           config.get("addition_embed_type") == "text_time")
    shapes = _header_shapes(path)
    if not shapes:
        return None
    if any(key.startswith("ip_adapter.") for key in shapes):
        k = next((shape for key, shape in shapes.items() if key.endswith("to_k_ip.weight")), None)
        return ModelTarget("IP-Adapter", k[1] if k and len(k) == 2 else None)
    conv_in = shapes.get("conv_in.weight") or shapes.get("adapter.conv_in.weight")
    if conv_in is not None and any(key.startswith(("body.", "adapter.body.")) for key in shapes):
        return ModelTarget("T2I-Adapter", sdxl=len(conv_in) == 4 and conv_in[1] in (256, 768))
    if "body.0.in_conv.weight" in shapes or "adapter.body.0.in_conv.weight" in shapes:
        return ModelTarget("T2I-Adapter", sdxl=False)
    if "lora_controlnet" in shapes:  # a control-LoRA: its cross-attention keys are low-rank pairs
        down = next((shape for key, shape in shapes.items() if key.endswith("attn2.to_k.down") and len(shape) == 2),
                    None)
        return ModelTarget("control-LoRA", down[1] if down else None, any("label_emb" in key for key in shapes))
    cross = _cross(shapes)
    sdxl = any("label_emb" in key or key.startswith("add_embedding.") for key in shapes)
    return ModelTarget("ControlNet", cross, sdxl) if cross is not None else None


def checkpoint_target(path: Path) -> ModelTarget | None:
    """The cross-attention width of a single-file checkpoint's UNet, from its safetensors header."""
    shapes = _header_shapes(Path(path))
    cross = _cross(shapes, "model.diffusion_model.") if shapes else None
    if cross is None:
        return None
    sdxl = cross in (2048, 1280) or any(key.startswith("conditioner.embedders.") for key in shapes)
    return ModelTarget("checkpoint", cross, sdxl)


def mismatch(model: ModelTarget, name: str, checkpoint: ModelTarget) -> str | None:
    """Why a control model cannot drive the checkpoint, from their headers; None when it may (or it cannot be
    told)."""
    family = "SDXL" if checkpoint.sdxl and checkpoint.cross != 1280 else \
        CROSS_FAMILIES.get(checkpoint.cross, "an SDXL model" if checkpoint.sdxl else "a non-SDXL model")
    if model.kind == "T2I-Adapter":
        if model.sdxl is None or model.sdxl == checkpoint.sdxl:
            return None
        made_for = "SDXL" if model.sdxl else "SD 1.x / 2.x"
        return f"T2I-Adapter {name} is for {made_for} models; the checkpoint is {family}: choose an adapter made for it"
    if model.cross is None or model.cross == checkpoint.cross:
        return None
    made_for = "SDXL" if model.sdxl else CROSS_FAMILIES.get(model.cross, "other")
    return (f"{model.kind} {name} is for {made_for} models (cross-attention {model.cross}); the checkpoint is "
            f"{family} (cross-attention {checkpoint.cross}): choose a {model.kind} made for it")


__all__ = ["ControlNetLibrary", "ControlNetEntry", "EXTENSIONS", "is_diffusers_controlnet", "ModelTarget",
           "control_model_target", "checkpoint_target", "mismatch"]
