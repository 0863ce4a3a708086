"""The model manager: resolves checkpoint names, keeps the loaded model for reuse, releases it on switch.

One instance is built by the composition root (`app.py` / the CLI) and shared by everything that
generates; nothing here is global.

Names are matched against a list of files by text alone (`match_checkpoint`, `match_vae`), so a caller that
must not open arbitrary paths (the server) can match against its folders' listings without ever touching the
file system with a client's string. The default checkpoint is the first file by name that looks loadable
(`checkpoint_problem`: a cheap look at the header); files skipped on the way are logged.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sdwebui.config import DEMO_CHECKPOINT, Paths
from sdwebui.filestat import file_versions
from sdwebui.models.detect import detect
from sdwebui.models.devices import DevicePlan
from sdwebui.models.fast_paths import FastPaths, compile_unet, use_channels_last
from sdwebui.models.files import ModelFileError, read_safetensors_header
from sdwebui.models.fp8 import fp8_wanted, store_in_fp8
from sdwebui.models.hashing import sha256_of
from sdwebui.models.memory import MemoryChoice, MemoryPolicy, ModelBytes, choose_mode, estimate_bytes, place_model
from sdwebui.models.sd_model import SDModel
from sdwebui.models.vae import find_vaes

log = logging.getLogger(__name__)


class ModelNotFoundError(LookupError):
    pass


class UnusableModelError(ModelNotFoundError):
    """A model file that is listed but cannot be loaded (found by a cheap look at its header). The message names
    the file, not the folder it is in."""


@dataclass(frozen=True)
class LoadRequest:
    checkpoint: Path
    vae: Path | None
    prediction_type: str | None
    fp8: tuple[str, bool] = ("Disable", False)
    """(`fp8_storage`, `cache_fp16_weight`) when the model is loaded: a model loaded with others is another one."""

    @property
    def key(self) -> tuple:
        fp8 = () if self.fp8 == ("Disable", False) else (self.fp8,)
        return (str(self.checkpoint), str(self.vae) if self.vae else None, self.prediction_type, *fp8)


class ModelManager:
    def __init__(self, paths: Paths, devices: DevicePlan, *, prediction_type: str | None = None,
                 memory: MemoryPolicy | None = None, keep: Callable[[], tuple[int, int]] | None = None,
                 fp8: Callable[[], tuple[str, bool]] | None = None, fast: FastPaths | None = None):
        self.paths = paths
        self.fast = fast if fast is not None else FastPaths()
        """`--opt-channelslast` and `--compile` (`models.fast_paths`), applied to each model as it is loaded."""
        self.devices = devices
        self.prediction_type = prediction_type
        self.memory = memory if memory is not None else MemoryPolicy()
        self.keep = keep if keep is not None else (lambda: (1, 0))
        """(A1111's `sd_checkpoints_limit`, `sd_checkpoint_cache`), read at every switch: see `get`."""
        self.fp8 = fp8 if fp8 is not None else (lambda: ("Disable", False))
        """(A1111's `fp8_storage`, `cache_fp16_weight`), read when a model is asked for (`models.fp8`)."""
        self._lock = threading.RLock()
        self._loaded: SDModel | None = None
        self._loaded_key: tuple | None = None
        self._parked: OrderedDict[tuple, SDModel] = OrderedDict()
        """Models switched away from and kept in RAM, least recently used first."""
        self._secondary: SDModel | None = None
        self._secondary_key: tuple | None = None
        self._warned: set = set()

    # ---- discovery -------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        from sdwebui.models.loader import find_checkpoints

        return find_checkpoints(self.paths.ckpt_dir)

    def default_checkpoint(self) -> Path:
        """The first checkpoint by name that looks loadable (broken files are skipped, and logged once); the
        demo model when the folder holds none."""
        found = self.checkpoints()
        skipped: list[tuple[Path, str]] = []
        for path in found:
            problem = checkpoint_problem(path)
            if problem is None:
                if skipped:
                    self._warn_skipped(skipped, path)
                return path
            skipped.append((path, problem))
        if skipped:
            raise UnusableModelError("no usable checkpoint in the checkpoints folder: " + "; ".join(
                f"{path.name}: {problem}" for path, problem in skipped))
        if DEMO_CHECKPOINT.is_file():
            return DEMO_CHECKPOINT
        raise ModelNotFoundError(
            f"no checkpoint found in {self.paths.ckpt_dir}: put a .safetensors file there or pass --model PATH"
        )

    def _warn_skipped(self, skipped: list[tuple[Path, str]], chosen: Path) -> None:
        key = (file_versions(path for path, _ in skipped), str(chosen))
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        for path, problem in skipped:
            log.warning("default checkpoint: skipped %s, which cannot be loaded (%s); using %s", path.name, problem,
                        chosen.name)

    def resolve_checkpoint(self, name: str | Path | None) -> Path:
        """A path, a file name, a name without extension, A1111's title "name [hash]", or None (default)."""
        if name is None or str(name) == "":
            return self.default_checkpoint()
        candidate = Path(name).expanduser()
        if candidate.exists():
            return candidate.resolve()
        checkpoints = self.checkpoints()
        if DEMO_CHECKPOINT.is_file():
            checkpoints.append(DEMO_CHECKPOINT)
        found = match_checkpoint(str(name), checkpoints, self.paths.ckpt_dir, self.paths.cache_dir)
        if found is not None:
            return found
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
        files = [path for path in sorted(self.paths.vae_dir.rglob("*")) if path.is_file()] \
            if self.paths.vae_dir.is_dir() else []
        # ... and the `*.vae.*` files beside the checkpoints, which the server lists too (`find_vaes`).
        files += [path for path in find_vaes(self.paths.vae_dir, self.paths.ckpt_dir) if path not in files]
        found = match_vae(str(name), files, self.paths.vae_dir)
        if found is not None:
            return found
        raise ModelNotFoundError(f"VAE {name!s} not found in {self.paths.vae_dir}")

    # ---- loading ---------------------------------------------------------------------------------
    def get(self, checkpoint: str | Path | None = None, *, vae: str | Path | None = None) -> SDModel:
        """The model for `checkpoint` (and `vae`), loaded or taken from the RAM cache.

        A1111's checkpoint cache: up to `sd_checkpoints_limit` + `sd_checkpoint_cache` - 1 models switched away
        from stay in RAM (off the GPU), least recently used dropped first, so switching back to one moves it to
        the device instead of reading the file. (A1111 keeps `sd_checkpoints_limit` models loaded and caches
        `sd_checkpoint_cache` more as state dicts; here both are kept as modules, which is what makes a switch
        back fast.) With the defaults (1, 0) the old model is released before the next is loaded, so peak
        memory is one model."""
        request = LoadRequest(self.resolve_checkpoint(checkpoint), self._vae_for(vae), self.prediction_type,
                              self._fp8_setting())
        with self._lock:
            if self._loaded is not None and self._loaded_key == request.key:
                return self._loaded
            self._secondary = self._secondary_key = None
            cached = self._parked.pop(request.key, None)  # (before parking: that may drop the oldest)
            if self._loaded is not None:
                self._park(self._loaded_key, self._loaded)
                self._loaded = self._loaded_key = None
            if cached is not None:
                log.info("%s from the RAM cache", request.checkpoint.name)
                _unpark(cached)
                self._loaded, self._loaded_key = cached, request.key
                return cached
            self._trim(self._room())  # (with no room: releases the old model before the next is read)
            model = self._load(request, automatic_vae=vae in (None, "", "Automatic"))
            self._loaded, self._loaded_key = model, request.key
            return model

    def _fp8_setting(self) -> tuple[str, bool]:
        setting, cache = self.fp8()
        return (str(setting), bool(cache))

    def cached(self) -> list[tuple]:
        """Keys of the models kept in RAM besides the loaded one, least recently used first."""
        with self._lock:
            return list(self._parked)

    def _room(self) -> int:
        """How many models switched away from may stay in RAM."""
        limit, cache = self.keep()
        return max(0, int(limit) - 1 + max(0, int(cache)))

    def _park(self, key: tuple, model: SDModel) -> None:
        room = self._room()
        if room <= 0:
            return  # dropped: `get` releases its memory before loading the next model
        if model.placement is not None:
            model.placement.park(model)
        self._parked[key] = model
        self._trim(room)

    def _trim(self, room: int) -> None:
        dropped = False
        while len(self._parked) > max(0, room):
            self._parked.popitem(last=False)
            dropped = True
        if dropped or room <= 0:
            release_freed_memory()

    def get_secondary(self, checkpoint: str | Path) -> SDModel:
        """A checkpoint a job uses beside the main one (hires-fix checkpoint, SDXL refiner), with its own VAE.

        It is kept in a second slot, so a job alternating base and refiner batch after batch, and the next such
        job, load neither again; the main model stays where it is. Peak memory is two models (A1111 swaps them
        through its checkpoint cache instead, reloading from disk when the cache is 0, its default)."""
        request = LoadRequest(self.resolve_checkpoint(checkpoint), None, self.prediction_type, self._fp8_setting())
        with self._lock:
            if self._loaded is not None and self._loaded_key == request.key:
                return self._loaded
            if self._secondary is not None and self._secondary_key == request.key:
                return self._secondary
            self._secondary = self._secondary_key = None
            release_freed_memory()
            cached = self._parked.pop(request.key, None)
            if cached is not None:
                _unpark(cached)
                self._secondary, self._secondary_key = cached, request.key
                return cached
            model = self._load(request, automatic_vae=True)
            self._secondary, self._secondary_key = model, request.key
            return model

    def _vae_for(self, vae: str | Path | None) -> Path | None:
        return self.resolve_vae(vae)

    def _load(self, request: LoadRequest, *, automatic_vae: bool) -> SDModel:
        """Load a checkpoint in the memory mode `_memory_choice` picks: straight onto the device when nothing is
        offloaded, else into RAM, from where the mode's hooks move the parts as they run."""
        from sdwebui.models.loader import load_checkpoint

        device = self.devices.device
        may_offload = self._may_offload()
        fp8_setting, fp8_cache = request.fp8
        choice = self._memory_choice(request.checkpoint, fp8_setting) if may_offload else None
        offloaded = may_offload and (choice is None or choice.mode != "none")
        # FP8 is cast in RAM: the model never sits on the device in its compute dtype.
        load_device = torch.device("cpu") if offloaded or fp8_setting != "Disable" else device
        log.info("loading %s", request.checkpoint)
        model = load_checkpoint(
            request.checkpoint,
            device=load_device,
            dtype=self.devices.dtype,
            vae_dtype=self.devices.vae_dtype,
            vae_path=request.vae,
            automatic_vae=automatic_vae,
            prediction_type=request.prediction_type,
            hash_cache_dir=self.paths.cache_dir,
        )
        if fp8_wanted(fp8_setting, model.family):
            store_in_fp8(model, fp8_setting, cache_fp16=fp8_cache)
            model.config_notes.append(f"FP8 weight: {fp8_setting} (UNet and text encoders stored in float8_e4m3fn)")
        if choice is None and may_offload:  # a file whose header says too little (.ckpt): decide now
            choice = choose_mode(self.memory, model.family, device, _module_bytes(model))
        if choice is None:
            choice = choose_mode(self.memory, model.family, device, None)
        model.device = device
        if self.fast.channels_last:
            model.config_notes.extend(use_channels_last(model))
        place_model(model, choice.mode)
        model.config_notes.append(f"memory mode {choice.mode} ({choice.reason})")
        if self.fast.compile:
            notes = compile_unet(model, self.fast)
            model.config_notes.extend(notes)
            log.info("%s: %s", request.checkpoint.name, "; ".join(notes))
        log.info("%s: memory mode %s (%s)", request.checkpoint.name, choice.mode, choice.reason)
        return model

    def _may_offload(self) -> bool:
        """Whether a mode other than none can be chosen: an explicit flag, or the automatic mode on CUDA."""
        policy = self.memory
        explicit = policy.mode in ("medvram", "lowvram") or policy.medvram_sdxl
        return explicit or policy.mode == "auto" and self.devices.device.type == "cuda"

    def _memory_choice(self, checkpoint: Path, fp8_setting: str = "Disable") -> MemoryChoice | None:
        """The memory mode for `checkpoint`, from its header (family, tensor sizes; weights stored in fp8 take one
        byte each); None when only loading it can tell (a pickled `.ckpt`)."""
        from sdwebui.models.loader import describe_checkpoint

        path = Path(checkpoint)
        if not path.is_dir() and path.suffix.lower() != ".safetensors":
            return None
        family = describe_checkpoint(path).family
        shapes = None if path.is_dir() else read_safetensors_header(path).tensors
        sizes = estimate_bytes(shapes, family, self.devices.dtype, self.devices.vae_dtype)
        if fp8_wanted(fp8_setting, family):
            itemsize = torch.empty((), dtype=self.devices.dtype).element_size()
            sizes = ModelBytes(sizes.unet // itemsize, sizes.text_encoders // itemsize, sizes.vae)
        return choose_mode(self.memory, family, self.devices.device, sizes)

    @property
    def loaded(self) -> SDModel | None:
        return self._loaded

    def unload(self) -> None:
        """Release every model (the loaded one, the second slot, the RAM cache)."""
        with self._lock:
            if self._loaded is None and self._secondary is None and not self._parked:
                return
            self._parked.clear()
            self._loaded = None
            self._loaded_key = None
            self._secondary = None
            self._secondary_key = None
            release_freed_memory()


def _unpark(model: SDModel) -> None:
    if model.placement is not None:
        model.placement.unpark(model)


def _module_bytes(model: SDModel) -> ModelBytes:
    def size(modules) -> int:
        return sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())

    encoders = [getattr(model.text_encoder, name, None) for name in ("clip_l", "clip_g", "clip_h")]
    return ModelBytes(size([model.unet]), size(encoders), size([model.vae]))


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


def match_checkpoint(name: str, candidates: Sequence[Path], root: Path, cache_dir: Path) -> Path | None:
    """The one of `candidates` that `name` names, by text alone (the name is never opened as a path): its file
    name, its name without extension, its path relative to `root` (with or without extension), its full path as
    listed or with links resolved, A1111's title "name [hash]", or a hash prefix (8, 10, 12 or 64 hex digits;
    files are hashed, with the cache, only then). None when no candidate matches."""
    text = str(name).strip()
    title_hash = None
    if text.endswith("]") and " [" in text:
        text, title_hash = text[:-1].rsplit(" [", 1)
    for path in candidates:
        relative = _relative_name(path, root)
        if text in (path.name, path.stem, relative, relative.rsplit(".", 1)[0], str(path)):
            return path
    for path in candidates:
        if text == _resolved(path):
            return path
    if title_hash or _looks_like_hash(text):
        wanted = (title_hash or text).lower()
        for path in candidates:
            if path.is_file() and sha256_of(path, cache_dir).startswith(wanted):
                return path
    return None


def match_vae(name: str, candidates: Sequence[Path], root: Path) -> Path | None:
    """The VAE file `name` names among `candidates`, by text alone: its file name, its name without extension,
    its path relative to `root`, or its full path (as listed or with links resolved)."""
    text = str(name).strip()
    for path in candidates:
        if text in (path.name, path.stem, _relative_name(path, root), str(path)):
            return path
    for path in candidates:
        if text == _resolved(path):
            return path
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be loaded as a checkpoint, from what is cheap to read (None: it looks loadable; loading
    may still find more): a `.safetensors` header (validated, and its tensors must be a Stable Diffusion
    model's), the first bytes of a pickle (`.ckpt`: a zip archive or a pickle stream), a diffusers folder's
    `model_index.json`. Remembered per file version."""
    path = Path(path)
    return _checkpoint_problem(path, file_versions([path]))


@functools.lru_cache(maxsize=256)
def _checkpoint_problem(path: Path, versions: tuple) -> str | None:
    try:
        if path.is_dir():
            return None if (path / "model_index.json").is_file() else "a folder without model_index.json"
        if path.suffix.lower() == ".safetensors":
            detect(read_safetensors_header(path).tensors, path)
            return None
        with open(path, "rb") as file:
            head = file.read(4)
        if not head:
            return "empty file (0 bytes)"
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            return None
        return "not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    except ModelFileError as error:
        return error.reason
    except OSError as error:
        return f"cannot read file ({error.strerror or error})"


def _resolved(path: Path) -> str | None:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return None


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _looks_like_hash(text: str) -> bool:
    return len(text) in (8, 10, 12, 64) and all(c in "0123456789abcdefABCDEF" for c in text)


__all__ = ["ModelManager", "ModelNotFoundError", "UnusableModelError", "ModelFileError", "DEMO_CHECKPOINT",
           "match_checkpoint", "match_vae", "checkpoint_problem"]
