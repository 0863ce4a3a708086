"""Interrogation's tag formatting: A1111's DeepBooru rules (`modules/deepbooru.py` `tag_multi`, v1.10) applied to a
tagger's probabilities.

Tags at or above the threshold (setting `interrogate_deepbooru_score_threshold`, 0.5), `rating:*` and the filtered
ones (`deepbooru_filter_tags`, comma-separated) left out, sorted alphabetically (`deepbooru_sort_alpha`, on) or by
probability, underscores as spaces (`deepbooru_use_spaces`, on), `\\`, `(` and `)` escaped with a backslash
(`deepbooru_escape`, on), and `(tag:0.873)` with `interrogate_return_ranks`; joined with ", ".

A1111's "Interrogate CLIP" and "Interrogate DeepBooru" (torch models) are in `pipelines.clip_interrogator`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

RE_SPECIAL = re.compile(r"([\\()])")


@dataclass(frozen=True)
class TagOptions:
    threshold: float = 0.5
    sort_alpha: bool = True
    use_spaces: bool = True
    escape: bool = True
    filter_tags: str = ""
    include_ranks: bool = False

    @classmethod
    def from_settings(cls, options: Mapping[str, object]) -> "TagOptions":
        """From A1111's option names."""
        return cls(
            threshold=float(options.get("interrogate_deepbooru_score_threshold", 0.5)),
            sort_alpha=bool(options.get("deepbooru_sort_alpha", True)),
            use_spaces=bool(options.get("deepbooru_use_spaces", True)),
            escape=bool(options.get("deepbooru_escape", True)),
            filter_tags=str(options.get("deepbooru_filter_tags", "") or ""),
            include_ranks=bool(options.get("interrogate_return_ranks", False)),
        )


def format_tags(probabilities: Mapping[str, float], options: TagOptions = TagOptions()) -> str:
    """A1111's `DeepDanbooru.tag_multi` output for `{tag: probability}`."""
    filtered = {tag.strip().replace(" ", "_") for tag in options.filter_tags.split(",")}
    kept = {tag: p for tag, p in probabilities.items() if p >= options.threshold and not tag.startswith("rating:")}
    if options.sort_alpha:
        order = sorted(kept)
    else:
        order = [tag for tag, _ in sorted(kept.items(), key=lambda item: -item[1])]
    out = []
    for tag in order:
        if tag in filtered:
            continue
        text = tag.replace("_", " ") if options.use_spaces else tag
        if options.escape:
            text = RE_SPECIAL.sub(r"\\\1", text)
        if options.include_ranks:
            text = f"({text}:{kept[tag]:.3f})"
        out.append(text)
    return ", ".join(out)


__all__ = ["TagOptions", "format_tags"]
