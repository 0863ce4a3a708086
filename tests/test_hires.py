"""Hires fix, the SDXL refiner switch and tiling on tiny real models loaded from single-file checkpoints."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny, write_single_file

from sdwebui.core.denoiser import DiscreteSchedule
from sdwebui.core.samplers import resolve_sampling
from sdwebui.models.family import ModelFamily
from sdwebui.models.loader import load_checkpoint
from sdwebui.models.tiling import circular_padding
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.params import ParamError, Txt2ImgParams
from sdwebui.pipelines.refiner import completed_ratio
from sdwebui.pipelines.sampling import GenerationError, make_denoiser
from sdwebui.pipelines.txt2img import txt2img

SIZE = 64


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hires-models")
    out = {}
    for name, family, seed in (("sd1", ModelFamily.SD1, 3), ("sd1-other", ModelFamily.SD1, 7),
                               ("sdxl", ModelFamily.SDXL, 3), ("refiner", ModelFamily.SDXL_REFINER, 3)):
        out[name] = write_single_file(build_tiny(family, seed=seed), folder / f"tiny-{name}.safetensors")
    return out


@pytest.fixture(scope="module")
def models(files):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_checkpoint(files[name], device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
        return cache[name]

    return get


def run(model, models=None, steps_seen=None, **kwargs):
    values = dict(prompt="a red cube", negative_prompt="blurry", width=SIZE, height=SIZE, steps=4, seed=1234,
                  sampler="Euler", rng="cpu")
    values.update(kwargs)

    def on_step(progress):
        if steps_seen is not None:
            steps_seen.append((progress.step, progress.total_steps))

    ctx = GenerationContext(model=model, on_step=on_step,
                            load_model=(lambda name: models(name)) if models else None)
    return txt2img(ctx, Txt2ImgParams(**values))


def passes(steps_seen):
    """[(steps in the pass, total reported)]: one progress bar runs over both passes of a batch (as A1111)."""
    totals = {total for _, total in steps_seen}
    assert len(totals) == 1, steps_seen
    total = totals.pop()
    assert [step for step, _ in steps_seen] == list(range(1, total + 1)), steps_seen
    return total


# ------------------------------------------------------------------------------------------------ hires fix


def test_hires_latent_size_steps_and_infotext(models):
    seen = []
    result = run(models("sd1"), steps_seen=seen, enable_hr=True, hr_scale=2, denoising_strength=0.5,
                 hr_second_pass_steps=3)
    assert result.images[0].size == (128, 128)
    assert result.latents.shape == (1, 4, 16, 16)
    assert passes(seen) == 4 + 3  # the hires pass runs exactly hr_second_pass_steps
    info = parse_infotext(result.infotexts[0])
    assert info["Size-1"] == "64" and info["Denoising strength"] == "0.5"
    assert info["Hires upscale"] == "2" and info["Hires steps"] == "3" and info["Hires upscaler"] == "Latent"
    line = result.infotexts[0].rsplit("\n", 1)[-1]
    assert line.index("Denoising strength") < line.index("Hires upscale") < line.index("Hires steps") < \
        line.index("Hires upscaler")
    # Zero second-pass steps: as many as the first pass (and no "Hires steps" key, as A1111).
    seen.clear()
    result = run(models("sd1"), steps_seen=seen, enable_hr=True, hr_scale=1.5)
    assert passes(seen) == 4 + 4 and result.images[0].size == (96, 96)
    assert "Hires steps" not in parse_infotext(result.infotexts[0])


@pytest.mark.parametrize("resize, expected", [((96, 0), (96, 96)), ((0, 80), (80, 80)), ((128, 64), (128, 64)),
                                              ((64, 96), (64, 96))])
def test_hires_resize_to(models, resize, expected):
    params = Txt2ImgParams(prompt="x", width=64, height=64, enable_hr=True, hr_resize_x=resize[0],
                           hr_resize_y=resize[1])
    assert params.hires_size == expected
    result = run(models("sd1"), enable_hr=True, hr_resize_x=resize[0], hr_resize_y=resize[1], steps=2,
                 denoising_strength=0.3)
    assert result.images[0].size == expected
    assert parse_infotext(result.infotexts[0])["Hires resize-1"] == str(resize[0])


def test_hires_target_as_a1111():
    p = Txt2ImgParams(prompt="", width=512, height=768, enable_hr=True, hr_resize_x=1024, hr_resize_y=1024)
    # Cover 1024x1024 keeping 2:3 -> 1024x1536, then crop the latent by 64 rows: 1024x1024.
    assert p.hires_target == (1024, 1536, 0, 64)
    assert p.hires_size == (1024, 1024)
    with pytest.raises(ParamError) as error:
        Txt2ImgParams(prompt="", width=4096, height=4096, enable_hr=True, hr_scale=4)
    assert error.value.field == "hr_scale"


@pytest.mark.parametrize("upscaler", ["Lanczos", "Nearest", "None", "Latent (nearest-exact)",
                                      "Latent (bicubic antialiased)"])
def test_hires_other_upscalers(models, upscaler):
    result = run(models("sd1"), enable_hr=True, hr_scale=1.5, hr_upscaler=upscaler, steps=2,
                 denoising_strength=0.4)
    assert result.images[0].size == (96, 96)
    assert parse_infotext(result.infotexts[0])["Hires upscaler"] == upscaler


def test_hires_unknown_upscaler_and_sampler_are_param_errors(models):
    with pytest.raises(ParamError) as error:
        run(models("sd1"), enable_hr=True, hr_upscaler="4x-UltraSharp")
    assert error.value.field == "hr_upscaler"
    with pytest.raises(ParamError) as error:
        run(models("sd1"), enable_hr=True, hr_sampler="Nope")
    assert error.value.field == "hr_sampler"


def test_hires_seeds_are_reproducible_and_per_image(models):
    a = run(models("sd1"), enable_hr=True, steps=2, batch_size=2, denoising_strength=0.6)
    b = run(models("sd1"), enable_hr=True, steps=2, batch_size=2, denoising_strength=0.6)
    assert a.seeds == [1234, 1235]
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents[0], a.latents[1])
    # Image 2 of the batch equals a job of batch size 1 at seed 1235 (the noise is per image, as A1111).
    c = run(models("sd1"), enable_hr=True, steps=2, seed=1235, denoising_strength=0.6)
    # Batched and single UNet calls sum in another order: float32 noise relative to the latents' size (they reach
    # ~40 after the tiny model's hires pass); a different seed's noise would differ by whole units.
    scale = max(1.0, float(c.latents.abs().max()))
    torch.testing.assert_close(a.latents[1], c.latents[0], atol=1e-5 * scale, rtol=0)


def test_hires_sampler_prompt_and_infotext(models):
    result = run(models("sd1"), enable_hr=True, steps=2, hr_sampler="DPM++ 2M", hr_scheduler="Karras",
                 hr_prompt="a blue cube", hr_negative_prompt="ugly", denoising_strength=0.5)
    info = parse_infotext(result.infotexts[0])
    assert info["Hires sampler"] == "DPM++ 2M" and info["Hires schedule type"] == "Karras"
    assert info["Hires prompt"] == "a blue cube" and info["Hires negative prompt"] == "ugly"
    plain = run(models("sd1"), enable_hr=True, steps=2, denoising_strength=0.5)
    assert not torch.equal(plain.latents, result.latents)


def test_prompt_editing_fractions_above_one_act_in_the_hires_pass(models):
    edited, plain = "[a red cube:a blue ball:1.5]", "a red cube"
    # Without hires fix, 1.5 is past the end: the prompt never changes.
    assert torch.equal(run(models("sd1"), prompt=edited, steps=3).latents,
                       run(models("sd1"), prompt=plain, steps=3).latents)
    hires = dict(enable_hr=True, steps=3, hr_second_pass_steps=4, denoising_strength=0.6)
    a = run(models("sd1"), prompt=edited, **hires)
    b = run(models("sd1"), prompt=plain, **hires)
    assert not torch.equal(a.latents, b.latents)


def test_hires_checkpoint(models, files):
    loaded = []

    def load(name):
        loaded.append(name)
        return models(name)

    ctx = GenerationContext(model=models("sd1"), load_model=load)
    result = txt2img(ctx, Txt2ImgParams(prompt="x", width=64, height=64, steps=2, seed=5, enable_hr=True,
                                        hr_checkpoint="sd1-other", denoising_strength=0.5, rng="cpu"))
    assert loaded == ["sd1-other"]
    other = models("sd1-other")
    info = parse_infotext(result.infotexts[0])
    assert info["Hires checkpoint"] == f"{other.info.name} [{other.info.short_hash}]"
    assert info["Model"] == models("sd1").info.name
    same = txt2img(GenerationContext(model=models("sd1")),
                   Txt2ImgParams(prompt="x", width=64, height=64, steps=2, seed=5, enable_hr=True,
                                 denoising_strength=0.5, rng="cpu"))
    assert not torch.equal(same.latents, result.latents)


# ------------------------------------------------------------------------------------------------ refiner


class UnetRecorder:
    """Records (model name, timestep) of every UNet call of the models it watches."""

    def __init__(self, **named):
        self.calls: list[tuple[str, float]] = []
        self.handles = [
            model.unet.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, model in named.items()
        ]

    def _hook(self, name):
        def hook(module, args, kwargs):
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            self.calls.append((name, float(torch.as_tensor(t).flatten()[0])))
        return hook

    def close(self):
        for handle in self.handles:
            handle.remove()


def expected_switch_index(model, sigmas, switch_at):
    table = DiscreteSchedule(model.alphas_cumprod).sigmas
    for i, sigma in enumerate(sigmas[:-1]):
        if completed_ratio(table, sigma) >= switch_at:
            return i
    return None


def test_completed_ratio_is_a1111s():
    table = DiscreteSchedule(torch.linspace(0.99, 0.01, 1000)).sigmas
    assert completed_ratio(table, table[999]) == 0.0
    assert completed_ratio(table, table[0]) == pytest.approx(0.999)
    assert completed_ratio(table, table[199] * 1.0001) == pytest.approx(0.8)


@pytest.mark.parametrize("switch_at", [0.5, 0.8])
def test_refiner_takes_over_at_the_switch_sigma(models, switch_at):
    base, refiner = models("sdxl"), models("refiner")
    steps = 10
    sigmas = resolve_sampling("Euler").sampler.sigmas(steps, make_denoiser(base), "Automatic")
    switch = expected_switch_index(base, sigmas, switch_at)
    assert switch is not None and 0 < switch < steps
    recorder = UnetRecorder(base=base, refiner=refiner)
    try:
        result = run(base, models, steps=steps, refiner_checkpoint="refiner", refiner_switch_at=switch_at)
    finally:
        recorder.close()
    names = [name for name, _ in recorder.calls]
    assert names == ["base"] * switch + ["refiner"] * (steps - switch)
    info = parse_infotext(result.infotexts[0])
    assert info["Refiner"] == f"{refiner.info.name} [{refiner.info.short_hash}]"
    assert info["Refiner switch at"] == str(switch_at)
    assert info["Model"] == base.info.name


def test_refiner_never_reached_leaves_no_trace(models):
    recorder = UnetRecorder(base=models("sdxl"), refiner=models("refiner"))
    try:
        result = run(models("sdxl"), models, steps=3, refiner_checkpoint="refiner", refiner_switch_at=1.0)
    finally:
        recorder.close()
    assert {name for name, _ in recorder.calls} == {"base"}
    assert "Refiner" not in parse_infotext(result.infotexts[0])


def test_refiner_with_hires_fix_acts_in_the_second_pass(models):
    recorder = UnetRecorder(base=models("sdxl"), refiner=models("refiner"))
    try:
        result = run(models("sdxl"), models, steps=4, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=6,
                     denoising_strength=0.9, refiner_checkpoint="refiner", refiner_switch_at=0.5)
    finally:
        recorder.close()
    names = [name for name, _ in recorder.calls]
    assert names[:4] == ["base"] * 4  # the whole first pass is the base model's
    second = names[4:]
    assert len(second) == 6 and second[0] == "base" and second[-1] == "refiner"
    assert second == sorted(second)  # base, then refiner, never back
    assert result.images[0].size == (96, 96)
    info = parse_infotext(result.infotexts[0])
    assert "Refiner" in info and info["Hires upscale"] == "1.5"


def test_refiner_needs_a_loader(models):
    with pytest.raises(GenerationError):
        run(models("sdxl"), None, steps=2, refiner_checkpoint="refiner")


# ------------------------------------------------------------------------------------------------- tiling


def test_circular_padding_matches_a_wrapped_convolution_and_is_restored():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 8, 8)
    wrapped = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular")
    expected = torch.nn.functional.conv2d(wrapped, conv.weight, conv.bias)
    with circular_padding(conv) as changed:
        assert changed == 1
        out = conv(x)
    assert torch.allclose(out, expected, atol=1e-6)
    # On the seam the output sees the opposite edge: zero padding would not.
    assert not torch.allclose(conv(x)[..., 0], expected[..., 0])
    assert conv.padding_mode == "zeros"


def test_tiling_makes_unet_and_vae_wrap_around(models):
    model = models("sd1")
    torch.manual_seed(1)
    x = torch.randn(1, 4, 8, 8)
    cond = torch.randn(1, 77, model.unet.config.cross_attention_dim)
    t = torch.tensor([500])

    def unet(latent):
        return model.unet(latent, t, encoder_hidden_states=cond, return_dict=False)[0]

    shift = 4  # a multiple of the UNet's downsampling
    with torch.inference_mode():
        with circular_padding(model.unet, model.vae):
            rolled = unet(torch.roll(x, shift, dims=-1))
            assert torch.allclose(rolled, torch.roll(unet(x), shift, dims=-1), atol=1e-4)
            decoded = model.vae.decode(torch.roll(x, 2, dims=-1), return_dict=False)[0]
            assert torch.allclose(decoded, torch.roll(model.vae.decode(x, return_dict=False)[0], 16, dims=-1),
                                  atol=1e-4)
        # Without tiling the edges are zero-padded: shifting the input does not just shift the output.
        assert not torch.allclose(unet(torch.roll(x, shift, dims=-1)), torch.roll(unet(x), shift, dims=-1),
                                  atol=1e-4)
    assert all(m.padding_mode == "zeros" for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d))


def test_tiling_job_infotext_and_restores_the_model(models):
    model = models("sd1")
    tiled = run(model, steps=2, tiling=True)
    plain = run(model, steps=2)
    assert parse_infotext(tiled.infotexts[0])["Tiling"] == "True"
    assert "Tiling" not in parse_infotext(plain.infotexts[0])
    assert not torch.equal(tiled.latents, plain.latents)
    assert all(m.padding_mode == "zeros" for m in model.vae.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(run(model, steps=2).latents, plain.latents)


def test_hires_prompt_networks_are_applied_for_the_hires_pass(models):
    """A `<lora:...>` tag in the hires prompt is handed to the extra-networks hook for the second pass only."""
    from contextlib import contextmanager

    from sdwebui.pipelines.context import NetworkActivation

    seen = []

    @contextmanager
    def hook(model, calls):
        seen.append(tuple(call.tag for call in calls))
        yield NetworkActivation(infotext={"Lora hashes": "x: 0123"} if calls else {})

    model = models("sd1")
    params = Txt2ImgParams(prompt="a cube", hr_prompt="a cube <lora:x:0.5>", width=64, height=64, steps=2, seed=1,
                           sampler="Euler", enable_hr=True, denoising_strength=0.5, batch_count=2, rng="cpu")
    result = txt2img(GenerationContext(model=model, extra_networks=hook), params)
    # First pass: no networks; hires pass: the tag; and again for the second batch.
    assert [len(tags) for tags in seen] == [0, 1, 0, 1]
    assert "Lora hashes" in parse_infotext(result.infotexts[0])
