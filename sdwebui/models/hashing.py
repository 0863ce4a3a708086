"""Model file hashes, as A1111 shows them: full SHA-256 (short hash = first 10 hex) and the legacy "model hash".

Hashing a 7 GB checkpoint takes seconds, so full hashes are cached in `<cache_dir>/hashes.json`, keyed by the
resolved path and invalidated when the file's size or modification time changes (the same rule as A1111's
`cache.json`). The cache is an object the caller owns (no global state); several instances on the same
directory are safe: each write re-reads the file, merges and replaces it atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_FILE_NAME = "hashes.json"
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Full SHA-256 of a file, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def addnet_hash_file(path: str | Path) -> str:
    """kohya-ss's "addnet" hash of a `.safetensors` file: SHA-256 of everything after the header (the tensor
    data), so editing the metadata keeps the hash. A1111 writes its first 12 hex digits as `Lora hashes`
    (`modules/hashes.py` `addnet_hash_safetensors`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        header_length = int.from_bytes(file.read(8), "little")
        file.seek(8 + header_length)
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def short_hash(sha256: str) -> str:
    """A1111's short hash (infotext `Model hash`, checkpoint titles `name [abcdef0123]`)."""
    return sha256[:10]


def legacy_model_hash(path: str | Path) -> str:
    """A1111's old `model_hash`: SHA-256 of 64 KiB at offset 1 MiB, first 8 hex (found in old infotexts).

    Returns "NOFILE" for a missing file, as A1111 does."""
    try:
        with open(path, "rb") as file:
            file.seek(0x100000)
            return hashlib.sha256(file.read(0x10000)).hexdigest()[:8]
    except FileNotFoundError:
        return "NOFILE"


def _weight_files(folder: Path) -> list[Path]:
    suffixes = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


class HashCache:
    """SHA-256 per file, computed once per (path, size, mtime)."""

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)
        self.file = self.cache_dir / CACHE_FILE_NAME
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_entry(self, key: str, entry: dict) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        data = self._read()
        data[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", suffix=".json", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
            os.replace(tmp, self.file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def cached(self, path: str | Path) -> str | None:
        """The full SHA-256 of a file from the cache when it is still valid (same size and mtime); None when the
        file would have to be read (or is a folder)."""
        path = Path(path).resolve()
        try:
            if path.is_dir():
                return None
            stat = path.stat()
        except OSError:
            return None
        return self._lookup(str(path), stat)

    def _lookup(self, key: str, stat: os.stat_result) -> str | None:
        """The cached hash under `key` when it was taken of this version of the file (same size and mtime)."""
        with self._lock:
            cached = self._read().get(key)
        if (
            isinstance(cached, dict)
            and cached.get("size") == stat.st_size
            and cached.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(cached.get("sha256"), str)
        ):
            return cached["sha256"]
        return None

    def sha256(self, path: str | Path, *, addnet: bool = False) -> str:
        """Full SHA-256 of a file; of a diffusers folder, the SHA-256 of its weight files' hashes (sorted by path).

        `addnet=True`: the kohya "addnet" hash of a `.safetensors` file instead (`addnet_hash_file`)."""
        path = Path(path).resolve()
        if path.is_dir() and not addnet:
            lines = [f"{self.sha256(p)}  {p.relative_to(path).as_posix()}\n" for p in _weight_files(path)]
            return hashlib.sha256("".join(lines).encode()).hexdigest()
        stat = path.stat()
        key = ("addnet:" if addnet else "") + str(path)
        cached = self._lookup(key, stat)
        if cached is not None:
            return cached
        digest = addnet_hash_file(path) if addnet else sha256_file(path)
        with self._lock:
            try:
                self._write_entry(key, {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest})
            except OSError as error:  # a full disk, a read-only data folder: the hash is right, only not kept
                log.warning("cannot keep the hash of %s in %s (%s); it will be computed again next time",
                            path.name, self.file, error.strerror or error)
        return digest


def sha256_of(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """SHA-256 of a model file (or diffusers folder), cached in `cache_dir` when one is given."""
    if cache_dir is None:
        path = Path(path)
        if path.is_dir():
            lines = [f"{sha256_file(p)}  {p.relative_to(path).as_posix()}\n" for p in _weight_files(path)]
            return hashlib.sha256("".join(lines).encode()).hexdigest()
        return sha256_file(path)
    return HashCache(cache_dir).sha256(path)


class PendingHash:
    """A file's SHA-256 computed in a background thread: `result()` waits for it (and raises what hashing
    raised). hashlib releases the GIL on large blocks, so the hash really runs beside the caller."""

    def __init__(self, compute: Callable[[], str], name: str = "file"):
        self._compute = compute
        self._done = threading.Event()
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(compute,), name=f"sdwebui-hash-{name}", daemon=True)
        self._thread.start()

    def _run(self, compute: Callable[[], str]) -> None:
        try:
            self._value = compute()
        except BaseException as error:  # noqa: BLE001 - handed to whoever asks for the result
            self._error = error
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> str:
        """The hash; or what hashing raised, once, and the file is hashed again (in the background) for the next
        call, so a passing fault (a file being replaced, an I/O error) does not fail every later job that shows
        the hash."""
        if not self._done.wait(timeout):
            raise TimeoutError("the file is still being hashed")
        if self._error is not None:
            error, self._error = self._error, None
            self._done.clear()
            self._thread = threading.Thread(target=self._run, args=(self._compute,), daemon=True)
            self._thread.start()
            raise error
        assert self._value is not None
        return self._value


def sha256_later(path: str | Path, cache_dir: str | Path | None = None) -> "str | PendingHash":
    """SHA-256 of a model file (or diffusers folder) without waiting for it: the cached hash when the cache has it
    for this version of the file, else a `PendingHash` hashing it (and filling the cache) in the background.

    Loading a checkpoint uses this, so the first load of a 2-7 GB file does not read it a second time before the
    model is ready (the hash is read from the page cache the load just filled, while the first job runs); the
    infotext's `Model hash` waits for it only if it is not done by then."""
    if cache_dir is not None:
        cached = HashCache(cache_dir).cached(path)
        if cached is not None:
            return cached
    return PendingHash(lambda: sha256_of(path, cache_dir), Path(path).name)


__all__ = ["HashCache", "PendingHash", "sha256_later", "sha256_of", "sha256_file", "addnet_hash_file", "short_hash", "legacy_model_hash", "CACHE_FILE_NAME"]
