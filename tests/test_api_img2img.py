"""img2img and inpainting over both APIs (`/sdapi/v1/img2img`, native `/api/v1/jobs` type "img2img") against a
real uvicorn server on 127.0.0.1 with tiny SD1 models (plain and 9-channel inpainting)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from test_api_support import FAST, LiveServer, decode_png, make_data_dir, wait_for_job


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path, tiny_sd1_inpaint_path):
    data = make_data_dir(tmp_path_factory.mktemp("img2img"), tiny_sd1_path, "tiny-sd1.safetensors")
    target = data / "models" / "Stable-diffusion" / "zz-inpainting.safetensors"
    target.write_bytes(tiny_sd1_inpaint_path.read_bytes())
    with LiveServer(data) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def noise_image(width=64, height=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


def img2img(client, **fields):
    response = client.post("/sdapi/v1/img2img", json={**FAST, "sampler_name": "Euler", **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    return body, json.loads(body["info"])


def test_img2img_round_trip(client):
    init = noise_image()
    body, info = img2img(client, init_images=[png_b64(init)], denoising_strength=0.5, seed=7, prompt="a cat")
    assert len(body["images"]) == 1
    image = decode_png(body["images"][0])
    assert image.size == (64, 64)
    assert "Denoising strength: 0.5" in image.info["parameters"]
    assert info["denoising_strength"] == 0.5 and info["all_seeds"] == [7]
    assert info["is_using_inpainting_conditioning"] is False
    # The init images are not echoed back unless asked for (A1111).
    assert body["parameters"]["init_images"] is None
    again, _ = img2img(client, init_images=[png_b64(init)], denoising_strength=0.5, seed=7, prompt="a cat",
                       include_init_images=True)
    assert again["parameters"]["init_images"] == [png_b64(init)]
    assert again["images"] == body["images"]  # same seed, same image


def test_inpaint_round_trip_keeps_pixels_outside_the_mask(client):
    init = noise_image(seed=3)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 32, 32))
    body, info = img2img(client, init_images=[png_b64(init)], mask=png_b64(mask), denoising_strength=1.0,
                         mask_blur=0, inpainting_fill=1, inpaint_full_res=False, seed=2)
    out = np.asarray(decode_png(body["images"][0]).convert("RGB"))
    original = np.asarray(init)
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], original[keep])
    assert not np.array_equal(out[16:32, 16:32], original[16:32, 16:32])


def test_inpaint_only_masked_with_the_a1111_defaults(client):
    init = noise_image(96, 80, seed=4)
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (60, 40, 70, 50))
    body, info = img2img(client, init_images=[png_b64(init)], mask=png_b64(mask), mask_blur=0)
    image = decode_png(body["images"][0])
    assert image.size == (96, 80)  # "only masked" (A1111's API default) pastes back into the original
    assert "Inpaint area: Only masked" in info["infotexts"][0]
    assert "Masked content: fill" in info["infotexts"][0]  # A1111's API default inpainting_fill=0


def test_inpainting_model_over_the_api(client):
    init = noise_image(seed=5)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    body, info = img2img(client, init_images=[png_b64(init)], mask=png_b64(mask), inpaint_full_res=False,
                         override_settings={"sd_model_checkpoint": "zz-inpainting"})
    assert info["sd_model_name"] == "zz-inpainting"
    assert info["is_using_inpainting_conditioning"] is True
    assert "Conditional mask weight: 1" in info["infotexts"][0]


@pytest.mark.parametrize("fields,loc", [
    ({"init_images": []}, ["init_images"]),
    ({"init_images": ["not base64!"]}, ["init_images", 0]),
    ({"mask": "@@@"}, ["mask"]),
    ({"mask": "MASK_32"}, ["mask"]),
    ({"denoising_strength": 1.5}, ["body", "denoising_strength"]),
    ({"resize_mode": 7}, ["body", "resize_mode"]),
    ({"inpainting_fill": 4}, ["body", "inpainting_fill"]),
])
def test_bad_img2img_input_is_422_naming_the_field(client, server, fields, loc):
    fields = dict(fields)
    if fields.get("mask") == "MASK_32":
        fields["mask"] = png_b64(Image.new("L", (32, 32), 255))
    fields.setdefault("init_images", [png_b64(noise_image())])
    before = len(server.services.store.jobs(limit=500))
    response = client.post("/sdapi/v1/img2img", json={**FAST, **fields})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    locs = [entry["loc"] for entry in detail] if isinstance(detail, list) else [detail]
    assert any(list(entry)[-len(loc):] == loc for entry in locs), locs
    assert len(server.services.store.jobs(limit=500)) == before


def test_native_img2img_job(client):
    init = noise_image(seed=6)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 32, 64, 64))
    response = client.post("/api/v1/jobs", json={
        "type": "img2img", "prompt": "a dog", **FAST, "sampler": "Euler", "seed": 11,
        "init_images": [png_b64(init)], "mask": png_b64(mask), "mask_blur_x": 0, "mask_blur_y": 0,
        "denoising_strength": 0.9,
    })
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"])
    assert job["status"] == "done", job
    result = job["result"]
    assert result["params"]["denoising_strength"] == 0.9 and result["params"]["inpainting_fill"] == 1
    assert "Denoising strength: 0.9" in result["infotexts"][0]
    image_file = client.get(f"/api/v1/images/{result['images'][0]['id']}/file")
    assert image_file.status_code == 200
    out = np.asarray(Image.open(io.BytesIO(image_file.content)).convert("RGB"))
    assert np.array_equal(out[:32, :32], np.asarray(init)[:32, :32])
    assert "img2img-images" in result["images"][0]["path"]


def test_native_img2img_needs_images_and_rejects_a_bad_mask(client):
    response = client.post("/api/v1/jobs", json={"type": "img2img", "prompt": "x", **FAST})
    assert response.status_code == 422
    assert any("init_images" in entry["loc"] for entry in response.json()["detail"])
    response = client.post("/api/v1/jobs", json={"type": "img2img", "prompt": "x", **FAST,
                                                 "init_images": [png_b64(noise_image())], "mask": "%%%"})
    assert response.status_code == 422, response.text
