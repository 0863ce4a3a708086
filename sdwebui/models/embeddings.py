"""Textual-inversion embeddings: the `embeddings/` folder, read as A1111 reads it.

Reference: A1111 `modules/textual_inversion/textual_inversion.py` (`EmbeddingDatabase`,
`create_embedding_from_data`, `find_embedding_at_position`) and `modules/sd_hijack_clip.py` (how the vectors
enter the prompt). A file's stem is the word that calls it in a prompt. Formats:

- A1111 `.pt`: `{"string_to_param": {"*": Tensor[n, D]}, "step": ..., "sd_checkpoint_name": ...}`;
- diffusers `.bin` (`learned_embeds.bin`): `{"<token>": Tensor[D] or [n, D]}`;
- `.safetensors`: `{"emb_params": Tensor[n, D]}` (SD 1/2), or SDXL's `{"clip_l": [n, 768], "clip_g": [n, 1280]}`.

Pickles (`.pt`, `.bin`) are only opened through the restricted unpickler of `sdwebui.models.files`: a file that
would run code is refused and reported, never loaded (A1111 uses its own restricted unpickler likewise).

An embedding is usable with a model when it has vectors of the right width for every text encoder of that
model (SD 1: CLIP-L 768, SD 2: OpenCLIP-H 1024, SDXL: both CLIP-L 768 and CLIP-G 1280); the others are listed
as skipped, as A1111's `/sdapi/v1/embeddings` does. The infotext's `TI hashes` carry the first 12 hex digits
of each used file's SHA-256 (A1111's `Embedding.shorthash`).

Differences from A1111, on purpose: embeddings stored inside images (`.png`/`.webp` with the data hidden in
them) are not read; A1111's `*.preview.png` images are ignored.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sdwebui.filestat import file_versions
from sdwebui.models.files import ModelFileError, load_pickle, read_state_dict
from sdwebui.models.hashing import sha256_file

log = logging.getLogger(__name__)

EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors")
SINGLE = ""
"""Key of the vectors of an embedding made for a one-encoder model (SD 1 / SD 2); SDXL ones use tower names."""


@dataclass(frozen=True, eq=False)
class Embedding:
    """One textual-inversion file, loaded (vectors are float32 on the CPU; a few KB)."""

    name: str
    path: Path
    vectors: Mapping[str, Tensor]
    """`{"": [n, D]}` for SD 1/2 files; `{"clip_l": [n, 768], "clip_g": [n, 1280]}` for SDXL."""
    sha256: str
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def shorthash(self) -> str:
        """A1111's `Embedding.shorthash`: the first 12 hex digits of the file's SHA-256."""
        return self.sha256[:12]

    @property
    def vector_count(self) -> int:
        """How many prompt tokens the embedding takes (A1111's `vectors`)."""
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def shape(self) -> int:
        """A1111's `shape`: the width, summed over encoders for SDXL embeddings (768 + 1280 = 2048)."""
        return sum(int(v.shape[-1]) for v in self.vectors.values())

    def vectors_for(self, tower: str, width: int, *, single_tower: bool) -> Tensor | None:
        """The vectors for text encoder `tower` ("clip_l", "clip_h", "clip_g") of width `width`, or None.

        A one-encoder model (SD 1, SD 2, the SDXL refiner) takes only one-encoder embeddings, and SDXL only
        SDXL ones: A1111 compares the summed width (`shape`), so an SDXL file on SD 1.5 is skipped even though
        its `clip_l` part would fit."""
        vec = self.vectors.get(SINGLE if single_tower else tower)
        if vec is None or int(vec.shape[-1]) != width:
            return None
        return vec

    def usable_with(self, towers: Sequence[tuple[str, int]]) -> bool:
        """Whether every encoder of a model (`[(name, width), ...]`) has vectors here."""
        single = len(towers) == 1
        return all(self.vectors_for(name, width, single_tower=single) is not None for name, width in towers)

    def a1111_item(self) -> dict:
        """An item of A1111's `/sdapi/v1/embeddings` (`loaded` / `skipped` values)."""
        return {
            "step": self.step,
            "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name,
            "shape": self.shape,
            "vectors": self.vector_count,
        }


def _as_vectors(tensor: Tensor) -> Tensor:
    tensor = tensor.detach().to(device="cpu", dtype=torch.float32)
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise ValueError(f"vectors of shape {tuple(tensor.shape)} (expected [count, width])")
    return tensor.contiguous()


def vectors_from_data(data: object) -> tuple[dict[str, Tensor], dict]:
    """A1111's `create_embedding_from_data`: the file's object -> ({encoder: vectors}, extra fields)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"holds a {type(data).__name__}, not an embedding")
    if "string_to_param" in data:  # A1111 / original textual inversion
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, Mapping) or len(params) != 1:
            raise ValueError("embedding file has multiple terms in it (or none)")
        vec = next(iter(params.values()))
        if not isinstance(vec, Tensor):
            raise ValueError("string_to_param does not hold a tensor")
        extra = {
            "step": data.get("step"),
            "sd_checkpoint": data.get("sd_checkpoint"),
            "sd_checkpoint_name": data.get("sd_checkpoint_name"),
        }
        return {SINGLE: _as_vectors(vec)}, extra
    if "clip_g" in data and "clip_l" in data:  # SDXL
        vectors = {k: _as_vectors(data[k]) for k in ("clip_l", "clip_g")}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise ValueError("clip_l and clip_g hold different numbers of vectors")
        return vectors, {}
    tensors = [v for v in data.values() if isinstance(v, Tensor)]
    if len(data) == 1 and len(tensors) == 1:  # diffusers concept (`{"<token>": vec}`) or `{"emb_params": vec}`
        return {SINGLE: _as_vectors(tensors[0])}, {}
    raise ValueError("neither a textual-inversion embedding nor a diffusers concept")


def load_embedding(path: str | Path, *, name: str | None = None) -> Embedding:
    """Read one embedding file (raises `ModelFileError` with a one-line reason)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_EXTENSIONS:
        raise ModelFileError(path, f"not an embedding file type ({suffix or 'no extension'})")
    if suffix == ".safetensors":
        data: object = read_state_dict(path)
    else:
        # The original textual-inversion code saved `string_to_param` as a ParameterDict (A1111's safe
        # unpickler allows it too); it rebuilds from tensors alone.
        data = load_pickle(path, extra_globals=[torch.nn.ParameterDict])
    try:
        vectors, extra = vectors_from_data(data)
    except ValueError as error:
        raise ModelFileError(path, str(error)) from None
    step = extra.get("step")
    return Embedding(
        name=name or path.stem,
        path=path,
        vectors=vectors,
        sha256=sha256_file(path),
        step=int(step) if isinstance(step, (int, float)) else None,
        sd_checkpoint=_text(extra.get("sd_checkpoint")),
        sd_checkpoint_name=_text(extra.get("sd_checkpoint_name")),
    )


def _text(value) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class EmbeddingLookup:
    """Token-id sequences of the usable embeddings' names, for one tokenizer and encoder set.

    A1111's `ids_lookup`: first token id -> [(ids, embedding), ...], longest first, so that `find_at` picks the
    longest name that matches (`find_embedding_at_position`).
    """

    by_first_id: Mapping[int, tuple[tuple[tuple[int, ...], Embedding], ...]]

    def find_at(self, tokens: Sequence[int], position: int) -> tuple[Embedding, int] | None:
        """The embedding whose name's tokens start at `tokens[position]`, with that name's token length."""
        for ids, embedding in self.by_first_id.get(int(tokens[position]), ()):
            if tuple(tokens[position : position + len(ids)]) == ids:
                return embedding, len(ids)
        return None

    def __bool__(self) -> bool:
        return bool(self.by_first_id)


@dataclass
class _Scan:
    signature: tuple
    loaded: dict[str, Embedding] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class EmbeddingDatabase:
    """The embeddings found in one or more folders (recursively), reloaded when the files change.

    One instance per app (built by the composition root); `refresh()` re-reads the folder only if a file was
    added, removed or modified. Reading the database checks the folder at most once every `recheck_seconds`
    (encoding a job's prompts asks many times). Thread-safe.
    """

    recheck_seconds = 1.0

    def __init__(self, folders: str | Path | Iterable[str | Path]):
        if isinstance(folders, (str, Path)):
            folders = [folders]
        self.folders = [Path(f) for f in folders]
        self._lock = threading.Lock()
        self._scan: _Scan | None = None
        self._checked = float("-inf")
        self._lookups: dict[tuple, EmbeddingLookup] = {}

    # ---- files ---------------------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        found: list[Path] = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for root, dirs, files in os.walk(folder, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for file_name in sorted(files):
                    if file_name.lower().endswith(EMBEDDING_EXTENSIONS) and not file_name.startswith("."):
                        found.append(Path(root) / file_name)
        return found

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the folders if their files changed (or always, with `force`)."""
        files = self._files()
        signature = file_versions(files)
        self._checked = time.monotonic()
        with self._lock:
            if not force and self._scan is not None and self._scan.signature == signature:
                return
            previous = {e.path: e for e in self._scan.loaded.values()} if self._scan else {}
            old_signature = dict((p, (s, m)) for p, s, m in self._scan.signature) if self._scan else {}
            scan = _Scan(signature)
            for path, size, mtime in signature:
                path = Path(path)
                name = path.stem
                if name in scan.loaded:
                    # A1111 keeps the first of two files with the same name; say so instead of silently.
                    scan.errors[f"{name} ({path.name})"] = f"another embedding is already called {name!r}"
                    continue
                reused = previous.get(path)
                if reused is not None and old_signature.get(str(path)) == (size, mtime):
                    scan.loaded[name] = reused
                    continue
                try:
                    scan.loaded[name] = load_embedding(path, name=name)
                except ModelFileError as error:
                    scan.errors[name] = error.reason
                    log.warning("embedding %s not loaded: %s", path, error.reason)
            self._scan = scan
            self._lookups.clear()

    def _current(self) -> _Scan:
        if self._scan is None or time.monotonic() - self._checked >= self.recheck_seconds:
            self.refresh()
        assert self._scan is not None
        return self._scan

    @property
    def embeddings(self) -> dict[str, Embedding]:
        """Every readable embedding, by name (the file stem)."""
        return dict(self._current().loaded)

    @property
    def errors(self) -> dict[str, str]:
        """Files that could not be read: name -> reason."""
        return dict(self._current().errors)

    def get(self, name: str) -> Embedding | None:
        return self._current().loaded.get(name)

    # ---- models --------------------------------------------------------------------------------------
    def split_for(self, towers: Sequence[tuple[str, int]]) -> tuple[dict[str, Embedding], dict[str, Embedding]]:
        """(usable, skipped) for a model whose text encoders are `[(name, width), ...]`."""
        usable: dict[str, Embedding] = {}
        skipped: dict[str, Embedding] = {}
        for name, embedding in sorted(self._current().loaded.items()):
            (usable if embedding.usable_with(towers) else skipped)[name] = embedding
        return usable, skipped

    def lookup(self, towers: Sequence[tuple[str, int]], tokenize) -> EmbeddingLookup:
        """The name lookup for a model's encoders; `tokenize(list[str]) -> list[list[int]]` (no BOS/EOS)."""
        scan = self._current()
        key = (scan.signature, tuple(towers), id(tokenize.__self__) if hasattr(tokenize, "__self__") else id(tokenize))
        with self._lock:
            found = self._lookups.get(key)
        if found is not None:
            return found
        usable, _ = self.split_for(towers)
        names = list(usable)
        by_first: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
        for name, ids in zip(names, tokenize(names) if names else []):
            if not ids:
                continue
            by_first.setdefault(int(ids[0]), []).append((tuple(int(i) for i in ids), usable[name]))
        frozen = {
            first: tuple(sorted(items, key=lambda item: len(item[0]), reverse=True)) for first, items in by_first.items()
        }
        result = EmbeddingLookup(frozen)
        with self._lock:
            self._lookups = {key: result}  # one model at a time: keep only the latest
        return result

    def a1111_listing(self, towers: Sequence[tuple[str, int]] | None) -> dict:
        """A1111's `/sdapi/v1/embeddings` body: `{"loaded": {name: item}, "skipped": {name: item}}`.

        Without a loaded model (`towers` None) every readable embedding is listed as loaded, as nothing can be
        checked yet (A1111 lists none until a model is loaded)."""
        if towers is None:
            usable, skipped = dict(sorted(self._current().loaded.items())), {}
        else:
            usable, skipped = self.split_for(towers)
        return {
            "loaded": {name: e.a1111_item() for name, e in usable.items()},
            "skipped": {name: e.a1111_item() for name, e in skipped.items()},
        }


def ti_hashes(embeddings: Iterable[Embedding]) -> str | None:
    """The infotext's `TI hashes` value ("name: 0123456789ab, ..."), None when no embedding was used.

    As A1111 (`sd_hijack_clip`), `:` and `,` are removed from names; an embedding used twice is listed once.
    """
    seen: dict[str, str] = {}
    for embedding in embeddings:
        name = embedding.name.replace(":", "").replace(",", "")
        seen.setdefault(name, embedding.shorthash)
    return ", ".join(f"{name}: {short}" for name, short in seen.items()) or None


__all__ = [
    "Embedding",
    "EmbeddingDatabase",
    "EmbeddingLookup",
    "load_embedding",
    "vectors_from_data",
    "ti_hashes",
    "EMBEDDING_EXTENSIONS",
]
