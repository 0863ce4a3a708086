"""ControlNet (issue 18): tiny real ControlNets written in the layouts users download (`control_model.*` single
files as .safetensors and .pth, the diffusers layout in one file and as a folder), loaded through the real path and
applied inside the UNet call by the always-on "controlnet" script; the units as the sd-webui-controlnet extension
takes them; the preprocessors against hand-checked properties."""

from __future__ import annotations

import base64
import json
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tiny_controlnet import build_controlnet, write_diffusers_file, write_diffusers_folder, write_original
from tiny_models import build_tiny

from sdwebui.core.errors import ParamError
from sdwebui.models.controlnet import load_controlnet
from sdwebui.models.controlnet_files import ControlNetLibrary
from sdwebui.models.family import ModelFamily
from sdwebui.models.files import ModelFileError
from sdwebui.models.loader import load_checkpoint
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.controlnet_apply import control_scales
from sdwebui.pipelines.controlnet_preprocess import (
    fit_control_map,
    pixel_perfect_resolution,
    run_preprocessor,
)
from sdwebui.pipelines.controlnet_units import check_unit, parse_unit_infotext, serialize_unit
from sdwebui.pipelines.img2img import img2img
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.scripts import ScriptRegistry
from sdwebui.pipelines.txt2img import txt2img
from sdwebui.scripts.controlnet import ControlNet

LOC = ("alwayson_scripts", "controlnet", "args", 0)


def square(size: int = 64, inner: tuple[int, int, int, int] = (16, 16, 47, 47)) -> np.ndarray:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).rectangle(inner, fill="white")
    return np.asarray(image)


def b64(image) -> str:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# ---- models -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1(tiny_sd1_path):
    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory, sd1, tiny_sdxl):
    folder = tmp_path_factory.mktemp("ControlNet")
    net = build_controlnet(sd1.unet)
    write_original(net, folder / "control_tiny_sd15_canny.safetensors")
    write_original(net, folder / "pth" / "control_tiny_sd15_pth.pth")
    write_original(net, folder / "control_tiny_sd15_fp16.safetensors", prefix="", dtype=torch.float16)
    write_diffusers_file(net, folder / "control_tiny_sd15_diffusers.safetensors")
    write_diffusers_folder(net, folder / "control-tiny-sd15-folder")
    write_original(build_controlnet(tiny_sdxl.unet), folder / "control_tiny_sdxl.safetensors")
    return folder


def test_every_layout_loads_to_the_same_controlnet(controlnet_dir, sd1):
    reference = build_controlnet(sd1.unet).state_dict()
    for name in ("control_tiny_sd15_canny.safetensors", "pth/control_tiny_sd15_pth.pth",
                 "control_tiny_sd15_diffusers.safetensors", "control-tiny-sd15-folder"):
        loaded = load_controlnet(controlnet_dir / name, unet_config=sd1.unet.config)
        assert loaded.family == "sd1"
        state = loaded.model.state_dict()
        assert set(state) == set(reference)
        assert all(torch.equal(state[key], reference[key]) for key in reference), name
    half = load_controlnet(controlnet_dir / "control_tiny_sd15_fp16.safetensors", unet_config=sd1.unet.config)
    assert torch.allclose(half.model.state_dict()["conv_in.weight"], reference["conv_in.weight"], atol=1e-3)


def test_the_library_names_models_as_the_extension(controlnet_dir):
    library = ControlNetLibrary([controlnet_dir])
    titles = library.titles()
    assert "control_tiny_sd15_pth" in [entry.name for entry in library.entries()]  # subfolders are searched
    canny = next(t for t in titles if t.startswith("control_tiny_sd15_canny ["))
    assert len(canny.split("[")[1].rstrip("]")) == 8
    assert library.find(canny).name == "control_tiny_sd15_canny"
    assert library.find("CONTROL_TINY_SD15_CANNY").title == canny
    assert library.find("control_tiny_sd15_canny [00000000]").title == canny  # a stale hash: found by name
    assert library.find("None") is None and library.find("nothing") is None


def test_a_file_that_is_not_a_controlnet_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"adapter.body.0.weight": torch.zeros(2, 2)}, str(tmp_path / "t2i.safetensors"))
    with pytest.raises(ModelFileError, match="T2I-Adapter"):
        load_controlnet(tmp_path / "t2i.safetensors")


# ---- units ------------------------------------------------------------------------------------------------------


def test_unit_fields_take_the_extensions_forms():
    unit = check_unit({"enabled": True, "module": "canny", "model": "x", "image": b64(square()),
                       "resize_mode": 0, "control_mode": 2, "weight": 1}, LOC)
    assert unit["resize_mode"] == "Just Resize" and unit["control_mode"] == "ControlNet is more important"
    assert (unit["processor_res"], unit["threshold_a"], unit["threshold_b"]) == (512, 100.0, 200.0)  # -1: defaults
    assert check_unit({"resize_mode": "Inner Fit (Scale to Fit)"}, LOC)["resize_mode"] == "Crop and Resize"
    assert check_unit({"resize_mode": 3}, LOC)["resize_mode"] == "Just Resize"
    assert check_unit({"guidance": 0.5}, LOC)["guidance_end"] == 0.5  # the legacy alias
    paired = check_unit({"image": {"image": b64(square()), "mask": b64(square())}}, LOC)
    assert paired["image"] and paired["mask"]
    assert check_unit(None, LOC)["enabled"] is False
    assert check_unit("", LOC)["enabled"] is False


@pytest.mark.parametrize("unit, field", [
    ({"module": "no-such"}, "module"),
    ({"weight": 2.5}, "weight"),
    ({"image": "not an image"}, "image"),
    ({"resize_mode": "Stretch"}, "resize_mode"),
    ({"control_mode": 7}, "control_mode"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance_start"),
    ({"enabled": True, "module": "canny", "model": "None"}, "model"),
    ({"enabled": True, "module": "depth", "model": "x"}, "module"),
])
def test_bad_unit_fields_name_the_field(unit, field):
    with pytest.raises(ParamError) as caught:
        check_unit(unit, LOC)
    assert caught.value.loc == (*LOC, field)


def test_infotext_is_the_extensions_and_parses_back():
    unit = check_unit({"enabled": True, "module": "canny", "model": "m", "weight": 0.75}, LOC)
    text = serialize_unit(unit, "control_v11p_sd15_canny [d14c016b]")
    assert text == ("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.75, Resize Mode: Crop and "
                    "Resize, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, "
                    "Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced")
    parsed = parse_unit_infotext(text)
    assert parsed["module"] == "canny" and parsed["weight"] == 0.75 and parsed["pixel_perfect"] is False
    again = check_unit(parsed, LOC)
    assert serialize_unit(again, "control_v11p_sd15_canny [d14c016b]") == text


def test_soft_injection_scales_are_the_extensions():
    unit = {"weight": 1.0, "control_mode": "My prompt is more important"}
    scales = control_scales(unit, 13, False)
    assert scales[12] == 1.0 and scales[0] == pytest.approx(0.825 ** 12)
    assert control_scales(unit, 10, True) == pytest.approx([0.825 ** (12 - i) for i in range(10)])
    assert control_scales({"weight": 0.5, "control_mode": "Balanced"}, 13, False) == [0.5] * 13


# ---- preprocessors ------------------------------------------------------------------------------------------------


def test_canny_finds_the_edges_of_a_square():
    edges = run_preprocessor("canny", square(), 64, 100, 200)
    assert edges.shape == (64, 64, 3)
    on = edges[:, :, 0] > 0
    assert on[16:48, 14:19].any() and on[16:48, 45:50].any()  # left and right sides
    assert not on[24:40, 24:40].any() and not on[:8, :8].any()  # nothing inside or far outside


def test_invert_threshold_binary_and_friends():
    image = square()
    assert np.array_equal(run_preprocessor("invert", image), 255 - image)
    grey = np.full((64, 64, 3), 100, np.uint8)
    grey[:, 32:] = 200
    thresholded = run_preprocessor("threshold", grey, 64, 150)
    assert (thresholded[:, :30] == 0).all() and (thresholded[:, 34:] == 255).all()
    binary = run_preprocessor("binary", grey, 64, 150)
    assert (binary[:, :30] == 255).all() and (binary[:, 34:] == 0).all()  # inverted, as the extension's
    assert run_preprocessor("tile_resample", image, 512, 2.0).shape == (32, 32, 3)
    assert run_preprocessor("none", image).tobytes() == image.tobytes()
    blurred = run_preprocessor("blur_gaussian", image, 64, 3.0)
    assert 0 < blurred[32, 16, 0] < 255  # the edge is soft
    drawing = np.full((64, 64, 3), 255, np.uint8)
    drawing[:, 30:34] = 0  # a black line on white
    lines = run_preprocessor("lineart_standard", drawing)  # no resolution slider: 512, as the extension
    assert lines.shape == (512, 512, 3)
    assert lines[256, 236:276].max() > 200 and lines[256, :100].max() == 0 and lines[256, 400:].max() == 0
    xdog = run_preprocessor("scribble_xdog", image, 64, 32)
    assert xdog[32, 32].max() == 0 and xdog[:, :, 0].max() == 255
    color = run_preprocessor("color", image, 128)
    assert color.shape == (128, 128, 3) and len(np.unique(color.reshape(-1, 3), axis=0)) <= 4
    first = run_preprocessor("shuffle", image, 64, seed=5)
    assert np.array_equal(first, run_preprocessor("shuffle", image, 64, seed=5))
    assert not np.array_equal(first, run_preprocessor("shuffle", image, 64, seed=6))


def test_resize_modes_and_pixel_perfect():
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :, 0] = np.arange(64)[None] * 4
    assert fit_control_map(wide, "Just Resize", 64, 64).shape == (64, 64, 3)
    cropped = fit_control_map(wide, "Crop and Resize", 64, 64)
    assert cropped.shape == (64, 64, 3) and cropped[0, 0, 0] > 40  # the left quarter was cut off
    filled = fit_control_map(np.full((32, 64, 3), 200, np.uint8), "Resize and Fill", 64, 64)
    assert filled.shape == (64, 64, 3) and (filled == 200).all()  # padded with the border colour
    assert pixel_perfect_resolution(wide, 64, 64, "Crop and Resize") == 64
    assert pixel_perfect_resolution(wide, 64, 64, "Resize and Fill") == 32


# ---- generation ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(controlnet_dir):
    return ScriptRegistry([ControlNet([controlnet_dir])])


def unit(**values):
    return {"enabled": True, "module": "canny", "model": "control_tiny_sd15_canny", "image": b64(square()),
            "processor_res": 64, **values}


def generate(model, registry, units, kind="txt2img", mask=None, **values):
    defaults = {"prompt": "a red cube", "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 3,
                "seed": 7, "sampler": "Euler", "rng": "cpu"}
    cls = Img2ImgParams if kind == "img2img" else Txt2ImgParams
    params = cls(**{**defaults, **({"denoising_strength": 0.6} if kind == "img2img" else {}), **values})
    _, calls = registry.check_calls(kind, None, None, {"controlnet": {"args": units}} if units is not None else None)
    bound = registry.bind(kind, None, calls)
    from sdwebui.pipelines.scripts import GenerationTask

    init = [Image.fromarray(square()).convert("RGB")] if kind == "img2img" else []
    task = GenerationTask(params, tuple(init))
    tasks = bound.expand(task)
    ctx = GenerationContext(model=model, hooks=bound.for_task(tasks[0]))
    result = img2img(ctx, params, init, mask) if kind == "img2img" else txt2img(ctx, params)
    bound.after_job(None)
    return result


def test_weight_zero_or_an_empty_range_is_bit_identical_and_weight_one_changes_the_image(sd1, registry):
    plain = generate(sd1, registry, None)
    for off in (unit(weight=0), unit(guidance_start=0.5, guidance_end=0.5), unit(enabled=False)):
        same = generate(sd1, registry, [off])
        assert torch.equal(same.latents, plain.latents)
        assert np.array_equal(np.asarray(same.images[0]), np.asarray(plain.images[0]))
    controlled = generate(sd1, registry, [unit()])
    assert not torch.allclose(controlled.latents, plain.latents, atol=1e-3)
    info = parse_infotext(controlled.infotexts[0])
    assert info["ControlNet 0"].startswith("Module: canny, Model: control_tiny_sd15_canny [")
    assert "ControlNet 0" not in parse_infotext(plain.infotexts[0])


def test_modes_weights_and_ranges_each_change_the_result(sd1, registry):
    base = generate(sd1, registry, [unit()]).latents
    for changed in (unit(control_mode="My prompt is more important"), unit(control_mode=2), unit(weight=0.5),
                    unit(guidance_start=0.5), unit(resize_mode="Resize and Fill", image=b64(square(64)[:, :40])),
                    unit(module="invert")):
        assert not torch.allclose(generate(sd1, registry, [changed]).latents, base, atol=1e-5), changed
    # two units add up: the same unit twice at half weight is the unit once at full weight
    halves = generate(sd1, registry, [unit(weight=0.5), unit(weight=0.5)]).latents
    torch.testing.assert_close(halves, base, atol=1e-4, rtol=1e-4)


def test_img2img_uses_the_init_image_when_the_unit_has_none_and_hires_fix_runs(sd1, registry):
    plain = generate(sd1, registry, None, kind="img2img")
    controlled = generate(sd1, registry, [unit(image=None)], kind="img2img")
    assert not torch.allclose(controlled.latents, plain.latents, atol=1e-4)
    explicit = generate(sd1, registry, [unit(resize_mode=0)], kind="img2img")  # the same square given explicitly
    torch.testing.assert_close(explicit.latents, controlled.latents)
    hires = generate(sd1, registry, [unit()], enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                     denoising_strength=0.5, hr_second_pass_steps=2)
    plain_hires = generate(sd1, registry, None, enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                           denoising_strength=0.5, hr_second_pass_steps=2)
    assert hires.images[0].size == (128, 128)
    assert not np.array_equal(np.asarray(hires.images[0]), np.asarray(plain_hires.images[0]))
    # hr_option: a unit only for the first pass or only for the second changes the image differently
    hr = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.5,
          "hr_second_pass_steps": 2}
    low = generate(sd1, registry, [unit(hr_option="Low res only")], **hr).latents
    high = generate(sd1, registry, [unit(hr_option="High res only")], **hr).latents
    for latents in (low, high):
        assert not torch.allclose(latents, hires.latents, atol=1e-5)
        assert not torch.allclose(latents, plain_hires.latents, atol=1e-5)
    assert not torch.allclose(low, high, atol=1e-5)


def test_inpainting_with_a_unit_on_a_plain_and_an_inpainting_model(sd1, tiny_sd1_inpaint_path, registry):
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    inpaint_model = load_checkpoint(tiny_sd1_inpaint_path, device="cpu", dtype=torch.float32,
                                    vae_dtype=torch.float32)
    for model in (sd1, inpaint_model):
        plain = generate(model, registry, None, kind="img2img", mask=mask)
        controlled = generate(model, registry, [unit()], kind="img2img", mask=mask)
        changed = np.abs(np.asarray(controlled.images[0], np.int16) - np.asarray(plain.images[0], np.int16))
        assert changed[:, :28].max() > 0  # the masked (redrawn) half follows the control
        cropped = generate(model, registry, [unit()], kind="img2img", mask=mask, inpaint_full_res=True)
        assert cropped.images[0].size == (64, 64)


def test_txt2img_unit_without_image_and_a_controlnet_of_another_family_are_refused(sd1, registry):
    with pytest.raises(ParamError) as caught:
        generate(sd1, registry, [unit(image=None)])
    assert caught.value.loc == (*LOC, "image")
    with pytest.raises(ParamError, match="is for SDXL models") as caught:
        generate(sd1, registry, [unit(model="control_tiny_sdxl")])
    assert caught.value.loc == (*LOC, "model")
    with pytest.raises(ParamError) as caught:
        generate(sd1, registry, [unit(model="no_such_model")])
    assert caught.value.loc == (*LOC, "model")


def test_sdxl_controlnet_drives_an_sdxl_checkpoint(tiny_sdxl_path, controlnet_dir, registry):
    sdxl = load_checkpoint(tiny_sdxl_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    plain = generate(sdxl, registry, None)
    controlled = generate(sdxl, registry, [unit(model="control_tiny_sdxl")])
    assert not torch.allclose(controlled.latents, plain.latents, atol=1e-4)


def test_the_script_is_registered_with_the_app(tmp_path):
    from sdwebui.scripts import builtin_scripts

    names = [script.name for script in builtin_scripts(None, [tmp_path])]
    assert "controlnet" in names


# ---- the HTTP API ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path, sd1, tiny_sdxl):
    from test_api_support import LiveServer, make_data_dir

    data = make_data_dir(tmp_path_factory.mktemp("controlnet-api"), tiny_sd1_path, "tiny-sd1.safetensors")
    folder = data / "models" / "ControlNet"
    write_original(build_controlnet(sd1.unet), folder / "control_tiny_sd15_canny.safetensors")
    write_original(build_controlnet(tiny_sdxl.unet), folder / "control_tiny_sdxl.safetensors")
    with LiveServer(data, ui=False) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


FAST = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 3}


def test_the_extensions_routes(client):
    assert client.get("/controlnet/version").json() == {"version": 3}
    models = client.get("/controlnet/model_list").json()["model_list"]
    assert [m.split(" [")[0] for m in models] == ["control_tiny_sd15_canny", "control_tiny_sdxl"]
    modules = client.get("/controlnet/module_list").json()
    assert modules["module_list"][0] == "none" and "canny" in modules["module_list"]
    assert modules["module_detail"]["canny"]["sliders"][1] == {"name": "Low Threshold", "value": 100, "min": 1,
                                                              "max": 255, "step": 1}
    assert "invert (from white bg & black line)" in client.get("/controlnet/module_list?alias_names=true").json()[
        "module_list"]
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert types["Canny"]["module_list"] == ["none", "canny", "invert (from white bg & black line)"]
    assert types["Canny"]["default_option"] == "canny"
    assert types["Canny"]["model_list"][0] == "None" and types["Canny"]["default_model"].startswith(
        "control_tiny_sd15_canny [")
    assert types["Depth"]["model_list"] == ["None"] and types["Depth"]["default_model"] == "None"
    assert types["All"]["model_list"] == ["None", *models]
    detected = client.post("/controlnet/detect", json={"controlnet_module": "canny",
                                                        "controlnet_input_images": [b64(square())],
                                                        "controlnet_processor_res": 64})
    assert detected.status_code == 200 and detected.json()["info"] == "Success"
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(detected.json()["images"][0]))))
    assert edges[32, 14:19].max() == 255 and edges[32, 32].max() == 0
    assert client.post("/controlnet/detect", json={"controlnet_module": "nope",
                                                    "controlnet_input_images": [b64(square())]}).status_code == 422
    assert client.post("/controlnet/detect", json={"controlnet_module": "canny"}).status_code == 422
    weighted = client.post("/controlnet/detect", json={"controlnet_module": "depth",
                                                        "controlnet_input_images": [b64(square())]})
    assert weighted.status_code == 422 and "weights" in weighted.text


def test_txt2img_with_a_unit_through_the_a1111_api(client):
    plain = client.post("/sdapi/v1/txt2img", json=FAST)
    body = {**FAST, "alwayson_scripts": {"controlnet": {"args": [
        {"enabled": True, "module": "canny", "model": "control_tiny_sd15_canny", "image": b64(square()),
         "processor_res": 64, "weight": 1.0}]}}}
    controlled = client.post("/sdapi/v1/txt2img", json=body)
    assert controlled.status_code == 200, controlled.text
    info = json.loads(controlled.json()["info"])
    assert 'ControlNet 0: "Module: canny, Model: control_tiny_sd15_canny [' in info["infotexts"][0]
    assert controlled.json()["images"][0] != plain.json()["images"][0]
    off = {**body, "alwayson_scripts": {"controlnet": {"args": [{**body["alwayson_scripts"]["controlnet"]["args"][0],
                                                                 "weight": 0}]}}}
    def pixels(response):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))

    # weight 0: the same pixels (the infotext still records the enabled unit, as the extension's does)
    assert np.array_equal(pixels(client.post("/sdapi/v1/txt2img", json=off)), pixels(plain))


@pytest.mark.parametrize("unit, field", [
    ({"enabled": True, "module": "canny", "model": "nope", "image": "x"}, "image"),
    ({"enabled": True, "module": "canny", "model": "nope"}, "model"),
    ({"enabled": True, "module": "canny", "model": "control_tiny_sd15_canny", "weight": 3}, "weight"),
    ({"enabled": True, "module": "nope"}, "module"),
    ({"enabled": True, "module": "canny", "model": "control_tiny_sd15_canny"}, "image"),
])
def test_bad_units_are_422s_naming_the_field(client, unit, field):
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "alwayson_scripts": {"controlnet": {"args": [{}, unit]}}})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == f"alwayson_scripts.controlnet.args.1.{field}", response.text


def test_a_controlnet_for_another_family_fails_with_the_reason(client):
    unit = {"enabled": True, "module": "canny", "model": "control_tiny_sdxl", "image": b64(square())}
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert response.status_code == 422, response.text
    assert "is for SDXL models" in response.text


# ---- the web UI -----------------------------------------------------------------------------------------------


def test_the_ui_has_unit_tabs_in_both_tabs_and_a_unit_reaches_the_job_as_the_api_takes_it(tmp_path):
    import httpx
    from test_api_support import LiveServer

    from sdwebui.scripts.controlnet import preview_map, slider_updates, unit_json

    with LiveServer(tmp_path, preload=False) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        config = client.get("/config").text
    for tab in ("txt2img", "img2img"):
        for name in ("0_enable", "0_image", "0_module", "0_model", "0_refresh_models", "0_run_preprocessor",
                     "0_weight", "0_start", "0_end", "0_control_mode", "0_resize_mode", "0_pixel_perfect",
                     "0_preview", "2_enable"):
            assert f'"{tab}_script_controlnet_{name}"' in config, (tab, name)
    text = unit_json(True, Image.fromarray(square()), "canny", "m", 0.8, 0.1, 0.9, "Balanced", "Just Resize", True,
                     64, 100, 200)
    unit = check_unit(text, LOC)
    assert unit["enabled"] and unit["weight"] == 0.8 and unit["resize_mode"] == "Just Resize" and unit["image"]
    assert check_unit(unit_json(False, None, "none", "None", 1, 0, 1, "Balanced", "Crop and Resize", False, 512,
                                -1, -1), LOC)["enabled"] is False
    resolution, low, high = slider_updates("canny")
    assert resolution["visible"] and low["label"] == "Low Threshold" and high["value"] == 200
    assert [update["visible"] for update in slider_updates("invert")] == [False, False, False]
    edges = np.asarray(preview_map(Image.fromarray(square()), "canny", 64, 100, 200))
    assert edges[32, 14:19].max() == 255 and edges[32, 32].max() == 0


def test_a_pasted_infotext_sets_the_units_value_and_its_controls():
    from sdwebui.scripts.controlnet import UNIT_CONTROLS, controls_from_unit
    from sdwebui.ui.fields import fields_from_infotext

    text = ('a cat\nSteps: 2, Seed: 3, ControlNet 0: "Module: canny, Model: m [12345678], Weight: 0.65, Resize '
            'Mode: Just Resize, Processor Res: 256, Threshold A: 50.0, Threshold B: 150.0, Guidance Start: 0.1, '
            'Guidance End: 0.8, Pixel Perfect: True, Control Mode: Balanced"')
    fields = fields_from_infotext(text)
    pasted = json.loads(fields["alwayson:controlnet:0"])
    assert pasted["module"] == "canny" and pasted["weight"] == 0.65 and pasted["enabled"] is True
    updates = dict(zip(UNIT_CONTROLS, (update.get("value") for update in controls_from_unit(
        fields["alwayson:controlnet:0"]))))
    assert updates["weight"] == 0.65 and updates["threshold_a"] == 50.0 and updates["model"] == "m [12345678]"
    assert updates["resize_mode"] == "Just Resize" and updates["pixel_perfect"] is True
    # what the controls themselves made (with the image) is left alone
    assert all("value" not in update for update in controls_from_unit(json.dumps({"enabled": True, "image": "x"})))


def test_recolor_maps_are_the_extensions(tmp_path):
    """recolor_luminance: LAB's L of the image read as BGR (the extension's own conversion), gamma-corrected;
    recolor_intensity: HSV's V (the largest channel)."""
    import cv2

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    luminance = run_preprocessor("recolor_luminance", image, 512, 0.5)
    expected = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)[:, :, 0].astype(np.float32) / 255.0
    assert luminance.shape == image.shape and (luminance[..., 0] == luminance[..., 2]).all()
    assert np.abs(luminance[..., 0].astype(int) - (expected ** 0.5 * 255).astype(int)).max() <= 1
    intensity = run_preprocessor("recolor_intensity", image, 512, 1.0)
    assert np.array_equal(intensity[..., 0], image.max(axis=2))
    assert run_preprocessor("recolor_luminance", image, 512, 7.0).tolist() == \
        run_preprocessor("recolor_luminance", image, 512, 1.0).tolist()  # out of range: the slider's default


def test_a_recolor_unit_gives_the_image_the_maps_lightness(sd1, registry):
    """The extension's recolor post-processing: the result's L (LAB) is the control map's, its colours the
    model's; recolor_intensity does the same with HSV's V."""
    import cv2

    gradient = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    for module, space, channel in (("recolor_luminance", cv2.COLOR_RGB2LAB, 0),
                                   ("recolor_intensity", cv2.COLOR_RGB2HSV, 2)):
        recolored = generate(sd1, registry, [unit(module=module, image=b64(gradient))])
        image = np.asarray(recolored.images[0].convert("RGB"))
        control_map = run_preprocessor(module, gradient, 64, 1.0)
        got = cv2.cvtColor(image, space)[:, :, channel].astype(int)
        # (8-bit colour conversions round, and a colour out of RGB's gamut at its new lightness is clipped)
        assert np.abs(got - control_map[:, :, 0].astype(int)).mean() < 6, module
        plain = np.asarray(generate(sd1, registry, [unit(module="canny")]).images[0].convert("RGB"))
        assert np.abs(cv2.cvtColor(plain, space)[:, :, channel].astype(int) - control_map[:, :, 0]).mean() > 20
