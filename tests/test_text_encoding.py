"""Text encoding with A1111 semantics, on tiny real CLIP text encoders (random weights, seeded)."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdwebui.models.family import ModelFamily
from sdwebui.models.text_encoding import (
    BREAK_SPAN,
    Conditioning,
    PromptChunk,
    TextEncoderStack,
    apply_emphasis,
    empty_chunk,
    split_into_chunks,
    target_token_count,
)
from sdwebui.models.tokenizer import load_clip_tokenizer

BOS, EOS, COMMA = 49406, 49407, 267
A, B = 320, 321  # "a</w>", "b</w>"
N_LAYERS = 3


def _config(**overrides) -> CLIPTextConfig:
    kw = dict(
        vocab_size=49408,
        hidden_size=32,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="gelu",
    )
    kw.update(overrides)
    return CLIPTextConfig(**kw)


def _seeded(cls, seed: int, **overrides):
    """A tiny encoder with every weight random, layer norms included (transformers initialises those to
    weight 1, bias 0, which would make the hidden states' mean ~0 unlike a trained CLIP's)."""
    torch.manual_seed(seed)
    model = cls(_config(**overrides)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.3, 0.2)
    return model


@pytest.fixture(scope="module")
def clip_l() -> CLIPTextModel:
    return _seeded(CLIPTextModel, 0, hidden_act="quick_gelu")


@pytest.fixture(scope="module")
def clip_h() -> CLIPTextModel:
    return _seeded(CLIPTextModel, 1)


@pytest.fixture(scope="module")
def clip_g() -> CLIPTextModelWithProjection:
    # eos_token_id=2 as in the real SDXL text_encoder_2 config: pooling by argmax of the ids.
    return _seeded(CLIPTextModelWithProjection, 2, hidden_size=48, projection_dim=40, eos_token_id=2)


@pytest.fixture(scope="module")
def sd1(clip_l) -> TextEncoderStack:
    return TextEncoderStack(ModelFamily.SD1, clip_l=clip_l)


@pytest.fixture(scope="module")
def sd2(clip_h) -> TextEncoderStack:
    return TextEncoderStack(ModelFamily.SD2, clip_h=clip_h)


@pytest.fixture(scope="module")
def sdxl(clip_l, clip_g) -> TextEncoderStack:
    return TextEncoderStack(ModelFamily.SDXL, clip_l=clip_l, clip_g=clip_g)


@pytest.fixture(scope="module")
def refiner(clip_g) -> TextEncoderStack:
    return TextEncoderStack(ModelFamily.SDXL_REFINER, clip_g=clip_g)


def _scheduler():
    return EulerDiscreteScheduler(steps_offset=1)


def _chunk(content: list[int]) -> list[int]:
    return [BOS, *content, *([EOS] * (75 - len(content))), EOS]


def _split(ids_weights, **kw):
    return split_into_chunks(ids_weights, bos_id=BOS, eos_id=EOS, comma_id=COMMA, **kw)


# -- chunking (pure) ---------------------------------------------------------------------------------


def test_short_prompt_is_one_padded_chunk():
    chunks, count = _split([([A, B], 1.0)])
    assert count == 2 and len(chunks) == 1
    assert list(chunks[0].tokens) == _chunk([A, B])
    assert len(chunks[0].tokens) == len(chunks[0].multipliers) == 77


def test_empty_prompt_is_one_empty_chunk():
    chunks, count = _split([([], 1.0)])
    assert count == 0
    assert chunks == [empty_chunk(BOS, EOS)]
    assert _split([]) == ([empty_chunk(BOS, EOS)], 0)


def test_150_tokens_make_two_full_chunks():
    chunks, count = _split([([A] * 150, 1.0)])
    assert count == 150 and len(chunks) == 2
    assert all(list(c.tokens) == _chunk([A] * 75) for c in chunks)
    assert target_token_count(count) == 150


def test_comma_backtrack_moves_the_phrase_to_the_next_chunk():
    tokens = [A] * 60 + [COMMA] + [B] * 30
    weights = [1.0] * 60 + [1.0] + [1.3] * 30
    spans = [([t], w) for t, w in zip(tokens, weights)]
    chunks, count = _split(spans)
    assert len(chunks) == 2
    assert list(chunks[0].tokens) == _chunk([A] * 60 + [COMMA])  # ends right after the comma
    assert list(chunks[1].tokens) == _chunk([B] * 30)  # the whole phrase after the comma moved on
    assert chunks[1].multipliers[1:31] == (1.3,) * 30  # weights travel with their tokens
    assert count == 75 + 30  # A1111 counts the padded first chunk as 75


def test_comma_too_far_back_does_not_wrap():
    chunks, count = _split([([A] * 50 + [COMMA] + [B] * 40, 1.0)])
    assert list(chunks[0].tokens) == _chunk([A] * 50 + [COMMA] + [B] * 24)
    assert list(chunks[1].tokens) == _chunk([B] * 16)
    assert count == 91


def test_comma_backtrack_boundaries():
    # Comma exactly 20 tokens back still wraps; 21 does not.
    chunks, _ = _split([([A] * 55 + [COMMA] + [B] * 30, 1.0)])
    assert list(chunks[0].tokens) == _chunk([A] * 55 + [COMMA])
    chunks, _ = _split([([A] * 54 + [COMMA] + [B] * 30, 1.0)])
    assert list(chunks[0].tokens) == _chunk([A] * 54 + [COMMA] + [B] * 20)
    # A comma as token 76 opens the next chunk.
    chunks, _ = _split([([A] * 75 + [COMMA] + [B], 1.0)])
    assert list(chunks[1].tokens) == _chunk([COMMA, B])
    # Backtrack disabled (A1111 setting 0).
    chunks, _ = _split([([A] * 60 + [COMMA] + [B] * 30, 1.0)], comma_backtrack=0)
    assert list(chunks[0].tokens) == _chunk([A] * 60 + [COMMA] + [B] * 14)


def test_break_starts_a_new_chunk():
    chunks, count = _split([([A], 1.0), None, ([B], 1.0)])
    assert [list(c.tokens) for c in chunks] == [_chunk([A]), _chunk([B])]
    assert count == 76
    # BREAK first: A1111 emits an all-padding chunk.
    chunks, _ = _split([None, ([B], 1.0)])
    assert chunks[0] == empty_chunk(BOS, EOS) and list(chunks[1].tokens) == _chunk([B])


# -- tokenization through the stack -----------------------------------------------------------------


def test_token_counter(sd1, sdxl):
    assert sd1.token_count("a photo of an astronaut riding a horse on mars") == (10, 75)
    assert sd1.token_count("") == (0, 75)
    assert sd1.token_count("a " * 80) == (80, 150)
    assert sd1.token_count("a " * 75) == (75, 75)
    assert sdxl.token_count("a cat, a dog") == (5, 75)


def test_real_text_chunk_boundary_with_comma(sd1):
    prompt = ", ".join(["masterpiece"] * 30) + ", " + " ".join(["blue sky"] * 10)
    # 30 words + 30 commas = 60 tokens, then 20 tokens of "blue sky": the chunk is full at token 75 and
    # the last comma was 16 tokens earlier, so the "blue sky" phrase moves whole to chunk 2.
    chunks = sd1.tokenize(prompt)
    tok = load_clip_tokenizer()
    word, comma = tok.convert_tokens_to_ids(["masterpiece</w>", ",</w>"])
    assert list(chunks[0].tokens[1:61]) == [word, comma] * 30
    assert set(chunks[0].tokens[61:]) == {EOS}
    assert tok.decode(list(chunks[1].tokens[1:21])) == " ".join(["blue sky"] * 10)


# -- encoding ---------------------------------------------------------------------------------------


def test_sd1_matches_diffusers_encode_prompt(sd1, clip_l):
    pipe = StableDiffusionPipeline(
        vae=None, text_encoder=clip_l, tokenizer=load_clip_tokenizer("clip_l"), unet=None,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    prompt, negative = "a photo of an astronaut riding a horse on mars", "blurry, lowres"
    ref_pos, ref_neg = pipe.encode_prompt(
        prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negative
    )
    ours = sd1.encode([prompt])
    assert isinstance(ours, Conditioning) and ours.pooled is None
    assert ours.cross_attn.shape == (1, 77, 32)
    torch.testing.assert_close(ours.cross_attn, ref_pos, rtol=0, atol=0)
    torch.testing.assert_close(sd1.encode([negative]).cross_attn, ref_neg, rtol=0, atol=0)


def test_sdxl_matches_diffusers_encode_prompt(sdxl, clip_l, clip_g):
    pipe = StableDiffusionXLPipeline(
        vae=None, text_encoder=clip_l, text_encoder_2=clip_g, tokenizer=load_clip_tokenizer("clip_l"),
        tokenizer_2=load_clip_tokenizer("open_clip"), unet=None, scheduler=_scheduler(),
    )
    prompt, negative = "a cat wearing a hat, oil painting", "ugly"
    pos, neg, pooled, neg_pooled = pipe.encode_prompt(prompt, device="cpu", negative_prompt=negative)
    ours = sdxl.encode([prompt])
    assert ours.cross_attn.shape == (1, 77, 32 + 48) and ours.pooled.shape == (1, 40)
    torch.testing.assert_close(ours.cross_attn, pos, rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=0)
    ours_neg = sdxl.encode([negative], negative=True)
    torch.testing.assert_close(ours_neg.cross_attn, neg, rtol=0, atol=0)
    torch.testing.assert_close(ours_neg.pooled, neg_pooled, rtol=0, atol=0)


def test_refiner_matches_diffusers_encode_prompt(refiner, clip_g):
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=None, text_encoder=None, text_encoder_2=clip_g, tokenizer=None,
        tokenizer_2=load_clip_tokenizer("open_clip"), unet=None, scheduler=_scheduler(),
        requires_aesthetics_score=True,
    )
    pos, _, pooled, _ = pipe.encode_prompt("a red barn", device="cpu", negative_prompt="x")
    ours = refiner.encode(["a red barn"])
    assert ours.cross_attn.shape == (1, 77, 48)
    torch.testing.assert_close(ours.cross_attn, pos, rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=0)


def _ids(stack: TextEncoderStack, prompt: str) -> list[list[int]]:
    return [list(c.tokens) for c in stack.tokenize(prompt)]


def test_long_prompt_two_chunks_each_encoded_separately(sd1, clip_l):
    prompt = " ".join(["a photo of an astronaut riding a horse on mars"] * 15)  # 150 tokens
    assert sd1.token_count(prompt) == (150, 150)
    chunk_ids = _ids(sd1, prompt)
    assert len(chunk_ids) == 2
    cond = sd1.encode([prompt])
    assert cond.cross_attn.shape == (1, 154, 32) and cond.num_chunks == 2
    with torch.no_grad():
        for i, ids in enumerate(chunk_ids):
            direct = clip_l(input_ids=torch.tensor([ids])).last_hidden_state
            torch.testing.assert_close(cond.cross_attn[:, 77 * i : 77 * (i + 1)], direct, rtol=1e-5, atol=1e-6)


def test_batch_padded_to_same_chunk_count_and_min_chunks(sd1):
    long = "cat " * 100
    cond = sd1.encode(["dog", long])
    assert cond.cross_attn.shape == (2, 154, 32)
    short = sd1.encode(["dog"]).cross_attn
    empty = sd1.empty_conditioning().cross_attn
    torch.testing.assert_close(cond.cross_attn[0:1, :77], short, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cond.cross_attn[0:1, 77:], empty, rtol=1e-5, atol=1e-6)
    padded = sd1.encode(["dog"], min_chunks=3)
    assert padded.cross_attn.shape == (1, 231, 32)
    torch.testing.assert_close(padded.cross_attn[:, 154:], empty, rtol=1e-5, atol=1e-6)


def test_clip_skip_reads_the_right_layer(sd1, clip_l):
    ids = torch.tensor(_ids(sd1, "a photo of a cat"))
    with torch.no_grad():
        out = clip_l(input_ids=ids, output_hidden_states=True)
    one = sd1.encode(["a photo of a cat"], clip_skip=1).cross_attn
    two = sd1.encode(["a photo of a cat"], clip_skip=2).cross_attn
    torch.testing.assert_close(one, out.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(two, clip_l.final_layer_norm(out.hidden_states[-2]), rtol=0, atol=0)
    assert not torch.allclose(one, two)
    # Independent check: clip skip n == a model cut to its first (layers - n + 1) layers.
    for skip in (2, 3):
        cut = CLIPTextModel(_config(hidden_act="quick_gelu", num_hidden_layers=N_LAYERS - skip + 1)).eval()
        missing, unexpected = cut.load_state_dict(clip_l.state_dict(), strict=False)
        assert not missing and unexpected
        with torch.no_grad():
            expected = cut(input_ids=ids).last_hidden_state
        torch.testing.assert_close(sd1.encode(["a photo of a cat"], clip_skip=skip).cross_attn, expected)
    with pytest.raises(ValueError, match="clip_skip"):
        sd1.encode(["x"], clip_skip=N_LAYERS + 1)
    with pytest.raises(ValueError, match="clip_skip"):
        sd1.encode(["x"], clip_skip=0)


def test_sd2_ignores_clip_skip_as_a1111(sd2, clip_h):
    """A1111's OpenCLIP embedder never reads CLIP_stop_at_last_layers (sd_hijack_open_clip.py)."""
    ids = torch.tensor([[i if i != EOS or j == _first_eos(row) else 0 for j, i in enumerate(row)]
                        for row in _ids(sd2, "a house")])
    with torch.no_grad():
        out = clip_h(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(sd2.encode(["a house"]).cross_attn, out.last_hidden_state, rtol=0, atol=0)
    for skip in (2, 3):
        torch.testing.assert_close(sd2.encode(["a house"], clip_skip=skip).cross_attn, out.last_hidden_state,
                                   rtol=0, atol=0)


def _first_eos(row: list[int]) -> int:
    return row.index(EOS)


def _capture_ids(module: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    seen: list[torch.Tensor] = []

    def hook(mod, args, kwargs):
        seen.append(kwargs["input_ids"].clone())

    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


def test_padding_ids_per_encoder(sd1, sd2, sdxl, clip_l, clip_h, clip_g):
    cases = [(sd1, clip_l, EOS), (sd2, clip_h, 0), (sdxl, clip_l, EOS), (sdxl, clip_g, 0)]
    for stack, module, pad in cases:
        seen, handle = _capture_ids(module)
        try:
            stack.encode(["a cat"])
        finally:
            handle.remove()
        ids = seen[-1][0].tolist()
        assert ids[:4] == [BOS, A, 2368, EOS], (stack, module.__class__.__name__)
        assert set(ids[4:]) == {pad}, (stack, module.__class__.__name__)


def test_sd2_full_chunk_keeps_final_eos(sd2, clip_h):
    seen, handle = _capture_ids(clip_h)
    try:
        sd2.encode(["a " * 75])
    finally:
        handle.remove()
    assert seen[-1][0].tolist() == [BOS] + [A] * 75 + [EOS]


def test_sdxl_concat_and_pooled_from_first_chunk(sdxl, clip_l, clip_g):
    prompt = "a small house by the lake, " * 12  # > 75 tokens
    chunk_ids = _ids(sdxl, prompt)
    assert len(chunk_ids) == 2
    cond = sdxl.encode([prompt, "dog"])
    assert cond.cross_attn.shape == (2, 154, 80) and cond.pooled.shape == (2, 40)
    first = torch.tensor([chunk_ids[0]])
    g_ids = torch.tensor([[t if j <= _first_eos(chunk_ids[0]) else 0 for j, t in enumerate(chunk_ids[0])]])
    with torch.no_grad():
        lo = clip_l(input_ids=first, output_hidden_states=True).hidden_states[-2]
        go = clip_g(input_ids=g_ids, output_hidden_states=True)
    torch.testing.assert_close(cond.cross_attn[0:1, :77, :32], lo, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cond.cross_attn[0:1, :77, 32:], go.hidden_states[-2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cond.pooled[0:1], go.text_embeds, rtol=1e-5, atol=1e-6)
    # Clip skip is ignored for SDXL (A1111 default).
    torch.testing.assert_close(sdxl.encode(["dog"], clip_skip=2).cross_attn, sdxl.encode(["dog"]).cross_attn)


def test_sdxl_empty_negative_is_zeroed_like_a1111(sdxl, sd1, refiner):
    zero = sdxl.encode([""], negative=True, min_chunks=2)
    assert zero.cross_attn.shape == (1, 154, 80) and not zero.cross_attn.any() and not zero.pooled.any()
    assert refiner.encode([""], negative=True).cross_attn.abs().sum() == 0
    assert sdxl.encode(["ugly"], negative=True).cross_attn.any()
    assert sdxl.encode([""]).cross_attn.any()  # only a negative prompt is zeroed
    assert sd1.encode([""], negative=True).cross_attn.any()  # and only for SDXL


def test_emphasis_original_restores_mean(sd1):
    spans = [("a photo of a", 1.0), ("red", 1.5), ("cat", 0.8)]
    base = sd1.encode(["a photo of a red cat"]).cross_attn  # same tokens, all weights 1
    weighted = sd1.encode_weighted([spans]).cross_attn
    mults = torch.ones(1, 77)
    mults[0, 5], mults[0, 6] = 1.5, 0.8  # BOS, a, photo, of, a, red, cat
    expected = base * mults[..., None]
    expected = expected * (base.mean() / expected.mean())
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted.mean(), base.mean(), rtol=1e-5, atol=1e-7)
    no_norm = sd1.encode_weighted([spans], emphasis="No norm").cross_attn
    torch.testing.assert_close(no_norm, base * mults[..., None], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sd1.encode_weighted([spans], emphasis="None").cross_attn, base)
    # All weights 1: bit-identical to the plain path.
    assert torch.equal(sd1.encode_weighted([[("a photo of a", 1.0), ("red cat", 1.0)]]).cross_attn,
                       sd1.encode(["a photo of a red cat"]).cross_attn)


def test_emphasis_mean_is_over_the_whole_chunk_batch():
    z = torch.arange(2 * 77 * 4, dtype=torch.float32).reshape(2, 77, 4) + 1
    m = torch.ones(2, 77)
    m[1, 3] = 2.0
    out = apply_emphasis(z, m)
    torch.testing.assert_close(out.mean(), z.mean())
    # Prompt 0 has no weights but is still rescaled: A1111 renormalises the batch as a whole.
    assert not torch.allclose(out[0], z[0])
    with pytest.raises(ValueError, match="emphasis"):
        apply_emphasis(z, m, "Fancy")


@pytest.mark.parametrize("offset", [0.0, 1e-7], ids=["mean-zero", "mean-near-zero"])
def test_emphasis_on_states_centred_on_zero_stays_finite(offset):
    """Hidden states whose mean is (nearly) zero: A1111's rescale divides by ~0 (inf / NaN, or states blown up
    millions of times, which the UNet turns into NaN latents). The weighted states are kept instead; wherever the
    rescale is moderate the result is A1111's."""
    # Weighting the first token by 1.3 brings the batch's mean to (nearly) zero.
    z = torch.tensor([[[1.0, 1.0], [-1.3, -1.3 + offset]]])
    m = torch.tensor([[1.3, 1.0]])
    out = apply_emphasis(z, m)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, z * m[..., None])
    # An ordinary batch keeps A1111's result exactly.
    ordinary = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    weights = torch.tensor([[1.0, 1.5]])
    expected = ordinary * weights[..., None] * (ordinary.mean() / (ordinary * weights[..., None]).mean())
    torch.testing.assert_close(apply_emphasis(ordinary, weights), expected)


def test_emphasis_per_encoder_in_sdxl(sdxl):
    spans = [("a", 1.0), ("cat", 1.4)]
    base = sdxl.encode(["a cat"]).cross_attn
    out = sdxl.encode_weighted([spans]).cross_attn
    m = torch.ones(1, 77, 1)
    m[0, 2] = 1.4
    for sl in (slice(0, 32), slice(32, 80)):  # each encoder renormalised on its own
        b = base[..., sl]
        exp = b * m
        exp = exp * (b.mean() / exp.mean())
        torch.testing.assert_close(out[..., sl], exp, rtol=1e-5, atol=1e-6)
    # Pooled output is not weighted (A1111 weights the hidden states only).
    torch.testing.assert_close(sdxl.encode_weighted([spans]).pooled, sdxl.encode(["a cat"]).pooled)


def test_break_span_in_weighted_path(sd1):
    cond = sd1.encode_weighted([[("a cat", 1.0), BREAK_SPAN, ("a dog", 1.0)]])
    assert cond.num_chunks == 2
    torch.testing.assert_close(cond.cross_attn[:, 77:], sd1.encode(["a dog"]).cross_attn, rtol=1e-5, atol=1e-6)
    assert sd1.token_count_weighted([("a cat", 1.0), BREAK_SPAN, ("a dog", 1.0)]) == (77, 150)


def test_weird_prompts_encode(sd1):
    prompts = ["", "😀🤖 émoji", "日本語", "<|endoftext|> early end", "   ", "a" * 2000]
    cond = sd1.encode(prompts)
    assert cond.cross_attn.shape[0] == 6 and torch.isfinite(cond.cross_attn).all()


def test_output_dtype_follows_the_modules():
    l16 = _seeded(CLIPTextModel, 0).to(torch.bfloat16)
    g32 = _seeded(CLIPTextModelWithProjection, 1, hidden_size=48, projection_dim=40)
    stack = TextEncoderStack(ModelFamily.SD1, clip_l=l16)
    assert stack.encode(["a cat"], clip_skip=2).cross_attn.dtype == torch.bfloat16
    mixed = TextEncoderStack(ModelFamily.SDXL, clip_l=l16, clip_g=g32.to(torch.bfloat16))
    cond = mixed.encode(["a cat"])
    assert cond.cross_attn.dtype == torch.bfloat16 and cond.pooled.dtype == torch.bfloat16


def test_constructor_checks_the_family(clip_l, clip_g, clip_h):
    with pytest.raises(ValueError, match="missing"):
        TextEncoderStack(ModelFamily.SD1)
    with pytest.raises(ValueError, match="unexpected"):
        TextEncoderStack(ModelFamily.SDXL, clip_l=clip_l, clip_g=clip_g, clip_h=clip_h)
    with pytest.raises(ValueError, match="missing"):
        TextEncoderStack(ModelFamily.SDXL, clip_l=clip_l)
    stack = TextEncoderStack(ModelFamily.SD1_INPAINT, clip_l=clip_l)
    assert [t.name for t in stack.towers] == ["clip_l"]
    with pytest.raises(ValueError, match="no prompts"):
        stack.encode([])


def test_prompt_chunk_is_hashable_and_frozen():
    c = PromptChunk((1, 2), (1.0, 1.0))
    assert hash(c) == hash(PromptChunk((1, 2), (1.0, 1.0)))
    with pytest.raises(AttributeError):
        c.tokens = ()  # type: ignore[misc]
