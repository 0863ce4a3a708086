"""Hires fix, refiner and tiling through the A1111 API and the native API (real server, tiny models)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from test_api_support import LiveServer, decode_png, make_data_dir, wait_for_job


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path, tiny_sdxl_path, tiny_sdxl_refiner_path):
    from test_upscalers import tiny_esrgan_state_dict

    data = make_data_dir(tmp_path_factory.mktemp("hires-api"), tiny_sd1_path)
    ckpt = data / "models" / "Stable-diffusion"
    shutil.copyfile(tiny_sd1_path, ckpt / "tiny-sd1-b.safetensors")
    shutil.copyfile(tiny_sdxl_path, ckpt / "tiny-sdxl.safetensors")
    shutil.copyfile(tiny_sdxl_refiner_path, ckpt / "tiny-sdxl-refiner.safetensors")
    (data / "models" / "ESRGAN").mkdir(parents=True)
    torch.save(tiny_esrgan_state_dict(), data / "models" / "ESRGAN" / "tiny-2x.pth")
    with LiveServer(data) as live:
        yield live


def post(client, **fields):
    body = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 7,
            "override_settings": {"sd_model_checkpoint": "tiny-sd1"}, **fields}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return data, json.loads(data["info"])


def test_enable_hr_latent(server):
    with server.client() as client:
        body, info = post(client, enable_hr=True, hr_scale=2, denoising_strength=0.5, hr_second_pass_steps=3)
    assert decode_png(body["images"][0]).size == (128, 128)
    extra = info["extra_generation_params"]
    assert extra["Hires upscale"] == "2" and extra["Hires steps"] == "3" and extra["Hires upscaler"] == "Latent"
    assert "Denoising strength: 0.5" in info["infotexts"][0]
    assert info["width"] == 64  # the first pass's size, as A1111 reports it


def test_enable_hr_model_upscaler_resize_to_and_hires_options(server):
    with server.client() as client:
        body, info = post(client, enable_hr=True, hr_upscaler="tiny-2x", hr_resize_x=96, hr_resize_y=80,
                          hr_sampler_name="DPM++ 2M", hr_scheduler="Karras", hr_prompt="a blue cube",
                          hr_checkpoint_name="tiny-sd1-b", denoising_strength=0.4)
    assert decode_png(body["images"][0]).size == (96, 80)
    text = info["infotexts"][0]
    for part in ("Hires resize: 96x80", "Hires upscaler: tiny-2x", "Hires sampler: DPM++ 2M",
                 "Hires schedule type: Karras", 'Hires prompt: a blue cube', "Hires checkpoint: tiny-sd1-b ["):
        assert part in text, (part, text)


def test_use_same_names_mean_none(server):
    with server.client() as client:
        _, info = post(client, enable_hr=True, hr_scale=1.5, hr_checkpoint_name="Use same checkpoint",
                       hr_sampler_name="Use same sampler", refiner_checkpoint="None")
    assert "Hires checkpoint" not in info["infotexts"][0] and "Hires sampler" not in info["infotexts"][0]


def test_refiner_and_tiling(server):
    with server.client() as client:
        body, info = post(client, override_settings={"sd_model_checkpoint": "tiny-sdxl"},
                          refiner_checkpoint="tiny-sdxl-refiner", refiner_switch_at=0.5, steps=4, tiling=True)
    text = info["infotexts"][0]
    assert "Refiner: tiny-sdxl-refiner [" in text and "Refiner switch at: 0.5" in text
    assert "Tiling: True" in text
    assert decode_png(body["images"][0]).size == (64, 64)


def test_infotext_paste_turns_hires_on(server):
    infotext = "a red cube\nSteps: 2, Sampler: Euler, Seed: 7, Size: 64x64, Denoising strength: 0.5, " \
               "Hires upscale: 1.5, Hires upscaler: Latent (nearest)"
    with server.client() as client:
        body, info = post(client, infotext=infotext)
    assert decode_png(body["images"][0]).size == (96, 96)
    assert "Hires upscaler: Latent (nearest)" in info["infotexts"][0]


def test_native_job_with_hires(server):
    with server.client() as client:
        r = client.post("/api/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 3,
                                              "model": "tiny-sd1", "enable_hr": True, "hr_scale": 1.5,
                                              "hr_upscaler": "Lanczos", "save_images": False})
        assert r.status_code == 202, r.text
        view = wait_for_job(client, r.json()["id"], timeout=120)
        assert view["status"] == "done", view
        assert "Hires upscaler: Lanczos" in view["result"]["infotexts"][0]
        r = client.post("/api/v1/jobs", json={"prompt": "x", "enable_hr": True, "hr_upscaler": "nope"})
        assert r.status_code == 422 and r.json()["field"] == "hr_upscaler"


def test_infotext_paste_brings_the_refiner_back(server):
    with server.client() as client:
        _, first = post(client, override_settings={"sd_model_checkpoint": "tiny-sdxl"},
                        refiner_checkpoint="tiny-sdxl-refiner", refiner_switch_at=0.5, steps=4)
        _, again = post(client, infotext=first["infotexts"][0], override_settings={}, steps=4)
    assert "Refiner: tiny-sdxl-refiner [" in again["infotexts"][0]
    assert again["infotexts"][0] == first["infotexts"][0]
