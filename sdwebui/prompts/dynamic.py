"""Dynamic prompts: the template language of the sd-dynamic-prompts extension (adieyal/sd-dynamic-prompts, its
`docs/SYNTAX.md`), resolved by seed or expanded into every combination.

    {summer|autumn|winter}          one option
    {0.5::summer|2::winter}         weighted options (a missing weight is 1)
    {2$$a|b|c}  {1-2$$a|b|c}        two options / one or two, without repeats, joined by "," (the library's default)
    {-2$$...}  {1-$$...}            an open bound is the least / the most possible
    {2$$ and $$a|b|c}               a custom separator
    {2$$__flowers__}                two distinct lines of a wildcard file
    __season__  __people/europe__   a line of `wildcards/season.txt` (subfolders with "/"; `*` globs over names;
                                    or a list in a YAML / JSON file there)

A wildcard file has one value per line; blank lines and lines starting with `#` are left out, the values are
deduplicated and sorted (the extension's `WildcardManager` defaults). A value may itself hold variants and
wildcards (nested wildcards, to `MAX_DEPTH`). `{~...}` and `{@...}` (sampler prefixes) are accepted and resolved as
the job's mode says.

Seeds: `resolve(template, seed)` draws every choice from `random.Random(seed)`, so the same seed always gives the
same prompt and the images of a batch (seed, seed + 1, ...) differ. The draws follow our own walk of the template,
not the library's generator chain, so a seed picks the same *kind* of prompt as the extension, not always the same
words (reproducing the library's lazy generators draw for draw would tie us to its internals).

`combinations(template, limit)` lists every prompt the template can make, in the library's order (the leftmost
choice varies slowest), up to `limit`.

Errors (`DynamicPromptError`): a wildcard with no file, an unbalanced `{`, a wildcard that nests itself too deep.
Jinja2 templates and variables (`${x=...}`) are not supported: their text is left as written. YAML and JSON
wildcard files are (see `WildcardLibrary`).
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_DEPTH = 20
"""How deep wildcards may nest (a file that names itself fails instead of recursing forever)."""

WILDCARD = re.compile(r"__(?!_)([\w\-./*]+?)__")
"""`__name__`: word characters, '-', '.', '/' (subfolders) and '*' (globs), as the extension's wildcard names."""
_BOUNDS = re.compile(r"\s*([~@])?\s*(?:(\d*)\s*(?:(-)\s*(\d*))?\s*\$\$)?", re.S)
_WEIGHT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*::", re.S)


class DynamicPromptError(ValueError):
    """A template that cannot be resolved; `wildcard` is the missing wildcard's name when that is why."""

    def __init__(self, message: str, wildcard: str | None = None):
        super().__init__(message)
        self.wildcard = wildcard


# ---- wildcard files -----------------------------------------------------------------------------------------


class WildcardLibrary:
    """The wildcard files under one folder (`<data-dir>/wildcards`, `--wildcards-dir`), read when used and read
    again when a file changes (size or modification time), so edits need no restart.

    `.txt` files are one wildcard each (`dir/name.txt` -> `__dir/name__`). `.yaml` and `.json` files hold many,
    as the extension reads them: each key path to a list is a wildcard (`clothing:` -> `__clothing__`,
    `artists: {dutch: [...]}` -> `__artists/dutch__`), below the file's folder but not named after the file; a
    list item is a text (a weight prefix `2::` is dropped: choices here are unweighted) or `{text: ...}`."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder is not None else None
        self._cache: dict[Path, tuple[tuple[int, int], tuple[str, ...]]] = {}
        self._structured_cache: tuple[tuple, dict[str, tuple[str, ...]]] = ((), {})

    def _files(self, suffixes: tuple[str, ...]) -> list[Path]:
        if self.folder is None or not self.folder.is_dir():
            return []
        found = []
        for root, dirs, files in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(Path(root, name) for name in sorted(files)
                         if name.lower().endswith(suffixes) and not name.startswith("."))
        return found

    def names(self) -> list[str]:
        """Every wildcard's name ("season", "people/europe"), sorted."""
        names = {path.relative_to(self.folder).with_suffix("").as_posix() for path in self._files((".txt",))}
        names.update(self._structured())
        return sorted(names, key=str.casefold)

    def _structured(self) -> dict[str, tuple[str, ...]]:
        """The wildcards of the YAML and JSON files, by name (read again when one changes)."""
        files = self._files((".yaml", ".json"))
        stamp = tuple((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in files)
        if stamp == self._structured_cache[0]:
            return self._structured_cache[1]
        found: dict[str, set[str]] = {}
        for path in files:
            parent = path.parent.relative_to(self.folder).as_posix()
            prefix = "" if parent == "." else parent + "/"
            try:
                text = path.read_text(encoding="utf-8", errors="ignore")
                if path.suffix.lower() == ".json":
                    data = json.loads(text)
                else:
                    import yaml  # only when there is a YAML file

                    data = yaml.safe_load(text)
            except Exception:  # noqa: BLE001 - a file that does not parse offers no wildcards (the extension logs it)
                continue
            for name, values in _structured_items(data, ()):
                found.setdefault(prefix + name, set()).update(values)
        result = {name: tuple(sorted(values)) for name, values in found.items() if values}
        self._structured_cache = (stamp, result)
        return result

    def path_of(self, name: str) -> Path | None:
        """The file of wildcard `name` (no glob), inside the folder; None when there is none."""
        clean = clean_name(name)
        if self.folder is None or not clean or "*" in clean:
            return None
        path = (self.folder / f"{clean}.txt").resolve()
        try:
            path.relative_to(self.folder.resolve())
        except ValueError:
            return None
        return path if path.is_file() else None

    def values(self, name: str) -> tuple[str, ...] | None:
        """The values of wildcard `name` (a glob: of every file it matches); None when no file matches."""
        clean = clean_name(name)
        if not clean:
            return None
        if "*" in clean:
            matched = [each for each in self.names() if fnmatch.fnmatchcase(each, clean)]
            if not matched:
                return None
            values = {value for each in matched for value in self.values(each) or ()}
            return tuple(sorted(values))
        path = self.path_of(clean)
        if path is not None:
            return self._read(path)
        return self._structured().get(clean)

    def _read(self, path: Path | None) -> tuple[str, ...]:
        if path is None:
            return ()
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        text = path.read_text(encoding="utf-8", errors="ignore")
        lines = {line.strip() for line in text.splitlines()}
        values = tuple(sorted(line for line in lines if line and not line.startswith("#")))
        self._cache[path] = (stamp, values)
        return values


def _structured_items(data, prefix: tuple[str, ...]):
    """(name, values) for each list (or text) below the keys of a YAML / JSON wildcard file."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if not isinstance(key, str) or not value:
            continue
        path = (*prefix, key)
        if isinstance(value, dict):
            yield from _structured_items(value, path)
        elif isinstance(value, str):
            yield "/".join(path), [value.strip()]
        elif isinstance(value, list):
            items = []
            for item in value:
                if isinstance(item, dict):
                    item = item.get("text") or item.get("content") or ""
                if not isinstance(item, str) or not item.strip():
                    continue
                weight, separator, content = item.rpartition("::")
                if separator and item[:1].isdigit():
                    try:
                        float(weight)
                        item = content
                    except ValueError:
                        pass
                items.append(item.strip())
            yield "/".join(path), items


def clean_name(name: str) -> str:
    """The extension's `clean_wildcard`: "/" for "\\", no leading or trailing "/", never "..": "" when unusable."""
    name = re.sub(r"[\\/]+", "/", name.strip()).strip("/")
    return "" if ".." in name or name.startswith("~") else name


# ---- the template's tree --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class Wildcard:
    name: str


@dataclass(frozen=True)
class Variant:
    options: tuple[tuple[float, tuple], ...]
    """(weight, sequence of nodes) for each option."""
    low: int
    high: int | None
    """None: as many as there are options."""
    separator: str


def parse(template: str) -> tuple:
    """The template as a sequence of `Literal`, `Wildcard` and `Variant` nodes."""
    nodes, end = _parse_sequence(template, 0, top=True)
    return tuple(nodes)


def has_syntax(template: str) -> bool:
    """Whether `template` has anything to resolve (a quick test before parsing)."""
    return "{" in template or WILDCARD.search(template) is not None


def _parse_sequence(text: str, start: int, top: bool) -> tuple[list, int]:
    """Nodes from `start` until the end (top level) or an unmatched `|` / `}` inside a variant."""
    nodes: list = []
    literal: list[str] = []
    index = start

    def flush() -> None:
        if literal:
            _add_text(nodes, "".join(literal))
            literal.clear()

    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in "{}|":
            literal.append(text[index:index + 2])  # kept as typed: an escaped brace is text
            index += 2
            continue
        if char == "{":
            flush()
            variant, index = _parse_variant(text, index + 1)
            nodes.append(variant)
            continue
        if char in "|}" and not top:
            break
        if char == "}" and top:
            raise DynamicPromptError(f"unbalanced '}}' at character {index + 1} of the prompt")
        literal.append(char)
        index += 1
    flush()
    return nodes, index


def _add_text(nodes: list, text: str) -> None:
    """Literal text with its `__wildcards__` split out."""
    at = 0
    for match in WILDCARD.finditer(text):
        if match.start() > at:
            nodes.append(Literal(text[at:match.start()]))
        nodes.append(Wildcard(match.group(1)))
        at = match.end()
    if at < len(text):
        nodes.append(Literal(text[at:]))


def _parse_variant(text: str, start: int) -> tuple[Variant, int]:
    """A variant whose `{` was just before `start`; returns it and the index after its `}`."""
    low, high, separator = 1, 1, ","
    header = _BOUNDS.match(text, start)
    index = start
    if header and header.group(0).count("$$") == 1 and header.end() > start:
        _, first, dash, second = header.groups()
        if dash:
            low = int(first) if first else 1
            high = int(second) if second else None
        elif first:
            low = high = int(first)
        index = header.end()
        closing = text.find("$$", index)
        stop = min((at for at in (text.find("|", index), text.find("}", index), text.find("{", index)) if at >= 0),
                   default=len(text))
        if 0 <= closing < stop:  # `{2$$ and $$a|b}`: a custom separator
            separator = text[index:closing]
            index = closing + 2
    elif header and header.group(1):
        index = header.start(1) + 1  # `{~a|b}`, `{@a|b}`: a sampler prefix without bounds
    options: list[tuple[float, tuple]] = []
    while True:
        weight = 1.0
        weighted = _WEIGHT.match(text, index)
        if weighted:
            weight = float(weighted.group(1))
            index = weighted.end()
        nodes, index = _parse_sequence(text, index, top=False)
        options.append((weight, tuple(nodes)))
        if index >= len(text):
            raise DynamicPromptError(f"unbalanced '{{' at character {start} of the prompt")
        if text[index] == "}":
            return Variant(tuple(options), low, high, separator), index + 1
        index += 1  # "|"


# ---- resolving ------------------------------------------------------------------------------------------------


class Resolver:
    """Resolves templates against a wildcard library (random by seed, or every combination)."""

    def __init__(self, library: WildcardLibrary):
        self.library = library

    def check(self, template: str) -> None:
        """Raise DynamicPromptError when `template` cannot be resolved: bad braces, a wildcard (here or in a file
        it reaches) with no file, or a wildcard that reaches itself."""
        self._check(parse(template), (), set())

    def _check(self, nodes: tuple, stack: tuple[str, ...], done: set[str]) -> None:
        for node in nodes:
            if isinstance(node, Wildcard):
                values = self._values(node.name)
                if node.name in stack:
                    raise DynamicPromptError(f"wildcard __{node.name}__ names itself "
                                             f"({' -> '.join(f'__{name}__' for name in (*stack, node.name))})")
                if node.name in done:
                    continue
                for value in values:
                    if has_syntax(value):
                        self._check(parse(value), (*stack, node.name), done)
                done.add(node.name)
            elif isinstance(node, Variant):
                for _, option in node.options:
                    self._check(option, stack, done)

    def _values(self, name: str) -> tuple[str, ...]:
        values = self.library.values(name)
        if values is None:
            where = f" in {self.library.folder}" if self.library.folder is not None else ""
            raise DynamicPromptError(f"wildcard __{name}__ not found: no file {name}.txt{where}", name)
        return values

    # random --------------------------------------------------------------------------------------------------
    def resolve(self, template: str, seed: int | None) -> str:
        """`template` with every choice drawn from `random.Random(seed)` (None: unseeded)."""
        if not has_syntax(template):
            return template
        return self._sample(parse(template), random.Random(seed), 0)

    def _sample(self, nodes: tuple, rng: random.Random, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise DynamicPromptError(f"wildcards nest more than {MAX_DEPTH} deep")
        parts = []
        for node in nodes:
            if isinstance(node, Literal):
                parts.append(node.text)
            elif isinstance(node, Wildcard):
                values = self._values(node.name)
                parts.append(self._sample(parse(rng.choice(values)), rng, depth + 1) if values else "")
            else:
                parts.append(self._sample_variant(node, rng, depth))
        return "".join(parts)

    def _sample_variant(self, variant: Variant, rng: random.Random, depth: int) -> str:
        options, nested = self._options(variant)
        if not options:
            return ""
        high = len(options) if variant.high is None else min(variant.high, len(options))
        low = min(variant.low, high)
        count = rng.randint(low, high)
        pool = list(options)
        chosen = []
        for _ in range(count):
            weights = [weight for weight, _ in pool]
            if sum(weights) <= 0:
                break
            pick = rng.choices(range(len(pool)), weights=weights)[0]
            chosen.append(pool.pop(pick)[1])
        return variant.separator.join(self._sample(option, rng, depth + nested) for option in chosen)

    def _options(self, variant: Variant) -> tuple[list[tuple[float, tuple]], int]:
        """The variant's options; `{2$$__name__}` offers the wildcard's lines (one level deeper)."""
        if len(variant.options) == 1 and len(variant.options[0][1]) == 1 and \
                isinstance(variant.options[0][1][0], Wildcard):
            values = self._values(variant.options[0][1][0].name)
            return [(1.0, parse(value)) for value in values], 1
        return list(variant.options), 0

    # every combination ---------------------------------------------------------------------------------------
    def combinations(self, template: str, limit: int | None = None) -> list[str]:
        """Every prompt `template` makes, in the extension's order, at most `limit` (None: all)."""
        return list(itertools.islice(self._expand(parse(template), 0), limit))

    def _expand(self, nodes: tuple, depth: int) -> Iterator[str]:
        if depth > MAX_DEPTH:
            raise DynamicPromptError(f"wildcards nest more than {MAX_DEPTH} deep")
        if not nodes:
            yield ""
            return
        first, rest = nodes[0], nodes[1:]
        for head in self._expand_node(first, depth):
            for tail in self._expand(rest, depth):
                yield head + tail

    def _expand_node(self, node, depth: int) -> Iterator[str]:
        if isinstance(node, Literal):
            yield node.text
        elif isinstance(node, Wildcard):
            for value in self._values(node.name):
                yield from self._expand(parse(value), depth + 1)
        else:
            options, nested = self._options(node)
            high = len(options) if node.high is None else min(node.high, len(options))
            low = min(node.low, high)
            seen: set[str] = set()
            for count in range(low, high + 1):
                for combo in itertools.combinations([option for _, option in options], count):
                    for parts in itertools.product(*(list(self._expand(option, depth + nested))
                                                     for option in combo)):
                        if len(set(parts)) != len(parts):
                            continue  # the library drops a combination that repeats a value
                        text = node.separator.join(parts)
                        if text not in seen:
                            seen.add(text)
                            yield text


__all__ = ["WildcardLibrary", "Resolver", "DynamicPromptError", "parse", "has_syntax", "clean_name", "Literal",
           "Wildcard", "Variant", "MAX_DEPTH", "WILDCARD"]
