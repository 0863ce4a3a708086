"""`sdwebui merge` on tiny checkpoints in a checkpoints folder: names resolve like --model (name, hash, path), the
result lands in the folder; bad input is one line naming the flag or file, exit 2, and nothing is written."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_tiny, write_single_file

from sdwebui.cli import main
from sdwebui.models.family import ModelFamily
from sdwebui.models.hashing import sha256_of


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-cli")
    ckpt = root / "models" / "Stable-diffusion"
    write_single_file(build_tiny(ModelFamily.SD1, seed=0), ckpt / "alpha.safetensors")
    write_single_file(build_tiny(ModelFamily.SD1, seed=1), ckpt / "sub" / "beta.safetensors")
    write_single_file(build_tiny(ModelFamily.SDXL, seed=0), root / "elsewhere" / "xl.safetensors")
    return root


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_merge_by_name_and_hash(data_dir, capsys):
    ckpt = data_dir / "models" / "Stable-diffusion"
    beta_hash = sha256_of(ckpt / "sub" / "beta.safetensors", data_dir / "cache")[:10]
    code = main(["merge", "alpha", beta_hash, "--method", "weighted-sum", "--multiplier", "0.25", "--name", "mix",
                 "--save-as-half", "--discard-weights", "^first_stage_model\\.encoder", "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"Checkpoint saved to {ckpt / 'mix.safetensors'}" in out
    merged, a, b = (load_file(ckpt / "mix.safetensors"), load_file(ckpt / "alpha.safetensors"),
                    load_file(ckpt / "sub" / "beta.safetensors"))
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    assert merged[key].dtype == torch.float16
    torch.testing.assert_close(merged[key], (0.75 * a[key] + 0.25 * b[key]).half(), rtol=0, atol=0)
    assert not any(k.startswith("first_stage_model.encoder") for k in merged)
    # the new model is in the list at once
    main(["models", "--data-dir", str(data_dir)])
    assert "mix [" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["nosuch", "alpha"], "checkpoint 'nosuch'"),
    (["alpha", "{elsewhere}/xl.safetensors"], "B: A is SD 1.x but B is SDXL"),
    (["alpha", "sub/beta.safetensors", "--name", "../out"], "--name:"),
    (["alpha", "sub/beta", "--discard-weights", "(["], "--discard-weights: not a valid regular expression"),
    (["alpha", "sub/beta", "--bake-in-vae", "missing.vae"], "--bake-in-vae: VAE 'missing.vae'"),
    (["alpha", "sub/beta", "--method", "add-difference"], "C: Failed: Interpolation method (Add difference) "
                                                          "requires a tertiary model."),
    (["alpha", "{elsewhere}/broken.safetensors"], "broken.safetensors"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(data_dir, capsys, argv, words):
    (data_dir / "elsewhere" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    ckpt = data_dir / "models" / "Stable-diffusion"
    before = listing(ckpt)
    argv = [a.replace("{elsewhere}", str(data_dir / "elsewhere")) for a in argv]
    code = main(["merge", *argv, "--data-dir", str(data_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and words in err, err
    assert listing(ckpt) == before


def test_existing_name_needs_overwrite(data_dir, capsys):
    args = ["merge", "alpha", "sub/beta", "--name", "twice", "--data-dir", str(data_dir)]
    assert main(args) == 0
    assert main(args) == 2
    assert "--name: twice.safetensors already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_extract_bake_and_convert_commands(data_dir, capsys):
    ckpt, loras = data_dir / "models" / "Stable-diffusion", data_dir / "models" / "Lora"
    flags = ["--data-dir", str(data_dir)]
    assert main(["extract-lora", "sub/beta", "alpha", "--rank", "4", "--name", "diff", *flags]) == 0
    assert "LoRA saved to" in capsys.readouterr().out and (loras / "diff.safetensors").is_file()
    assert main(["bake-lora", "alpha", "diff:0.5", "--name", "baked", *flags]) == 0
    assert "tensors changed by the LoRAs" in capsys.readouterr().out
    baked, alpha = load_file(ckpt / "baked.safetensors"), load_file(ckpt / "alpha.safetensors")
    key = "model.diffusion_model.out.2.weight"
    assert not torch.equal(baked[key], alpha[key]) and list(baked) == list(alpha)
    assert main(["convert", "alpha", *flags]) == 0
    assert load_file(ckpt / "alpha-fp16.safetensors")[key].dtype == torch.float16
    before = listing(ckpt)
    for argv, words in ((["convert", "nosuch"], "CKPT: checkpoint 'nosuch'"),
                        (["bake-lora", "alpha", "nolora:1", "--name", "x"], "LORA: 'nolora'"),
                        (["extract-lora", "alpha", "alpha", "--name", "same"], "TUNED: the two models have the same"),
                        (["convert", "alpha", "--name", "alpha-fp16"], "--name: alpha-fp16.safetensors already exists")):
        assert main([*argv, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert listing(ckpt) == before and not (loras / "same.safetensors").exists()
