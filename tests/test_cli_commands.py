"""The command line beyond txt2img: img2img (with a mask), extras, png-info; and the mistakes a new user makes,
each one clear line with exit status 2 and nothing written: an unknown command, an output folder that cannot be
written, a device that is not there, a checkpoint path that does not exist; and a note when the built-in demo
model is used."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sdwebui.cli import main
from sdwebui.models.family import ModelFamily
from tiny_models import build_tiny, write_single_file

SMALL = ["--steps", "2", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-data")
    write_single_file(build_tiny(ModelFamily.SD1, seed=1), root / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    return root


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(path)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdwebui: error: ") and len(err.splitlines()) == 1, err
    return err


def test_img2img_and_inpainting_from_the_command_line(data_dir, picture, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["img2img", str(picture), "a green field", "--denoising-strength", "0.4", "--out", str(out),
                 "--data-dir", str(data_dir), *SMALL])
    assert code == 0
    path = Path(capsys.readouterr().out.strip())
    image = Image.open(path)
    assert image.size == (64, 48)  # the init image's size (no --width: the model's native size is 64, 48 given)
    assert "Denoising strength: 0.4" in image.info["parameters"] and "Seed: 3" in image.info["parameters"]

    mask = tmp_path / "mask.png"
    drawn = Image.new("L", (64, 48), 0)
    drawn.paste(255, (0, 0, 16, 16))
    drawn.save(mask)
    code = main(["img2img", str(picture), "a patch", "--mask", str(mask), "--mask-blur", "0", "--width", "64",
                 "--height", "48", "--out", str(out), "--data-dir", str(data_dir), *SMALL])
    assert code == 0
    painted = Image.open(capsys.readouterr().out.strip()).convert("RGB")
    assert painted.getpixel((60, 40)) == (200, 40, 40)  # outside the mask: the input's pixels
    assert "Mask blur: 0" in painted.info["parameters"] or "Denoising strength" in painted.info["parameters"]


def test_img2img_names_an_unreadable_image(data_dir, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert main(["img2img", str(bad), "x", "--data-dir", str(data_dir), *SMALL]) == 2
    assert "INIT_IMAGE" in one_error_line(capsys) and not (data_dir / "outputs" / "img2img-images").exists()


def test_extras_upscales_and_png_info_prints_the_infotext(data_dir, picture, tmp_path, capsys):
    source = tmp_path / "with-infotext.png"
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, Seed: 1")
    Image.new("RGB", (32, 24)).save(source, pnginfo=info)
    out = tmp_path / "up"
    assert main(["extras", str(source), "--upscaler", "Lanczos", "--scale", "2", "--out", str(out),
                 "--data-dir", str(data_dir)]) == 0
    upscaled = Path(capsys.readouterr().out.strip())
    assert upscaled.parent == out and Image.open(upscaled).size == (64, 48)
    assert main(["png-info", str(upscaled)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("a cat\nSteps: 20, Sampler: Euler, Seed: 1") and "Postprocess upscaler: Lanczos" in printed
    assert main(["png-info", str(picture)]) == 0
    assert "holds no generation parameters" in capsys.readouterr().err
    assert main(["extras", str(source), "--upscaler", "4x-Nothing", "--data-dir", str(data_dir)]) == 2
    assert "upscaler_1" in one_error_line(capsys)


def test_an_unknown_command_lists_the_commands(capsys):
    assert main(["bogus"]) == 2
    err = one_error_line(capsys)
    assert "unknown command 'bogus'" in err and "txt2img, img2img, extras, png-info" in err


@pytest.mark.parametrize("argv, message", [
    (["--out", "/sys/fs/sdwebui-out"], "--out /sys/fs/sdwebui-out: cannot write in /sys/fs"),
    (["--device", "cuda"], "--device cuda: no CUDA device here"),
    (["--device", "tpu"], "--device tpu: not a device"),
    (["--model", "/no/such/folder/model.safetensors"], "--model /no/such/folder/model.safetensors: no such file"),
])
def test_mistakes_are_one_line_before_any_model_work(data_dir, tmp_path, capsys, argv, message):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is right here")
    code = main(["txt2img", "x", "--data-dir", str(tmp_path), "--steps", "2", *argv])
    assert code == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "outputs").exists()


def test_an_output_folder_behind_a_file_is_refused(data_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["txt2img", "x", "--out", str(blocker / "sub"), "--data-dir", str(data_dir), *SMALL]) == 2
    assert "is a file, not a folder" in one_error_line(capsys)


def test_the_demo_model_is_named_when_it_is_used(tmp_path, capsys):
    code = main(["txt2img", "a red circle", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path), *SMALL])
    assert code == 0
    captured = capsys.readouterr()
    assert "using the built-in demo model sdwebui-demo-shapes-v1" in captured.err
    assert Image.open(captured.out.strip()).size == (64, 64)
