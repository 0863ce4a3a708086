"""Tiled VAE encode and decode: against the untiled passes on the demo model's trained VAE (random VAE weights
have no smoothness for a tiling to keep), through the setting and the automatic choice end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdwebui.cli import main
from sdwebui.config import DEMO_CHECKPOINT
from sdwebui.models.loader import load_checkpoint
from sdwebui.models.memory import MemoryPolicy
from sdwebui.models.vae_tiling import VaeTiling, estimate_activation_bytes, tiled_decode, tiled_encode_mean
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.txt2img import txt2img

PROMPT = "a red circle on the left and a blue square at the top right, yellow background"


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMO_CHECKPOINT, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


@pytest.fixture(scope="module")
def latents(demo):
    """Unscaled latents of a 256x256 picture the demo model drew (shapes on a flat background)."""
    result = txt2img(GenerationContext(model=demo),
                     Txt2ImgParams(prompt=PROMPT, width=256, height=256, steps=6, seed=3, rng="cpu"))
    return result.latents / demo.latent_scaling_factor


def levels(pixels: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Differences in 8-bit levels of the images the two [-1, 1] tensors make."""
    return (pixels.clamp(-1, 1) - reference.clamp(-1, 1)).abs() * 127.5


@pytest.mark.parametrize("tile", [64, 128])
def test_tiled_decode_stays_close_to_the_untiled_decode_across_the_seams(demo, latents, tile):
    with torch.no_grad():
        full = demo.vae.decode(latents).sample
    tiled = tiled_decode(demo.vae, latents, tile_size=tile)
    assert tiled.shape == full.shape
    diff = levels(tiled, full)
    assert float(diff.max()) < 16 and float(diff.mean()) < 1.5
    # the seams (the pixel rows and columns either side of each tile border) are no worse than the whole picture
    borders = torch.arange(tile, full.shape[-1], tile)
    seam = torch.cat([diff[..., borders - 1, :].flatten(), diff[..., borders, :].flatten(),
                      diff[..., :, borders - 1].flatten(), diff[..., :, borders].flatten()])
    assert float(seam.mean()) < 2 * float(diff.mean())
    # and no step appears across a border that the untiled picture does not have
    step = (tiled[..., borders, :] - tiled[..., borders - 1, :]).abs() * 127.5
    untiled_step = (full[..., borders, :] - full[..., borders - 1, :]).abs() * 127.5
    assert float((step - untiled_step).abs().max()) < 8


def test_diffusers_enable_tiling_leaves_visible_tiles_on_the_same_vae(demo, latents):
    """Why we tile ourselves: diffusers' per-tile GroupNorm and small overlap, on the same VAE and tile size."""
    vae = demo.vae
    with torch.no_grad():
        full = vae.decode(latents).sample
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = 64, 8
        try:
            theirs = vae.decode(latents).sample
        finally:
            vae.disable_tiling()
            vae.tile_sample_min_size, vae.tile_latent_min_size = vae.config.sample_size, vae.config.sample_size // 8
    ours = tiled_decode(vae, latents, tile_size=64)
    assert float(levels(theirs, full).max()) > 5 * float(levels(ours, full).max())


def test_tiled_encode_matches_the_untiled_mean(demo, latents):
    with torch.no_grad():
        pixels = demo.vae.decode(latents).sample.clamp(-1, 1)
        mean = demo.vae.encode(pixels).latent_dist.mean
    tiled = tiled_encode_mean(demo.vae, pixels, tile_size=64)
    assert tiled.shape == mean.shape
    assert float((tiled - mean).abs().max()) < 0.01 * float(mean.abs().max())


def test_automatic_tiling_follows_the_budget():
    cpu = torch.device("cpu")
    need = estimate_activation_bytes(128, 1024, 1024, torch.float16)
    assert 1 << 30 < need < 6 << 30  # SD's VAE at 1024²: a few GiB
    small = VaeTiling(memory=MemoryPolicy(vram_budget_gb=need / 2 / (1 << 30)))
    large = VaeTiling(memory=MemoryPolicy(vram_budget_gb=need * 2 / (1 << 30)))
    assert small.wants(cpu, 128, 1024, 1024, torch.float16)
    assert not large.wants(cpu, 128, 1024, 1024, torch.float16)
    assert not VaeTiling(memory=MemoryPolicy()).wants(cpu, 128, 8192, 8192, torch.float32)  # no budget on a CPU
    assert VaeTiling("Enable").wants(cpu, 128, 64, 64, torch.float32)
    assert not VaeTiling("Disable", memory=MemoryPolicy(vram_budget_gb=0.001)).wants(cpu, 128, 4096, 4096,
                                                                                       torch.float32)


def test_cli_vram_budget_decodes_in_tiles_and_says_so(tmp_path, capsys):
    args = ["txt2img", PROMPT, "--model", str(DEMO_CHECKPOINT), "--width", "192", "--height", "192", "--steps", "4",
            "--seed", "8", "--device", "cpu", "--data-dir", str(tmp_path)]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert "tiles" not in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "tiled"), "--vram-budget", "0.01"]) == 0
    assert "VAE decoded in tiles of 512 px" in capsys.readouterr().err  # a 192 px image: one tile
    plain = np.asarray(Image.open(next((tmp_path / "plain").iterdir())), dtype=np.int16)
    tiled = np.asarray(Image.open(next((tmp_path / "tiled").iterdir())), dtype=np.int16)
    assert np.abs(plain - tiled).max() <= 1  # one tile: the untiled network, but for the two-pass statistics


def test_api_setting_tiles_the_decode(tmp_path):
    from test_api_support import LiveServer, decode_png, make_data_dir

    data = make_data_dir(tmp_path / "data", DEMO_CHECKPOINT)
    body = {"prompt": PROMPT, "width": 128, "height": 128, "steps": 4, "seed": 5, "sampler_name": "Euler"}
    with LiveServer(data) as live, live.client() as client:
        plain = client.post("/sdapi/v1/txt2img", json=body)
        tiled = client.post("/sdapi/v1/txt2img", json={
            **body, "override_settings": {"tiled_vae": "Enable", "tiled_vae_tile_size": 64}})
        refused = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"tiled_vae": "Sometimes"}})
        jobs = client.get("/api/v1/jobs").json()  # newest first
    assert plain.status_code == tiled.status_code == 200
    assert refused.status_code == 422
    # The setting reached the decode (the job's notes say so) ...
    notes = [job["result"]["notes"] for job in jobs if job["status"] == "done"]
    assert len(notes) == 2 and "VAE decoded in tiles of 64 px" in notes[0]
    assert not any("tiles" in note for note in notes[1])
    # ... and the image is the untiled one within a few levels. (At 128 px every 64 px tile's 64 px of context
    # covers the whole latent, so the demo VAE's tiled decode is exact there: no lower bound on the difference.)
    a = np.asarray(decode_png(plain.json()["images"][0]), dtype=np.int16)
    b = np.asarray(decode_png(tiled.json()["images"][0]), dtype=np.int16)
    assert np.abs(a - b).max() < 16
