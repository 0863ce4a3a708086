"""T2I-Adapters and IP-Adapters as ControlNet units (issue 18): tiny real adapters written in the layouts users
download (TencentARC's `.pth`, diffusers files and folders; `ip-adapter_sd15.safetensors` / `.bin` with the CLIP
image encoder as the extension's `clip_h.pth` or the repository's `image_encoder/` folder), found in
models/ControlNet and models/clip_vision and loaded through the real path, applied by the always-on "controlnet"
script inside the UNet call."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from test_controlnet import LOC, b64, generate, square
from tiny_adapters import (
    build_adapter,
    build_clip_vision,
    build_ip_adapter,
    write_adapter_diffusers,
    write_adapter_original,
    write_clip_vision,
    write_ip_adapter,
)

from sdwebui.core.errors import ParamError
from sdwebui.models.controlnet import check_model_compatible, load_control_model
from sdwebui.models.ip_adapter import LoadedIPAdapter, find_clip_vision, load_clip_vision
from sdwebui.models.loader import load_checkpoint
from sdwebui.models.t2i_adapter import LoadedAdapter
from sdwebui.pipelines.controlnet_apply import adapter_scales, ip_attention
from sdwebui.pipelines.controlnet_units import control_types, module_list
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.scripts import ScriptRegistry
from sdwebui.scripts.controlnet import ControlNet


@pytest.fixture(scope="module")
def sd1(tiny_sd1_path):
    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_path):
    return load_checkpoint(tiny_sdxl_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, sd1, sdxl):
    root = tmp_path_factory.mktemp("models")
    folder = root / "ControlNet"
    adapter = build_adapter(sd1.unet)
    write_adapter_original(adapter, folder / "t2iadapter_canny_sd15v2.pth")
    write_adapter_diffusers(adapter, folder / "t2i-adapter_diffusers_sd15.safetensors")
    write_adapter_diffusers(adapter, folder / "t2i-adapter-sd15-folder", folder=True)
    write_adapter_original(build_adapter(sd1.unet, kind="light_adapter"), folder / "t2iadapter_color_sd14v1.pth")
    write_adapter_diffusers(build_adapter(sdxl.unet, kind="full_adapter_xl"),
                            folder / "t2i-adapter_diffusers_xl_canny.safetensors")
    ip = build_ip_adapter(sd1.unet)
    write_ip_adapter(ip, folder / "ip-adapter_sd15.safetensors")
    write_ip_adapter(ip, folder / "ip-adapter_sd15_bin.bin")
    write_ip_adapter(build_ip_adapter(sd1.unet, plus=True), folder / "ip-adapter-plus_sd15.safetensors")
    write_ip_adapter(build_ip_adapter(sdxl.unet), folder / "ip-adapter_sdxl_vit-h.safetensors")
    write_clip_vision(build_clip_vision(), root / "clip_vision" / "clip_h.pth")
    return root


@pytest.fixture(scope="module")
def registry(models_dir):
    return ScriptRegistry([ControlNet([models_dir / "ControlNet"])])


def gen(model, registry, units, **values):
    """`test_controlnet.generate` with 2 steps (enough for every comparison here)."""
    return generate(model, registry, units, **{"steps": 2, **values})


def unit(**values):
    return {"enabled": True, "module": "canny", "model": "t2iadapter_canny_sd15v2", "image": b64(square()),
            "processor_res": 64, **values}


def ip_unit(**values):
    return {"enabled": True, "module": "ip-adapter_clip_sd15", "model": "ip-adapter_sd15",
            "image": b64(square()), **values}


# ---- T2I-Adapter ----------------------------------------------------------------------------------------------


def test_t2i_adapter_layouts_load_to_the_same_adapter(models_dir, sd1, sdxl):
    folder = models_dir / "ControlNet"
    reference = build_adapter(sd1.unet).state_dict()
    for name in ("t2iadapter_canny_sd15v2.pth", "t2i-adapter_diffusers_sd15.safetensors", "t2i-adapter-sd15-folder"):
        loaded = load_control_model(folder / name, unet_config=sd1.unet.config)
        assert isinstance(loaded, LoadedAdapter) and loaded.model.config.adapter_type == "full_adapter", name
        state = loaded.model.state_dict()
        assert set(state) == set(reference) and all(torch.equal(state[k], reference[k]) for k in reference), name
        assert check_model_compatible(loaded, sd1.unet, "SD 1.x") is None
    light = load_control_model(folder / "t2iadapter_color_sd14v1.pth")
    light_ref = build_adapter(sd1.unet, kind="light_adapter").state_dict()
    assert light.model.config.adapter_type == "light_adapter"
    assert all(torch.equal(light.model.state_dict()[k], light_ref[k]) for k in light_ref)
    # the tiny UNet's widths (32, 64) cannot take a light adapter (its last two levels are equal): a clear refusal
    assert "feature widths [32, 32]" in check_model_compatible(light, sd1.unet, "SD 1.x")
    xl = load_control_model(folder / "t2i-adapter_diffusers_xl_canny.safetensors")
    assert xl.is_sdxl and check_model_compatible(xl, sdxl.unet, "SDXL") is None
    assert "is for SDXL models" in check_model_compatible(xl, sd1.unet, "SD 1.x")
    loaded = load_control_model(folder / "t2iadapter_canny_sd15v2.pth")
    assert "is for SD 1.x / 2.x models" in check_model_compatible(loaded, sdxl.unet, "SDXL")


def test_adapter_soft_weights_are_the_extensions():
    assert adapter_scales({"weight": 1.0, "control_mode": "Balanced"}, 4) == [1.0] * 4
    assert adapter_scales({"weight": 2.0, "control_mode": "My prompt is more important"}, 4) == \
        pytest.approx([0.5, 1.24, 1.65, 2.0])
    assert adapter_scales({"weight": 1.0, "control_mode": "Balanced"}, 2, forced_soft=True) == [0.825, 1.0]


def test_a_t2i_adapter_unit_changes_the_image_and_weight_zero_does_not(sd1, registry):
    plain = gen(sd1, registry, None)
    for off in (unit(weight=0), unit(guidance_start=0.4, guidance_end=0.4)):
        same = gen(sd1, registry, [off])
        assert torch.equal(same.latents, plain.latents)
    controlled = gen(sd1, registry, [unit()])
    assert not torch.allclose(controlled.latents, plain.latents, atol=1e-3)
    info = parse_infotext(controlled.infotexts[0])
    assert info["ControlNet 0"].startswith("Module: canny, Model: t2iadapter_canny_sd15v2 [")
    for changed in (unit(weight=0.5), unit(control_mode="My prompt is more important"), unit(control_mode=2),
                    unit(guidance_start=0.5), unit(model="t2i-adapter-sd15-folder", module="invert")):
        assert not torch.allclose(gen(sd1, registry, [changed]).latents, controlled.latents, atol=1e-5), changed
    # the same adapter in its diffusers layout gives the same image
    same = gen(sd1, registry, [unit(model="t2i-adapter_diffusers_sd15")])
    torch.testing.assert_close(same.latents, controlled.latents)
    # an adapter and a second (half-weight, twice) add up
    halves = gen(sd1, registry, [unit(weight=0.5), unit(weight=0.5)]).latents
    torch.testing.assert_close(halves, controlled.latents, atol=1e-4, rtol=1e-4)


def test_sdxl_adapter_on_sdxl_and_the_wrong_family_is_refused(sd1, sdxl, registry):
    plain = gen(sdxl, registry, None)
    controlled = gen(sdxl, registry, [unit(model="t2i-adapter_diffusers_xl_canny")])
    assert not torch.allclose(controlled.latents, plain.latents, atol=1e-4)
    with pytest.raises(ParamError, match="is for SDXL models") as caught:
        gen(sd1, registry, [unit(model="t2i-adapter_diffusers_xl_canny")])
    assert caught.value.loc == (*LOC, "model")
    with pytest.raises(ParamError, match="is for SD 1.x / 2.x models"):
        gen(sdxl, registry, [unit()])


# ---- IP-Adapter -----------------------------------------------------------------------------------------------


def test_ip_adapter_layouts_and_the_clip_image_encoder(models_dir, sd1, sdxl, tmp_path):
    folder = models_dir / "ControlNet"
    flat = load_control_model(folder / "ip-adapter_sd15.safetensors")
    nested = load_control_model(folder / "ip-adapter_sd15_bin.bin")
    assert isinstance(flat, LoadedIPAdapter) and isinstance(nested, LoadedIPAdapter)
    assert not flat.uses_hidden_states and flat.image_dim == 24
    for (k1, v1), (k2, v2) in zip(flat.kv, nested.kv):
        assert torch.equal(k1.weight, k2.weight) and torch.equal(v1.weight, v2.weight)
    assert all(torch.equal(a, b) for a, b in zip(flat.image_proj.state_dict().values(),
                                                  nested.image_proj.state_dict().values()))
    plus = load_control_model(folder / "ip-adapter-plus_sd15.safetensors")
    assert plus.uses_hidden_states and plus.image_dim == 32
    assert check_model_compatible(flat, sd1.unet, "SD 1.x") is None
    assert "cross-attention" in check_model_compatible(flat, sdxl.unet, "SDXL")
    xl = load_control_model(folder / "ip-adapter_sdxl_vit-h.safetensors")
    assert check_model_compatible(xl, sdxl.unet, "SDXL") is None
    # the encoder: the extension's clip_h.pth, or the repository's image_encoder/ folder, to the same weights
    found = find_clip_vision([models_dir / "clip_vision"], "clip_h")
    assert found.name == "clip_h.pth" and find_clip_vision([models_dir / "clip_vision"], "clip_g") is None
    encoder = load_clip_vision(found)
    reference = build_clip_vision()
    write_clip_vision(reference, tmp_path / "clip_vision" / "ViT-H-14" / "image_encoder", folder=True)
    from_folder = load_clip_vision(find_clip_vision([tmp_path / "clip_vision"], "clip_h"))
    pixels = torch.rand(1, 3, 28, 28)
    expected = reference(pixels).image_embeds
    torch.testing.assert_close(encoder(pixels).image_embeds, expected)
    torch.testing.assert_close(from_folder(pixels).image_embeds, expected)


def test_ip_attention_is_diffusers_ip_adapter(sd1, models_dir):
    """The wrapped processors give what diffusers' own IP-Adapter loading (`_load_ip_adapter_weights`) gives."""
    from safetensors.torch import load_file

    flat = load_file(str(models_dir / "ControlNet" / "ip-adapter_sd15.safetensors"))
    nested = {group: {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(group + ".")}
              for group in ("image_proj", "ip_adapter")}
    theirs = copy.deepcopy(sd1.unet)
    theirs._load_ip_adapter_weights([nested], low_cpu_mem_usage=False)
    ours = load_control_model(models_dir / "ControlNet" / "ip-adapter_sd15.safetensors")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, sd1.unet.config.cross_attention_dim, generator=generator)
    embeds = torch.randn(2, 24, generator=generator)
    for scale in (1.0, 0.4):
        for processor in theirs.attn_processors.values():  # what the pipeline's set_ip_adapter_scale does
            if hasattr(processor, "scale"):
                processor.scale = [scale]
        with torch.no_grad():
            expected = theirs(x, 500, encoder_hidden_states=text,
                              added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample
            before = {name: type(p) for name, p in sd1.unet.attn_processors.items()}
            with ip_attention(sd1.unet, [(ours, ours.project(embeds), scale)]):
                got = sd1.unet(x, 500, encoder_hidden_states=text).sample
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        assert {name: type(p) for name, p in sd1.unet.attn_processors.items()} == before  # put back


def test_an_ip_adapter_unit_changes_the_image_and_weight_zero_does_not(sd1, registry):
    plain = gen(sd1, registry, None)
    assert torch.equal(gen(sd1, registry, [ip_unit(weight=0)]).latents, plain.latents)
    controlled = gen(sd1, registry, [ip_unit()])
    assert not torch.allclose(controlled.latents, plain.latents, atol=1e-3)
    assert parse_infotext(controlled.infotexts[0])["ControlNet 0"].startswith(
        "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15 [")
    other = np.zeros((64, 64, 3), np.uint8)
    other[:, :, 2] = 255
    for changed in (ip_unit(weight=0.5), ip_unit(image=b64(other)), ip_unit(guidance_end=0.5),
                    ip_unit(model="ip-adapter-plus_sd15")):
        assert not torch.allclose(gen(sd1, registry, [changed]).latents, controlled.latents, atol=1e-5), changed
    # a mask leaves what it paints out of the CLIP input (the extension's CLIP mask): black paints nothing
    black, half = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    torch.testing.assert_close(gen(sd1, registry, [ip_unit(mask=b64(black))]).latents, controlled.latents,
                               rtol=0, atol=0)
    assert not torch.allclose(gen(sd1, registry, [ip_unit(mask=b64(half))]).latents, controlled.latents, atol=1e-5)
    # the .bin of the same adapter and the auto module give the same image
    torch.testing.assert_close(gen(sd1, registry, [ip_unit(model="ip-adapter_sd15_bin")]).latents,
                               controlled.latents)
    torch.testing.assert_close(gen(sd1, registry, [ip_unit(module="ip-adapter-auto")]).latents,
                               controlled.latents)
    # with a T2I-Adapter unit beside it, both act
    both = gen(sd1, registry, [ip_unit(), unit()]).latents
    assert not torch.allclose(both, controlled.latents, atol=1e-4)
    assert all(type(p).__name__ != "IPAttention" for p in sd1.unet.attn_processors.values())


def test_ip_adapter_units_name_what_is_wrong(sd1, sdxl, registry):
    cases = [
        (ip_unit(module="ip-adapter_clip_sdxl"), "module", "clip_g CLIP image encoder"),
        (ip_unit(module="canny"), "module", "is an IP-Adapter"),
        (unit(module="ip-adapter_clip_sd15"), "module", "is for IP-Adapter models"),
    ]
    for bad, field, message in cases:
        with pytest.raises(ParamError, match=message) as caught:
            gen(sd1, registry, [bad])
        assert caught.value.loc == (*LOC, field)
    with pytest.raises(ParamError, match="cross-attention") as caught:
        gen(sdxl, registry, [ip_unit()])
    assert caught.value.loc == (*LOC, "model")


def test_module_list_and_control_types_have_the_adapters(models_dir):
    modules = module_list()
    for name in ("ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith", "color"):
        assert name in modules
    assert "ip-adapter_clip_h" in module_list(alias_names=True)
    script = ControlNet([models_dir / "ControlNet"])
    types = control_types(script.library.titles())
    assert [m.split(" [")[0] for m in types["IP-Adapter"]["model_list"][1:]] == [
        "ip-adapter-plus_sd15", "ip-adapter_sd15", "ip-adapter_sd15_bin", "ip-adapter_sdxl_vit-h"]
    assert "ip-adapter_clip_h" in types["IP-Adapter"]["module_list"]
    assert any(m.startswith("t2iadapter_canny_sd15v2 [") for m in types["T2I-Adapter"]["model_list"])


def test_a1111_api_runs_adapter_units(tmp_path_factory, tiny_sd1_path, sd1, models_dir):
    import base64
    import io
    import shutil

    from test_api_support import LiveServer, make_data_dir

    data = make_data_dir(tmp_path_factory.mktemp("adapters-api"), tiny_sd1_path, "tiny-sd1.safetensors")
    for name in ("t2iadapter_canny_sd15v2.pth", "ip-adapter_sd15.safetensors",
                 "t2i-adapter_diffusers_xl_canny.safetensors", "ip-adapter_sdxl_vit-h.safetensors"):
        (data / "models" / "ControlNet").mkdir(parents=True, exist_ok=True)
        shutil.copy(models_dir / "ControlNet" / name, data / "models" / "ControlNet" / name)
    shutil.copytree(models_dir / "clip_vision", data / "models" / "clip_vision")
    fast = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 3}

    def pixels(response):
        assert response.status_code == 200, response.text
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))

    with LiveServer(data, ui=False) as live, live.client() as client:
        models = client.get("/controlnet/model_list").json()["model_list"]
        assert [m.split(" [")[0] for m in models] == ["ip-adapter_sd15", "ip-adapter_sdxl_vit-h",
                                                      "t2i-adapter_diffusers_xl_canny", "t2iadapter_canny_sd15v2"]
        plain = pixels(client.post("/sdapi/v1/txt2img", json=fast))
        for units in ([unit()], [ip_unit()]):
            body = {**fast, "alwayson_scripts": {"controlnet": {"args": units}}}
            assert not np.array_equal(pixels(client.post("/sdapi/v1/txt2img", json=body)), plain), units
        bad = {**fast, "alwayson_scripts": {"controlnet": {"args": [ip_unit(module="ip-adapter_clip_sdxl")]}}}
        response = client.post("/sdapi/v1/txt2img", json=bad)
        assert response.status_code == 422 and response.json()["field"] == "alwayson_scripts.controlnet.args.0.module"
        # a model for another family is refused before the job is queued (no job is stored)
        jobs = len(client.get("/api/v1/jobs", params={"limit": 500}).json())
        # (the missing-encoder job above was refused by the worker: such jobs are stored, as failed ones)
        assert client.get("/api/v1/jobs", params={"status": "failed"}).json()
        for wrong, message in ((unit(model="t2i-adapter_diffusers_xl_canny"), "T2I-Adapter t2i-adapter_diffusers_xl_canny"
                                ".safetensors is for SDXL models; the checkpoint is"),
                               (ip_unit(model="ip-adapter_sdxl_vit-h"), "(cross-attention 64); the checkpoint is")):
            body = {**fast, "alwayson_scripts": {"controlnet": {"args": [{}, wrong]}}}
            response = client.post("/sdapi/v1/txt2img", json=body)
            assert response.status_code == 422, response.text
            assert response.json()["field"] == "alwayson_scripts.controlnet.args.1.model"
            assert message in response.text, response.text
        assert len(client.get("/api/v1/jobs", params={"limit": 500}).json()) == jobs


def test_what_a_file_is_for_is_read_from_its_header(models_dir, tiny_sd1_path, tiny_sdxl_path):
    from sdwebui.models.controlnet_files import checkpoint_target, control_model_target, mismatch

    folder = models_dir / "ControlNet"
    sd1, sdxl = checkpoint_target(tiny_sd1_path), checkpoint_target(tiny_sdxl_path)
    assert (sd1.cross, sd1.sdxl) == (32, False) and sdxl.sdxl is True
    xl_adapter = control_model_target(folder / "t2i-adapter_diffusers_xl_canny.safetensors")
    assert (xl_adapter.kind, xl_adapter.sdxl) == ("T2I-Adapter", True)
    assert control_model_target(folder / "t2i-adapter-sd15-folder").sdxl is False
    assert control_model_target(folder / "t2iadapter_canny_sd15v2.pth") is None  # a pickle: checked at load
    ip = control_model_target(folder / "ip-adapter_sd15.safetensors")
    assert (ip.kind, ip.cross) == ("IP-Adapter", 32)
    assert mismatch(ip, "ip", sd1) is None and "is for" in mismatch(ip, "ip", sdxl)
    assert mismatch(xl_adapter, "a", sdxl) is None and "is for SDXL models" in mismatch(xl_adapter, "a", sd1)


# ---- reference_only / reference_adain ---------------------------------------------------------------------------


def ref_unit(**values):
    return {"enabled": True, "module": "reference_only", "image": b64(square()), **values}


def test_reference_units_steer_the_image_without_a_model(sd1, registry):
    plain = gen(sd1, registry, None)
    assert torch.equal(gen(sd1, registry, [ref_unit(weight=0)]).latents, plain.latents)
    results = {}
    for module in ("reference_only", "reference_adain", "reference_adain+attn"):
        results[module] = gen(sd1, registry, [ref_unit(module=module)]).latents
        assert not torch.allclose(results[module], plain.latents, atol=1e-4), module
    assert not torch.allclose(results["reference_only"], results["reference_adain"], atol=1e-4)
    assert not torch.allclose(results["reference_adain+attn"], results["reference_only"], atol=1e-4)
    # the same job again is the same image (the reference's noise is seeded by the batch's seed)
    torch.testing.assert_close(gen(sd1, registry, [ref_unit()]).latents, results["reference_only"])
    for changed in (ref_unit(threshold_a=0.0), ref_unit(weight=0.5)):
        assert not torch.allclose(gen(sd1, registry, [changed]).latents, results["reference_only"],
                                  atol=1e-5), changed
    # nothing is left on the UNet: its processors and hooks are the ones it had
    assert all(type(p).__name__ not in ("ReferenceAttention", "IPAttention")
               for p in sd1.unet.attn_processors.values())
    assert not any(module._forward_hooks for module in sd1.unet.modules())
    # a txt2img unit needs an image (img2img takes the init image, as for the other units)
    with pytest.raises(ParamError) as caught:
        gen(sd1, registry, [ref_unit(image=None)])
    assert caught.value.loc == (*LOC, "image")


def test_reference_on_sdxl_and_in_img2img_with_a_t2i_adapter(sd1, sdxl, registry):
    plain = gen(sdxl, registry, None)
    referenced = gen(sdxl, registry, [ref_unit(module="reference_adain+attn")]).latents
    assert not torch.allclose(referenced, plain.latents, atol=1e-4)
    alone = gen(sd1, registry, [ref_unit(image=None)], kind="img2img").latents
    assert not torch.allclose(alone, gen(sd1, registry, None, kind="img2img").latents, atol=1e-4)
    both = gen(sd1, registry, [ref_unit(image=None), unit()], kind="img2img").latents
    assert not torch.allclose(both, alone, atol=1e-4)
