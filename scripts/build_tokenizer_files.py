#!/usr/bin/env python3
"""Regenerate the CLIP tokenizer files shipped in `sdwebui/models/tokenizer/`.

Input: OpenAI CLIP's published BPE merges, `bpe_simple_vocab_16e6.txt.gz` (the same file ships in the
`clip` and `open_clip` packages). Output: `vocab.json.gz` and `merges.txt.gz`, gzipped copies of the
`vocab.json` / `merges.txt` pair found in `openai/clip-vit-large-patch14` on the Hugging Face hub.

The construction is OpenAI's `SimpleTokenizer.__init__` (clip/simple_tokenizer.py):

    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab  = bytes_to_unicode() chars, then the same with '</w>', then ''.join(merge) for each merge,
             then '<|startoftext|>', '<|endoftext|>'          -> 49408 entries

The gzip streams are written with mtime 0 and no file name, so re-running the script gives the same bytes.

Usage:  python scripts/build_tokenizer_files.py [--bpe PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "sdwebui" / "models" / "tokenizer"
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2
MERGES_HEADER = "#version: 0.2"


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI/GPT-2's reversible byte -> printable unicode character table (256 entries, in vocab order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build(bpe_text: str) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merges) exactly as OpenAI's SimpleTokenizer builds them."""
    lines = bpe_text.split("\n")
    merges = lines[1 : N_MERGES + 1]
    if len(merges) != N_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError("unexpected BPE file: expected at least 48894 'a b' merge lines after the header")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != 49408:
        raise ValueError(f"vocab has {len(vocab)} distinct entries, expected 49408")
    return vocab, merges


def find_bpe_file() -> Path:
    # find_spec locates the package without importing it (open_clip's import needs torch and ftfy).
    for pkg in ("open_clip", "clip"):
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                cand = Path(loc) / BPE_NAME
                if cand.is_file():
                    return cand
    raise FileNotFoundError(f"{BPE_NAME} not found; install open_clip_torch or pass --bpe PATH")


def _gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def render(vocab: dict[str, int], merges: list[str]) -> dict[str, bytes]:
    """The shipped files' contents, by file name."""
    vocab_json = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    merges_txt = ("\n".join([MERGES_HEADER, *merges]) + "\n").encode("utf-8")
    return {"vocab.json.gz": _gzip_bytes(vocab_json), "merges.txt.gz": _gzip_bytes(merges_txt)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bpe", type=Path, default=None, help=f"path to {BPE_NAME} (default: from open_clip)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    bpe = args.bpe or find_bpe_file()
    vocab, merges = build(gzip.decompress(bpe.read_bytes()).decode("utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in render(vocab, merges).items():
        (args.out / name).write_bytes(data)
        print(f"wrote {args.out / name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
