"""Prompt text -> UNet conditioning, with AUTOMATIC1111's semantics.

Reference: A1111 `modules/sd_hijack_clip.py` (`FrozenCLIPEmbedderWithCustomWordsBase`), `sd_hijack_open_clip.py`,
`sd_emphasis.py`, `sd_models_xl.py`. In short:

1. A prompt arrives as weighted text spans `[(text, weight), ...]` (A1111's `parse_prompt_attention` output;
   the span `("BREAK", -1)` forces a new chunk). Each span is tokenized without BOS/EOS.
2. The tokens are cut into chunks of 75. When a chunk is full and a comma was seen within the last 20 tokens,
   the chunk ends after that comma and the rest moves on to the next chunk ("word wrap",
   `comma_padding_backtrack`). Each chunk is padded to 75 with EOS and wrapped as BOS + 75 + EOS = 77 tokens;
   encoders that pad with another id (OpenCLIP: 0) get every position after the first EOS replaced by their pad.
3. Every chunk is encoded separately; the chunk outputs are concatenated along the token axis
   ([B, 77 * k, D]). All prompts in a batch are brought to the same chunk count with empty chunks.
4. Emphasis ("Original"): the chunk's hidden states are multiplied by the per-token weights and then rescaled so
   that the mean of the whole chunk batch is what it was before (`EmphasisOriginal.after_transformers`).
5. Which layer is read:
   - SD1 / SD2: CLIP skip n -> `hidden_states[-n]` + final layer norm (n = 1 -> `last_hidden_state`). SD2's encoder
     is an OpenCLIP ViT-H converted by diffusers with 23 layers, so its last layer already is A1111's
     "penultimate + ln_final"; CLIP skip counts back from there. (A1111 v1.10 does not apply CLIP skip to SD2
     at all: `FrozenOpenCLIPEmbedderWithCustomWords.encode_with_transformers` only carries a comment about it.
     We apply it, as the setting says; an A1111 SD2 infotext with `Clip skip: 2` therefore reproduces only
     when clip skip is set back to 1.)
   - SDXL (and refiner): clip skip is ignored (A1111's default `sdxl_clip_l_skip = False`): CLIP-L and CLIP-G are
     both read at `hidden_states[-2]` without the final layer norm and concatenated on the feature axis; the
     pooled vector is CLIP-G's `text_embeds` (projection of the EOS token) of the first chunk.

Design note: the whole path works on (token ids, per-token weights), so emphasis from the prompt parser plugs in
through `encode_weighted` without changing the encoders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdwebui.models.family import ModelFamily
from sdwebui.models.tokenizer import load_clip_tokenizer

CHUNK_LENGTH = 75
"""Content tokens per chunk (A1111 `chunk_length`); + BOS + EOS = 77, CLIP's context length."""
COMMA_PADDING_BACKTRACK = 20
"""A1111 setting `comma_padding_backtrack` (default 20): how far back a comma may be to move a phrase on."""
BREAK_SPAN = ("BREAK", -1.0)
"""The span A1111's `parse_prompt_attention` emits for the BREAK keyword."""
EMPHASIS_MODES = ("Original", "No norm", "None")
MAX_EMPHASIS_RESCALE = 100.0
"""The largest rescale "Original" emphasis applies (see `apply_emphasis`)."""

WeightedText = tuple[str, float]


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on for a batch of prompts."""

    cross_attn: Tensor
    """[B, 77 * chunks, D]; D = 768 (SD1), 1024 (SD2), 2048 (SDXL), 1280 (SDXL refiner)."""
    pooled: Tensor | None = None
    """SDXL only: [B, 1280], CLIP-G's projected EOS embedding of the first chunk."""

    @property
    def batch_size(self) -> int:
        return int(self.cross_attn.shape[0])

    @property
    def num_chunks(self) -> int:
        return int(self.cross_attn.shape[1]) // (CHUNK_LENGTH + 2)


@dataclass(frozen=True)
class EmbeddingFix:
    """A textual-inversion embedding placed in a chunk (A1111's `PromptChunkFix`)."""

    offset: int
    """Position of its first vector in the 77-token chunk (BOS is position 0)."""
    embedding: "Embedding"  # noqa: F821  (sdwebui.models.embeddings)


@dataclass(frozen=True)
class PromptChunk:
    """One 77-token window in A1111's layout: BOS, 75 tokens padded with EOS, EOS."""

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]
    fixes: tuple[EmbeddingFix, ...] = ()
    """Embeddings whose vectors replace the token embeddings at their positions (their token ids are 0)."""


def split_into_chunks(
    spans: Sequence[tuple[Sequence[int], float] | None],
    *,
    bos_id: int,
    eos_id: int,
    comma_id: int,
    chunk_length: int = CHUNK_LENGTH,
    comma_backtrack: int = COMMA_PADDING_BACKTRACK,
    embeddings: "EmbeddingLookup | None" = None,  # noqa: F821  (sdwebui.models.embeddings)
) -> tuple[list[PromptChunk], int]:
    """A1111's `tokenize_line` after tokenization: token spans (None = BREAK) -> (chunks, token count).

    The token count is what A1111's counter shows: 75 for every closed chunk (padding included) plus the
    length of the last one.

    With `embeddings`, a span's tokens that spell an embedding's name (the longest match wins) become that
    embedding's vectors: as many placeholder tokens (id 0) as it has vectors, all with the span's weight. An
    embedding is never split between chunks: one that does not fit in what is left of a chunk starts the next
    (A1111). Unlike A1111, an embedding carried to the next chunk by the comma word-wrap keeps its vectors
    (A1111 leaves its fix behind in the previous chunk, so the carried placeholders encode as "!" tokens).
    """
    chunks: list[PromptChunk] = []
    cur_tokens: list[int] = []
    cur_mults: list[float] = []
    cur_fixes: list[tuple[int, object]] = []  # (offset among the content tokens, embedding)
    token_count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal cur_tokens, cur_mults, cur_fixes, token_count, last_comma
        token_count += len(cur_tokens) if is_last else chunk_length
        pad = chunk_length - len(cur_tokens)
        toks = [bos_id, *cur_tokens, *([eos_id] * pad), eos_id]
        mults = [1.0, *cur_mults, *([1.0] * pad), 1.0]
        fixes = tuple(EmbeddingFix(offset + 1, embedding) for offset, embedding in cur_fixes)
        chunks.append(PromptChunk(tuple(toks), tuple(mults), fixes))
        cur_tokens, cur_mults, cur_fixes = [], [], []
        last_comma = -1

    for span in spans:
        if span is None:
            next_chunk()
            continue
        ids, weight = span
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma_id:
                last_comma = len(cur_tokens)
            elif (
                comma_backtrack != 0
                and len(cur_tokens) == chunk_length
                and last_comma != -1
                and len(cur_tokens) - last_comma <= comma_backtrack
            ):
                # Full chunk, comma nearby: end the chunk after the comma, carry the phrase over.
                cut = last_comma + 1
                carry_tokens, carry_mults = cur_tokens[cut:], cur_mults[cut:]
                carry_fixes = [(offset - cut, e) for offset, e in cur_fixes if offset >= cut]
                cur_tokens, cur_mults = cur_tokens[:cut], cur_mults[:cut]
                cur_fixes = [(offset, e) for offset, e in cur_fixes if offset < cut]
                next_chunk()
                cur_tokens, cur_mults, cur_fixes = carry_tokens, carry_mults, carry_fixes
            if len(cur_tokens) == chunk_length:
                next_chunk()
            found = embeddings.find_at(ids, position) if embeddings else None
            if found is None:
                cur_tokens.append(int(token))
                cur_mults.append(float(weight))
                position += 1
                continue
            embedding, name_length = found
            count = embedding.vector_count
            if len(cur_tokens) + count > chunk_length:
                next_chunk()
            cur_fixes.append((len(cur_tokens), embedding))
            cur_tokens.extend([0] * count)
            cur_mults.extend([float(weight)] * count)
            position += name_length

    if cur_tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, token_count


def empty_chunk(bos_id: int, eos_id: int, chunk_length: int = CHUNK_LENGTH) -> PromptChunk:
    """A1111's `empty_chunk()`: what shorter prompts in a batch are padded with."""
    return PromptChunk((bos_id, *([eos_id] * (chunk_length + 1))), (1.0,) * (chunk_length + 2))


def target_token_count(token_count: int, chunk_length: int = CHUNK_LENGTH) -> int:
    """A1111's `get_target_prompt_token_count`: the counter's denominator (75, 150, ...)."""
    return math.ceil(max(token_count, 1) / chunk_length) * chunk_length


def apply_emphasis(z: Tensor, multipliers: Tensor, mode: str = "Original") -> Tensor:
    """Apply per-token weights to a chunk's hidden states z [B, 77, D] (A1111 `modules/sd_emphasis.py`).

    "Original": multiply, then rescale so that the mean over the whole tensor (batch included, as A1111)
    is unchanged. "No norm": multiply only. "None": leave z alone.
    """
    if mode == "None":
        return z
    m = multipliers.to(device=z.device, dtype=z.dtype).reshape(*multipliers.shape, 1)
    if mode == "No norm":
        return z * m
    if mode != "Original":
        raise ValueError(f"unknown emphasis mode {mode!r}; expected one of {EMPHASIS_MODES}")
    original_mean = z.mean()
    z = z * m
    new_mean = z.mean()
    ratio = original_mean / new_mean
    # A mean near zero (hidden states centred on 0, as small or odd checkpoints have) makes the ratio blow the
    # states up by orders of magnitude, or inf / NaN when it is 0, and the UNet then returns NaN. Weights within
    # A1111's range move the mean by a small factor, so a larger one means the mean carries no information:
    # keep the weighted states (A1111's "No norm") instead. Real checkpoints never get near this.
    if not torch.isfinite(ratio) or abs(float(ratio)) > MAX_EMPHASIS_RESCALE:
        return z
    return z * ratio


@dataclass(frozen=True)
class _Tower:
    name: str
    """"clip_l", "clip_h" or "clip_g"."""
    module: torch.nn.Module
    pad_id: int


class TextEncoderStack:
    """The text encoders of one checkpoint and how A1111 reads them.

    The modules are used as they are (device, dtype, patches applied by the caller); the outputs come back
    in the dtype of the module (for SDXL, of CLIP-G) on its device.
    """

    def __init__(
        self,
        family: ModelFamily,
        clip_l: CLIPTextModel | None = None,
        clip_g: CLIPTextModelWithProjection | None = None,
        clip_h: CLIPTextModel | None = None,
    ) -> None:
        given = {"clip_l": clip_l, "clip_g": clip_g, "clip_h": clip_h}
        needed = family.spec.text_encoders
        missing = [n for n in needed if given[n] is None]
        extra = [n for n, m in given.items() if m is not None and n not in needed]
        if missing or extra:
            raise ValueError(
                f"{family.spec.title} needs text encoders {list(needed)}; "
                f"missing {missing or 'none'}, unexpected {extra or 'none'}"
            )
        self.family = family
        self.clip_l = clip_l
        self.clip_g = clip_g
        self.clip_h = clip_h
        self.is_sdxl = family.spec.is_sdxl
        self.uses_clip_skip = tuple(needed) == ("clip_l",)
        """Only SD 1.x's CLIP-L follows Clip skip. A1111 ignores the setting for SD 2.x's OpenCLIP (which already
        conditions on its penultimate layer) and for SDXL (fixed layers), and writes it in the infotext anyway;
        following it there would make those infotexts give other images than A1111's."""

        tokenizers = {n: load_clip_tokenizer("clip_l" if n == "clip_l" else "open_clip") for n in needed}
        self.tokenizer: CLIPTokenizer = tokenizers[needed[0]]
        """Splits prompts into tokens; the vocabulary is shared, only the pad id differs per encoder."""
        self.towers = tuple(_Tower(n, given[n], int(tokenizers[n].pad_token_id)) for n in needed)
        self.bos_id = int(self.tokenizer.bos_token_id)
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.comma_id = int(self.tokenizer.convert_tokens_to_ids(",</w>"))

    # -- tokenization ---------------------------------------------------------------------------------

    @property
    def tower_widths(self) -> tuple[tuple[str, int], ...]:
        """`(name, token-embedding width)` per encoder: what an embedding must provide to be usable."""
        return tuple((t.name, int(t.module.get_input_embeddings().weight.shape[-1])) for t in self.towers)

    def embedding_lookup(self, embeddings) -> "EmbeddingLookup | None":  # noqa: F821
        """The name lookup of an `EmbeddingDatabase` (or None) for these encoders."""
        if embeddings is None:
            return None
        return embeddings.lookup(self.tower_widths, self._tokenize_texts) or None

    def tokenize_weighted(
        self, spans: Sequence[WeightedText], *, embeddings=None
    ) -> tuple[list[PromptChunk], int]:
        """Weighted text spans (A1111 `parse_prompt_attention` output) -> (chunks, token count).

        `embeddings`: an `EmbeddingDatabase` whose usable embeddings are recognised by name."""
        texts = [text for text, weight in spans if not _is_break(text, weight)]
        ids = iter(self._tokenize_texts(texts))
        token_spans: list[tuple[Sequence[int], float] | None] = [
            None if _is_break(text, weight) else (next(ids), float(weight)) for text, weight in spans
        ]
        return split_into_chunks(
            token_spans, bos_id=self.bos_id, eos_id=self.eos_id, comma_id=self.comma_id,
            embeddings=self.embedding_lookup(embeddings),
        )

    def used_embeddings(self, prompts: Sequence[Sequence[WeightedText]], embeddings) -> list["Embedding"]:  # noqa: F821
        """The embeddings these prompts (weighted spans) call, in order of first use (for `TI hashes`)."""
        found: dict[str, object] = {}
        if embeddings is None:
            return []
        for spans in prompts:
            for chunk in self.tokenize_weighted(spans, embeddings=embeddings)[0]:
                for fix in chunk.fixes:
                    found.setdefault(fix.embedding.name, fix.embedding)
        return list(found.values())

    def _tokenize_texts(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        # verbose=False: prompts longer than 77 tokens are the point of chunking, not a mistake to warn about.
        return self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def tokenize(self, prompt: str) -> list[PromptChunk]:
        """A plain prompt (all weights 1.0) -> its chunks."""
        return self.tokenize_weighted([(prompt, 1.0)])[0]

    def token_count(self, prompt: str) -> tuple[int, int]:
        """A1111's token counter for a plain prompt: (tokens, tokens the chunks hold), e.g. (5, 75), (80, 150)."""
        return self.token_count_weighted([(prompt, 1.0)])

    def token_count_weighted(self, spans: Sequence[WeightedText]) -> tuple[int, int]:
        _, count = self.tokenize_weighted(spans)
        return count, target_token_count(count)

    # -- encoding -------------------------------------------------------------------------------------

    def encode(
        self,
        prompts: list[str],
        *,
        clip_skip: int = 1,
        min_chunks: int = 1,
        negative: bool = False,
        embeddings=None,
    ) -> Conditioning:
        """Encode plain prompts (no emphasis parsing: every token has weight 1.0).

        `min_chunks` pads the batch with empty chunks (e.g. the negative prompt to the positive's chunk count).
        `negative=True` marks the batch as negative prompts: for SDXL families an all-empty batch then gives
        zeros, as A1111 does (`sd_models_xl.get_learned_conditioning`, `force_zero_negative_prompt`).
        """
        return self.encode_weighted(
            [[(p, 1.0)] for p in prompts], clip_skip=clip_skip, min_chunks=min_chunks, negative=negative,
            embeddings=embeddings,
        )

    def encode_weighted(
        self,
        prompts: Sequence[Sequence[WeightedText]],
        *,
        clip_skip: int = 1,
        min_chunks: int = 1,
        negative: bool = False,
        emphasis: str = "Original",
        embeddings=None,
    ) -> Conditioning:
        """Encode prompts given as weighted spans (one list of `(text, weight)` per prompt).

        `embeddings`: an `EmbeddingDatabase`; the names of its usable embeddings in a prompt become their
        vectors."""
        if not prompts:
            raise ValueError("no prompts to encode")
        batch_chunks = [self.tokenize_weighted(spans, embeddings=embeddings)[0] for spans in prompts]
        cond = self.encode_chunks(batch_chunks, clip_skip=clip_skip, min_chunks=min_chunks, emphasis=emphasis)
        if negative and self.is_sdxl and all(_is_empty(spans) for spans in prompts):
            return Conditioning(
                torch.zeros_like(cond.cross_attn), None if cond.pooled is None else torch.zeros_like(cond.pooled)
            )
        return cond

    def encode_chunks(
        self,
        batch_chunks: Sequence[Sequence[PromptChunk]],
        *,
        clip_skip: int = 1,
        min_chunks: int = 1,
        emphasis: str = "Original",
        grad: bool = False,
    ) -> Conditioning:
        """Encode already chunked prompts: the (token ids, per-token weights) path everything goes through.

        `grad`: keep the autograd graph (textual-inversion training differentiates through the encoder into an
        embedding's vectors); otherwise no graph is built."""
        with torch.set_grad_enabled(grad):
            return self._encode_chunks(batch_chunks, clip_skip=clip_skip, min_chunks=min_chunks, emphasis=emphasis)

    def _encode_chunks(self, batch_chunks, *, clip_skip: int, min_chunks: int, emphasis: str) -> Conditioning:
        if not batch_chunks:
            raise ValueError("no prompts to encode")
        if clip_skip < 1:
            raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
        n_chunks = max(min_chunks, max(len(c) for c in batch_chunks), 1)
        blank = empty_chunk(self.bos_id, self.eos_id)
        # [n_chunks, B, 77], chunk-major: chunk i of every prompt forms one A1111 `process_tokens` batch.
        grid = [[chunks[i] if i < len(chunks) else blank for chunks in batch_chunks] for i in range(n_chunks)]
        tokens = torch.tensor([[c.tokens for c in row] for row in grid], dtype=torch.long)
        mults = torch.tensor([[c.multipliers for c in row] for row in grid], dtype=torch.float32)
        weighted = bool((mults != 1.0).any())
        # Flattened row (chunk-major, as `_run_tower` reshapes) -> the embeddings placed in it.
        fixes = [(i * len(row) + j, chunk.fixes) for i, row in enumerate(grid) for j, chunk in enumerate(row) if chunk.fixes]

        outs: list[Tensor] = []
        pooled: Tensor | None = None
        for tower in self.towers:
            z, pool = self._run_tower(tower, tokens, clip_skip, fixes)
            if weighted:
                z = torch.stack([apply_emphasis(z[i], mults[i], emphasis) for i in range(n_chunks)])
            outs.append(z)
            if pool is not None:
                pooled = pool[0]  # first chunk's pooled output, as A1111 (`zs[0].pooled`)

        if len(outs) > 1:
            ref = outs[-1]
            z = torch.cat([o.to(device=ref.device, dtype=ref.dtype) for o in outs], dim=-1)
        else:
            z = outs[0]
        n, b, t, d = z.shape
        cross_attn = z.permute(1, 0, 2, 3).reshape(b, n * t, d)
        return Conditioning(cross_attn=cross_attn, pooled=pooled)

    def empty_conditioning(self, batch_size: int = 1, *, num_chunks: int = 1) -> Conditioning:
        """The encoding of `num_chunks` empty chunks (A1111 `cond_stage_model_empty_prompt`)."""
        blank = empty_chunk(self.bos_id, self.eos_id)
        return self.encode_chunks([[blank] * num_chunks] * batch_size)

    def _run_tower(
        self, tower: _Tower, tokens: Tensor, clip_skip: int, fixes: Sequence[tuple[int, Sequence[EmbeddingFix]]] = ()
    ) -> tuple[Tensor, Tensor | None]:
        """Run one encoder over [n, B, 77] ids; returns hidden states [n, B, 77, D] and, for CLIP-G, the
        projected pooled output [n, B, P]. `fixes`: (flattened row, embeddings) whose vectors replace the token
        embeddings at their positions (A1111's `EmbeddingsWithFixes`)."""
        n, b, t = tokens.shape
        ids = tokens.reshape(n * b, t)
        if tower.pad_id != self.eos_id:
            # A1111 `process_tokens`: everything after the first EOS becomes the encoder's pad id.
            first_eos = (ids == self.eos_id).int().argmax(dim=-1, keepdim=True)
            after = torch.arange(t).unsqueeze(0) > first_eos
            ids = torch.where(after, torch.full_like(ids, tower.pad_id), ids)
        module = tower.module
        device = _module_device(module)
        if fixes:
            with _embedding_fixes(module, tower.name, len(self.towers) == 1, fixes):
                out = module(input_ids=ids.to(device), output_hidden_states=True)
        else:
            out = module(input_ids=ids.to(device), output_hidden_states=True)
        hidden = out.hidden_states
        if self.is_sdxl:
            z = hidden[-2]
        elif not self.uses_clip_skip:
            z = out.last_hidden_state
        else:
            n_layers = len(hidden) - 1
            if clip_skip > n_layers:
                raise ValueError(f"clip_skip {clip_skip} is more than the {n_layers} layers of {tower.name}")
            z = out.last_hidden_state if clip_skip == 1 else _final_layer_norm(module)(hidden[-clip_skip])
        z = z.reshape(n, b, t, z.shape[-1])
        pooled = getattr(out, "text_embeds", None)
        if pooled is not None:
            pooled = pooled.reshape(n, b, pooled.shape[-1])
        return z, pooled

    def __repr__(self) -> str:
        return f"TextEncoderStack({self.family.value}, {[t.name for t in self.towers]})"


@contextmanager
def _embedding_fixes(module: torch.nn.Module, tower: str, single_tower: bool, fixes):
    """Replace token embeddings by embedding vectors for the duration of one encoder call.

    A forward hook on the encoder's token-embedding layer, removed on exit: the vectors enter exactly where
    A1111's `EmbeddingsWithFixes` puts them (before the position embeddings are added)."""
    layer = module.get_input_embeddings()

    def hook(_layer, _args, output: Tensor) -> Tensor:
        output = output.clone()
        for row, row_fixes in fixes:
            for fix in row_fixes:
                width = output.shape[-1]
                vectors = fix.embedding.vectors_for(tower, width, single_tower=single_tower)
                if vectors is None:
                    raise ValueError(f"embedding {fix.embedding.name!r} has no {width}-wide vectors for {tower}")
                count = min(vectors.shape[0], output.shape[1] - 1 - fix.offset)
                output[row, fix.offset : fix.offset + count] = vectors[:count].to(output.device, output.dtype)
        return output

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _is_break(text: str, weight: float) -> bool:
    return text == BREAK_SPAN[0] and weight == BREAK_SPAN[1]


def _is_empty(spans: Sequence[WeightedText]) -> bool:
    return all(text == "" for text, _ in spans)


def _final_layer_norm(module: torch.nn.Module) -> torch.nn.Module:
    # transformers 5 puts it on CLIPTextModel itself; CLIPTextModelWithProjection (and transformers 4) nest it
    # under `text_model`.
    ln = getattr(module, "final_layer_norm", None)
    if ln is None:
        ln = module.text_model.final_layer_norm
    return ln


def _module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
