"""ControlNet, T2I-Adapter and IP-Adapter (+ its CLIP image encoder) in the memory modes (issue 18 item 6): with
--medvram / --lowvram they live on the offload device and are lent to the device only while they run, as the
checkpoint's parts are swapped; on the CPU (both devices the same) the images are bit-identical to mode none and
the placement's counters show each lend."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tiny_adapters import build_adapter, build_clip_vision, build_ip_adapter, write_adapter_original, \
    write_clip_vision, write_ip_adapter
from tiny_controlnet import build_controlnet, write_original

from sdwebui.models.loader import load_checkpoint
from sdwebui.models.memory import place_model
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.scripts import GenerationTask, ScriptRegistry
from sdwebui.pipelines.txt2img import txt2img
from sdwebui.scripts.controlnet import ControlNet


def b64_square() -> str:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill="white")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_sd1_path):
    sd1 = load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    root = tmp_path_factory.mktemp("models")
    folder = root / "ControlNet"
    write_original(build_controlnet(sd1.unet), folder / "control_tiny_sd15_canny.safetensors")
    write_adapter_original(build_adapter(sd1.unet), folder / "t2iadapter_canny_sd15v2.pth")
    write_ip_adapter(build_ip_adapter(sd1.unet), folder / "ip-adapter_sd15.safetensors")
    write_clip_vision(build_clip_vision(), root / "clip_vision" / "clip_h.pth")
    return sd1, ScriptRegistry([ControlNet([folder])])


UNITS = [
    {"enabled": True, "module": "canny", "model": "control_tiny_sd15_canny", "processor_res": 64},
    {"enabled": True, "module": "canny", "model": "t2iadapter_canny_sd15v2", "processor_res": 64, "weight": 0.7},
    {"enabled": True, "module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15", "weight": 0.8},
]


def generate(model, registry):
    params = Txt2ImgParams(prompt="a cube", negative_prompt="blurry", width=64, height=64, steps=2, seed=9,
                           sampler="Euler", rng="cpu")
    units = [{**unit, "image": b64_square()} for unit in UNITS]
    _, calls = registry.check_calls("txt2img", None, None, {"controlnet": {"args": units}})
    bound = registry.bind("txt2img", None, calls)
    tasks = bound.expand(GenerationTask(params, ()))
    result = txt2img(GenerationContext(model=model, hooks=bound.for_task(tasks[0])), params)
    bound.after_job(None)
    return result


def test_units_are_lent_to_the_device_in_medvram_and_lowvram_and_change_nothing(setup):
    model, registry = setup
    place_model(model, "none")
    expected = generate(model, registry)
    try:
        for mode in ("medvram", "lowvram"):
            placement = place_model(model, mode)
            placement.onloads.clear()
            result = generate(model, registry)
            assert torch.equal(result.latents, expected.latents), mode
            assert np.array_equal(np.asarray(result.images[0]), np.asarray(expected.images[0]))
            counts = placement.onloads
            # lowvram lends the ControlNet and the IP-Adapter's attention layers for each UNet call (2 Euler steps,
            # CFG in one batch); medvram keeps them beside the UNet for the whole pass, as it keeps the UNet.
            steps = 2 if mode == "lowvram" else 1
            assert counts["controlnet"] == steps, counts
            assert counts["t2i_adapter"] == 1 and counts["clip_vision"] == 1  # features / image tokens made once
            assert counts["ip_adapter"] == steps + 1  # the projection once, the attention layers with the UNet
            assert counts["unet"] == 1  # the UNet was not swapped out for them
            assert not placement.kept_beside_unet, "what ran beside the UNet stayed on the device after the decode"
    finally:
        place_model(model, "none")
