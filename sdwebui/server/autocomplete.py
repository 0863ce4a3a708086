"""Prompt autocompletion: LoRA, embedding, hypernetwork and wildcard names, and tags from CSV files in the format
of the tag-autocomplete extension (DominikDoom/a1111-sd-webui-tagcomplete: `name,type,count,aliases` per line, in
`<data-dir>/tags/*.csv`, e.g. `1girl,0,4114588,"1girls,sole_female"`).

`GET /api/v1/autocomplete?text=WORD` answers the word being typed (the page's script sends the text before the
caret back to the last separator):

    <lora:ink      LoRA names and aliases       -> "<lora:inkwash:1>"
    <hypernet:an   hypernetworks                -> "<hypernet:anime:1>"
    __sea          wildcards (also `__dir/na`)  -> "__season__"
    anything else  embeddings, then tags (by count, aliases too) -> "goodhands", "long hair" (underscores as
                   spaces, brackets escaped: the tag-autocomplete extension's defaults)
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Query

from sdwebui.prompts.dynamic import WildcardLibrary
from sdwebui.server import extra_networks

if TYPE_CHECKING:
    from sdwebui.server.services import Services

MAX_TAG_ROWS = 500_000
TAG_TYPES = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta"}


@dataclass(frozen=True)
class Tag:
    name: str
    kind: int
    count: int
    aliases: tuple[str, ...]


class TagFiles:
    """The tag CSVs of a folder, read again when one changes."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._stamp: tuple | None = None
        self._tags: list[Tag] = []

    def tags(self) -> list[Tag]:
        files = sorted(self.folder.glob("*.csv")) if self.folder.is_dir() else []
        stamp = tuple((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in files)
        if stamp != self._stamp:
            self._tags = sorted((tag for path in files for tag in read_tags(path)), key=lambda tag: -tag.count)
            self._stamp = stamp
        return self._tags


def read_tags(path: Path) -> list[Tag]:
    """One tag-autocomplete CSV (a bad row is skipped: these files come from many hands)."""
    tags = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for row in csv.reader(io.StringIO(text)):
        if not row or not row[0].strip() or len(tags) >= MAX_TAG_ROWS:
            continue
        try:
            kind = int(row[1]) if len(row) > 1 and row[1].strip() else 0
            count = int(float(row[2])) if len(row) > 2 and row[2].strip() else 0
        except ValueError:
            continue
        aliases = tuple(alias.strip() for alias in row[3].split(",") if alias.strip()) if len(row) > 3 else ()
        tags.append(Tag(row[0].strip(), kind, count, aliases))
    return tags


def tag_text(name: str) -> str:
    """How a tag goes into a prompt: underscores as spaces, brackets escaped (they are emphasis otherwise)."""
    return name.replace("_", " ").replace("(", "\\(").replace(")", "\\)")


def suggestions(services: "Services", tags: TagFiles, word: str, limit: int = 20) -> list[dict]:
    lowered = word.lower()
    found: list[dict] = []

    def add(text: str, label: str, kind: str, count: int | None = None) -> bool:
        if not any(item["text"] == text for item in found):
            found.append({"text": text, "label": label, "kind": kind, "count": count})
        return len(found) >= limit

    for prefix, page, tag in (("<lora:", "lora", "lora"), ("<lyco:", "lora", "lora"),
                              ("<hypernet:", "hypernetworks", "hypernet")):
        if lowered.startswith(prefix):
            wanted = lowered[len(prefix):]
            for card in extra_networks.cards(services, page):
                for name in dict.fromkeys([card.alias or card.name, card.name]):
                    if name.lower().startswith(wanted):
                        if add(f"<{tag}:{name}:1>", name, page):
                            return found
            return found
    if lowered.startswith("__"):
        wanted = lowered[2:].rstrip("_")
        for name in WildcardLibrary(services.paths.wildcards_folder).names():
            if wanted in name.lower() and add(f"__{name}__", name, "wildcard"):
                return found
        return found
    if len(lowered) < 2:
        return found
    for name in sorted(services.embeddings.embeddings, key=str.lower):
        if name.lower().startswith(lowered) and add(name, name, "embedding"):
            return found
    normal = lowered.replace(" ", "_")
    for item in tags.tags():
        name = item.name.lower()
        alias = next((a for a in item.aliases if a.lower().startswith(normal)), None)
        if name.startswith(normal) or alias is not None:
            label = item.name if alias is None else f"{alias} → {item.name}"
            if add(tag_text(item.name), label, TAG_TYPES.get(item.kind, "tag"), item.count):
                return found
    return found


def build_router(services: "Services") -> APIRouter:
    router = APIRouter()
    tags = TagFiles(Path(os.fspath(services.paths.data_dir)) / "tags")

    @router.get("/api/v1/autocomplete", tags=["Prompts"])
    def autocomplete(text: str = Query("", max_length=200), limit: int = Query(20, ge=1, le=100)):
        """Completions of the word being typed in a prompt (see the module docstring)."""
        return suggestions(services, tags, text.strip(), limit)

    return router


__all__ = ["build_router", "suggestions", "read_tags", "tag_text", "TagFiles", "Tag"]
