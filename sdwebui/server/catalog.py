"""What the model folders hold, described as A1111's API lists it (titles, names, hashes, files).

A1111 shows a checkpoint as `name [shorthash]` where `name` is its path relative to the checkpoints folder and
the short hash is only known once the file has been hashed (on first load); listing never hashes a file (a
7 GB checkpoint takes a while), it reads the hash cache that loading fills (`sdwebui.models.hashing`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sdwebui.config import Paths
from sdwebui.models.hashing import CACHE_FILE_NAME


@dataclass(frozen=True)
class CheckpointEntry:
    path: Path
    name: str
    """Relative to the checkpoints folder, with extension ("sub/model.safetensors"): A1111's `name`."""
    sha256: str | None

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name

    @property
    def model_name(self) -> str:
        """A1111's `model_name`: the name without extension, folders joined by "_"."""
        return os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0]

    def a1111(self) -> dict:
        config = self.path.with_suffix(".yaml")
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.short_hash,
            "sha256": self.sha256,
            "filename": str(self.path),
            "config": str(config) if config.is_file() else None,
        }


def _read_hash_cache(cache_dir: Path) -> dict:
    try:
        data = json.loads((cache_dir / CACHE_FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_sha256(path: Path, cache_dir: Path, cache: dict | None = None) -> str | None:
    """The full SHA-256 from the hash cache when it is still valid for the file (same size and mtime).
    `cache`: the cache file already read (`_read_hash_cache`), when asking for many files."""
    if not path.is_file():
        return None
    data = _read_hash_cache(cache_dir) if cache is None else cache
    try:
        entry = data.get(str(path.resolve()))
        stat = path.stat()
    except OSError:
        return None
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    return None


def checkpoints(paths: Paths) -> list[CheckpointEntry]:
    from sdwebui.models.loader import find_checkpoints
    from sdwebui.models.manager import DEMO_CHECKPOINT

    found = find_checkpoints(paths.ckpt_dir)
    if not found and DEMO_CHECKPOINT.is_file():
        found = [DEMO_CHECKPOINT]
    cache = _read_hash_cache(paths.cache_dir)  # once, not once per file
    entries = []
    for path in found:
        entries.append(CheckpointEntry(path, relative_name(path, paths.ckpt_dir), cached_sha256(path, paths.cache_dir,
                                                                                              cache)))
    return entries


def relative_name(path: Path, ckpt_dir: Path) -> str:
    """A1111's checkpoint `name`: the path relative to the checkpoints folder (the file name for one outside)."""
    try:
        return path.relative_to(ckpt_dir).as_posix()
    except ValueError:
        return path.name


def entry_for(paths: Paths, path: Path) -> CheckpointEntry:
    for entry in checkpoints(paths):
        if entry.path == path:
            return entry
    return CheckpointEntry(path, path.name, cached_sha256(path, paths.cache_dir))


def vaes(paths: Paths) -> list[dict]:
    """A1111's `/sd-vae` items: `model_name` is the file name, `filename` its path."""
    from sdwebui.models.vae import find_vaes

    return [{"model_name": path.name, "filename": str(path)} for path in find_vaes(paths.vae_dir, paths.ckpt_dir)]


__all__ = ["CheckpointEntry", "checkpoints", "entry_for", "cached_sha256", "vaes", "relative_name"]
