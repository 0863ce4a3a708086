"""`sdwebui txt2img` and the prompt language: --styles / --styles-file, --emphasis, --clip-skip, <lora:...> tags."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sdwebui.cli import main
from sdwebui.models.family import ModelFamily
from tiny_models import build_tiny, write_single_file

SMALL = ["--steps", "2", "--width", "64", "--height", "64", "--device", "cpu", "--sampler", "Euler", "--seed", "5"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """An A1111-style data dir: one tiny SD1 checkpoint and a styles.csv beside models/."""
    root = tmp_path_factory.mktemp("data")
    write_single_file(build_tiny(ModelFamily.SD1, seed=1), root / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    (root / "styles.csv").write_text(
        "name,prompt,negative_prompt\n"
        'cinematic,"{prompt}, film grain",cartoon\n'
        "sharp,highly detailed,blurry\n"
    )
    return root


def generate(data_dir, tmp_path, capsys, *args) -> tuple[int, str, str]:
    code = main(["txt2img", *args, "--data-dir", str(data_dir), "--out", str(tmp_path / "out"), *SMALL])
    captured = capsys.readouterr()
    infotext = ""
    if code == 0:
        infotext = Image.open(Path(captured.out.strip().splitlines()[0])).info["parameters"]
    return code, infotext, captured.err


def test_styles_from_the_data_dir_are_applied_in_order(data_dir, tmp_path, capsys):
    code, infotext, _ = generate(data_dir, tmp_path, capsys, "a cat", "-n", "ugly", "--styles", "cinematic", "sharp")
    assert code == 0
    assert infotext.startswith(
        "a cat, film grain, highly detailed\nNegative prompt: ugly, cartoon, blurry\nSteps: 2, Sampler: Euler,"
    )


def test_styles_file_flag(data_dir, tmp_path, capsys):
    other = tmp_path / "mine.csv"
    other.write_text("name,prompt,negative_prompt\nmine,{prompt} in oil,\n")
    code, infotext, _ = generate(data_dir, tmp_path, capsys, "a cat", "--styles", "mine", "--styles-file", str(other))
    assert code == 0 and infotext.startswith("a cat in oil\nSteps:")


def test_unknown_style_is_one_line_exit_2_and_writes_nothing(data_dir, tmp_path, capsys):
    code, _, err = generate(data_dir, tmp_path, capsys, "a cat", "--styles", "sharp", "nope")
    assert code == 2
    assert err.startswith("sdwebui: error: unknown style 'nope'") and len(err.strip().splitlines()) == 1
    assert "cinematic" in err  # the known ones are listed
    assert not (tmp_path / "out").exists()


def test_emphasis_and_clip_skip_flags_reach_the_infotext(data_dir, tmp_path, capsys):
    code, infotext, _ = generate(data_dir, tmp_path, capsys, "a (cat:1.3)", "--emphasis", "No norm", "--clip-skip", "2")
    assert code == 0
    assert "Clip skip: 2" in infotext and "Emphasis: No norm" in infotext


def test_bad_emphasis_is_rejected(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["txt2img", "x", "--emphasis", "Loud"])
    assert raised.value.code == 2
    assert "--emphasis" in capsys.readouterr().err


def test_prompt_language_and_lora_tags_through_the_cli(data_dir, tmp_path, capsys):
    prompt = "a [cat:dog:0.5] AND a bird :0.5 <lora:film:0.8>"
    code, infotext, err = generate(data_dir, tmp_path, capsys, prompt)
    assert code == 0
    assert infotext.startswith(prompt + "\nSteps:")  # as typed, tags included (A1111)
    assert "film" in err  # reported: no LoRA folder holds it (or networks are not available)
