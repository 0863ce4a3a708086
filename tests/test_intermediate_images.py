"""A1111's intermediate copies (Settings -> Saving images: `save_images_before_face_restoration`,
`save_images_before_highres_fix`, `save_images_before_color_correction`, `save_mask`, `save_mask_composite`):
named `<number>-<pattern><suffix>.png` beside the job's images, carrying the image's infotext, neither returned nor
recorded; and img2img color correction (`img2img_color_correction`), whose "before" copy is one of them."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdwebui.pipelines.output import (
    BEFORE_COLOR_CORRECTION,
    BEFORE_FACE_RESTORATION,
    INTERMEDIATE_SETTINGS,
    read_infotext_from_png,
    save_image,
)
from sdwebui.server.options import OPTIONS
from test_api_support import LiveServer, decode_png, make_data_dir

A1111_LABELS = {
    "save_images_before_face_restoration": "Save a copy of image before doing face restoration.",
    "save_images_before_highres_fix": "Save a copy of image before applying highres fix.",
    "save_images_before_color_correction": "Save a copy of image before applying color correction to img2img results",
    "save_mask": "For inpainting, save a copy of the greyscale mask",
    "save_mask_composite": "For inpainting, save a masked composite",
}


def test_the_settings_are_a1111s():
    for key, label in A1111_LABELS.items():
        assert OPTIONS[key].default is False and OPTIONS[key].kind is bool and OPTIONS[key].label == label
    assert OPTIONS["img2img_color_correction"].default is False
    assert INTERMEDIATE_SETTINGS == {
        "save_images_before_face_restoration": "-before-face-restoration",
        "save_images_before_highres_fix": "-before-highres-fix",
        "save_images_before_color_correction": "-before-color-correction",
        "save_mask": "-mask", "save_mask_composite": "-mask-composite",
    }


def test_a_suffix_follows_the_pattern_and_takes_its_own_number(tmp_path):
    image = Image.new("RGB", (8, 8))
    first = save_image(image, tmp_path, seed=7, infotext="a", date_subdir=False, suffix="-before-highres-fix")
    second = save_image(image, tmp_path, seed=7, infotext="b", date_subdir=False)
    third = save_image(image, tmp_path, seed=7, infotext="c", pattern="", date_subdir=False, suffix="-mask")
    assert [first.name, second.name, third.name] == ["00000-7-before-highres-fix.png", "00001-7.png",
                                                     "00002-mask.png"]
    assert read_infotext_from_png(first) == "a"


# ---- through the A1111 API ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    with LiveServer(make_data_dir(tmp_path_factory.mktemp("intermediates"), tiny_sd1_path)) as live:
        yield live


def saved_by(server, call):
    """(what `call()` returned, {file name: path} of the PNGs it wrote under the outputs folder)."""
    outputs = server.config.paths.outputs_dir
    before = set(outputs.rglob("*.png"))
    result = call()
    return result, {path.name: path for path in set(outputs.rglob("*.png")) - before}


def set_options(client, **values):
    response = client.post("/sdapi/v1/options", json=values)
    assert response.status_code == 200, response.text


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def txt2img(client, **fields):
    body = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 7,
            "enable_hr": True, "hr_scale": 2, "denoising_strength": 0.5, "save_images": True, **fields}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_before_highres_fix_copy(server, upscaler):
    with server.client() as client:
        set_options(client, save_images_before_highres_fix=True)
        try:
            body, files = saved_by(server, lambda: txt2img(client, hr_upscaler=upscaler))
            copy_name, final_name = sorted(files)  # the folder is shared by this module's tests: numbers vary
            assert copy_name[5:] == "-7-before-highres-fix.png" and final_name[5:] == "-7.png"
            assert int(copy_name[:5]) + 1 == int(final_name[:5])  # saved first, numbered in turn (A1111)
            infotext = json.loads(body["info"])["infotexts"][0]
            assert f"Hires upscaler: {upscaler}" in infotext
            with Image.open(files[copy_name]) as copy, Image.open(files[final_name]) as final:
                assert copy.size == (64, 64) and final.size == (128, 128)  # the first pass, and the result
                assert copy.info["parameters"] == infotext == final.info["parameters"]
            assert len(body["images"]) == 1 and decode_png(body["images"][0]).size == (128, 128)  # not returned

            _, files = saved_by(server, lambda: txt2img(client, hr_upscaler=upscaler, save_images=False))
            assert files == {}  # a job that saves nothing saves no copy either
        finally:
            set_options(client, save_images_before_highres_fix=False)
        _, files = saved_by(server, lambda: txt2img(client, hr_upscaler=upscaler))
        assert len(files) == 1 and not any("before" in name for name in files)  # the setting off: no copy


def test_copies_are_not_recorded_in_the_history(server):
    with server.client() as client:
        set_options(client, save_images_before_highres_fix=True)
        try:
            body, files = saved_by(server, lambda: txt2img(client))
        finally:
            set_options(client, save_images_before_highres_fix=False)
        images = client.get("/api/v1/images", params={"limit": 500}).json()
    recorded = {record["path"].rsplit("/", 1)[-1] for record in images}
    assert len(files) == 2
    assert [name for name in files if name in recorded] == [next(n for n in files if "before" not in n)]


def test_mask_and_mask_composite_copies(server):
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 40, 32))
    request = {"prompt": "a red cube", "steps": 2, "sampler_name": "Euler", "seed": 11, "width": 64, "height": 64,
               "init_images": [png_b64(init)], "mask": png_b64(mask), "mask_blur": 0, "inpaint_full_res": False,
               "denoising_strength": 0.9, "save_images": True}

    def post(**fields):
        response = client.post("/sdapi/v1/img2img", json={**request, **fields})
        assert response.status_code == 200, response.text
        return response.json()

    with server.client() as client:
        set_options(client, save_mask=True, save_mask_composite=True)
        try:
            body, files = saved_by(server, post)
            _, unsaved = saved_by(server, lambda: post(save_images=False))
        finally:
            set_options(client, save_mask=False, save_mask_composite=False)
    assert unsaved == {}
    names = sorted(files)
    assert [name[5:] for name in names] == ["-11.png", "-11-mask.png", "-11-mask-composite.png"]
    assert [int(name[:5]) for name in names] == [int(names[0][:5]) + i for i in range(3)]  # image, then its masks
    infotext = json.loads(body["info"])["infotexts"][0]
    assert len(body["images"]) == 1
    with Image.open(files[names[0]]) as final, Image.open(files[names[1]]) as saved_mask, \
            Image.open(files[names[2]]) as composite:
        assert final.info["parameters"] == saved_mask.info["parameters"] == composite.info["parameters"] == infotext
        assert saved_mask.mode == "RGB" and np.array_equal(np.asarray(saved_mask)[..., 0], np.asarray(mask))
        assert composite.mode == "RGBA" and composite.size == (64, 64)
        alpha = np.asarray(composite)[..., 3]
        inside = np.asarray(mask) == 255
        assert (alpha[inside] == 255).all() and (alpha[~inside] == 0).all()
        # where the mask is, the composite is the result (the generated pixels)
        assert np.array_equal(np.asarray(composite)[..., :3][inside], np.asarray(final.convert("RGB"))[inside])


# ---- in the engine: face restoration and color correction --------------------------------------------------------


@pytest.fixture(scope="module")
def sd_model(tiny_sd1_path):
    from sdwebui.models.loader import load_checkpoint

    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


def run_engine(sd_model, kind, *, intermediates=(), init=None, **values):
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.img2img import Img2ImgParams, img2img
    from sdwebui.pipelines.params import Txt2ImgParams
    from sdwebui.pipelines.txt2img import txt2img

    batches = []
    faces, color_correction = values.pop("faces", None), values.pop("color_correction", False)
    ctx = GenerationContext(model=sd_model, face_restoration=faces, on_images=batches.append,
                            intermediates=frozenset(intermediates), color_correction=color_correction)
    values = {"prompt": "a portrait", "width": 64, "height": 64, "steps": 2, "seed": 3, "sampler": "Euler",
              "rng": "cpu", **values}
    if kind == "img2img":
        return img2img(ctx, Img2ImgParams(**values), [init]), batches
    return txt2img(ctx, Txt2ImgParams(**values)), batches


def test_before_face_restoration_copy(sd_model, tmp_path):
    from sdwebui.models.face_restorers import FaceRestorerLibrary
    from sdwebui.pipelines.face_restoration import FaceRestoration
    from test_face_restoration import CornerFace, tiny_restoreformer_state

    from safetensors.torch import save_file

    (tmp_path / "RestoreFormer").mkdir()
    save_file(tiny_restoreformer_state(), str(tmp_path / "RestoreFormer" / "RestoreFormer.safetensors"))
    faces = FaceRestoration(FaceRestorerLibrary(tmp_path), detector=CornerFace())
    plain, _ = run_engine(sd_model, "txt2img")
    values = {"faces": faces, "restore_faces": True, "face_restoration_model": "RestoreFormer"}
    result, batches = run_engine(sd_model, "txt2img", intermediates=[BEFORE_FACE_RESTORATION], **values)
    [copy] = batches[0].intermediates
    assert copy.suffix == "-before-face-restoration" and copy.before
    assert np.array_equal(np.asarray(copy.images[0]), np.asarray(plain.images[0]))  # as decoded
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))  # restored
    assert batches[0].infotexts == result.infotexts  # the copy is saved with the image's infotext
    _, batches = run_engine(sd_model, "txt2img", **values)
    assert batches[0].intermediates == ()  # not asked for: not made


def test_color_correction_and_its_before_copy(sd_model):
    from sdwebui.pipelines.color_correction import apply_color_correction, color_target

    init = Image.new("RGB", (64, 64), (200, 40, 40))
    init.paste((30, 60, 220), (0, 32, 64, 64))
    values = {"denoising_strength": 0.6}
    plain, _ = run_engine(sd_model, "img2img", init=init, **values)
    result, batches = run_engine(sd_model, "img2img", init=init, color_correction=True,
                                 intermediates=[BEFORE_COLOR_CORRECTION], **values)
    [copy] = batches[0].intermediates
    assert copy.suffix == "-before-color-correction" and copy.before
    assert np.array_equal(np.asarray(copy.images[0]), np.asarray(plain.images[0]))  # before the correction
    expected = apply_color_correction(color_target(init), plain.images[0])
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(expected))
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))
    assert result.infotexts == plain.infotexts  # A1111 writes nothing for it
    _, batches = run_engine(sd_model, "img2img", init=init, color_correction=True, **values)
    assert batches[0].intermediates == ()
    _, batches = run_engine(sd_model, "img2img", init=init, intermediates=[BEFORE_COLOR_CORRECTION], **values)
    assert batches[0].intermediates == ()  # no color correction: nothing to save a copy before


def test_color_correction_matches_the_histograms_and_keeps_the_luminosity():
    exposure = pytest.importorskip("skimage.exposure", reason="scikit-image is A1111's implementation")
    import cv2

    from sdwebui.pipelines.color_correction import LUMA_WEIGHTS, color_target, match_histograms
    from sdwebui.pipelines.color_correction import apply_color_correction

    rng = np.random.default_rng(1)
    init = Image.fromarray((rng.random((40, 48, 3)) ** 2 * 255).astype(np.uint8))
    image = np.asarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    target, lab = color_target(init), cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    assert np.array_equal(match_histograms(lab, target), exposure.match_histograms(lab, target, channel_axis=2))
    corrected = np.asarray(apply_color_correction(target, Image.fromarray(image))).astype(float)
    luminosity = lambda pixels: pixels @ LUMA_WEIGHTS  # noqa: E731
    assert np.abs(luminosity(corrected) - luminosity(image.astype(float))).mean() < 1.0
    assert np.abs(corrected - image).mean() > 5  # the colors did change
