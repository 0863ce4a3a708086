"""Shared fixtures. Tiny model checkpoints are built once per test session (per xdist worker) and written to
disk in the layouts users download; see `tests/tiny_models.py` for their shapes."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import tiny_models` from any test module

import tiny_models  # noqa: E402

from sdwebui.models.family import ModelFamily  # noqa: E402


def pytest_configure(config):
    """Under pytest-xdist, give each worker its share of the cores. PyTorch defaults to one thread per core in
    every process, and with 2 workers on 2 cores the oversubscribed OpenMP threads spin against each other:
    the tiny-model tests ran 5-7x slower that way."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    # Each test process its own Gradio file cache: two workers' servers copying the same icon into the shared
    # /tmp/gradio/<hash>/ at once could serve a half-written SVG (an icon test saw naturalWidth 0 under -n 2).
    if "GRADIO_TEMP_DIR" not in os.environ:
        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix=f"gradio-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")


# --------------------------------------------------------------------------- tiny models (original modules)


@pytest.fixture(scope="session")
def tiny_sd1() -> "tiny_models.TinyModel":
    return tiny_models.build_tiny(ModelFamily.SD1)


@pytest.fixture(scope="session")
def tiny_sd1_inpaint() -> "tiny_models.TinyModel":
    return tiny_models.build_tiny(ModelFamily.SD1_INPAINT)


@pytest.fixture(scope="session")
def tiny_sd2_v() -> "tiny_models.TinyModel":
    return tiny_models.build_tiny(ModelFamily.SD2)


@pytest.fixture(scope="session")
def tiny_sdxl() -> "tiny_models.TinyModel":
    return tiny_models.build_tiny(ModelFamily.SDXL)


@pytest.fixture(scope="session")
def tiny_sdxl_refiner() -> "tiny_models.TinyModel":
    return tiny_models.build_tiny(ModelFamily.SDXL_REFINER)


# ------------------------------------------------------------------------------- tiny checkpoints on disk


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A models/Stable-diffusion-like folder holding the tiny checkpoints below."""
    return tmp_path_factory.mktemp("Stable-diffusion")


@pytest.fixture(scope="session")
def tiny_sd1_path(tiny_sd1, tiny_model_dir) -> Path:
    """SD 1.x single-file .safetensors (fp32), with `alphas_cumprod` and `position_ids` like real files."""
    from sdwebui.models.loader import default_alphas_cumprod

    extra = {
        "alphas_cumprod": default_alphas_cumprod(),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
    }
    return tiny_models.write_single_file(tiny_sd1, tiny_model_dir / "tiny-sd1.safetensors", extra=extra)


@pytest.fixture(scope="session")
def tiny_sd1_inpaint_path(tiny_sd1_inpaint, tiny_model_dir) -> Path:
    return tiny_models.write_single_file(tiny_sd1_inpaint, tiny_model_dir / "tiny-sd1-inpainting.safetensors")


@pytest.fixture(scope="session")
def tiny_sd2_v_path(tiny_sd2_v, tiny_model_dir) -> Path:
    """SD 2.x 768-v style: the file plus `<name>.yaml` with `parameterization: "v"` beside it."""
    path = tiny_models.write_single_file(tiny_sd2_v, tiny_model_dir / "tiny-sd2-v.safetensors")
    path.with_suffix(".yaml").write_text(tiny_models.SD2_V_YAML)
    return path


@pytest.fixture(scope="session")
def tiny_sdxl_path(tiny_sdxl, tiny_model_dir) -> Path:
    return tiny_models.write_single_file(tiny_sdxl, tiny_model_dir / "tiny-sdxl.safetensors")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner_path(tiny_sdxl_refiner, tiny_model_dir) -> Path:
    return tiny_models.write_single_file(tiny_sdxl_refiner, tiny_model_dir / "tiny-sdxl-refiner.safetensors")


@pytest.fixture(scope="session")
def tiny_sd1_diffusers_path(tiny_sd1, tiny_model_dir) -> Path:
    """The SD 1.x tiny model as a diffusers folder (`model_index.json`, unet/, vae/, text_encoder/)."""
    return tiny_models.write_diffusers_folder(tiny_sd1, tiny_model_dir / "tiny-sd1-diffusers")


@pytest.fixture(scope="session")
def tiny_sd1_ckpt_path(tiny_sd1, tiny_model_dir) -> Path:
    """The SD 1.x tiny model as a Lightning-style `.ckpt` (`{"state_dict": ..., "global_step": ...}`)."""
    return tiny_models.write_single_file(tiny_sd1, tiny_model_dir / "tiny-sd1-ckpt.ckpt")
