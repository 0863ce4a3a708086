"""The A1111 prompt language end to end: CFG with schedules and AND weights, conditioning per denoiser call,
txt2img on a tiny real SD1 model (loaded from a single-file checkpoint), extra-network tags, infotext.

"Recording" tests wrap the real model denoiser and note which conditioning each UNet call got; they compare it
with the text encoder's own encoding of each scheduled text.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from tiny_models import build_tiny, write_single_file

import sdwebui.pipelines.txt2img as txt2img_module
from sdwebui.core.denoiser import CFGConditioning, CFGDenoiser
from sdwebui.core.noise import ImageRNG
from sdwebui.core.samplers import resolve_sampling, sample_euler
from sdwebui.models.family import ModelFamily
from sdwebui.models.loader import load_checkpoint
from sdwebui.pipelines.conditioning import build_conditioning, prompt_spans
from sdwebui.pipelines.context import GenerationContext, NetworkActivation
from sdwebui.pipelines.params import ParamError, Txt2ImgParams
from sdwebui.pipelines.sampling import (
    make_denoiser,
    refiner_negative_condition,
    scheduled_denoiser,
    unet_condition,
)
from sdwebui.pipelines.txt2img import txt2img

SIZE = 64
NEGATIVE = "blurry"


# ------------------------------------------------------------------------------ CFG denoiser, analytic inner


class AnalyticDenoiser:
    """x0 = x / 2 + c, with c the conditioning value of the row (shape [N, 1]): every output is known exactly."""

    sigma_min, sigma_max, prediction_type, schedule = 0.03, 14.6, "epsilon", None

    def __init__(self):
        self.calls: list[torch.Tensor] = []

    def __call__(self, x, sigma, *, c, **extra):
        self.calls.append(c.clone())
        return x / 2 + c.reshape(-1, 1, 1, 1)


def rows(*values):
    return {"c": torch.tensor(values, dtype=torch.float32).reshape(-1, 1)}


def test_composable_guidance_is_a1111_combine_denoised():
    inner = AnalyticDenoiser()
    # image 0: sub-prompts with weights 1 and 0.5; image 1: one sub-prompt, weight -0.3
    conditioning = CFGConditioning(rows(1.0, 2.0, 3.0), rows(10.0, 20.0), ((1.0, 0.5), (-0.3,)))
    den = CFGDenoiser.scheduled(inner, lambda step: conditioning, 7.0)
    x = torch.ones(2, 1, 2, 2)
    out = den(x, torch.tensor([1.0, 1.0]))
    u0, u1 = 0.5 + 10.0, 0.5 + 20.0
    expected0 = u0 + ((0.5 + 1.0) - u0) * (1.0 * 7.0) + ((0.5 + 2.0) - u0) * (0.5 * 7.0)
    expected1 = u1 + ((0.5 + 3.0) - u1) * (-0.3 * 7.0)
    torch.testing.assert_close(out[0], torch.full((1, 2, 2), expected0))
    torch.testing.assert_close(out[1], torch.full((1, 2, 2), expected1))
    # one batched call: the 3 cond rows, then the 2 uncond rows
    assert len(inner.calls) == 1 and inner.calls[0].flatten().tolist() == [1.0, 2.0, 3.0, 10.0, 20.0]


def test_plain_weights_match_the_plain_cfg_bit_exactly():
    x = torch.randn(2, 4, 3, 3)
    sigma = torch.tensor([2.0, 2.0])
    plain = CFGDenoiser(AnalyticDenoiser(), rows(1.0, 2.0), rows(3.0, 4.0), 7.5)(x, sigma)
    weighted = CFGDenoiser.scheduled(
        AnalyticDenoiser(), lambda step: CFGConditioning(rows(1.0, 2.0), rows(3.0, 4.0), ((1.0,), (1.0,))), 7.5
    )(x, sigma)
    assert torch.equal(plain, weighted)


def test_cfg_scale_one_with_weights_still_runs_uncond():
    inner = AnalyticDenoiser()
    den = CFGDenoiser.scheduled(inner, lambda step: CFGConditioning(rows(1.0, 2.0), rows(5.0), ((1.0, 1.0),)), 1.0)
    out = den(torch.zeros(1, 1, 1, 1), torch.tensor([1.0]))
    assert out.item() == pytest.approx(5.0 + (1.0 - 5.0) + (2.0 - 5.0))  # A1111: u + sum (c_j - u)


def test_call_counter_picks_the_conditioning_and_resets():
    inner = AnalyticDenoiser()
    asked: list[int] = []

    def schedule(step):
        asked.append(step)
        return CFGConditioning(rows(float(step)), rows(0.0))

    den = CFGDenoiser.scheduled(inner, schedule, 2.0)
    sigmas = torch.tensor([3.0, 2.0, 1.0, 0.0])
    sample_euler(den, torch.zeros(1, 1, 1, 1), sigmas)
    assert asked == [0, 1, 2] and den.step == 3
    assert [c.flatten().tolist() for c in inner.calls] == [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]
    den.reset()
    den(torch.zeros(1, 1, 1, 1), torch.tensor([1.0]))
    assert asked[-1] == 0


def test_extra_args_are_repeated_for_each_subprompt_row():
    seen = {}

    class Inner(AnalyticDenoiser):
        def __call__(self, x, sigma, *, c, image, **extra):
            seen["image"] = image.flatten().tolist()
            seen["x"] = x.shape[0]
            return super().__call__(x, sigma, c=c)

    den = CFGDenoiser.scheduled(
        Inner(), lambda step: CFGConditioning(rows(1.0, 2.0, 3.0), rows(0.0, 0.0), ((1.0, 1.0), (1.0,))), 3.0
    )
    den(torch.zeros(2, 1, 1, 1), torch.tensor([1.0, 1.0]), image=torch.tensor([[7.0], [8.0]]))
    assert seen == {"image": [7.0, 7.0, 8.0, 7.0, 8.0], "x": 5}


# ------------------------------------------------------------------------------------- tiny SD1 model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_single_file(
        build_tiny(ModelFamily.SD1, seed=5), tmp_path_factory.mktemp("prompt-models") / "tiny-sd1.safetensors"
    )
    return load_checkpoint(path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


def run(model, prompt, *, ctx_kwargs=None, **kwargs):
    values = dict(prompt=prompt, negative_prompt=NEGATIVE, width=SIZE, height=SIZE, steps=4, seed=99,
                  sampler="Euler", rng="cpu")
    values.update(kwargs)
    return txt2img(GenerationContext(model=model, **(ctx_kwargs or {})), Txt2ImgParams(**values))


class Recorder:
    """Wraps the real model denoiser; records the cross-attention conditioning of every UNet call."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[torch.Tensor] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, sigma, **cond):
        self.calls.append(cond["encoder_hidden_states"].clone())
        return self.inner(x, sigma, **cond)


@pytest.fixture
def recorder(monkeypatch):
    made: list[Recorder] = []

    def make(model, hooks=None):
        made.append(Recorder(make_denoiser(model, hooks)))
        return made[-1]

    monkeypatch.setattr(txt2img_module, "make_denoiser", make)
    return made


def encode(model, text, chunks=1):
    return model.text_encoder.encode_weighted([prompt_spans(text)], min_chunks=chunks).cross_attn[0]


def which(calls, candidates: dict[str, torch.Tensor], row=0):
    """For each recorded call, the name of the candidate encoding its cond row `row` equals."""
    names = []
    for call in calls:
        found = [name for name, enc in candidates.items() if torch.allclose(call[row], enc, atol=1e-5)]
        assert len(found) == 1, f"call matched {found}"
        names.append(found[0])
    return names


def test_prompt_editing_switches_conditioning_at_the_right_call(model, recorder):
    run(model, "a [cat:dog:0.5] photo", steps=6)
    calls = recorder[0].calls
    assert len(calls) == 6
    enc = {"cat": encode(model, "a cat photo"), "dog": encode(model, "a dog photo"), "neg": encode(model, NEGATIVE)}
    # schedule over 6 calls: [(3, "a cat photo"), (6, "a dog photo")]; A1111 uses an entry while step <= end,
    # counting calls from 0: calls 0-3 are "cat", 4-5 "dog".
    assert which(calls, enc) == ["cat"] * 4 + ["dog"] * 2
    assert which(calls, enc, row=1) == ["neg"] * 6  # [cond, uncond] in one batch


def test_prompt_editing_with_a_step_number_and_nesting(model, recorder):
    run(model, "[[red:green:1]:blue:3]", steps=5)
    enc = {c: encode(model, c) for c in ("red", "green", "blue")}
    assert which(recorder[0].calls, enc) == ["red", "red", "green", "green", "blue"]


def test_alternation_changes_every_call(model, recorder):
    run(model, "[cat|dog] photo", steps=5)
    enc = {"cat": encode(model, "cat photo"), "dog": encode(model, "dog photo")}
    # schedule [(1, cat), (2, dog), (3, cat), (4, dog), (5, cat)]: call 0 is before the first switch.
    assert which(recorder[0].calls, enc) == ["cat", "cat", "dog", "cat", "dog"]


def test_negative_prompt_schedules_too(model, recorder):
    run(model, "cat", negative_prompt="[blurry:ugly:2]", steps=4)
    enc = {"blurry": encode(model, "blurry"), "ugly": encode(model, "ugly")}
    assert which(recorder[0].calls, enc, row=1) == ["blurry", "blurry", "blurry", "ugly"]


def test_second_order_sampler_schedules_over_its_model_calls(model, recorder):
    # Heun plans 2 calls per step (A1111 total_steps): 4 steps -> schedule over 8, [..:0.5] ends at call 4.
    run(model, "[cat:dog:0.5]", steps=4, sampler="Heun")
    enc = {"cat": encode(model, "cat"), "dog": encode(model, "dog")}
    assert which(recorder[0].calls, enc) == ["cat"] * 5 + ["dog"] * 2  # Heun's last step is one call


def test_prompt_editing_equals_two_runs_joined(model):
    """[cat:dog:2] with Euler over 4 steps == 3 Euler steps on "cat" then 1 on "dog" (Euler is Markov)."""
    ours = run(model, "[cat:dog:2]", steps=4).latents
    sigmas = resolve_sampling("Euler").sampler.sigmas(4, make_denoiser(model), "Automatic")
    x = ImageRNG((4, SIZE // 8, SIZE // 8), [99], device="cpu", rng="cpu").first() * sigmas[0]

    def cfg(text):
        conditioning = build_conditioning(model.text_encoder, [text], [NEGATIVE], 4)
        return scheduled_denoiser(model, make_denoiser(model), conditioning, SIZE, SIZE, 7.0)

    with torch.inference_mode():
        x = sample_euler(cfg("cat"), x, sigmas[:4])  # calls 0, 1, 2
        x = sample_euler(cfg("dog"), x, sigmas[3:])  # call 3
    torch.testing.assert_close(ours, x.float(), atol=1e-5 * max(1.0, float(x.abs().max())), rtol=0)


def test_and_weights_combine_as_a1111(model):
    conditioning = build_conditioning(model.text_encoder, ["a cat AND a dog :0.5"], [NEGATIVE], 4)
    assert [c.texts for c in conditioning.cond] == [("a cat",), (" a dog",)]
    assert conditioning.batch == (((0, 1.0), (1, 0.5)),)
    inner = make_denoiser(model)
    den = scheduled_denoiser(model, inner, conditioning, SIZE, SIZE, 7.0)
    x = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0)) * 5
    sigma = torch.tensor([5.0])

    def alone(text):
        enc = model.text_encoder.encode_weighted([prompt_spans(text)])
        return inner(x, sigma, **unet_condition(model, enc, SIZE, SIZE))

    with torch.inference_mode():
        out = den(x, sigma)
        cat, dog, neg = alone("a cat"), alone(" a dog"), alone(NEGATIVE)
    expected = neg + (cat - neg) * 7.0 + (dog - neg) * (0.5 * 7.0)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_and_with_weight_zero_is_the_first_prompt_alone(model):
    alone = run(model, "a cat").latents
    composed = run(model, "a cat AND a dog :0").latents
    torch.testing.assert_close(composed, alone, atol=1e-5 * max(1.0, float(alone.abs().max())), rtol=0)
    assert not torch.allclose(run(model, "a cat AND a dog :1").latents, alone)


def test_long_prompt_gives_two_chunks_and_the_negative_is_padded(model, recorder):
    words = " ".join(["house"] * 100)  # 100 tokens: more than one 75-token chunk
    result = run(model, words, steps=1)
    (call,) = recorder[0].calls
    assert call.shape[:2] == (2, 154)  # [cond, uncond] x 2 chunks of 77
    assert torch.allclose(call[1], encode(model, NEGATIVE, chunks=2), atol=1e-5)
    assert result.infotexts[0].startswith(words + "\n")


def test_break_starts_a_new_chunk(model, recorder):
    run(model, "cat BREAK dog", steps=1)
    (call,) = recorder[0].calls
    assert call.shape[1] == 154


def test_batch_of_different_prompts_gets_each_its_own_conditioning(model):
    conditioning = build_conditioning(
        model.text_encoder, ["cat", "[cat:dog:1]", "cat"], [NEGATIVE, "ugly", NEGATIVE], 3
    )
    assert len(conditioning.cond) == 2 and len(conditioning.uncond) == 2  # distinct ones, encoded once each
    assert conditioning.uncond_index == (0, 1, 0)
    cond0, uncond0 = conditioning.at_step(0)
    cond2, _ = conditioning.at_step(2)
    cat = encode(model, "cat")
    assert torch.allclose(cond0.cross_attn[0], cat, atol=1e-5) and torch.allclose(cond0.cross_attn[1], cat, atol=1e-5)
    assert torch.allclose(cond2.cross_attn[1], encode(model, "dog"), atol=1e-5)
    assert torch.equal(uncond0.cross_attn[0], uncond0.cross_attn[2])
    assert torch.allclose(uncond0.cross_attn[1], encode(model, "ugly"), atol=1e-5)


def test_conditioning_is_encoded_once_per_distinct_text(model, monkeypatch):
    texts: list[str] = []
    original = model.text_encoder.tokenize_weighted

    def counting(spans, **kwargs):
        texts.append("".join(t for t, _ in spans))
        return original(spans, **kwargs)

    monkeypatch.setattr(model.text_encoder, "tokenize_weighted", counting)
    run(model, "[a|b] c", negative_prompt="n", steps=10, batch_size=2, batch_count=2)
    # each distinct text is tokenized twice (chunk count, then encoding), whatever the steps and batches
    assert sorted(texts) == sorted(["a c", "b c", "n"] * 2)


@pytest.mark.parametrize("mode", ["Original", "No norm", "Ignore", "None"])
def test_emphasis_modes(model, mode):
    def cond(prompt, emphasis):
        c = build_conditioning(model.text_encoder, [prompt], [""], 1, emphasis=emphasis)
        return c.at_step(0)[0].cross_attn

    weighted = cond("a (cat:1.5)", mode)
    if mode == "Ignore":
        assert torch.equal(weighted, cond("a cat", "Original"))
    elif mode == "None":
        assert torch.equal(weighted, model.text_encoder.encode(["a (cat:1.5)"]).cross_attn)
    else:
        assert not torch.allclose(weighted, cond("a cat", "Original"))
    result = run(model, "a (cat:1.5)", steps=1, emphasis=mode)
    assert ("Emphasis: " + mode in result.infotexts[0]) == (mode != "Original")
    assert "Emphasis" not in run(model, "a cat", steps=1, emphasis="No norm").infotexts[0]  # no brackets


def test_bad_emphasis_names_the_field():
    with pytest.raises(ParamError) as raised:
        Txt2ImgParams(prompt="x", emphasis="Loud")
    assert raised.value.field == "emphasis"


def test_clip_skip_changes_conditioning_and_is_recorded(model):
    one = run(model, "a cat", steps=1)
    two = run(model, "a cat", steps=1, clip_skip=2)
    assert not torch.equal(one.latents, two.latents)
    assert "Clip skip: 2" in two.infotexts[0] and "Clip skip" not in one.infotexts[0]


# --------------------------------------------------------------------------------------- extra networks


def test_lora_tags_are_removed_from_the_prompt_but_kept_in_the_infotext(model, recorder):
    tagged = run(model, "a cat <lora:film:0.8>", steps=2)
    plain = run(model, "a cat", steps=2)
    assert torch.equal(tagged.latents, plain.latents)
    assert tagged.infotexts[0].startswith("a cat <lora:film:0.8>\nNegative prompt: blurry\n")
    assert any("<lora:film:0.8>" in note for note in tagged.notes)  # no hook: reported as not applied


def test_extra_networks_hook_gets_the_calls_around_encoding_and_sampling(model):
    events: list[str] = []

    @contextmanager
    def hook(model_arg, calls):
        assert model_arg is model
        events.append("enter " + ",".join(f"{c.kind}:{c.name}:{c.lora_args().te}" for c in calls))
        yield NetworkActivation(infotext={"Lora hashes": "film: 0123456789ab"}, notes=["applied film"])
        events.append("exit")

    result = run(model, "a cat <lora:film:0.7>", steps=1, batch_count=2, ctx_kwargs={"extra_networks": hook})
    assert events == ["enter lora:film:0.7", "exit"]  # the same networks stay applied across batches
    assert result.notes == ["applied film"]
    assert all('Lora hashes: "film: 0123456789ab"' in info for info in result.infotexts)
    plain_events: list[str] = []

    @contextmanager
    def quiet(model_arg, calls):
        plain_events.append(len(calls))
        yield NetworkActivation()

    run(model, "a cat", steps=1, ctx_kwargs={"extra_networks": quiet})
    assert plain_events == [0]  # called with no networks too, so it can undo the last job's


def test_sdxl_schedules_and_and_carry_the_pooled_output(tmp_path):
    path = write_single_file(build_tiny(ModelFamily.SDXL, seed=2), tmp_path / "tiny-sdxl.safetensors")
    sdxl = load_checkpoint(path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    conditioning = build_conditioning(sdxl.text_encoder, ["[cat:dog:1] AND bird :0.5"], [""], 2)
    cond0, uncond0 = conditioning.at_step(0)
    cond2, _ = conditioning.at_step(2)
    assert cond0.pooled is not None and cond0.pooled.shape[0] == 2  # one row per AND sub-prompt
    dog = sdxl.text_encoder.encode(["dog"])
    torch.testing.assert_close(cond2.pooled[0], dog.pooled[0], atol=1e-5, rtol=0)
    assert not torch.allclose(cond0.pooled[0], cond2.pooled[0])
    assert torch.count_nonzero(uncond0.cross_attn) == 0  # empty SDXL negative prompt: zeros, as A1111
    result = run(sdxl, "[cat:dog:1] AND bird :0.5", negative_prompt="", steps=2)
    assert result.latents.shape == (1, 4, SIZE // 8, SIZE // 8) and torch.isfinite(result.latents).all()


def test_and_in_a_batch_gives_each_image_what_it_gets_alone(model):
    prompt = "a cat AND a dog :0.7"
    batch = run(model, prompt, batch_size=2, seed=40, steps=3).latents
    alone = run(model, prompt, seed=41, steps=3).latents
    torch.testing.assert_close(batch[1:], alone, atol=1e-5 * max(1.0, float(alone.abs().max())), rtol=0)
