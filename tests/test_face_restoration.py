"""Face restoration: tiny RestoreFormer files (random weights) in the layouts users download, loaded through the
restricted loader and spandrel; GFPGAN at its real (fixed) size; OpenCV's Haar detector on a real photograph
(scikit-image's `astronaut`); restoration confined to the face; the engine's `restore_faces`, the Extras steps,
X/Y/Z's "Face restore" axis and the A1111 routes."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdwebui.models.face_restorers import (
    FaceRestorerLibrary,
    find_face_restorers,
    load_face_restorer_model,
    run_restorer,
)
from sdwebui.models.files import ModelFileError
from sdwebui.pipelines.extras import ExtrasParams, run_extras
from sdwebui.pipelines.face_restoration import FaceRestoration, FaceRestorationError
from sdwebui.pipelines.faces import FACE_TEMPLATE, DetectedFace, HaarFaceDetector, align_face

ASTRONAUT_FACE = (160, 50, 290, 180)
"""x0, y0, x1, y1 around the astronaut's face in scikit-image's 512x512 `astronaut` (generously)."""


def astronaut() -> Image.Image:
    data = pytest.importorskip("skimage.data", reason="scikit-image (a test dependency) ships the photograph")
    return Image.fromarray(data.astronaut())


def tiny_restoreformer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """RestoreFormer with 32 channels at every level (~0.5M parameters): spandrel reads the sizes from the
    weights; six levels bring 512 down to the 16x16 its attention runs at."""
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(seed)
    net = RestoreFormer(n_embed=32, embed_dim=32, ch=32, out_ch=3, ch_mult=(1,) * 6, num_res_blocks=1,
                        attn_resolutions=(16,), dropout=0.0, in_channels=3, resolution=512, z_channels=32,
                        double_z=False, enable_mid=True, head_size=8)
    return {key: value.detach().clone().contiguous() for key, value in net.state_dict().items()}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A models folder as users lay it out: RestoreFormer as GFPGAN's release ships it (`.pth`, `params_ema`),
    and the same weights as `.safetensors` in `models/RestoreFormer`."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("face-models")
    state = tiny_restoreformer_state()
    (root / "RestoreFormer").mkdir()
    save_file(state, str(root / "RestoreFormer" / "RestoreFormer.safetensors"))
    (root / "GFPGAN").mkdir()
    torch.save({"params_ema": state}, root / "GFPGAN" / "RestoreFormer.pth")
    return root


@pytest.fixture(scope="module")
def faces(models_dir) -> FaceRestoration:
    return FaceRestoration(FaceRestorerLibrary(models_dir))


# ---- finding and loading the models ----------------------------------------------------------------------------


def test_restorers_are_found_in_a1111s_folders(tmp_path):
    for folder, name in (("GFPGAN", "GFPGANv1.4.pth"), ("GFPGAN", "GFPGANv1.4.safetensors"),
                         ("GFPGAN", "detection_Resnet50_Final.pth"), ("GFPGAN", "parsing_parsenet.pth"),
                         ("Codeformer", "codeformer-v0.1.0.pth"), ("GFPGAN", "RestoreFormer.pth")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"x")
    with_cf = find_face_restorers(tmp_path, with_codeformer=True)
    assert [(e.name, e.path.name) for e in with_cf] == [
        ("CodeFormer", "codeformer-v0.1.0.pth"), ("GFPGAN", "GFPGANv1.4.safetensors"),  # safetensors preferred
        ("RestoreFormer", "RestoreFormer.pth")]
    assert with_cf[1].a1111() == {"name": "GFPGAN", "cmd_dir": str(tmp_path / "GFPGAN")}
    # CodeFormer needs the optional extra (non-commercial licence): without it, it is not offered.
    assert [e.name for e in find_face_restorers(tmp_path, with_codeformer=False)] == ["GFPGAN", "RestoreFormer"]
    assert find_face_restorers(tmp_path / "nothing-here") == []


def test_pth_and_safetensors_load_to_the_same_network(models_dir):
    a = load_face_restorer_model(models_dir / "RestoreFormer" / "RestoreFormer.safetensors", "RestoreFormer")
    b = load_face_restorer_model(models_dir / "GFPGAN" / "RestoreFormer.pth", "RestoreFormer")
    assert a.architecture.id == "RestoreFormer" and a.purpose == "FaceSR"
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.inference_mode():
        out = run_restorer(a, x)
        assert torch.equal(out, run_restorer(b, x))
    assert out.shape == (1, 3, 512, 512) and out.min() >= -1 and out.max() <= 1


def test_broken_and_wrong_files_are_clear_errors(tmp_path):
    from safetensors.torch import save_file
    from test_upscalers import tiny_esrgan_state_dict

    truncated = tmp_path / "GFPGANv1.4.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelFileError):
        load_face_restorer_model(truncated, "GFPGAN")
    esrgan = tmp_path / "GFPGAN-not-really.safetensors"
    save_file(tiny_esrgan_state_dict(), str(esrgan))
    with pytest.raises(ModelFileError, match="holds a ESRGAN model, not GFPGAN"):
        load_face_restorer_model(esrgan, "GFPGAN")
    unknown = tmp_path / "codeformer.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(unknown))
    with pytest.raises(ModelFileError, match="CodeFormer|not a CodeFormer"):
        load_face_restorer_model(unknown, "CodeFormer")


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": Evil()}, path)
    with pytest.raises(ModelFileError):
        load_face_restorer_model(path, "GFPGAN")
    assert not marker.exists()


# ---- detection, alignment, paste-back ------------------------------------------------------------------------


def test_haar_finds_the_face_in_a_photograph_and_nothing_in_a_flat_image():
    image = np.asarray(astronaut())
    found = HaarFaceDetector().detect(image)
    assert len(found) == 1
    x0, y0, x1, y1 = ASTRONAUT_FACE
    face = found[0]
    assert x0 <= face.box[0] < face.box[2] <= x1 and y0 <= face.box[1] < face.box[3] <= y1
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0] and left_eye[1] < nose[1] < mouth_left[1]
    assert mouth_left[0] < mouth_right[0]
    assert HaarFaceDetector().detect(np.full((512, 512, 3), 128, np.uint8)) == []


def test_alignment_puts_the_landmarks_on_the_template():
    image = np.asarray(astronaut())
    face = HaarFaceDetector().detect(image)[0]
    crop, matrix = align_face(image, face.landmarks)
    assert crop.shape == (512, 512, 3)
    moved = np.c_[face.landmarks, np.ones(5)] @ matrix.T
    assert np.abs(moved - FACE_TEMPLATE).max() < 20  # a partial affine fit of five points


def test_restoration_changes_the_face_and_nothing_far_from_it(faces):
    image = astronaut()
    restored, count = faces.restore(image, "RestoreFormer")
    assert count == 1 and restored.size == image.size
    before, after = np.asarray(image).astype(int), np.asarray(restored).astype(int)
    changed = np.abs(before - after).sum(axis=2) > 0
    x0, y0, x1, y1 = ASTRONAUT_FACE
    assert changed[y0 + 30:y1 - 30, x0 + 30:x1 - 30].mean() > 0.9  # the face is replaced
    far = np.ones_like(changed)
    far[max(0, y0 - 80):y1 + 80, max(0, x0 - 80):x1 + 80] = False
    assert not changed[far].any()  # pixels far from the face are exactly as they were


def test_no_face_leaves_the_image_unchanged_with_a_note(faces):
    flat = Image.new("RGB", (96, 64), (90, 120, 150))
    restored, count = faces.restore(flat, "RestoreFormer")
    assert count == 0 and np.array_equal(np.asarray(restored), np.asarray(flat))
    images, entries, notes = faces.restore_batch([flat], _Params(True, "RestoreFormer"))
    assert np.array_equal(np.asarray(images[0]), np.asarray(flat))
    assert entries == {"Face restoration": "RestoreFormer"}
    assert any("no face" in note for note in notes)


def test_a_restorer_that_is_not_installed(faces, tmp_path):
    # The setting's default (CodeFormer) is not installed here: the installed one is used, and the job says so.
    name, note = faces.pick("CodeFormer")
    assert name == "RestoreFormer" and "CodeFormer is not installed" in note
    with pytest.raises(FaceRestorationError, match="GFPGAN"):
        faces.restore(Image.new("RGB", (8, 8)), "GFPGAN")
    with pytest.raises(FaceRestorationError, match="models/GFPGAN"):
        FaceRestoration(FaceRestorerLibrary(tmp_path)).pick("GFPGAN")


class _Params:
    def __init__(self, restore_faces, model, weight=0.5):
        self.restore_faces, self.face_restoration_model, self.code_former_weight = restore_faces, model, weight


# ---- Extras --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_extras_restore_after_upscaling_and_blend_with_the_visibility(tmp_path):
    """GFPGAN at its real size (spandrel's GFPGAN has a fixed configuration: 86M parameters), as GFPGAN's
    releases are laid out (`params_ema` in a `.pth`)."""
    from spandrel.architectures.GFPGAN import GFPGAN

    from sdwebui.models.upscalers import UpscalerLibrary

    torch.manual_seed(0)
    net = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                 num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    (tmp_path / "GFPGAN").mkdir()
    torch.save({"params_ema": {k: v.detach().clone() for k, v in net.state_dict().items()}},
               tmp_path / "GFPGAN" / "GFPGANv1.4.pth")
    del net
    faces = FaceRestoration(FaceRestorerLibrary(tmp_path))
    upscalers = UpscalerLibrary([])
    image = astronaut().resize((256, 256), Image.Resampling.LANCZOS)
    full = run_extras(image, ExtrasParams(upscaler_1="Lanczos", upscaling_resize=2.0, gfpgan_visibility=1.0),
                      upscalers, faces=faces)
    assert full.image.size == (512, 512)
    assert full.infotext == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos, GFPGAN visibility: 1"
    upscaled = np.asarray(image.resize((512, 512), Image.Resampling.LANCZOS)).astype(int)
    changed = np.abs(np.asarray(full.image).astype(int) - upscaled).sum(axis=2) > 0
    x0, y0, x1, y1 = ASTRONAUT_FACE
    assert changed[y0 + 30:y1 - 30, x0 + 30:x1 - 30].mean() > 0.9
    assert not changed[400:, :].any() and not changed[:, 380:].any()


def test_extras_visibility_blends_the_restored_image_over_the_input(faces):
    image = astronaut()
    full, count = faces.extras(image, "RestoreFormer", 1.0)
    half, _ = faces.extras(image, "RestoreFormer", 0.5)
    assert count == 1
    expected = Image.blend(image, full, 0.5)
    assert np.abs(np.asarray(half).astype(int) - np.asarray(expected).astype(int)).max() <= 1


def test_extras_without_a_face_keep_the_image_and_say_so(faces):
    from sdwebui.models.upscalers import UpscalerLibrary

    flat = Image.new("RGB", (64, 64), (200, 10, 10))
    with pytest.raises(FaceRestorationError, match="GFPGAN"):  # not installed in this folder
        run_extras(flat, ExtrasParams(gfpgan_visibility=1.0), UpscalerLibrary([]), faces=faces)
    params = ExtrasParams(gfpgan_visibility=0.0)
    assert not params.restores_faces
    with pytest.raises(Exception, match="codeformer_weight"):
        ExtrasParams(codeformer_weight=1.5)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("importlib").util.find_spec("spandrel_extra_arches"),
                    reason="CodeFormer needs the optional extra spandrel_extra_arches (non-commercial licence)")
def test_codeformer_through_the_optional_extra(tmp_path):
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    from sdwebui.models.upscalers import UpscalerLibrary

    torch.manual_seed(0)
    net = CodeFormer(dim_embd=64, n_head=8, n_layers=1, codebook_size=64, latent_size=256, connect_list=["32"],
                     fix_modules=["quantize", "generator"])
    (tmp_path / "Codeformer").mkdir()
    torch.save({"params_ema": {k: v.detach().clone() for k, v in net.state_dict().items()}},
               tmp_path / "Codeformer" / "codeformer-v0.1.0.pth")
    faces = FaceRestoration(FaceRestorerLibrary(tmp_path))
    assert faces.names() == ["CodeFormer"]
    image = astronaut()
    result = run_extras(image, ExtrasParams(codeformer_visibility=1.0, codeformer_weight=0.25), UpscalerLibrary([]),
                        faces=faces)
    assert result.infotext == "CodeFormer visibility: 1, CodeFormer weight: 0.25"
    changed = np.abs(np.asarray(result.image).astype(int) - np.asarray(image).astype(int)).sum(axis=2) > 0
    assert changed[100:140, 200:250].any() and not changed[400:, :].any()


# ---- the engine: restore_faces -------------------------------------------------------------------------------


class CornerFace:
    """A detector that reports one face in the top-left 32x32 of an image (the tiny SD model draws no faces);
    the restorer, alignment and paste-back are the real ones."""

    name = "test"

    def detect(self, image):
        landmarks = (FACE_TEMPLATE / 512 * 32).astype(np.float32)
        return [DetectedFace((0, 0, 32, 32), landmarks)]


@pytest.fixture(scope="module")
def sd_model(tiny_sd1_path):
    from sdwebui.models.loader import load_checkpoint

    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


def _txt2img(model, faces=None, **values):
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.params import Txt2ImgParams
    from sdwebui.pipelines.txt2img import txt2img

    saved = []
    params = Txt2ImgParams(**{"prompt": "a portrait", "width": 64, "height": 64, "steps": 2, "seed": 3,
                              "sampler": "Euler", "rng": "cpu", **values})
    ctx = GenerationContext(model=model, face_restoration=faces, on_images=lambda batch: saved.extend(batch.images))
    return txt2img(ctx, params), saved


def test_restore_faces_restores_each_image_before_it_is_saved(sd_model, models_dir):
    from sdwebui.pipelines.infotext import parse_infotext

    plain, _ = _txt2img(sd_model)
    faces = FaceRestoration(FaceRestorerLibrary(models_dir), detector=CornerFace())
    result, saved = _txt2img(sd_model, faces, restore_faces=True, face_restoration_model="RestoreFormer")
    before, after = np.asarray(plain.images[0]).astype(int), np.asarray(result.images[0]).astype(int)
    assert np.array_equal(np.asarray(saved[0]), after)  # what is saved is the restored image
    changed = np.abs(before - after).sum(axis=2) > 0
    assert changed[4:28, 4:28].mean() > 0.9 and not changed[40:, :].any() and not changed[:, 40:].any()
    infotext = result.infotexts[0]
    assert parse_infotext(infotext)["Face restoration"] == "RestoreFormer"
    assert infotext.index("Seed: 3, Face restoration: RestoreFormer, Size: 64x64") > 0  # A1111's place for it
    assert "Face restoration" not in plain.infotexts[0]


def test_restore_faces_without_a_face_or_a_restorer(sd_model, faces):
    from sdwebui.pipelines.sampling import GenerationError

    plain, _ = _txt2img(sd_model)
    result, _ = _txt2img(sd_model, faces, restore_faces=True)  # the real detector: no face in a 64x64 blur
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(result.images[0]))
    assert any("no face" in note for note in result.notes)
    assert any("CodeFormer is not installed; used RestoreFormer" in note for note in result.notes)
    with pytest.raises(GenerationError, match="face restoration"):
        _txt2img(sd_model, None, restore_faces=True)


# ---- X/Y/Z and the API -----------------------------------------------------------------------------------------


def test_the_face_restore_axis_sets_restoration_and_its_model():
    from sdwebui.scripts.xyz_grid import Cell, apply_face_restore

    def applied(text):
        cell = Cell.__new__(Cell)
        cell.values, cell.locs, cell.loc = {}, {}, ("script_args", 1)
        apply_face_restore(cell, text, [text])
        return cell.values

    assert applied("GFPGAN") == {"face_restoration_model": "GFPGAN", "restore_faces": True}
    assert applied("codeformer") == {"face_restoration_model": "CodeFormer", "restore_faces": True}
    assert applied("true") == {"restore_faces": True} and applied("yes") == {"restore_faces": True}
    assert applied("false") == {"restore_faces": False} and applied("none") == {"restore_faces": False}


def _b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path, models_dir):
    import shutil

    from test_api_support import LiveServer, make_data_dir

    root = make_data_dir(tmp_path_factory.mktemp("faces-data"), tiny_sd1_path)
    shutil.copytree(models_dir / "RestoreFormer", root / "models" / "RestoreFormer")
    with LiveServer(root) as live:
        yield live


def test_api_lists_the_installed_restorers_and_their_settings(server):
    with server.client() as client:
        items = client.get("/sdapi/v1/face-restorers").json()
        assert items == [{"name": "RestoreFormer",
                          "cmd_dir": str(server.config.paths.models_dir / "RestoreFormer")}]
        options = client.get("/sdapi/v1/options").json()
    assert (options["face_restoration"], options["face_restoration_model"], options["code_former_weight"],
            options["face_restoration_unload"]) == (False, "CodeFormer", 0.5, False)


def test_api_txt2img_restore_faces(server):
    import json

    from test_api_support import FAST

    with server.client() as client:
        r = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a face", "seed": 1, "restore_faces": True,
                                                    "override_settings": {"face_restoration_model": "RestoreFormer"}})
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["restore_faces"] is True and info["face_restoration_model"] == "RestoreFormer"
        assert "Face restoration: RestoreFormer" in info["infotexts"][0]
        # The setting `face_restoration` is the default of a request that leaves `restore_faces` out.
        r = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a face", "seed": 1,
                                                    "override_settings": {"face_restoration": True}})
        assert r.status_code == 200 and "Face restoration: RestoreFormer" in json.loads(r.json()["info"])["infotexts"][0]
        # A pasted infotext's "Face restoration: <model>" turns it on with that model (A1111's option infotext).
        pasted = "a face\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Face restoration: RestoreFormer, Size: 64x64"
        r = client.post("/sdapi/v1/txt2img", json={"infotext": pasted})
        assert r.status_code == 200, r.text
        assert "Face restoration: RestoreFormer" in json.loads(r.json()["info"])["infotexts"][0]
        r = client.post("/sdapi/v1/txt2img", json={**FAST, "restore_faces": True,
                                                    "override_settings": {"face_restoration_model": "Nope"}})
        assert r.status_code == 422 and r.json()["field"] == "override_settings.face_restoration_model"


def test_api_extras_face_fields(server):
    with server.client() as client:
        r = client.post("/sdapi/v1/extra-single-image",
                        json={"image": _b64png(Image.new("RGB", (16, 16))), "gfpgan_visibility": 0.5})
        assert r.status_code == 422 and r.json()["field"] == "gfpgan_visibility"
        assert "models/GFPGAN" in r.json()["message"]
        r = client.post("/sdapi/v1/extra-single-image",
                        json={"image": _b64png(Image.new("RGB", (16, 16))), "codeformer_weight": 2})
        assert r.status_code == 422 and r.json()["field"] == "codeformer_weight"


def test_the_ui_sends_the_face_fields(server):
    from sdwebui.ui.extras import submit_extras
    from sdwebui.ui.fields import DEFAULTS, TXT2IMG_FIELDS, UIError

    assert "restore_faces" in TXT2IMG_FIELDS and DEFAULTS["restore_faces"] is False
    values = {"resize_mode": 0, "upscaling_resize": 2, "upscaling_resize_w": 512, "upscaling_resize_h": 512,
              "upscaling_crop": True, "upscaler_1": "None", "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
              "gfpgan_visibility": 0, "codeformer_visibility": 0.5, "codeformer_weight": 0.3}
    with pytest.raises(UIError, match="^codeformer_visibility: CodeFormer is not installed"):
        submit_extras(server.services, Image.new("RGB", (16, 8)), values)


def test_the_command_line(tmp_path, tiny_sd1_path, models_dir, capsys):
    import shutil

    from sdwebui.cli import main

    root = tmp_path / "data"
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copyfile(tiny_sd1_path, root / "models" / "Stable-diffusion" / tiny_sd1_path.name)
    shutil.copytree(models_dir / "RestoreFormer", root / "models" / "RestoreFormer")
    assert main(["txt2img", "a face", "--restore-faces", "--face-restoration-model", "RestoreFormer", "--steps", "2",
                 "--width", "64", "--height", "64", "--device", "cpu", "--out", str(tmp_path / "out"),
                 "--data-dir", str(root)]) == 0
    saved = Image.open(capsys.readouterr().out.strip().splitlines()[-1])
    assert "Face restoration: RestoreFormer" in saved.info["parameters"]
    picture = tmp_path / "in.png"
    Image.new("RGB", (32, 32)).save(picture)
    assert main(["extras", str(picture), "--gfpgan-visibility", "1", "--data-dir", str(root)]) == 2
    assert "gfpgan_visibility" in capsys.readouterr().err


# ---- RetinaFace (facexlib's detection_Resnet50_Final.pth layout) ------------------------------------------------


def retinaface_with_known_output():
    """RetinaFace with random weights except its heads, whose outputs come from their biases alone: only the
    512-pixel anchors of the stride-32 level are faces, shifted right by 1 (x 0.1 x 512 pixels), with the first
    landmark moved by (2, 3) (x 0.1 x 512)."""
    from sdwebui.models.retinaface import RetinaFace

    torch.manual_seed(0)
    net = RetinaFace()
    with torch.no_grad():
        for heads in (net.ClassHead, net.BboxHead, net.LandmarkHead):
            for head in heads:
                head.conv1x1.weight.zero_()
                head.conv1x1.bias.zero_()
        net.ClassHead[2].conv1x1.bias.copy_(torch.tensor([10.0, -10.0, -10.0, 10.0]))  # anchor 512: a face
        net.BboxHead[2].conv1x1.bias[4:8] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        net.LandmarkHead[2].conv1x1.bias[10:12] = torch.tensor([2.0, 3.0])
    return net


def test_retinaface_loads_facexlibs_file_and_decodes_as_facexlib(tmp_path):
    from sdwebui.models.retinaface import detect, load_retinaface, prior_boxes

    net = retinaface_with_known_output()
    path = tmp_path / "detection_Resnet50_Final.pth"
    # facexlib's file was saved from a DataParallel model: its keys may carry "module.", which facexlib drops
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    loaded = load_retinaface(path)
    assert torch.equal(loaded.ClassHead[2].conv1x1.bias, net.ClassHead[2].conv1x1.bias)
    assert prior_boxes(32, 32).shape == ((16 + 4 + 1) * 2, 4)  # 4x4, 2x2 and 1x1 positions, two sizes each
    found = detect(loaded, np.full((32, 32, 3), 128, np.uint8))
    assert len(found) == 1
    box, score, landmarks = found[0]
    assert score > 0.99
    assert np.allclose(box, [16 + 51.2 - 256, 16 - 256, 16 + 51.2 + 256, 16 + 256], atol=1e-3)
    assert np.allclose(landmarks[0], [16 + 102.4, 16 + 153.6], atol=1e-3) and np.allclose(landmarks[1:], 16)
    broken = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"body.conv1.weight": torch.zeros(64, 3, 7, 7)}, str(broken))
    with pytest.raises(ModelFileError, match="not facexlib's RetinaFace"):
        load_retinaface(broken)


def test_retinaface_is_used_when_its_weights_are_installed(tmp_path, models_dir):
    import shutil

    shutil.copytree(models_dir / "RestoreFormer", tmp_path / "RestoreFormer")
    faces = FaceRestoration(FaceRestorerLibrary(tmp_path))
    assert faces.detector.name == "OpenCV Haar cascade"
    (tmp_path / "GFPGAN").mkdir()
    torch.save(retinaface_with_known_output().state_dict(), tmp_path / "GFPGAN" / "detection_Resnet50_Final.pth")
    assert faces.detector.name == "RetinaFace"
    assert faces.names() == ["RestoreFormer"]  # the detector's file is not a restorer


def test_face_restoration_unload_moves_the_model_off_after_each_use(models_dir):
    class Counting(FaceRestorerLibrary):
        offloads = 0

        def offload(self):
            Counting.offloads += 1
            super().offload()

    kept = FaceRestoration(Counting(models_dir), unload=lambda: False)
    kept.restore(Image.new("RGB", (32, 32)), "RestoreFormer")
    assert Counting.offloads == 0
    unloaded = FaceRestoration(Counting(models_dir), unload=lambda: True)
    unloaded.restore(Image.new("RGB", (32, 32)), "RestoreFormer")
    assert Counting.offloads == 1


def test_the_settings_tab_has_a1111s_face_restoration_section():
    from sdwebui.ui.settings import section_keys

    assert dict(section_keys())["Face restoration"] == [
        "face_restoration", "face_restoration_model", "code_former_weight", "face_restoration_unload"]


def test_api_img2img_restore_faces(server):
    import json

    from test_api_support import FAST

    with server.client() as client:
        r = client.post("/sdapi/v1/img2img", json={
            **FAST, "prompt": "a face", "init_images": [_b64png(Image.new("RGB", (64, 64), (120, 90, 60)))],
            "denoising_strength": 0.5, "restore_faces": True,
            "override_settings": {"face_restoration_model": "RestoreFormer"}})
        assert r.status_code == 200, r.text
        assert "Face restoration: RestoreFormer" in json.loads(r.json()["info"])["infotexts"][0]
