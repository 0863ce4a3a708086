"""img2img end to end on tiny real models: strength semantics, resize modes' geometry (A1111's resize_image
rules), initial noise multiplier, infotext keys, batches of init images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdwebui.models.loader import load_checkpoint
from sdwebui.pipelines import masking
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.img2img import img2img, prepare_images
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.params import ParamError
from sdwebui.pipelines.sampling import make_denoiser
from sdwebui.pipelines.vae_decode import decode_latents
from sdwebui.pipelines.vae_encode import encode_images

SIZE = 64


@pytest.fixture(scope="module")
def model(tiny_sd1_path):
    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


def gradient(width=SIZE, height=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, mode="RGB")


def run(model, images, mask=None, **kwargs):
    values = dict(prompt="a cat", width=SIZE, height=SIZE, steps=4, seed=42, sampler="Euler", rng="cpu")
    values.update(kwargs)
    return img2img(GenerationContext(model=model), Img2ImgParams(**values), images, mask)


def test_strength_zero_returns_the_vae_round_trip(model):
    image = gradient()
    result = run(model, [image], denoising_strength=0.0)
    expected = encode_images(model, [image])
    assert torch.equal(result.latents, expected.float())
    decoded, _ = decode_latents(model, expected)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(decoded[0]))


@pytest.mark.parametrize("strength,steps,expected_calls", [(0.5, 10, 6), (0.75, 8, 7), (1.0, 4, 4)])
def test_strength_runs_t_enc_plus_one_steps(model, strength, steps, expected_calls):
    seen = []
    ctx = GenerationContext(model=model, on_step=lambda p: seen.append((p.step, p.total_steps)))
    params = Img2ImgParams(prompt="x", width=SIZE, height=SIZE, steps=steps, seed=1, sampler="Euler",
                           denoising_strength=strength, rng="cpu")
    img2img(ctx, params, [gradient()])
    assert seen[-1] == (expected_calls, expected_calls)


def test_fix_steps_runs_exactly_the_requested_steps(model):
    seen = []
    ctx = GenerationContext(model=model, on_step=lambda p: seen.append(p.total_steps))
    params = Img2ImgParams(prompt="x", width=SIZE, height=SIZE, steps=5, seed=1, sampler="Euler",
                           denoising_strength=0.3, fix_steps=True, rng="cpu")
    img2img(ctx, params, [gradient()])
    assert len(seen) == 5 and seen[-1] == 5


def test_start_latent_is_init_plus_seeded_noise_times_sigma(model, monkeypatch):
    from sdwebui.core.noise import ImageRNG
    from sdwebui.core.samplers import find_sampler
    from sdwebui.pipelines.denoise import denoise_sigmas

    image = gradient()
    starts = []
    ctx = GenerationContext(model=model)
    euler = find_sampler("Euler")
    original = euler.function

    def spy(denoiser, x, sigmas, **kw):
        starts.append((x.clone(), sigmas.clone()))
        return original(denoiser, x, sigmas, **kw)

    import dataclasses
    spy_spec = dataclasses.replace(euler, function=spy)
    from sdwebui.pipelines import img2img as module

    resolved = module.resolve_sampling("Euler")
    monkeypatch.setattr(module, "resolve_sampling", lambda *a, **k: dataclasses.replace(resolved, sampler=spy_spec))
    img2img(ctx, Img2ImgParams(prompt="x", width=SIZE, height=SIZE, steps=10, seed=7, sampler="Euler",
                               denoising_strength=0.6, initial_noise_multiplier=0.9, rng="cpu"), [image])
    x, sigmas = starts[0]
    full = euler.sigmas(10, make_denoiser(model), "Automatic")
    assert torch.equal(sigmas, full[10 - 6 - 1:])
    noise = ImageRNG((4, SIZE // 8, SIZE // 8), [7], device="cpu", rng="cpu").first()
    expected = encode_images(model, [image]) + noise * 0.9 * full[3]
    torch.testing.assert_close(x, expected)


def test_infotext_has_denoising_strength_and_noise_multiplier(model):
    result = run(model, [gradient()], denoising_strength=0.5, initial_noise_multiplier=0.8)
    text = result.infotexts[0]
    assert "Seed: 42, Size: 64x64," in text
    assert ", Denoising strength: 0.5," in text
    assert text.index("Denoising strength") < text.index("Noise multiplier: 0.8")
    assert "Mask blur" not in text


def test_resize_modes_geometry():
    wide = Image.new("RGB", (128, 64), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 8, 64))  # a blue left edge
    # Just resize: stretched.
    assert masking.resize_image(0, wide, 64, 64).size == (64, 64)
    # Crop and resize: scaled to cover (128x64 -> 128x64 at height 64), centred, sides cropped: no blue left.
    cropped = np.asarray(masking.resize_image(1, wide, 64, 64))
    assert cropped[:, :4, 2].max() < 50
    # Resize and fill: scaled to fit (64x32), centred; the bands above/below are the edge rows stretched.
    filled = masking.resize_image(2, wide, 64, 64)
    array = np.asarray(filled)
    assert filled.size == (64, 64)
    assert (array[:16, 40:, 0] > 200).all() and (array[48:, 40:, 0] > 200).all()
    assert array[30, 0, 2] > 200  # blue edge column kept in the fitted image


def test_resize_and_fill_stretches_the_edge_columns():
    tall = Image.new("RGB", (32, 64), (0, 255, 0))
    tall.paste((255, 255, 255), (0, 0, 1, 64))  # white left column
    tall.paste((0, 0, 0), (31, 0, 32, 64))  # black right column
    out = np.asarray(masking.resize_image(2, tall, 64, 64))
    # Fitted width 32 at x 16..48; the bands left/right come from the edge columns.
    assert (out[:, :14] > 200).all()
    assert (out[:, 50:] < 60).all()


def test_latent_upscale_mode_encodes_at_the_input_size(model):
    small = gradient(32, 32)
    result = run(model, [small], resize_mode=3, denoising_strength=0.0)
    expected = torch.nn.functional.interpolate(encode_images(model, [small]), size=(8, 8), mode="bilinear")
    torch.testing.assert_close(result.latents, expected)
    assert result.images[0].size == (SIZE, SIZE)


def test_batch_of_init_images(model):
    result = run(model, [gradient(seed=1), gradient(seed=2)], batch_size=2, denoising_strength=0.0)
    assert len(result.images) == 2 and result.seeds == [42, 43]
    assert not torch.equal(result.latents[0], result.latents[1])
    with pytest.raises(ParamError) as error:
        run(model, [gradient(), gradient()], batch_size=1)
    assert error.value.field == "init_images"


def test_one_image_for_a_batch_matches_single_runs(model):
    image = gradient()
    batch = run(model, [image], batch_size=2, denoising_strength=0.6, sampler="Euler a")
    single = run(model, [image], seed=43, denoising_strength=0.6, sampler="Euler a")
    scale = max(1.0, float(single.latents.abs().max()))
    torch.testing.assert_close(batch.latents[1:], single.latents, atol=1e-4 * scale, rtol=0)


def test_sketch_is_the_init_image(model):
    """A colour sketch is flattened into the init image: an RGBA sketch layer over a white background."""
    sketch = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    sketch.paste((255, 0, 0, 255), (10, 10, 30, 30))
    prepared = prepare_images(Img2ImgParams(prompt="", width=SIZE, height=SIZE), [sketch])
    array = np.asarray(prepared.images[0])
    assert tuple(array[20, 20]) == (255, 0, 0) and tuple(array[50, 50]) == (255, 255, 255)


def test_bad_strength_names_the_field():
    with pytest.raises(ParamError) as error:
        Img2ImgParams(prompt="", denoising_strength=1.5)
    assert error.value.field == "denoising_strength"
    with pytest.raises(ParamError) as error:
        Img2ImgParams(prompt="", resize_mode=4)
    assert error.value.field == "resize_mode"


@pytest.mark.parametrize("fixture", ["tiny_sd2_v_path", "tiny_sdxl_path"])
def test_other_families_do_img2img_and_inpainting(request, fixture):
    other = load_checkpoint(request.getfixturevalue(fixture), device="cpu", dtype=torch.float32,
                            vae_dtype=torch.float32)
    image = gradient()
    plain = run(other, [image], denoising_strength=0.5, steps=2)
    assert plain.images[0].size == (SIZE, SIZE) and torch.isfinite(plain.latents).all()
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, 32, 32))
    inpainted = run(other, [image], mask, denoising_strength=1.0, steps=2, mask_blur_x=0, mask_blur_y=0)
    out = np.asarray(inpainted.images[0])
    assert np.array_equal(out[32:, 32:], np.asarray(image)[32:, 32:])


def test_batch_count_and_interrupt_keep_what_was_made(model):
    from sdwebui.pipelines.context import StopFlags

    stop = StopFlags()

    def on_step(progress):
        if progress.batch_index == 1 and progress.step == 1:
            stop.interrupt()

    ctx = GenerationContext(model=model, on_step=on_step, stop=stop)
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, 16, 16))
    result = img2img(ctx, Img2ImgParams(prompt="x", width=SIZE, height=SIZE, steps=3, seed=3, batch_count=3,
                                        sampler="Euler", mask_blur_x=0, mask_blur_y=0, rng="cpu"), [gradient()], mask)
    assert result.interrupted and result.seeds == [3, 4]
    assert len(result.images) == 2 and all(image.size == (SIZE, SIZE) for image in result.images)
    # The interrupted image is still pasted back through the mask.
    assert np.array_equal(np.asarray(result.images[1])[32:], np.asarray(gradient())[32:])
