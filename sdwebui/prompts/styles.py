"""Prompt styles: A1111's `styles.csv`, applied by name.

Reference: A1111 `modules/styles.py` (v1.10): `StyleDatabase`, `merge_prompts`, `apply_styles_to_prompt`.

The file is CSV with a header row; the columns are `name`, `prompt` (older files: `text`) and
`negative_prompt`; extra columns are ignored. A style's text is merged into the prompt:

- with a `{prompt}` placeholder, the placeholder is replaced by the prompt (`"{prompt}, masterpiece"`);
- without one, the style text is appended with ", " (empty parts are left out, both sides stripped).

Several styles apply one after the other, in the order given; the negative prompt gets the styles'
`negative_prompt` the same way. A1111 reads every file given with `--styles-file` (repeatable, wildcards
allowed); a name in a later file replaces the same name in an earlier one, and a missing file is simply empty.

One deviation: A1111 silently skips a style name it does not know. Here that is an `UnknownStyleError`,
because a style that was asked for and not applied gives a different image without saying so.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdwebui.filestat import file_versions

__all__ = [
    "PromptStyle",
    "StyleDatabase",
    "StyleFileError",
    "UnknownStyleError",
    "apply_styles_to_prompt",
    "merge_prompts",
]

PLACEHOLDER = "{prompt}"


class UnknownStyleError(ValueError):
    """A style name that no styles file defines."""

    field = "styles"

    def __init__(self, names: Sequence[str], known: Iterable[str]):
        known = sorted(known)
        listed = ", ".join(repr(n) for n in names)
        hint = f"known styles: {', '.join(known)}" if known else "no styles are defined"
        super().__init__(f"unknown style{'s' if len(names) > 1 else ''} {listed} ({hint})")
        self.names = tuple(names)


class StyleFileError(ValueError):
    """A styles file that cannot be read as A1111's CSV."""


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    path: Path | None = None
    """The file it came from."""


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111 `merge_prompts`: fill `{prompt}` in the style text, or append the style text with ", "."""
    if PLACEHOLDER in style_prompt:
        return style_prompt.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_texts: Iterable[str]) -> str:
    for text in style_texts:
        prompt = merge_prompts(text, prompt)
    return prompt


class StyleDatabase:
    """The styles of one or more `styles.csv` files, read once when built (call `reload` to re-read)."""

    def __init__(self, files: Sequence[str | Path] = ()):
        self.patterns = tuple(str(f) for f in files)
        self.styles: dict[str, PromptStyle] = {}
        self.reload()

    _signature: tuple = ()

    @classmethod
    def from_styles(cls, styles: Iterable[PromptStyle]) -> StyleDatabase:
        db = cls(())
        db.styles = {style.name: style for style in styles}
        return db

    def files(self) -> list[Path]:
        """The files the patterns name that exist (A1111 expands wildcards; a plain missing file is skipped)."""
        out: list[Path] = []
        for pattern in self.patterns:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            out.extend(Path(m) for m in matches if Path(m).is_file())
        return out

    def reload(self) -> None:
        files = self.files()
        styles: dict[str, PromptStyle] = {}
        for path in files:
            for style in read_styles_csv(path):
                styles[style.name] = style
        self.styles = styles
        self._signature = file_versions(files)

    def reload_if_changed(self) -> StyleDatabase:
        """Re-read the files when one was added, removed or modified since the last read (users edit
        `styles.csv` while the app runs); returns self."""
        if file_versions(self.files()) != self._signature:
            self.reload()
        return self

    def names(self) -> list[str]:
        return list(self.styles)

    def get(self, names: Sequence[str]) -> list[PromptStyle]:
        """The styles with these names, in order; `UnknownStyleError` names every one that is missing."""
        missing = [n for n in names if n not in self.styles]
        if missing:
            raise UnknownStyleError(missing, self.styles)
        return [self.styles[n] for n in names]

    def apply_to_prompt(self, prompt: str, names: Sequence[str]) -> str:
        return apply_styles_to_prompt(prompt, [s.prompt for s in self.get(names)])

    def apply_to_negative_prompt(self, negative_prompt: str, names: Sequence[str]) -> str:
        return apply_styles_to_prompt(negative_prompt, [s.negative_prompt for s in self.get(names)])

    def apply(self, prompt: str, negative_prompt: str, names: Sequence[str]) -> tuple[str, str]:
        """(prompt, negative prompt) with the named styles applied; the texts are unchanged for no names."""
        styles = self.get(names)
        return (
            apply_styles_to_prompt(prompt, [s.prompt for s in styles]),
            apply_styles_to_prompt(negative_prompt, [s.negative_prompt for s in styles]),
        )


def read_styles_csv(path: str | Path) -> list[PromptStyle]:
    """Read one A1111 styles file (UTF-8, with or without a BOM)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file, skipinitialspace=True)
            if reader.fieldnames is None:
                return []
            if "name" not in reader.fieldnames:
                raise StyleFileError(f"{path}: no 'name' column (A1111's header is name,prompt,negative_prompt)")
            styles = []
            for row in reader:
                name = row.get("name")
                if not name:
                    continue
                prompt = row.get("prompt") if "prompt" in row else row.get("text")
                styles.append(PromptStyle(name, prompt or "", row.get("negative_prompt") or "", path))
            return styles
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise StyleFileError(f"{path}: cannot read styles: {error}") from None
