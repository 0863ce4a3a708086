"""Telling whether files changed since they were last read, without reading them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def file_versions(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, modification time in ns) of each file that exists: equal tuples mean nothing was added,
    removed or rewritten. Files that vanished are left out."""
    versions = []
    for path in paths:
        try:
            stat = Path(path).stat()
        except OSError:
            continue
        versions.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(versions)


__all__ = ["file_versions"]
