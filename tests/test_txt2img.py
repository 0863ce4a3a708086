"""txt2img end to end on tiny real models loaded from single-file checkpoints.

The reference tests run diffusers' own pipelines on the ORIGINAL tiny modules (before they were written to
disk in the LDM layout and loaded back through our loader) with the same prompt, sigmas and noise: equal
latents prove the whole wiring (conversion, tokenizer, text encoder layers, CFG, scaling, timesteps, SDXL
micro-conditioning).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny, write_single_file

from sdwebui.core.noise import ImageRNG
from sdwebui.core.samplers import resolve_sampling
from sdwebui.models.family import ModelFamily
from sdwebui.models.loader import load_checkpoint
from sdwebui.models.tokenizer import load_clip_tokenizer
from sdwebui.pipelines.context import GenerationContext, StopFlags
from sdwebui.pipelines.params import ParamError, Txt2ImgParams
from sdwebui.pipelines.sampling import make_denoiser
from sdwebui.pipelines.txt2img import txt2img

SIZE = 64
PROMPT = "a photo of an astronaut riding a horse on mars"
NEGATIVE = "blurry, low quality"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """family -> (original TinyModel, path of its single-file checkpoint)."""
    folder = tmp_path_factory.mktemp("txt2img-models")
    out = {}
    for family in (ModelFamily.SD1, ModelFamily.SD2, ModelFamily.SDXL, ModelFamily.SDXL_REFINER):
        tiny = build_tiny(family, seed=3)
        out[family] = (tiny, write_single_file(tiny, folder / f"tiny-{family.value}.safetensors"))
    return out


def load(tiny_files, family, **kwargs):
    tiny, path = tiny_files[family]
    model = load_checkpoint(path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32, **kwargs)
    return tiny, model


def run(model, **kwargs):
    values = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=SIZE, height=SIZE, steps=4, seed=1234, rng="cpu")
    values.update(kwargs)
    return txt2img(GenerationContext(model=model), Txt2ImgParams(**values))


def initial_noise(model, seeds, steps=4):
    shape = (model.latent_channels, SIZE // 8, SIZE // 8)
    return ImageRNG(shape, seeds, device="cpu", rng="cpu").first()


def euler_sigmas(model, steps=4):
    return resolve_sampling("Euler").sampler.sigmas(steps, make_denoiser(model), "Automatic")


def assert_latents_match(ours, theirs):
    """Equal to 1e-4 of the latents' range. Random tiny UNets give latents up to ~60, and diffusers computes
    timesteps in float32 numpy (998.9999 where we get 999.0), which alone moves them by ~1e-6 relative."""
    assert ours.shape == theirs.shape
    scale = max(1.0, float(ours.abs().max()))
    torch.testing.assert_close(ours, theirs.float(), atol=1e-4 * scale, rtol=0)


def euler_scheduler(prediction_type):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        timestep_spacing="linspace", prediction_type=prediction_type,
    )


@pytest.mark.parametrize("family,prediction", [(ModelFamily.SD1, "epsilon"), (ModelFamily.SD2, "v_prediction")])
def test_sd_latents_match_diffusers_pipeline(tiny_files, family, prediction):
    from diffusers import StableDiffusionPipeline

    tiny, model = load(tiny_files, family, prediction_type=prediction)
    ours = run(model, sampler="Euler").latents

    encoder_name = "clip_l" if family == ModelFamily.SD1 else "clip_h"
    pipe = StableDiffusionPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoders[encoder_name],
        tokenizer=load_clip_tokenizer("clip_l" if family == ModelFamily.SD1 else "open_clip"),
        unet=tiny.unet, scheduler=euler_scheduler(prediction), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    theirs = pipe(
        PROMPT, negative_prompt=NEGATIVE, width=SIZE, height=SIZE, guidance_scale=7.0,
        sigmas=euler_sigmas(model).tolist(), latents=initial_noise(model, [1234]), output_type="latent",
    ).images
    assert_latents_match(ours, theirs)


def test_sdxl_latents_match_diffusers_pipeline(tiny_files):
    from diffusers import StableDiffusionXLPipeline

    tiny, model = load(tiny_files, ModelFamily.SDXL)
    ours = run(model, sampler="Euler").latents
    pipe = StableDiffusionXLPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoders["clip_l"], text_encoder_2=tiny.text_encoders["clip_g"],
        tokenizer=load_clip_tokenizer("clip_l"), tokenizer_2=load_clip_tokenizer("open_clip"), unet=tiny.unet,
        scheduler=euler_scheduler("epsilon"), force_zeros_for_empty_prompt=False,
    )
    theirs = pipe(
        PROMPT, negative_prompt=NEGATIVE, width=SIZE, height=SIZE, guidance_scale=7.0,
        sigmas=euler_sigmas(model).tolist(), latents=initial_noise(model, [1234]), output_type="latent",
    ).images
    assert_latents_match(ours, theirs)


def test_same_seed_same_image_and_batches_are_independent(tiny_files):
    _, model = load(tiny_files, ModelFamily.SD1)
    single = run(model, seed=77, sampler="Euler a")
    again = run(model, seed=77, sampler="Euler a")
    assert torch.equal(single.latents, again.latents)
    assert list(single.images[0].getdata()) == list(again.images[0].getdata())

    batch = run(model, seed=76, batch_size=2, sampler="Euler a")
    assert batch.seeds == [76, 77]
    # Same noise; only the UNet's batched float arithmetic differs (~1e-6 of the range on CPU kernels).
    assert_latents_match(batch.latents[1:], single.latents)
    counted = run(model, seed=76, batch_count=2, sampler="Euler a")
    assert counted.seeds == [76, 77]
    assert torch.equal(counted.latents[1:], single.latents)


def test_random_seed_is_resolved_and_recorded(tiny_files):
    _, model = load(tiny_files, ModelFamily.SD1)
    result = run(model, seed=-1, steps=1)
    assert result.params.seed >= 0
    assert f"Seed: {result.seeds[0]}," in result.infotexts[0]


def test_infotext_is_a1111_format(tiny_files):
    _, model = load(tiny_files, ModelFamily.SD1)
    result = run(model, steps=3, cfg_scale=7.0, clip_skip=2)
    expected = (
        f"{PROMPT}\nNegative prompt: {NEGATIVE}\n"
        f"Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 64x64, "
        f"Model hash: {model.info.short_hash}, Model: tiny-sd1, Clip skip: 2, RNG: CPU, Version: sdwebui-0.1.0"
    )
    assert result.infotexts[0] == expected
    euler_a = run(model, steps=1, sampler="k_euler_a", negative_prompt="").infotexts[0]
    assert "\nNegative prompt" not in euler_a
    assert "Sampler: Euler a, Schedule type: Automatic," in euler_a


def test_legacy_combined_sampler_name(tiny_files):
    _, model = load(tiny_files, ModelFamily.SD1)
    legacy = run(model, steps=3, sampler="DPM++ 2M Karras")
    modern = run(model, steps=3, sampler="DPM++ 2M", scheduler="Karras")
    assert torch.equal(legacy.latents, modern.latents)
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in legacy.infotexts[0]


def test_sdxl_and_refiner_generate_images(tiny_files):
    for family in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER):
        _, model = load(tiny_files, family)
        result = run(model, steps=2)
        assert result.images[0].size == (SIZE, SIZE)
        assert torch.isfinite(result.latents).all()


def test_interrupt_keeps_the_current_image_and_skips_the_rest(tiny_files):
    _, model = load(tiny_files, ModelFamily.SD1)
    stop = StopFlags()
    seen = []

    def on_step(progress):
        seen.append((progress.batch_index, progress.step))
        if progress.step == 2:
            stop.interrupt()

    ctx = GenerationContext(model=model, on_step=on_step, stop=stop)
    result = txt2img(ctx, Txt2ImgParams(prompt=PROMPT, width=SIZE, height=SIZE, steps=6, batch_count=3, seed=5,
                                        rng="cpu"))
    assert result.interrupted
    assert len(result.images) == 1 and result.seeds == [5]
    assert seen == [(0, 1), (0, 2)]


def test_skip_abandons_only_the_current_batch(tiny_files):
    _, model = load(tiny_files, ModelFamily.SD1)
    stop = StopFlags()

    def on_step(progress):
        if progress.batch_index == 0 and progress.step == 1:
            stop.skip()

    ctx = GenerationContext(model=model, on_step=on_step, stop=stop)
    result = txt2img(ctx, Txt2ImgParams(prompt=PROMPT, width=SIZE, height=SIZE, steps=3, batch_count=2, seed=5,
                                        rng="cpu"))
    assert not result.interrupted
    assert result.seeds == [6]


def test_each_batch_is_handed_over_as_soon_as_it_is_decoded(tiny_files):
    """`on_images` gets every batch (images, seeds, infotexts) before the next batch samples a step."""
    _, model = load(tiny_files, ModelFamily.SD1)
    events = []
    ctx = GenerationContext(
        model=model, on_step=lambda progress: events.append(("step", progress.batch_index)),
        on_images=lambda batch: events.append(("images", batch)),
    )
    result = txt2img(ctx, Txt2ImgParams(prompt=PROMPT, width=SIZE, height=SIZE, steps=2, batch_count=3,
                                        batch_size=2, seed=5, rng="cpu"))
    handed = [event[1] for event in events if event[0] == "images"]
    assert [batch.seeds for batch in handed] == [[5, 6], [7, 8], [9, 10]]
    assert [event if event[0] == "step" else "images" for event in events] == [
        ("step", 0), ("step", 0), "images", ("step", 1), ("step", 1), "images", ("step", 2), ("step", 2), "images"]
    assert [image for batch in handed for image in batch.images] == result.images
    assert [text for batch in handed for text in batch.infotexts] == result.infotexts
    assert handed[0].params.seed == 5 and "Seed: 6," in handed[0].infotexts[1]


def test_vae_nan_in_half_precision_is_retried_in_fp32(tiny_files):
    """A VAE whose activations overflow fp16 (as SD's VAE does on real GPUs) is decoded again in fp32."""
    _, path = tiny_files[ModelFamily.SD1]
    model = load_checkpoint(path, device="cpu", dtype=torch.float32, vae_dtype=torch.float16)
    assert next(model.vae.parameters()).dtype == torch.float16
    with torch.no_grad():
        # Weights still fit fp16 (|w| < 65504) but their products with the latents do not.
        model.vae.post_quant_conv.weight.mul_(2000.0)
    result = run(model, steps=1)
    assert any("decoded again in float32" in note for note in result.notes)
    assert result.images[0].getextrema() != ((0, 0), (0, 0), (0, 0))
    assert next(model.vae.parameters()).dtype == torch.float16


@pytest.mark.parametrize(
    "changes,field",
    [({"width": 65}, "width"), ({"height": 0}, "height"), ({"steps": 0}, "steps"), ({"cfg_scale": -1}, "cfg_scale"),
     ({"batch_size": 0}, "batch_size"), ({"seed": -2}, "seed"), ({"clip_skip": 0}, "clip_skip")],
)
def test_bad_parameters_name_the_field(changes, field):
    values = dict(prompt="x")
    values.update(changes)
    with pytest.raises(ParamError) as error:
        Txt2ImgParams(**values)
    assert error.value.field == field


def test_unknown_sampler_and_schedule_name_the_field():
    with pytest.raises(ParamError) as error:
        resolve_sampling("Eulerish")
    assert error.value.field == "sampler" and "Euler a" in str(error.value)
    with pytest.raises(ParamError) as error:
        resolve_sampling("Euler", "Karrass")
    assert error.value.field == "scheduler"


def test_variation_seed_strength_edges_and_infotext(tiny_files):
    _, model = load(tiny_files, ModelFamily.SD1)
    plain = run(model, seed=10, steps=2, sampler="Euler")
    none = run(model, seed=10, subseed=99, subseed_strength=0.0, steps=2, sampler="Euler")
    assert torch.equal(plain.latents, none.latents)
    assert "Variation seed" not in none.infotexts[0]

    full = run(model, seed=10, subseed=99, subseed_strength=1.0, steps=2, sampler="Euler")
    as_seed = run(model, seed=99, steps=2, sampler="Euler")
    torch.testing.assert_close(full.latents, as_seed.latents, atol=1e-4, rtol=1e-4)

    half = run(model, seed=10, subseed=99, subseed_strength=0.5, steps=2, batch_size=2, sampler="Euler")
    assert half.seeds == [10, 10]  # A1111: with a variation strength the seed stays, the subseed counts up
    assert "Seed: 10, Size: 64x64" in half.infotexts[1]
    assert "Variation seed: 100, Variation seed strength: 0.5," in half.infotexts[1]


def test_seed_resize_from_is_recorded_and_changes_noise(tiny_files):
    _, model = load(tiny_files, ModelFamily.SD1)
    plain = run(model, seed=10, steps=1, sampler="Euler")
    resized = run(model, seed=10, steps=1, sampler="Euler", seed_resize_from_w=128, seed_resize_from_h=96)
    assert not torch.equal(plain.latents, resized.latents)
    assert "Seed resize from: 128x96," in resized.infotexts[0]


def test_sampler_and_schedule_options_reach_the_sampler_and_the_infotext(tiny_files):
    _, model = load(tiny_files, ModelFamily.SD1)
    base = run(model, seed=3, steps=3, sampler="Euler a")
    low_eta = run(model, seed=3, steps=3, sampler="Euler a", eta=0.5)
    assert not torch.equal(base.latents, low_eta.latents)
    assert "Eta: 0.5," in low_eta.infotexts[0] and "Eta" not in base.infotexts[0]

    churned = run(model, seed=3, steps=3, sampler="Euler", s_churn=1.0)
    assert "Sigma churn: 1," in churned.infotexts[0]

    karras = run(model, seed=3, steps=3, sampler="DPM++ 2M", sigma_max=10.0, rho=5.0, discard_penultimate_sigma=True)
    text = karras.infotexts[0]
    assert "Schedule max sigma: 10, Schedule rho: 5, Discard penultimate sigma: True, Version:" in text
    default = run(model, seed=3, steps=3, sampler="DPM++ 2M")
    assert not torch.equal(default.latents, karras.latents)


def test_every_sampler_generates_through_the_pipeline(tiny_files):
    from sdwebui.core.samplers import SAMPLERS

    _, model = load(tiny_files, ModelFamily.SD1)
    for name in SAMPLERS:
        result = run(model, seed=1, steps=3, sampler=name)
        assert torch.isfinite(result.latents).all(), name
        assert f"Sampler: {name}," in result.infotexts[0]
