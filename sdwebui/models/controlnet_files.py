"""The ControlNet models folder(s), listed and named as sd-webui-controlnet does (`scripts/global_state.py`):
every `.pt/.pth/.ckpt/.safetensors/.bin` below `models/ControlNet/` (and `--controlnet-dir`), recursively, plus
diffusers folders (`config.json` + `diffusion_pytorch_model.*`), each named `"<file stem> [<hash>]"` with A1111's
old 8-hex model hash (`control_v11p_sd15_canny [d14c016b]`), sorted by name; a unit's `model` may give that title,
the name without the hash, or either in another case (the extension's `find_closest_lora_model_name`).

Light on purpose (no torch): the server lists models and the API checks names with it.
"""

from __future__ import annotations

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


__all__ = ["ControlNetLibrary", "ControlNetEntry", "EXTENSIONS", "is_diffusers_controlnet"]
