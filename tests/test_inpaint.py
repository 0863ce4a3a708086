"""Inpainting and outpainting on tiny real models: pixels away from the mask are the original's (bit-exact after
the overlay), masked content modes, "only masked" crop/paste geometry, mask invert and blur, and the 9-channel
inpainting model's masked-image conditioning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdwebui.models.loader import load_checkpoint
from sdwebui.pipelines import masking
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.img2img import img2img, is_inpainting_model, prepare_images
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.vae_encode import encode_images, encode_pixels, pil_to_tensor

SIZE = 64


@pytest.fixture(scope="module")
def model(tiny_sd1_path):
    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


@pytest.fixture(scope="module")
def inpaint_model(tiny_sd1_inpaint_path):
    return load_checkpoint(tiny_sd1_inpaint_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


def noise_image(width=SIZE, height=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


def box_mask(width, height, box):
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def run(model, image, mask, **kwargs):
    values = dict(prompt="a dog", width=SIZE, height=SIZE, steps=3, seed=3, sampler="Euler",
                  denoising_strength=1.0, mask_blur_x=2, mask_blur_y=2, rng="cpu")
    values.update(kwargs)
    return img2img(GenerationContext(model=model), Img2ImgParams(**values), [image], mask)


def test_whole_picture_keeps_pixels_away_from_the_mask(model):
    image = noise_image()
    mask = box_mask(SIZE, SIZE, (24, 24, 40, 40))
    result = run(model, image, mask)
    out, original = np.asarray(result.images[0]), np.asarray(image)
    blurred = np.asarray(masking.blur_mask(mask, 2, 2))
    untouched = blurred == 0
    assert untouched.sum() > 0.7 * SIZE * SIZE
    assert np.array_equal(out[untouched], original[untouched])
    assert not np.array_equal(out[28:36, 28:36], original[28:36, 28:36])
    assert "Mask blur: 2," in result.infotexts[0]
    assert "Masked content" not in result.infotexts[0]  # "original" is not written, as in A1111


def test_inpaint_not_masked_inverts(model):
    image = noise_image()
    mask = box_mask(SIZE, SIZE, (0, 0, 32, SIZE))
    result = run(model, image, mask, inpainting_mask_invert=True, mask_blur_x=0, mask_blur_y=0)
    out, original = np.asarray(result.images[0]), np.asarray(image)
    assert np.array_equal(out[:, :32], original[:, :32])
    assert not np.array_equal(out[:, 40:], original[:, 40:])
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


def test_only_masked_crop_and_paste_geometry(model):
    image = noise_image(128, 96, seed=5)
    mask = box_mask(128, 96, (100, 10, 110, 20))
    params = Img2ImgParams(prompt="", width=SIZE, height=SIZE, inpaint_full_res=True, inpaint_full_res_padding=4,
                           mask_blur_x=0, mask_blur_y=0)
    prepared = prepare_images(params, [image], mask)
    # bbox (100,10,110,20) + 4 padding = (96,6,114,24): square already, so no growth.
    assert prepared.paste_to == (96, 6, 18, 18)
    assert prepared.images[0].size == (SIZE, SIZE)
    assert prepared.infotext["Inpaint area"] == "Only masked"
    assert prepared.infotext["Masked area padding"] == 4

    result = run(model, image, mask, inpaint_full_res=True, inpaint_full_res_padding=4, mask_blur_x=0, mask_blur_y=0)
    out, original = np.asarray(result.images[0]), np.asarray(image)
    assert result.images[0].size == (128, 96)  # pasted back into the original
    outside = np.ones((96, 128), dtype=bool)
    outside[10:20, 100:110] = False
    assert np.array_equal(out[outside], original[outside])
    assert not np.array_equal(out[10:20, 100:110], original[10:20, 100:110])
    assert "Inpaint area: Only masked, Masked area padding: 4" in result.infotexts[0]


def test_expand_crop_region_grows_to_the_output_aspect_inside_the_image():
    # A wide region in a tall image, processing 64x64: grows in height, centred, kept inside.
    assert masking.expand_crop_region((10, 10, 50, 20), 64, 64, 100, 200) == (10, 0, 50, 40)
    # A tall region near the right edge of the image: grows in width and is shifted back inside.
    assert masking.expand_crop_region((90, 0, 100, 40), 64, 64, 100, 100) == (60, 0, 100, 40)


def test_blank_mask_with_only_masked_falls_back_to_img2img(model):
    params = Img2ImgParams(prompt="", width=SIZE, height=SIZE, inpaint_full_res=True)
    prepared = prepare_images(params, [noise_image()], Image.new("L", (SIZE, SIZE), 0))
    assert prepared.image_mask is None and prepared.overlays is None
    assert "Inpaint Only mask" in prepared.notes[0]


@pytest.mark.parametrize("fill,label", [(0, "fill"), (2, "latent noise"), (3, "latent nothing")])
def test_masked_content_modes(model, fill, label):
    image = noise_image()
    mask = box_mask(SIZE, SIZE, (16, 16, 48, 48))
    result = run(model, image, mask, inpainting_fill=fill, denoising_strength=0.0, mask_blur_x=0, mask_blur_y=0)
    assert f"Masked content: {label}" in result.infotexts[0]
    latents = result.latents[0]
    inside = (slice(None), slice(3, 5), slice(3, 5))
    # A1111 runs `masking.fill` for every mode but "original"; latent noise / nothing then replace the masked latents.
    filled = encode_images(model, [masking.fill(image, mask)])[0]
    if fill == 3:
        assert torch.count_nonzero(latents[inside]) == 0
    elif fill == 2:
        from sdwebui.core.noise import ImageRNG

        noise = ImageRNG((4, 8, 8), [3], device="cpu", rng="cpu").first()[0]
        torch.testing.assert_close(latents[inside], noise[inside])
    else:
        torch.testing.assert_close(latents, filled)
        assert not torch.allclose(latents[inside], encode_images(model, [image])[0][inside])
    assert torch.equal(latents[:, 0, :], filled[:, 0, :])  # outside the latent mask: the init latent


def test_fill_smears_surrounding_colours_into_the_hole():
    image = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    image.paste((0, 0, 0), (20, 20, 44, 44))
    mask = box_mask(SIZE, SIZE, (20, 20, 44, 44))
    filled = np.asarray(masking.fill(image, mask)).astype(int)
    assert abs(filled[32, 32] - np.array([200, 30, 30])).max() < 10


def test_outpainting_with_resize_and_fill_fills_the_border(model):
    wide = noise_image(SIZE, 32, seed=9)
    mask = Image.new("L", (SIZE, SIZE), 255)
    mask.paste(0, (0, 16, SIZE, 48))  # keep the fitted image in the middle, repaint the bands
    result = run(model, wide, mask, resize_mode=2, mask_blur_x=0, mask_blur_y=0)
    reference = np.asarray(masking.resize_image(2, wide, SIZE, SIZE))
    out = np.asarray(result.images[0])
    assert np.array_equal(out[16:48], reference[16:48])
    assert not np.array_equal(out[:16], reference[:16])


def test_inpainting_model_gets_the_masked_image_conditioning(inpaint_model):
    assert is_inpainting_model(inpaint_model)
    image = noise_image(seed=4)
    mask = box_mask(SIZE, SIZE, (8, 8, 40, 40))
    seen = []
    unet = inpaint_model.unet
    hook = unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        result = run(inpaint_model, image, mask, mask_blur_x=0, mask_blur_y=0, cfg_scale=1.0)
    finally:
        hook.remove()
    assert seen and all(x.shape[1] == 9 for x in seen)
    # Closed form: [mask at latent size, VAE latents of image * (1 - mask)] (A1111 / diffusers).
    source = pil_to_tensor([image])
    mask_t = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None, None]
    masked_latents = encode_pixels(inpaint_model, source * (1 - mask_t))
    latent_mask = torch.nn.functional.interpolate(mask_t, size=(8, 8))
    expected = torch.cat([latent_mask, masked_latents], dim=1)
    torch.testing.assert_close(seen[0][:, 4:], expected.to(seen[0].dtype))
    assert "Conditional mask weight: 1," in result.infotexts[0]
    out, original = np.asarray(result.images[0]), np.asarray(image)
    assert np.array_equal(out[48:, 48:], original[48:, 48:])


def test_inpainting_model_does_plain_img2img(inpaint_model):
    """Without a mask the whole image counts as masked (A1111: a mask of ones, a zero masked image)."""
    seen = []
    hook = inpaint_model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        run(inpaint_model, noise_image(), None, denoising_strength=0.5, cfg_scale=1.0)
    finally:
        hook.remove()
    assert torch.equal(seen[0][:, 4], torch.ones_like(seen[0][:, 4]))
    zeros = encode_pixels(inpaint_model, torch.zeros(1, 3, SIZE, SIZE))
    torch.testing.assert_close(seen[0][:, 5:], zeros)


def test_alpha_mask_is_thresholded():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 200), (0, 0, 4, 8))
    rgba.paste((0, 0, 0, 100), (4, 0, 8, 8))
    binary = np.asarray(masking.create_binary_mask(rgba))
    assert (binary[:, :4] == 255).all() and (binary[:, 4:] == 0).all()


def test_mask_blur_matches_a_gaussian_of_a1111_kernel_size():
    mask = box_mask(41, 1, (20, 0, 21, 1))  # one white pixel: the blur is the kernel itself
    blurred = np.asarray(masking.blur_mask(mask, 4, 0), dtype=np.float64)[0]
    size = 2 * int(2.5 * 4 + 0.5) + 1  # 21
    x = np.arange(size) - size // 2
    kernel = np.exp(-(x**2) / 32.0)
    kernel /= kernel.sum()
    expected = np.rint(255 * kernel)
    assert np.array_equal(blurred[20 - size // 2: 20 + size // 2 + 1], expected)
    assert blurred[: 20 - size // 2].sum() == 0


def test_latent_upscale_mode_with_a_mask(model):
    """Resize mode 3 encodes the image at its own size; the result is the output size, overlay included."""
    small = noise_image(32, 32, seed=8)
    mask = box_mask(32, 32, (0, 0, 16, 16))
    result = run(model, small, mask, resize_mode=3, mask_blur_x=0, mask_blur_y=0)
    assert result.images[0].size == (SIZE, SIZE)
