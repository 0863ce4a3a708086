"""The CLIP BPE tokenizer, built from files shipped inside the package (never from a hub).

`sdwebui/models/tokenizer/` holds gzipped copies of `vocab.json` and `merges.txt` as published in
`openai/clip-vit-large-patch14`; `scripts/build_tokenizer_files.py` regenerates them from OpenAI CLIP's
`bpe_simple_vocab_16e6.txt.gz`. Every CLIP text encoder that Stable Diffusion uses (OpenAI ViT-L/14 for SD1 and
SDXL, OpenCLIP ViT-H/14 for SD2, OpenCLIP ViT-bigG/14 for SDXL) shares this vocabulary; they differ only in the
padding token:

- OpenAI CLIP ("clip_l") pads with `<|endoftext|>` (49407), as `openai/clip-vit-large-patch14` and A1111's
  `FrozenCLIPEmbedderWithCustomWords` (`id_pad = id_end`) do.
- OpenCLIP ("open_clip", also accepted as "clip_h"/"clip_g") pads with id 0 (`"!"`), as open_clip's `tokenize()`
  (zero-filled tensor), A1111's `FrozenOpenCLIPEmbedderWithCustomWords` (`id_pad = 0`) and diffusers'
  SDXL `tokenizer_2` (`pad_token="!"`) do.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Literal

from transformers import CLIPTokenizer

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"
"""Directory of the shipped tokenizer data files."""

MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
OPEN_CLIP_PAD_TOKEN = "!"

TokenizerKind = Literal["clip_l", "open_clip", "clip_h", "clip_g"]
_PAD_BY_KIND = {"clip_l": EOS_TOKEN, "open_clip": OPEN_CLIP_PAD_TOKEN, "clip_h": OPEN_CLIP_PAD_TOKEN, "clip_g": OPEN_CLIP_PAD_TOKEN}


def read_vocab_and_merges(directory: Path = TOKENIZER_DIR) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Read `vocab.json(.gz)` and `merges.txt(.gz)` from `directory` (the gzipped form is preferred)."""
    vocab = json.loads(_read_text(directory, "vocab.json"))
    lines = _read_text(directory, "merges.txt").split("\n")
    merges: list[tuple[str, str]] = []
    for line in lines:
        if not line or line.startswith("#version"):
            continue
        a, b = line.split(" ")
        merges.append((a, b))
    return vocab, merges


def load_clip_tokenizer(kind: TokenizerKind = "clip_l", *, directory: Path = TOKENIZER_DIR) -> CLIPTokenizer:
    """A transformers `CLIPTokenizer` (the Rust-backed fast tokenizer in transformers 5; `CLIPTokenizerFast`
    is the same class) built from the shipped files only.

    `kind` selects the padding token (see the module docstring); ids are otherwise identical.
    """
    try:
        pad = _PAD_BY_KIND[kind]
    except KeyError:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(_PAD_BY_KIND)}") from None
    vocab, merges = read_vocab_and_merges(directory)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad,
        model_max_length=MODEL_MAX_LENGTH,
    )


def _read_text(directory: Path, name: str) -> str:
    gz = directory / f"{name}.gz"
    if gz.is_file():
        return gzip.decompress(gz.read_bytes()).decode("utf-8")
    plain = directory / name
    if plain.is_file():
        return plain.read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"CLIP tokenizer file {name}(.gz) missing from {directory}; "
        "regenerate it with scripts/build_tokenizer_files.py"
    )
