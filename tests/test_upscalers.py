"""Upscalers: a tiny ESRGAN-architecture file built here (random weights) loaded through our restricted loader and
spandrel, tiled vs untiled, A1111's resize rules, latent modes, the Extras pipeline and its A1111 routes."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from sdwebui.models.files import ModelFileError
from sdwebui.models.upscalers import (
    LATENT_UPSCALE_MODES,
    UpscalerLibrary,
    UpscalerNotFoundError,
    find_upscalers,
    load_upscaler_model,
)
from sdwebui.pipelines.extras import ExtrasParams, run_extras
from sdwebui.pipelines.params import ParamError
from sdwebui.pipelines.upscale import TileOptions, resize_image_to, run_tiled, upscale_image, upscale_latents


def tiny_esrgan_state_dict(scale: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """An old-architecture ESRGAN (RRDBNet) with 8 filters and one block: ~225k parameters, random weights."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(num_filters=8, num_blocks=1, scale=scale)
    return {key: value.detach().clone() for key, value in net.state_dict().items()}


@pytest.fixture(scope="module")
def upscaler_dir(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("models")
    esrgan = root / "ESRGAN"
    esrgan.mkdir()
    state = tiny_esrgan_state_dict()
    torch.save(state, esrgan / "tiny-2x.pth")  # tensors only, as real .pth upscalers are
    save_file(state, str(esrgan / "tiny-st-2x.safetensors"))
    # RealESRGAN files wrap their weights in "params_ema".
    (root / "RealESRGAN").mkdir()
    torch.save({"params_ema": tiny_esrgan_state_dict(seed=1)}, root / "RealESRGAN" / "tiny-real-2x.pth")
    return root


@pytest.fixture(scope="module")
def library(upscaler_dir) -> UpscalerLibrary:
    return UpscalerLibrary([(f, upscaler_dir / f) for f in ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")])


def test_listing_has_builtins_then_files_with_a1111_shape(library):
    items = [entry.a1111() for entry in library.entries()]
    assert [i["name"] for i in items] == ["None", "Lanczos", "Nearest", "tiny-2x", "tiny-st-2x", "tiny-real-2x"]
    assert items[1] == {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    assert items[3]["model_name"] == "ESRGAN" and items[3]["scale"] == 2
    assert items[3]["model_path"].endswith("tiny-2x.pth")
    assert items[5]["model_name"] == "RealESRGAN"


def test_pth_and_safetensors_load_to_the_same_model(upscaler_dir):
    a = load_upscaler_model(upscaler_dir / "ESRGAN" / "tiny-2x.pth")
    b = load_upscaler_model(upscaler_dir / "ESRGAN" / "tiny-st-2x.safetensors")
    c = load_upscaler_model(upscaler_dir / "RealESRGAN" / "tiny-real-2x.pth")
    assert a.architecture.name == "ESRGAN" and a.scale == 2
    x = torch.rand(1, 3, 16, 20)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
        assert a(x).shape == (1, 3, 32, 40)
        assert not torch.equal(a(x), c(x))


def test_malicious_pth_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil-4x.pth"
    torch.save({"model.0.weight": torch.zeros(1), "payload": Evil()}, path)
    with pytest.raises(ModelFileError, match="refused"):
        load_upscaler_model(path)
    assert not marker.exists()


def test_not_an_upscaler_is_a_clear_error(tmp_path):
    path = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ModelFileError, match="spandrel"):
        load_upscaler_model(path)


def test_tiled_equals_untiled_within_tolerance(upscaler_dir):
    model = load_upscaler_model(upscaler_dir / "ESRGAN" / "tiny-2x.pth")
    torch.manual_seed(3)
    x = torch.rand(1, 3, 52, 70)
    calls = []

    def counted(tile):
        calls.append(tuple(tile.shape[-2:]))
        return model(tile)

    with torch.inference_mode():
        whole = model(x)
        tiled = run_tiled(counted, x, tile=24, overlap=8)
    assert tiled.shape == whole.shape == (1, 3, 104, 140)
    assert len(calls) > 4 and all(shape == (24, 24) for shape in calls)
    difference = (tiled - whole).abs()
    assert difference.mean() < 2e-3
    assert difference.max() < 0.05
    # No overlap at all blends nothing: the seams show (so the overlap above is what made it match).
    with torch.inference_mode():
        seams = run_tiled(model, x, tile=24, overlap=0)
    assert (seams - whole).abs().mean() > difference.mean()


def test_upscale_rules_as_a1111(library):
    image = Image.new("RGB", (40, 30), (200, 100, 50))
    # Target floored to a multiple of 8: 40*3=120, 30*3=90 -> 88.
    assert upscale_image(image, library.find("Lanczos"), 3.0).size == (120, 88)
    assert upscale_image(image, library.find("Nearest"), 2.0).size == (80, 56)
    assert upscale_image(image, library.find("None"), 2.0) is image
    calls = []
    entry = library.find("tiny-2x")
    real = library.model(entry)
    assert library.model(entry) is real  # kept for reuse

    class Counting:
        device, dtype = real.device, real.dtype

        def __call__(self, x):
            calls.append(x.shape)
            return real(x)

    counting_library = UpscalerLibrary([])
    counting_library.model = lambda _entry: Counting()  # type: ignore[method-assign]
    out = upscale_image(image, entry, 3.0, library=counting_library, tiles=TileOptions(16, 4))
    # x2 twice (40 -> 80 -> 160), then Lanczos down to the target.
    assert out.size == (120, 88)
    first_pass_tiles = [s for s in calls if s[-1] <= 16]
    assert first_pass_tiles and calls
    out = resize_image_to(image, entry, 64, 48, library=library)
    assert out.size == (64, 48)


@pytest.mark.parametrize("mode", list(LATENT_UPSCALE_MODES))
def test_latent_modes_output_size(mode):
    latents = torch.randn(2, 4, 8, 12)
    out = upscale_latents(latents, mode, 192, 128)
    assert out.shape == (2, 4, 16, 24)
    assert torch.isfinite(out).all()


def test_latent_modes_differ_as_their_filters():
    latents = torch.randn(1, 4, 8, 8)
    nearest = upscale_latents(latents, "Latent (nearest)", 128, 128)
    bilinear = upscale_latents(latents, "Latent", 128, 128)
    assert torch.equal(nearest[..., ::2, ::2], latents)
    assert not torch.equal(nearest, bilinear)
    with pytest.raises(ValueError):
        upscale_latents(latents, "Latent (sinc)", 128, 128)


def test_extras_scale_by_scale_to_crop_and_second_upscaler(library):
    image = Image.new("RGB", (40, 32), (10, 200, 30))
    result = run_extras(image, ExtrasParams(upscaling_resize=2, upscaler_1="Lanczos"), library)
    assert result.image.size == (80, 64)
    assert result.info == {"Postprocess upscale by": 2, "Postprocess upscaler": "Lanczos"}
    params = ExtrasParams(resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100, upscaling_crop=True,
                          upscaler_1="tiny-2x", upscaler_2="Nearest", upscaler_2_visibility=0.5)
    result = run_extras(image, params, library)
    assert result.image.size == (100, 100)
    assert result.infotext == ("Postprocess upscale to: 100x100, Postprocess crop to: 100x100, "
                               "Postprocess upscaler: tiny-2x, Postprocess upscaler 2: Nearest")
    assert run_extras(image, ExtrasParams(), library).image.size == (40, 32)  # upscaler_1 None: unchanged
    with pytest.raises(UpscalerNotFoundError):
        run_extras(image, ExtrasParams(upscaler_1="nope"), library)
    with pytest.raises(ParamError) as error:
        ExtrasParams(resize_mode=2)
    assert error.value.field == "resize_mode"


# ---------------------------------------------------------------------------------------------------- API


def _b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path, upscaler_dir):
    import shutil

    from test_api_support import LiveServer, make_data_dir

    root = make_data_dir(tmp_path_factory.mktemp("extras-data"), tiny_sd1_path)
    shutil.copytree(upscaler_dir / "ESRGAN", root / "models" / "ESRGAN")
    with LiveServer(root) as live:
        yield live


def test_api_upscalers_lists_installed_models(server):
    with server.client() as client:
        items = client.get("/sdapi/v1/upscalers").json()
    assert [i["name"] for i in items] == ["None", "Lanczos", "Nearest", "tiny-2x", "tiny-st-2x"]
    assert items[3]["model_name"] == "ESRGAN"


def test_api_realesrgan_models_lists_the_installed_ones(tmp_path, tiny_sd1_path, upscaler_dir):
    import shutil

    from test_api_support import LiveServer, make_data_dir

    root = make_data_dir(tmp_path, tiny_sd1_path)
    shutil.copytree(upscaler_dir, root / "models", dirs_exist_ok=True)
    with LiveServer(root, ui=False) as live, live.client() as client:
        items = client.get("/sdapi/v1/realesrgan-models").json()
    # A1111's RealesrganItem (name, path, scale); the ESRGAN folder's files are not RealESRGAN models
    path = root / "models" / "RealESRGAN" / "tiny-real-2x.pth"
    assert items == [{"name": "tiny-real-2x", "path": str(path), "scale": 2}]


def test_api_extra_single_image(server):
    from test_api_support import decode_png

    image = Image.new("RGB", (24, 16), (255, 0, 0))
    image_b64 = _b64png(image)
    with server.client() as client:
        r = client.post("/sdapi/v1/extra-single-image",
                        json={"image": image_b64, "upscaler_1": "tiny-2x", "upscaling_resize": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        assert decode_png(body["image"]).size == (48, 32)
        assert body["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: tiny-2x</p>"
        r = client.post("/sdapi/v1/extra-single-image", json={
            "image": "data:image/png;base64," + image_b64, "resize_mode": 1, "upscaling_resize_w": 40,
            "upscaling_resize_h": 40, "upscaler_1": "Lanczos"})
        assert r.status_code == 200 and decode_png(r.json()["image"]).size == (40, 40)


def test_api_extra_batch_images(server):
    from test_api_support import decode_png

    images = [Image.new("RGB", (16, 16), (0, 0, 255)), Image.new("RGB", (8, 24), (0, 255, 0))]
    with server.client() as client:
        r = client.post("/sdapi/v1/extra-batch-images", json={
            "imageList": [{"data": _b64png(im), "name": f"{i}.png"} for i, im in enumerate(images)],
            "upscaler_1": "Nearest", "upscaling_resize": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [decode_png(b).size for b in body["images"]] == [(48, 48), (24, 72)]
    assert "Postprocess upscaler: Nearest" in body["html_info"]


@pytest.mark.parametrize("body, field", [
    ({"gfpgan_visibility": 0.5}, "gfpgan_visibility"),
    ({"codeformer_visibility": 1}, "codeformer_visibility"),
    ({"upscaler_1": "4x-UltraSharp"}, "upscaler_1"),
    ({"upscaler_2": "nope", "upscaler_1": "Lanczos"}, "upscaler_2"),
    ({"resize_mode": 2}, "resize_mode"),
    ({"image": "not base64!"}, "image"),
    ({"upscaling_resize": 16, "upscaler_1": "Lanczos", "image": "BIG"}, "image"),
])
def test_api_extras_bad_input_is_422(server, body, field):
    image_b64 = _b64png(Image.new("RGB", (2048, 1024)))
    payload = {"image": _b64png(Image.new("RGB", (8, 8))), **body}
    if payload["image"] == "BIG":
        payload["image"] = image_b64
    with server.client() as client:
        r = client.post("/sdapi/v1/extra-single-image", json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_native_extras_job_saves_and_records(server):
    from test_api_support import wait_for_job

    images = [_b64png(Image.new("RGB", (16, 12), (9, 9, 9)))]
    with server.client() as client:
        r = client.post("/api/v1/jobs", json={"type": "extras", "images": images, "upscaler_1": "tiny-2x",
                                              "upscaling_resize": 2})
        assert r.status_code == 202, r.text
        view = wait_for_job(client, r.json()["id"], timeout=120)
        assert view["status"] == "done", view
        saved = view["result"]["images"]
        assert len(saved) == 1 and saved[0]["path"].startswith("extras-images/")
        record = client.get(f"/api/v1/images/{saved[0]['id']}").json()
        assert (record["width"], record["height"]) == (32, 24)
        assert "Postprocess upscaler: tiny-2x" in record["infotext"]
        png = client.get(f"/api/v1/images/{saved[0]['id']}/file")
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (32, 24)
        r = client.post("/api/v1/jobs", json={"type": "extras", "images": images, "upscaler_1": "nope"})
        assert r.status_code == 422 and r.json()["field"] == "upscaler_1"
        r = client.post("/api/v1/jobs", json={"type": "extras", "images": images, "gfpgan_visibility": 1})
        assert r.status_code == 422 and r.json()["field"] == "gfpgan_visibility"  # no GFPGAN installed here
        r = client.post("/api/v1/jobs", json={"type": "extras", "images": images, "colour": 1})
        assert r.status_code == 422  # unknown keys are an error on the native API
