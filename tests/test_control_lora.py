"""Stability's control-LoRAs (`models.control_lora`): a file in their layout (the original `cldm` names; low-rank
`X.up` / `X.down` pairs for the UNet's large layers, the hint encoder, zero convolutions, biases and changed norms in
full, the `lora_controlnet` marker) becomes the ControlNet it stands for, built from the checkpoint's own UNet; it
drives an SDXL job through the A1111 API; on a checkpoint of another family it is a 422 naming the unit's model,
before anything is queued.

The tiny SDXL UNet here has two resnets per level, as real ones do: diffusers' key converter counts on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_controlnet_memory import b64_square
from tiny_controlnet import HINT_CHANNELS, to_ldm

import tiny_models
from sdwebui.models.controlnet import LoadedControlNet, load_control_model
from sdwebui.models.family import ModelFamily
from sdwebui.models.files import ModelFileError

LOW_RANK_LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2", "conv1", "conv2",
                   "time_emb_proj", "conv_shortcut", "downsamplers.0.conv", "time_embedding.linear_1",
                   "add_embedding.linear_2")
RANK = 2


def tiny_sdxl_two_resnets() -> tiny_models.TinyModel:
    model = tiny_models.build_tiny(ModelFamily.SDXL, seed=3)
    model.unet = tiny_models.tiny_unet(ModelFamily.SDXL, seed=35, layers_per_block=2)
    return model


def control_lora(unet, seed: int = 7, hint_channels: int = 3) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """(a control-LoRA file's tensors, the ControlNet it stands for with this UNet)."""
    from diffusers import ControlNetModel

    expected = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS,
                                         conditioning_channels=hint_channels)
    generator = torch.Generator().manual_seed(seed)
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        for name, param in expected.named_parameters():  # what the UNet does not have
            if name.startswith(("controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
        for name, module in expected.named_modules():
            if not (name.endswith(LOW_RANK_LAYERS) and name.startswith(("down_blocks", "mid_block", "time_",
                                                                         "add_"))):
                continue
            weight = module.weight
            up = torch.randn(weight.shape[0], RANK, *([1] * (weight.ndim - 2)), generator=generator) * 0.05
            down = torch.randn(RANK, *weight.shape[1:], generator=generator) * 0.05
            weight += (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
            pairs[name] = (up, down)
        changed_norm = expected.down_blocks[0].resnets[0].norm1.weight
        changed_norm.mul_(1.5)  # a norm the control-LoRA trained: stored in full
    ldm = to_ldm(expected)
    # Which original name holds each layer: found by value (random weights are unique).
    ldm_name = {name: next(key[: -len(".weight")] for key, value in ldm.items()
                           if key.endswith(".weight") and value.shape == expected.get_submodule(name).weight.shape
                           and torch.equal(value, expected.get_submodule(name).weight)) for name in pairs}
    low_rank_keys = {f"{key}.weight" for key in ldm_name.values()}
    file: dict[str, torch.Tensor] = {"lora_controlnet": torch.tensor([])}
    for key, value in ldm.items():
        if key in low_rank_keys:
            continue
        own = key.startswith(("input_hint_block", "zero_convs", "middle_block_out"))
        if own or key.endswith(".bias") or torch.equal(value, changed_norm):
            file[key] = value  # other weights (norms, the hint-free parts) come from the checkpoint's UNet
    for name, (up, down) in pairs.items():
        file[f"{ldm_name[name]}.up"], file[f"{ldm_name[name]}.down"] = up.contiguous(), down.contiguous()
    return file, expected


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl_two_resnets()


@pytest.fixture(scope="module")
def control_lora_file(tmp_path_factory, sdxl):
    file, expected = control_lora(sdxl.unet)
    path = tmp_path_factory.mktemp("control-lora") / "control-lora-canny-rank2.safetensors"
    save_file(file, str(path))
    return path, expected


def test_a_control_lora_becomes_the_controlnet_it_stands_for(control_lora_file, sdxl):
    path, expected = control_lora_file
    loaded = load_control_model(path, unet=sdxl.unet, unet_config=sdxl.unet.config)
    assert isinstance(loaded, LoadedControlNet) and loaded.family == "sdxl"
    got, want = loaded.model.state_dict(), expected.state_dict()
    assert set(got) == set(want)
    worst = max((got[key] - want[key]).abs().max().item() for key in want)
    assert worst < 1e-5, worst
    # It is a copy: the checkpoint's UNet is untouched.
    unet_weight = sdxl.unet.down_blocks[0].resnets[0].conv1.weight
    assert not torch.equal(loaded.model.down_blocks[0].resnets[0].conv1.weight, unet_weight)
    with pytest.raises(ModelFileError, match="load a checkpoint first"):
        load_control_model(path)


def test_a_control_lora_for_another_family_is_refused(control_lora_file, tiny_sd1):
    path, _ = control_lora_file
    with pytest.raises(ModelFileError, match="made for another kind of model"):
        load_control_model(path, unet=tiny_sd1.unet, unet_config=tiny_sd1.unet.config)


def test_a_control_lora_drives_an_sdxl_job_and_is_refused_for_sd15(tmp_path, control_lora_file, sdxl,
                                                                    tiny_sd1_path):
    from test_api_support import LiveServer, decode_png, make_data_dir

    path, _ = control_lora_file
    data = make_data_dir(tmp_path, tiny_sd1_path, "tiny-sd1.safetensors")
    tiny_models.write_single_file(sdxl, data / "models" / "Stable-diffusion" / "tiny-sdxl.safetensors")
    (data / "models" / "ControlNet").mkdir(parents=True)
    (data / "models" / "ControlNet" / path.name).write_bytes(path.read_bytes())
    unit = {"enabled": True, "module": "canny", "model": "control-lora-canny-rank2", "image": b64_square(),
            "processor_res": 64, "weight": 1.0}
    body = {"prompt": "a cube", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 3,
            "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}
    with LiveServer(data, ui=False) as live, live.client() as client:
        plain = client.post("/sdapi/v1/txt2img", json=body)
        assert plain.status_code == 200, plain.text
        controlled = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {
            "args": [unit]}}})
        assert controlled.status_code == 200, controlled.text
        a = np.asarray(decode_png(plain.json()["images"][0]), dtype=np.int16)
        b = np.asarray(decode_png(controlled.json()["images"][0]), dtype=np.int16)
        assert np.abs(a - b).max() > 0, "the control-LoRA changed nothing"
        infotext = json.loads(controlled.json()["info"])["infotexts"][0]
        assert 'ControlNet 0: "Module: canny, Model: control-lora-canny-rank2 [' in infotext, infotext
        before = len(client.get("/api/v1/jobs").json())
        refused = client.post("/sdapi/v1/txt2img", json={
            **body, "override_settings": {"sd_model_checkpoint": "tiny-sd1"},
            "alwayson_scripts": {"controlnet": {"args": [unit]}}})
        assert refused.status_code == 422, refused.text
        assert "control-LoRA" in refused.text and "SDXL" in refused.text, refused.text
        assert len(client.get("/api/v1/jobs").json()) == before


def test_a_grayscale_control_lora_takes_the_map_as_one_channel(tmp_path, sdxl):
    """Stability's recolor control-LoRA has a one-channel hint encoder: the control map goes in as its luminance."""
    from sdwebui.models.loader import load_checkpoint
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.params import Txt2ImgParams
    from sdwebui.pipelines.scripts import GenerationTask, ScriptRegistry
    from sdwebui.pipelines.txt2img import txt2img
    from sdwebui.scripts.controlnet import ControlNet

    file, _ = control_lora(sdxl.unet, seed=8, hint_channels=1)
    folder = tmp_path / "ControlNet"
    folder.mkdir()
    save_file(file, str(folder / "control-lora-recolor-rank2.safetensors"))
    model = load_checkpoint(tiny_models.write_single_file(sdxl, tmp_path / "tiny-sdxl.safetensors"), device="cpu",
                            dtype=torch.float32, vae_dtype=torch.float32)
    registry = ScriptRegistry([ControlNet([folder])])
    params = Txt2ImgParams(prompt="a cube", width=64, height=64, steps=2, seed=9, sampler="Euler", rng="cpu")

    def generate(units):
        _, calls = registry.check_calls("txt2img", None, None, {"controlnet": {"args": units}} if units else None)
        bound = registry.bind("txt2img", None, calls)
        tasks = bound.expand(GenerationTask(params, ()))
        return np.asarray(txt2img(GenerationContext(model=model, hooks=bound.for_task(tasks[0])), params).images[0],
                          dtype=np.int16)

    unit = {"enabled": True, "module": "none", "model": "control-lora-recolor-rank2", "image": b64_square()}
    assert np.abs(generate([unit]) - generate(None)).max() > 0
