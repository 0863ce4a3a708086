"""The `sdwebui` command line: generation writes A1111-style files; every bad input is one clear line."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sdwebui.cli import main
from sdwebui.models.family import ModelFamily
from tiny_models import build_tiny, write_single_file

SMALL = ["--steps", "2", "--width", "64", "--height", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """An A1111-style data dir holding one tiny SD1 checkpoint."""
    root = tmp_path_factory.mktemp("data")
    write_single_file(build_tiny(ModelFamily.SD1, seed=1), root / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    return root


def test_txt2img_writes_a1111_named_png_with_infotext(data_dir, capsys):
    code = main(["txt2img", "a red cat", "-n", "blurry", "--seed", "42", "--data-dir", str(data_dir), *SMALL])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    today = dt.date.today().isoformat()
    assert len(printed) == 1
    path = Path(printed[0])
    assert path.parent == data_dir / "outputs" / "txt2img-images" / today
    assert path.name.endswith("-42.png") and path.name[:5].isdigit()
    infotext = Image.open(path).info["parameters"]
    assert infotext.startswith("a red cat\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras")
    assert "Seed: 42, Size: 64x64, Model hash: " in infotext and "Model: tiny-sd1" in infotext


def test_batch_and_explicit_model_path_and_out_dir(data_dir, tmp_path, capsys):
    checkpoint = data_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors"
    out = tmp_path / "out"
    code = main(["txt2img", "x", "--model", str(checkpoint), "--seed", "7", "--batch-size", "2", "--out", str(out),
                 "--sampler", "Euler a", "--data-dir", str(tmp_path), *SMALL])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00000-7.png", "00001-8.png"]


def test_grid_flag_saves_the_batch_grid_beside_the_images(data_dir, tmp_path, capsys):
    checkpoint = data_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors"
    out = tmp_path / "out"
    code = main(["txt2img", "x", "--model", str(checkpoint), "--seed", "7", "--batch-size", "2", "--out", str(out),
                 "--grid", "--data-dir", str(tmp_path), *SMALL])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000-7.png", "00001-8.png", "grid-0000.png"]


def test_model_by_name_from_ckpt_dir(data_dir, tmp_path, capsys):
    code = main(["txt2img", "x", "--model", "tiny-sd1", "--ckpt-dir", str(data_dir / "models" / "Stable-diffusion"),
                 "--seed", "1", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path), *SMALL])
    assert code == 0


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--width", "65"], "width: must be a multiple of 8"),
        (["--sampler", "Eulerish"], "unknown sampler 'Eulerish'"),
        (["--scheduler", "Karrass"], "unknown schedule type 'Karrass'"),
        (["--steps", "0"], "steps: must be an integer between 1"),
        (["--model", "does-not-exist"], "checkpoint does-not-exist not found"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(data_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code = main(["txt2img", "x", "--data-dir", str(data_dir), "--out", str(out), *SMALL, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert err.startswith("sdwebui: error:") and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_broken_checkpoint_is_reported_with_its_name(data_dir, tmp_path, capsys, damage):
    good = (data_dir / "models" / "Stable-diffusion" / "tiny-sd1.safetensors").read_bytes()
    broken = tmp_path / f"broken-{damage}.safetensors"
    broken.write_bytes({"truncated": good[: len(good) // 2], "random": bytes(range(256)) * 64, "empty": b""}[damage])
    out = tmp_path / "out"
    code = main(["txt2img", "x", "--model", str(broken), "--out", str(out), "--data-dir", str(tmp_path), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert broken.name in err and len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert not out.exists()


def test_models_lists_family_prediction_and_hash(data_dir, capsys):
    assert main(["models", "--data-dir", str(data_dir)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    name, family, prediction, path = line.split("\t")
    assert name.startswith("tiny-sd1 [") and len(name) == len("tiny-sd1 [") + 11
    assert (family, prediction) == ("sd1", "epsilon")


def test_console_entry_point_runs_as_a_program(data_dir, tmp_path):
    """`python -m sdwebui.cli` is what the `sdwebui` script and ./webui.sh run."""
    result = subprocess.run(
        [sys.executable, "-m", "sdwebui.cli", "txt2img", "x", "--width", "60", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "sdwebui: error: width: must be a multiple of 8, got 60"


def test_valid_safetensors_of_another_architecture_is_named(tmp_path, capsys):
    from safetensors.torch import save_file
    import torch

    lora = tmp_path / "some-lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    code = main(["txt2img", "x", "--model", str(lora), "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "some-lora.safetensors" in err and "not a Stable Diffusion checkpoint" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    ([], ["serve"]),
    (["--port", "7861"], ["serve", "--port", "7861"]),
    (["--debug", "--listen"], ["--debug", "serve", "--listen"]),
    (["txt2img", "a cat"], ["txt2img", "a cat"]),
    (["--debug", "models"], ["--debug", "models"]),
    (["--version"], ["--version"]),
    (["-h"], ["-h"]),
])
def test_no_command_means_serve(argv, expected):
    from sdwebui.cli import with_default_command

    assert with_default_command(argv) == expected


@pytest.fixture
def restore_torch_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_flag_sets_torch_threads(data_dir, tmp_path, capsys, restore_torch_threads):
    import torch

    code = main(["txt2img", "x", "--threads", "1", "--out", str(tmp_path / "out"), "--data-dir", str(data_dir), *SMALL])
    assert code == 0 and torch.get_num_threads() == 1


def test_threads_flag_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["txt2img", "x", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads: must be at least 1, not 0" in capsys.readouterr().err


def test_server_worker_sets_its_own_thread_count():
    """With OpenMP the count is per thread: the worker thread, which generates, must set it itself."""
    import threading

    import torch

    from sdwebui.app import config_from_args
    from sdwebui.cli import build_parser, paths_from
    from sdwebui.server.services import _prepare_worker

    args = build_parser().parse_args(["serve", "--threads", "1"])
    assert config_from_args(args, paths_from(args)).threads == 1
    seen = []

    def worker():
        _prepare_worker(threads=1, preload=False)
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [1]
