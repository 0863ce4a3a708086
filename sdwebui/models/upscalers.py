"""Image upscalers: the built-in resamplers and the model files in A1111's upscaler folders.

A1111 (`modules/upscaler.py`, `modules/esrgan_model.py`, `realesrgan_model.py`, `swinir_model.py`,
`dat_model.py`, `hat_model.py`) lists, in this order: "None", "Lanczos", "Nearest", then one entry per model
file found in `models/ESRGAN`, `models/RealESRGAN`, `models/SwinIR`, `models/DAT` and `models/HAT`. Every such
model is loaded with spandrel, which recognises the architecture from the weights' keys and shapes.

What we do differently, on purpose: A1111 lists the well-known RealESRGAN / SwinIR / DAT files it would
download on first use; we list only files that are on disk (offline by design), and a `.pth` file is read by
our restricted unpickler (`sdwebui.models.files.load_pickle`, tensors and plain containers only), then handed
to spandrel as a state dict: spandrel's own file loader is never used.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from sdwebui.core.upscale_modes import BUILTIN_UPSCALERS, LATENT_UPSCALE_MODES
from sdwebui.models.files import ModelFileError, load_pickle, read_state_dict

MODEL_EXTENSIONS = (".pth", ".pt", ".safetensors")
BUILTIN = BUILTIN_UPSCALERS


class UpscalerNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class UpscalerEntry:
    """One item of the upscaler list (A1111's `UpscalerData`)."""

    name: str
    """What users pick: "Lanczos", or a model file's name without extension."""
    kind: str
    """"none", "lanczos", "nearest" or "model"."""
    family: str | None = None
    """For model files: the folder it was found in (ESRGAN, RealESRGAN, SwinIR, DAT, HAT)."""
    path: Path | None = None
    scale: int = 4
    """The nominal factor (A1111 shows 4 unless the file name says otherwise); the model's own is read on load."""

    def a1111(self) -> dict:
        """The `/sdapi/v1/upscalers` item (A1111: `model_name` is the family's name for model upscalers)."""
        return {
            "name": self.name,
            "model_name": self.family,
            "model_path": str(self.path) if self.path else None,
            "model_url": None,
            "scale": self.scale,
        }


def _scale_from_name(stem: str) -> int:
    found = re.search(r"(?:^|[^a-z0-9])(?:x(\d)|(\d)x)(?:[^a-z0-9]|$)", stem.lower())
    if found:
        return int(found[1] or found[2])
    return 4


def find_upscalers(folders: Iterable[tuple[str, Path]]) -> list[UpscalerEntry]:
    """The built-ins and every model file in `folders` ((family, folder) pairs), sorted by name per folder."""
    entries = [UpscalerEntry("None", "none"), UpscalerEntry("Lanczos", "lanczos"), UpscalerEntry("Nearest", "nearest")]
    seen = set(BUILTIN)
    for family, folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS)
        for path in files:
            name = path.stem
            if name in seen:  # a second file of the same name in another folder: A1111 lists both, we tell apart
                name = f"{path.stem} ({family})"
            seen.add(name)
            entries.append(UpscalerEntry(name, "model", family, path, _scale_from_name(path.stem)))
    return entries


def find_upscaler(entries: Iterable[UpscalerEntry], name: str | None) -> UpscalerEntry:
    """An entry by name (A1111 matches the name; we also take a file name with extension). None/"" = "None"."""
    entries = list(entries)
    wanted = (name or "None").strip()
    for entry in entries:
        if wanted == entry.name or (entry.path is not None and wanted == entry.path.name):
            return entry
    lowered = wanted.lower()
    for entry in entries:
        if lowered == entry.name.lower():
            return entry
    raise UpscalerNotFoundError(
        f"upscaler {wanted!r} not found (available: {', '.join(e.name for e in entries)})"
    )


def read_upscaler_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The weights of an upscaler file, read safely: safetensors, or a pickle through the restricted loader."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return read_state_dict(path)
    obj = load_pickle(path)
    if not isinstance(obj, dict):
        raise ModelFileError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def load_upscaler_model(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A spandrel `ImageModelDescriptor` for the file (eval mode, on `device`), or ModelFileError."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError
    from spandrel.__helpers.canonicalize import canonicalize_state_dict

    state_dict = canonicalize_state_dict(read_upscaler_state_dict(path))
    try:
        descriptor = ModelLoader().load_from_state_dict(state_dict)
    except UnsupportedModelError:
        raise ModelFileError(path, "not an upscaler architecture spandrel knows (ESRGAN, RealESRGAN, SwinIR, DAT, HAT, ...)") from None
    except (KeyError, ValueError, RuntimeError) as error:
        raise ModelFileError(path, f"cannot build the upscaler from its weights ({error})") from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ModelFileError(path, f"is a {descriptor.purpose} model, not an image upscaler")
    descriptor.eval()
    descriptor.to(torch.device(device))
    if dtype != torch.float32 and descriptor.supports_half and dtype == torch.float16:
        descriptor.half()
    elif dtype == torch.bfloat16 and descriptor.supports_bfloat16:
        descriptor.bfloat16()
    return descriptor


class UpscalerLibrary:
    """The upscalers of the configured folders, with the last loaded model kept for reuse (one at a time)."""

    def __init__(self, folders: Iterable[tuple[str, Path]], *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.folders = tuple((family, Path(folder)) for family, folder in folders)
        self._device = device
        """A device, or an object whose `resolve()` gives one when a model is first loaded."""
        self.dtype = dtype
        self._lock = threading.Lock()
        self._cached: tuple[Path, float, object] | None = None

    @property
    def device(self) -> torch.device:
        device = self._device
        return torch.device(device.resolve() if hasattr(device, "resolve") else device)

    def entries(self) -> list[UpscalerEntry]:
        """Read from disk on every call: users copy files in while the app runs."""
        return find_upscalers(self.folders)

    def find(self, name: str | None) -> UpscalerEntry:
        if (name or "None") in BUILTIN:
            return find_upscaler([UpscalerEntry("None", "none"), UpscalerEntry("Lanczos", "lanczos"),
                                  UpscalerEntry("Nearest", "nearest")], name)
        return find_upscaler(self.entries(), name)

    def model(self, entry: UpscalerEntry):
        """The loaded spandrel model of a model entry (reused while the file is unchanged)."""
        assert entry.path is not None
        mtime = entry.path.stat().st_mtime
        with self._lock:
            if self._cached is not None and self._cached[0] == entry.path and self._cached[1] == mtime:
                return self._cached[2]
            self._cached = None
            model = load_upscaler_model(entry.path, self.device, self.dtype)
            self._cached = (entry.path, mtime, model)
            return model

    def release(self) -> None:
        with self._lock:
            self._cached = None


__all__ = [
    "LATENT_UPSCALE_MODES", "UpscalerEntry", "UpscalerLibrary", "UpscalerNotFoundError", "find_upscalers",
    "find_upscaler", "load_upscaler_model", "read_upscaler_state_dict",
]
