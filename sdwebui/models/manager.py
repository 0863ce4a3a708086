"""The model manager: resolves checkpoint names, keeps the loaded model for reuse, releases it on switch.

One instance is built by the composition root (`app.py` / the CLI) and shared by everything that
generates; nothing here is global.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from sdwebui.config import DEMO_CHECKPOINT, Paths
from sdwebui.models.devices import DevicePlan
from sdwebui.models.files import ModelFileError
from sdwebui.models.hashing import sha256_of
from sdwebui.models.sd_model import SDModel

log = logging.getLogger(__name__)


class ModelNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class LoadRequest:
    checkpoint: Path
    vae: Path | None
    prediction_type: str | None

    @property
    def key(self) -> tuple:
        return (str(self.checkpoint), str(self.vae) if self.vae else None, self.prediction_type)


class ModelManager:
    def __init__(self, paths: Paths, devices: DevicePlan, *, prediction_type: str | None = None):
        self.paths = paths
        self.devices = devices
        self.prediction_type = prediction_type
        self._lock = threading.RLock()
        self._loaded: SDModel | None = None
        self._loaded_key: tuple | None = None
        self._secondary: SDModel | None = None
        self._secondary_key: tuple | None = None

    # ---- discovery -------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        from sdwebui.models.loader import find_checkpoints

        return find_checkpoints(self.paths.ckpt_dir)

    def default_checkpoint(self) -> Path:
        found = self.checkpoints()
        if found:
            return found[0]
        if DEMO_CHECKPOINT.is_file():
            return DEMO_CHECKPOINT
        raise ModelNotFoundError(
            f"no checkpoint found in {self.paths.ckpt_dir}: put a .safetensors file there or pass --model PATH"
        )

    def resolve_checkpoint(self, name: str | Path | None) -> Path:
        """A path, a file name, a name without extension, A1111's title "name [hash]", or None (default)."""
        if name is None or str(name) == "":
            return self.default_checkpoint()
        candidate = Path(name).expanduser()
        if candidate.exists():
            return candidate.resolve()
        text = str(name).strip()
        title_hash = None
        if text.endswith("]") and " [" in text:
            text, title_hash = text[:-1].rsplit(" [", 1)
        checkpoints = self.checkpoints()
        if DEMO_CHECKPOINT.is_file():
            checkpoints.append(DEMO_CHECKPOINT)
        for path in checkpoints:
            relative = _relative_name(path, self.paths.ckpt_dir)
            if text in (path.name, path.stem, relative, relative.rsplit(".", 1)[0]):
                return path
        if title_hash or _looks_like_hash(text):
            wanted = (title_hash or text).lower()

            for path in checkpoints:
                if path.is_file() and sha256_of(path, self.paths.cache_dir).startswith(wanted):
                    return path
        raise ModelNotFoundError(
            f"checkpoint {name!s} not found in {self.paths.ckpt_dir}"
            + (f" (available: {', '.join(p.stem for p in checkpoints)})" if checkpoints else "")
        )

    def resolve_vae(self, name: str | Path | None) -> Path | None:
        """None/"Automatic" = A1111's rule (`<name>.vae.safetensors` beside the checkpoint, handled by the
        loader); "None" = the checkpoint's own VAE; otherwise a path or a file in the VAE folder."""
        if name is None or str(name) in ("", "Automatic", "None"):
            return None
        candidate = Path(name).expanduser()
        if candidate.is_file():
            return candidate.resolve()
        for path in sorted(self.paths.vae_dir.rglob("*")) if self.paths.vae_dir.is_dir() else []:
            if path.is_file() and str(name) in (path.name, path.stem):
                return path
        raise ModelNotFoundError(f"VAE {name!s} not found in {self.paths.vae_dir}")

    # ---- loading ---------------------------------------------------------------------------------
    def get(self, checkpoint: str | Path | None = None, *, vae: str | Path | None = None) -> SDModel:
        request = LoadRequest(self.resolve_checkpoint(checkpoint), self._vae_for(vae), self.prediction_type)
        with self._lock:
            if self._loaded is not None and self._loaded_key == request.key:
                return self._loaded
            # Release the old model before loading the next, so peak memory is one model, not two.
            self.unload()
            model = self._load(request, automatic_vae=vae in (None, "", "Automatic"))
            self._loaded, self._loaded_key = model, request.key
            return model

    def get_secondary(self, checkpoint: str | Path) -> SDModel:
        """A checkpoint a job uses beside the main one (hires-fix checkpoint, SDXL refiner), with its own VAE.

        It is kept in a second slot, so a job alternating base and refiner batch after batch, and the next such
        job, load neither again; the main model stays where it is. Peak memory is two models (A1111 swaps them
        through its checkpoint cache instead, reloading from disk when the cache is 0, its default)."""
        request = LoadRequest(self.resolve_checkpoint(checkpoint), None, self.prediction_type)
        with self._lock:
            if self._loaded is not None and self._loaded_key == request.key:
                return self._loaded
            if self._secondary is not None and self._secondary_key == request.key:
                return self._secondary
            self._secondary = self._secondary_key = None
            release_freed_memory()
            model = self._load(request, automatic_vae=True)
            self._secondary, self._secondary_key = model, request.key
            return model

    def _vae_for(self, vae: str | Path | None) -> Path | None:
        return self.resolve_vae(vae)

    def _load(self, request: LoadRequest, *, automatic_vae: bool) -> SDModel:
        from sdwebui.models.loader import load_checkpoint

        log.info("loading %s", request.checkpoint)
        return load_checkpoint(
            request.checkpoint,
            device=self.devices.device,
            dtype=self.devices.dtype,
            vae_dtype=self.devices.vae_dtype,
            vae_path=request.vae,
            automatic_vae=automatic_vae,
            prediction_type=request.prediction_type,
            hash_cache_dir=self.paths.cache_dir,
        )

    @property
    def loaded(self) -> SDModel | None:
        return self._loaded

    def unload(self) -> None:
        with self._lock:
            if self._loaded is None and self._secondary is None:
                return
            self._loaded = None
            self._loaded_key = None
            self._secondary = None
            self._secondary_key = None
            release_freed_memory()


def release_freed_memory() -> None:
    """Give freed model memory back: CUDA's cache, and glibc's heap (which otherwise keeps gigabytes of freed
    CPU tensors mapped, so RSS would never drop after a checkpoint switch)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _looks_like_hash(text: str) -> bool:
    return len(text) in (8, 10, 12, 64) and all(c in "0123456789abcdefABCDEF" for c in text)


__all__ = ["ModelManager", "ModelNotFoundError", "ModelFileError", "DEMO_CHECKPOINT"]
