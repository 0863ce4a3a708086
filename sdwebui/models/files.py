"""Safe reading of user model files: `.safetensors` with a validated header, pickles only through a restricted loader.

Model files come from the internet. A `.ckpt` is a Python pickle, and unpickling runs code, so pickles are only
read with `torch.load(weights_only=True)`, PyTorch's restricted unpickler, which rebuilds tensors and plain
containers and refuses every other global: a file that would call `os.system` is rejected before anything runs.
A1111 has its own restricted unpickler (`modules/safe.py`) with the same intent; like it we additionally allow
the few harmless globals that old training checkpoints carry (numpy scalars, PyTorch Lightning's
`ModelCheckpoint` callback, turned into an inert placeholder).

`.safetensors` headers are checked before the library maps the file, so that a truncated download or a file of
the wrong kind is reported as one readable line instead of a Rust panic message.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

SAFETENSORS_EXTENSIONS = (".safetensors",)
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")

_MAX_HEADER_BYTES = 100 * 1024 * 1024
"""safetensors itself refuses headers over 100 MB; a larger length means the file is something else."""

_SAFETENSORS_DTYPES: dict[str, tuple[int, torch.dtype | None]] = {
    # name: (bits per element, torch dtype)
    "BOOL": (8, torch.bool),
    "U8": (8, torch.uint8),
    "I8": (8, torch.int8),
    "I16": (16, torch.int16),
    "U16": (16, getattr(torch, "uint16", None)),
    "F16": (16, torch.float16),
    "BF16": (16, torch.bfloat16),
    "I32": (32, torch.int32),
    "U32": (32, getattr(torch, "uint32", None)),
    "F32": (32, torch.float32),
    "I64": (64, torch.int64),
    "U64": (64, getattr(torch, "uint64", None)),
    "F64": (64, torch.float64),
    "F8_E4M3": (8, getattr(torch, "float8_e4m3fn", None)),
    "F8_E5M2": (8, getattr(torch, "float8_e5m2", None)),
    "F8_E8M0": (8, getattr(torch, "float8_e8m0fnu", None)),
    "F4": (4, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
    "C64": (64, getattr(torch, "complex64", None)),
}

DtypeRule = torch.dtype | Callable[[str], torch.dtype | None] | None
"""Target dtype for floating-point tensors: one dtype for all, a function of the key (None = keep), or None."""


class ModelFileError(Exception):
    """A model file that cannot be used, with a one-line reason a user can act on."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self):  # picklable across processes (server worker, pytest-xdist)
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the safetensors header describes it (shape and dtype, no data)."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """Parse and validate a `.safetensors` header without reading tensor data.

    Checks everything that can be checked cheaply: the length prefix, that the header is a JSON object, known
    dtypes, that every tensor's byte range matches its shape and lies inside the file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            prefix = file.read(8)
            if size == 0:
                raise ModelFileError(path, "empty file (0 bytes)")
            if len(prefix) < 8:
                raise ModelFileError(path, f"too short to be a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER_BYTES:
                raise ModelFileError(
                    path, f"not a safetensors file (header length field reads {header_len} bytes; random data?)"
                )
            if 8 + header_len > size:
                raise ModelFileError(
                    path,
                    f"truncated or not a safetensors file (header says {header_len} bytes, file has {size - 8} after the length)",
                )
            raw = file.read(header_len)
    except OSError as error:
        raise ModelFileError(path, f"cannot read file ({error.strerror or error})") from error
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(path, f"not a safetensors file (header is not valid JSON: {error})") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, "not a safetensors file (header is not a JSON object)")

    data_len = size - 8 - header_len
    metadata_raw = header.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict):
        raise ModelFileError(path, "damaged safetensors header (__metadata__ is not an object)")
    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata_raw.items()}

    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise ModelFileError(path, f"damaged safetensors header (entry {name!r} is not an object)")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _SAFETENSORS_DTYPES:
            raise ModelFileError(path, f"unsupported tensor dtype {dtype!r} for {name!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ModelFileError(path, f"damaged safetensors header (bad shape for {name!r})")
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o >= 0 for o in offsets)
        ):
            raise ModelFileError(path, f"damaged safetensors header (bad data_offsets for {name!r})")
        begin, end = offsets
        bits = _SAFETENSORS_DTYPES[dtype][0]
        expected = (math.prod(shape) * bits + 7) // 8
        if end < begin or end - begin != expected:
            raise ModelFileError(
                path, f"damaged safetensors header ({name!r} {dtype}{shape} needs {expected} bytes, has {end - begin})"
            )
        if end > data_len:
            raise ModelFileError(
                path,
                f"truncated file: tensor {name!r} ends at byte {end} of the data but the file holds only {data_len} "
                "(incomplete download?)",
            )
        tensors[name] = TensorInfo(dtype, tuple(shape))
    return SafetensorsHeader(tensors, metadata)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` of a `.safetensors` file ({} for other formats)."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_EXTENSIONS:
        return {}
    return read_safetensors_header(path).metadata


def read_shapes(path: str | Path) -> dict[str, TensorInfo | torch.Tensor]:
    """Keys and shapes of a model file, cheaply where the format allows (safetensors: header only)."""
    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_EXTENSIONS:
        return dict(read_safetensors_header(path).tensors)
    # A pickle is memory-mapped, so tensors are not read into memory until touched.
    return read_state_dict(path)


def _target_dtype(rule: DtypeRule, key: str, tensor_dtype: torch.dtype) -> torch.dtype | None:
    if not tensor_dtype.is_floating_point:
        return None  # never cast integer/bool tensors (position ids, flags such as `v_pred`)
    target = rule(key) if callable(rule) else rule
    return target if target is not None and target != tensor_dtype else None


def read_state_dict(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: DtypeRule = None,
    *,
    keys: Callable[[str], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Read a model file into a flat `{key: tensor}` dict, safely.

    `.safetensors` is read tensor by tensor, each converted to its target dtype right away, so the peak is the
    result plus one tensor (no second full copy). `.ckpt/.pt/.pth/.bin` go through the restricted unpickler,
    memory-mapped where the file format allows. A Lightning-style `{"state_dict": {...}}` wrapper is unwrapped
    as A1111 does. `keys` selects which entries to read (e.g. skip `model_ema.*`).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "file not found")
    if path.is_dir():
        raise ModelFileError(path, "is a folder, not a model file")
    suffix = path.suffix.lower()
    device = torch.device(device)
    if suffix in SAFETENSORS_EXTENSIONS:
        return _read_safetensors(path, device, dtype, keys)
    if suffix in PICKLE_EXTENSIONS:
        return _read_pickle(path, device, dtype, keys)
    raise ModelFileError(path, f"unsupported file type {suffix or '(no extension)'!r}: use .safetensors or .ckpt")


def _read_safetensors(path: Path, device: torch.device, dtype: DtypeRule, keys) -> dict[str, torch.Tensor]:
    """Each tensor read with plain reads into a buffer of its own, then converted. Not `safe_open`: its tensors
    are views of a memory map of the file, so every page read stays in the process's resident set while the file
    is open, and a 2 GB fp16 checkpoint loaded as fp32 peaked at the fp32 model plus the whole file (7.2 GB for
    SD 1.5, issue 16); this way the peak is the result plus one tensor (the page cache still keeps the file,
    outside RSS). `torch.empty` buffers are 64-byte aligned, as PyTorch's own: a model loaded from the file
    computes bit for bit as the same model built in memory."""
    header = read_safetensors_header(path)  # validated: every byte range matches its shape and is in the file
    for name, info in header.tensors.items():
        if _SAFETENSORS_DTYPES[info.dtype][1] is None:
            raise ModelFileError(path, f"tensor {name!r} has dtype {info.dtype}, which this PyTorch cannot hold")
    out: dict[str, torch.Tensor] = {}
    try:
        with open(path, "rb") as file:
            header_len = struct.unpack("<Q", file.read(8))[0]
            entries = json.loads(file.read(header_len).decode("utf-8"))
            data_start = 8 + header_len
            for key in sorted(header.tensors):
                if keys is not None and not keys(key):
                    continue
                info = header.tensors[key]
                begin, end = entries[key]["data_offsets"]
                tensor = torch.empty(info.shape, dtype=_SAFETENSORS_DTYPES[info.dtype][1])
                _read_into(file, tensor, data_start + begin, end - begin, path, key)
                target = _target_dtype(dtype, key, tensor.dtype)
                if target is not None or device.type != "cpu":
                    tensor = tensor.to(device=device, dtype=target or tensor.dtype)
                out[key] = tensor
    except OSError as error:
        raise ModelFileError(path, f"cannot read safetensors file ({error.strerror or error})") from None
    return out


def _read_into(file, tensor: torch.Tensor, offset: int, length: int, path: Path, key: str) -> None:
    if length == 0:
        return
    view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    done = 0
    while done < length:  # one read returns at most ~2 GiB on Linux
        got = os.preadv(file.fileno(), [view[done:]], offset + done)
        if got <= 0:
            raise ModelFileError(path, f"truncated while reading {key!r} (the file changed while it was read?)")
        done += got


class _LightningCallbackPlaceholder:
    """Stands in for `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`, which old SD training
    checkpoints pickle next to the weights. It keeps no state and runs nothing (A1111's safe.py allows the
    real class; we need neither it nor Lightning)."""

    def __setstate__(self, state) -> None:
        pass


def _extra_safe_globals() -> list:
    import numpy as np

    allowed: list = [
        (_LightningCallbackPlaceholder, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        np.dtype,
        codecs.encode,  # how pickle protocol 2 stores bytes
    ]
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    allowed.append(multiarray.scalar)
    allowed.extend(getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType"))
    return allowed


def load_pickle(path: str | Path, *, extra_globals: Sequence = ()):
    """The object a PyTorch pickle (`.pt/.ckpt/.bin/.pth`) holds, through the restricted unpickler only.

    For files whose tensors are nested (a textual-inversion `.pt` keeps them under `string_to_param`), where
    `read_state_dict`'s flat dict of tensors is not enough. Tensors and plain containers only; anything that
    would call other code is refused with a `ModelFileError` before it runs. `extra_globals`: classes a caller
    knows its files hold and that rebuild without running code (e.g. `torch.nn.ParameterDict`), allowed for
    this call only.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    if path.stat().st_size == 0:
        raise ModelFileError(path, "empty file (0 bytes)")
    use_mmap = zipfile.is_zipfile(path)  # mmap needs the zip format every torch.save since 1.6 writes
    try:
        # The extra globals are allowed only for the duration of this call (PyTorch's scoped context; it swaps a
        # process-wide list, so a concurrent load may briefly see the same few harmless extras).
        with torch.serialization.safe_globals([*_extra_safe_globals(), *extra_globals]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as error:
        raise ModelFileError(path, _describe_unpickling_error(error)) from None
    except Exception as error:  # noqa: BLE001 - a damaged pickle fails in many ways inside the unpickler
        raise ModelFileError(path, f"not a readable PyTorch checkpoint ({type(error).__name__}: {_first_line(error)})") from None


def _read_pickle(path: Path, device: torch.device, dtype: DtypeRule, keys) -> dict[str, torch.Tensor]:
    obj = load_pickle(path)
    state_dict = unwrap_state_dict(obj)
    if state_dict is None:
        raise ModelFileError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for key in list(state_dict):
        value = state_dict.pop(key)
        if not isinstance(value, torch.Tensor) or (keys is not None and not keys(key)):
            continue
        target = _target_dtype(dtype, key, value.dtype)
        if target is not None or value.device != device:
            value = value.to(device=device, dtype=target or value.dtype)
        out[str(key)] = value
    return out


def unwrap_state_dict(obj) -> dict | None:
    """A1111's `get_state_dict_from_checkpoint`: take `obj["state_dict"]` when present and drop a nested one."""
    if not isinstance(obj, Mapping):
        return None
    obj = dict(obj)
    inner = obj.pop("state_dict", obj)
    if not isinstance(inner, Mapping):
        return None
    inner = dict(inner)
    inner.pop("state_dict", None)
    return inner


def _describe_unpickling_error(error: Exception) -> str:
    import re

    # PyTorch words it "Unsupported global: GLOBAL os.system ..." or "unsupported GLOBAL posix.system whose ...".
    found = re.search(r"GLOBAL\s+([\w.]+)", str(error))
    if found:
        return (
            f"refused to load: the pickle would call {found[1]}, which could run code on this machine "
            "(only plain tensor checkpoints are loaded; prefer .safetensors)"
        )
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = lines[-1] if lines else type(error).__name__
    return f"refused to load: the pickle holds more than tensors ({detail[:200]})"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = [
    "ModelFileError",
    "TensorInfo",
    "SafetensorsHeader",
    "read_safetensors_header",
    "read_metadata",
    "read_shapes",
    "read_state_dict",
    "load_pickle",
    "unwrap_state_dict",
    "SAFETENSORS_EXTENSIONS",
    "PICKLE_EXTENSIONS",
]
