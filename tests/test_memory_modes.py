"""Memory modes (`--medvram`, `--lowvram`, `--medvram-sdxl`, the automatic choice): on the CPU every mode runs
its offloading hooks with the CPU as both devices, so a job must give the same bytes as the default path; the
hooks' own counters show they ran, and the lowvram UNet offloaded to disk (its weights replaced by empty tensors
between uses) proves every layer is brought back before it runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny, write_single_file

from sdwebui.cli import main
from sdwebui.config import Paths
from sdwebui.models.devices import plan_devices
from sdwebui.models.family import ModelFamily
from sdwebui.models.manager import ModelManager
from sdwebui.models.memory import GIB, MemoryPolicy, ModelBytes, choose_mode, degrade, place_model
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.txt2img import txt2img

SMALL = ["--steps", "2", "--width", "64", "--height", "64", "--device", "cpu", "--seed", "5"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory-data")
    folder = root / "models" / "Stable-diffusion"
    write_single_file(build_tiny(ModelFamily.SD1, seed=1), folder / "tiny-sd1.safetensors")
    write_single_file(build_tiny(ModelFamily.SDXL, seed=2), folder / "tiny-sdxl.safetensors")
    return root


def cli_png(data_dir: Path, out: Path, model: str, *flags: str) -> bytes:
    code = main(["txt2img", "a red cat", "--model", model, "--data-dir", str(data_dir), "--out", str(out), *SMALL,
                 *flags])
    assert code == 0
    (png,) = sorted(out.iterdir())
    return png.read_bytes()


@pytest.mark.parametrize("model,flags", [
    ("tiny-sd1", ["--medvram"]),
    ("tiny-sd1", ["--lowvram"]),
    ("tiny-sd1", ["--medvram", "--lowvram"]),
    ("tiny-sd1", ["--vram-budget", "2"]),
    ("tiny-sdxl", ["--medvram-sdxl"]),
])
def test_cli_memory_flags_give_the_default_images_bytes(data_dir, tmp_path, model, flags):
    default = cli_png(data_dir, tmp_path / "default", model)
    assert cli_png(data_dir, tmp_path / "mode", model, *flags) == default


def manager(data_dir: Path, **policy) -> ModelManager:
    return ModelManager(Paths.from_flags(data_dir), plan_devices("cpu"), memory=MemoryPolicy(**policy))


def generate(model, **values):
    params = dict(prompt="a red cat", negative_prompt="blurry", width=64, height=64, steps=3, seed=11, rng="cpu")
    params.update(values)
    return txt2img(GenerationContext(model=model), Txt2ImgParams(**params))


def image_digest(result) -> list[str]:
    return [hashlib.sha256(image.tobytes()).hexdigest() for image in result.images]


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_each_mode_swaps_the_parts_in_order_and_changes_nothing(data_dir, mode):
    baseline = manager(data_dir).get("tiny-sd1")
    expected = image_digest(generate(baseline))
    assert baseline.placement.mode == "none"  # the CPU's automatic mode: nothing to offload to
    assert "memory mode none (automatic: nothing to offload to on cpu)" in baseline.config_notes

    model = manager(data_dir, mode=mode).get("tiny-sd1")
    placement = model.placement
    assert placement.mode == mode and f"memory mode {mode} (--{mode})" in model.config_notes
    assert image_digest(generate(model)) == expected
    # text encoder -> UNet (all steps) -> VAE, each brought in once per batch
    assert placement.onloads == {"text_encoder": 1, "unet": 1, "vae": 1}
    assert placement.resident[0] == "vae"
    if mode == "lowvram":
        registry = model.unet.conv_in._diffusers_hook
        assert registry.get_hook("group_offloading") is not None  # the UNet's layers stream, leaf by leaf


def test_lowvram_layers_offloaded_to_disk_are_all_brought_back(data_dir, tmp_path):
    """With disk offload an offloaded layer holds `torch.empty_like` garbage, so a layer that ran without being
    onloaded first would change the image."""
    baseline = manager(data_dir).get("tiny-sd1")
    expected = image_digest(generate(baseline, batch_size=2))
    model = manager(data_dir).get("tiny-sd1")
    place_model(model, "lowvram", offload_dir=tmp_path / "offload")
    assert image_digest(generate(model, batch_size=2)) == expected
    assert list((tmp_path / "offload").glob("group_*.safetensors"))


def test_mode_change_and_back_to_none_restores_the_plain_modules(data_dir):
    model = manager(data_dir, mode="medvram").get("tiny-sd1")
    expected = image_digest(generate(model))
    assert degrade(model) == "lowvram"
    assert image_digest(generate(model)) == expected
    assert degrade(model) is None  # nothing lower than lowvram
    place_model(model, "none")
    assert not hasattr(model.unet.conv_in, "_diffusers_hook") or \
        model.unet.conv_in._diffusers_hook.get_hook("group_offloading") is None
    assert image_digest(generate(model)) == expected


@pytest.mark.parametrize("flag", ["--medvram", "--lowvram"])
def test_loras_apply_the_same_in_every_mode(data_dir, tmp_path, flag):
    from safetensors.torch import save_file
    from test_lora import _simple_lora

    folder = tmp_path / "loras"
    folder.mkdir()
    save_file(_simple_lora(), folder / "style.safetensors")
    lora = ["--lora-dir", str(folder)]
    plain = cli_png(data_dir, tmp_path / "plain", "tiny-sd1", *lora)
    default = main(["txt2img", "a red cat <lora:style:1>", "--model", "tiny-sd1", "--data-dir", str(data_dir),
                    "--out", str(tmp_path / "default"), *SMALL, *lora])
    offloaded = main(["txt2img", "a red cat <lora:style:1>", "--model", "tiny-sd1", "--data-dir", str(data_dir),
                      "--out", str(tmp_path / "offloaded"), *SMALL, *lora, flag])
    assert default == offloaded == 0
    with_lora = next((tmp_path / "default").iterdir()).read_bytes()
    assert next((tmp_path / "offloaded").iterdir()).read_bytes() == with_lora != plain


GB = GIB
SD1_SIZES = ModelBytes(unet=int(1.6 * GB), text_encoders=int(0.24 * GB), vae=int(0.16 * GB))
SDXL_SIZES = ModelBytes(unet=int(4.8 * GB), text_encoders=int(1.6 * GB), vae=int(0.16 * GB))


@pytest.mark.parametrize("family,sizes,free_gb,expected", [
    (ModelFamily.SD1, SD1_SIZES, 12, "none"),
    (ModelFamily.SD1, SD1_SIZES, 2.8, "medvram"),
    (ModelFamily.SD1, SD1_SIZES, 2, "lowvram"),
    (ModelFamily.SDXL, SDXL_SIZES, 24, "none"),
    (ModelFamily.SDXL, SDXL_SIZES, 8, "medvram"),
    (ModelFamily.SDXL, SDXL_SIZES, 6, "lowvram"),
])
def test_automatic_mode_follows_the_free_vram(family, sizes, free_gb, expected):
    choice = choose_mode(MemoryPolicy(), family, torch.device("cuda"), sizes, free_bytes=int(free_gb * GB))
    assert choice.mode == expected and choice.reason.startswith("automatic")


def test_flags_win_over_the_automatic_choice_and_the_cpu_never_offloads_by_itself():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    plenty = int(80 * GB)
    assert choose_mode(MemoryPolicy("lowvram"), ModelFamily.SD1, cuda, SD1_SIZES, plenty).mode == "lowvram"
    assert choose_mode(MemoryPolicy(medvram_sdxl=True), ModelFamily.SDXL, cuda, SDXL_SIZES, plenty).mode == "medvram"
    assert choose_mode(MemoryPolicy(medvram_sdxl=True), ModelFamily.SD1, cuda, SD1_SIZES, plenty).mode == "none"
    assert choose_mode(MemoryPolicy("none"), ModelFamily.SDXL, cuda, SDXL_SIZES, int(GB)).mode == "none"
    assert choose_mode(MemoryPolicy(), ModelFamily.SDXL, cpu, SDXL_SIZES, None).mode == "none"
    # --vram-budget caps the free memory the automatic choice sees
    policy = MemoryPolicy(vram_budget_gb=2)
    assert policy.budget_bytes(cpu) == 2 * GB
    with pytest.raises(ValueError, match="vram-budget"):
        MemoryPolicy(vram_budget_gb=0)
