"""The shipped CLIP tokenizer: exact CLIP ids, offline, both padding conventions."""

from __future__ import annotations

import gzip
import html
import importlib.util
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import regex

from sdwebui.models.tokenizer import TOKENIZER_DIR, load_clip_tokenizer, read_vocab_and_merges

REPO = Path(__file__).resolve().parent.parent
ASTRONAUT = "a photo of an astronaut riding a horse on mars"
ASTRONAUT_IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]


# OpenAI CLIP's published BPE file (MIT licence), kept beside the tests so the independent reference below
# never depends on open_clip being installed.
SHIPPED_BPE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"


def _open_clip_bpe() -> Path | None:
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    return SHIPPED_BPE if SHIPPED_BPE.is_file() else None


needs_bpe = pytest.mark.skipif(_open_clip_bpe() is None, reason="OpenAI's bpe_simple_vocab_16e6.txt.gz is missing")


class ReferenceTokenizer:
    """An independent transcription of OpenAI's clip/simple_tokenizer.py (minus ftfy, which is not installed),
    built straight from the BPE file rather than from our shipped files."""

    pat = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )

    def __init__(self, bpe_path: Path) -> None:
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(2**8):
            if b not in bs:
                bs.append(b)
                cs.append(2**8 + n)
                n += 1
        self.byte_encoder = dict(zip(bs, map(chr, cs)))
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1 : 49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))

    def bpe(self, token: str) -> list[str]:
        if token in ("<|startoftext|>", "<|endoftext|>"):  # OpenAI pre-seeds its BPE cache with these
            return [token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        return list(word)

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(text)).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        out: list[int] = []
        for token in self.pat.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            out.extend(self.encoder[t] for t in self.bpe(token))
        return out


@lru_cache(maxsize=None)
def reference() -> ReferenceTokenizer:
    return ReferenceTokenizer(_open_clip_bpe())


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer("clip_l")


@pytest.fixture(scope="module")
def tok_open():
    return load_clip_tokenizer("open_clip")


def test_astronaut_ids(tok, tok_open):
    assert tok(ASTRONAUT).input_ids == ASTRONAUT_IDS
    assert tok_open(ASTRONAUT).input_ids == ASTRONAUT_IDS


def test_vocab_shape_and_special_ids(tok):
    vocab, merges = read_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert sorted(vocab.values()) == list(range(49408))
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab[",</w>"] == 267
    assert merges[0] == ("i", "n") and vocab["in"] == 512
    assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
    assert tok.model_max_length == 77


def test_padding_ids_differ_per_kind(tok, tok_open):
    ids_l = tok("a cat", padding="max_length", max_length=77).input_ids
    ids_g = tok_open("a cat", padding="max_length", max_length=77).input_ids
    assert ids_l[:4] == ids_g[:4] == [49406, 320, 2368, 49407]
    assert set(ids_l[4:]) == {49407}  # OpenAI CLIP pads with EOS
    assert set(ids_g[4:]) == {0}  # OpenCLIP pads with "!" (id 0)
    assert tok.pad_token_id == 49407 and tok_open.pad_token_id == 0
    for alias in ("clip_h", "clip_g"):
        assert load_clip_tokenizer(alias).pad_token_id == 0


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        load_clip_tokenizer("t5")


WEIRD = [
    "",
    "   ",
    "\n\t  \n",
    "Hello, World! It's a TEST; don't panic.",
    "masterpiece, best quality, (red hair:1.2), [blue eyes], 1girl",
    "😀🤖🐱‍👤 emoji 👍🏽 and flags 🇯🇵",
    "café naïve Ærøskøbing Straße",
    "日本語のプロンプト、猫と犬",
    "Привет мир, ελληνικά, עברית, العربية",
    "numbers 1234567890 3.14159 1e-5 #hashtag @user",
    "under_score snake_case_words camelCaseWords kebab-case-words",
    "zero\u200bwidth and nbsp\u00a0space and emdash\u2014here",
    "a" * 300,
    "<|startoftext|> inside <|endoftext|> text",
]


@needs_bpe
@pytest.mark.parametrize("text", WEIRD, ids=range(len(WEIRD)))
def test_matches_openai_reference(tok, text):
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids == reference().encode(text)


@needs_bpe
def test_very_long_text_is_not_truncated(tok):
    words = "the quick brown fox jumps over the lazy dog, " * 400
    ids = tok(words, add_special_tokens=False, truncation=False, verbose=False).input_ids
    assert len(ids) == 10 * 400
    assert ids == reference().encode(words)


def test_empty_and_whitespace(tok):
    assert tok("").input_ids == [49406, 49407]
    assert tok("  \n ").input_ids == [49406, 49407]


def test_case_insensitive_and_decode(tok):
    assert tok(ASTRONAUT.upper()).input_ids == ASTRONAUT_IDS
    assert tok.decode(ASTRONAUT_IDS, skip_special_tokens=True) == ASTRONAUT


@needs_bpe
def test_build_script_regenerates_shipped_files_bit_exactly(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_tokenizer_files.py"), "--bpe", str(_open_clip_bpe()),
         "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("vocab.json.gz", "merges.txt.gz"):
        assert (tmp_path / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name


def test_loads_from_plain_files_too(tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes(gzip.decompress((TOKENIZER_DIR / f"{name}.gz").read_bytes()))
    t = load_clip_tokenizer(directory=tmp_path)
    assert t(ASTRONAUT).input_ids == ASTRONAUT_IDS
    with pytest.raises(FileNotFoundError, match="build_tokenizer_files"):
        load_clip_tokenizer(directory=tmp_path / "missing")


def test_no_hub_access(monkeypatch, tok):
    """Loading must not touch the network: make any hub download blow up, then load."""
    import huggingface_hub

    def boom(*a, **k):
        raise AssertionError("tried to download from the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_clip_tokenizer("open_clip")(ASTRONAUT).input_ids == ASTRONAUT_IDS
