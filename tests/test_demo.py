"""The demo model: its dataset, its detectors, its training script and the shipped checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdwebui.demo import dataset as ds
from sdwebui.demo import evaluate as ev

CHECKPOINT = Path(ds.__file__).parent / "sdwebui-demo-shapes-v1.safetensors"


def test_dataset_is_deterministic_from_its_seed():
    a_img, a_sc = ds.make_dataset(16, seed=7)
    b_img, b_sc = ds.make_dataset(16, seed=7)
    c_img, _ = ds.make_dataset(16, seed=8)
    assert a_img.shape == (16, 64, 64, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_sc == b_sc
    assert not np.array_equal(a_img, c_img)
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    assert [ds.caption(s, r1) for s in a_sc] == [ds.caption(s, r2) for s in a_sc]


def test_training_scenes_never_use_a_heldout_triple():
    _, scenes = ds.make_dataset(3000, seed=0)
    seen = {t for s in scenes for t in s.triples}
    assert not seen & set(ds.HELDOUT_TRIPLES)
    # ...while every colour, shape and position still appears in training.
    assert {c for c, _, _ in seen} == set(ds.COLOURS)
    assert {s for _, s, _ in seen} == set(ds.SHAPES)
    assert {p for _, _, p in seen} == set(ds.POSITIONS)
    assert any(len(s.shapes) == 2 for s in scenes)


def test_captions_name_every_object_and_vary():
    rng = np.random.default_rng(0)
    scene = ds.make_scene(rng, colour="red", shape="circle", position="left", size="large", background="blue")
    captions = {ds.caption(scene, rng) for _ in range(200)}
    assert len(captions) > 30
    assert all("red" in c and "circle" in c for c in captions)
    full = [ds.caption(scene, rng, full=True) for _ in range(50)]
    assert all("blue" in c and "left" in c for c in full)
    orange = ds.make_scene(rng, colour="orange", shape="square", background="white")
    worded = [ds.caption(orange, rng) for _ in range(100)] + [ds.caption(scene, rng) for _ in range(100)]
    assert not any(f" {c} ".count(" a orange ") or f" {c} ".count(" a orange,") for c in worded)


def test_heldout_prompts_are_plain_and_fully_specified():
    prompts = ds.heldout_prompts()
    assert len(prompts) == len(ds.HELDOUT_TRIPLES)
    text, scene = prompts[0]
    s = scene.shapes[0]
    assert text.startswith(("a ", "an ")) and s.colour in text and s.shape in text and scene.background in text


def test_detectors_agree_with_ground_truth():
    acc = ev.detector_accuracy(n=300, seed=99)
    assert all(v >= 0.99 for v in acc.values()), acc


def test_detectors_read_a_known_scene():
    rng = np.random.default_rng(1)
    scene = ds.make_scene(rng, colour="yellow", shape="triangle", position="bottom right", size="large",
                          background="black")
    det = ev.detect(ds.render(scene))
    assert (det.colour, det.background, det.shape, det.position, det.size) == (
        "yellow", "black", "triangle", "bottom right", "large")
    # A blank image has a background and nothing else.
    blank = np.zeros((64, 64, 3), np.uint8) + np.array(ds.PALETTE["green"], np.uint8)
    det = ev.detect(blank)
    assert det.background == "green" and det.colour is None


@pytest.mark.slow
def test_training_script_smoke(tmp_path):
    """A few steps of every phase on a tiny subset, sample grid included."""
    import torch

    from sdwebui.demo import train

    work = tmp_path / "work"
    rc = train.main([
        "--threads", str(torch.get_num_threads()), "--n-images", "64", "--vae-steps", "2", "--unet-steps", "4",
        "--stop-after", "2", "--batch", "4", "--vae-batch", "4", "--sample-every", "3", "--work-dir", str(work),
        "--no-export",
    ])
    assert rc == 0
    assert (work / "vae.pt").exists() and (work / "diffusion_ema.pt").exists()
    assert (work / "samples_000002.png").exists()  # the last step always leaves a grid and the weights
    log = (work / "train_log.txt").read_text()
    assert "unet step 1" in log and "unet step 2" not in log and "scaled std 1.000" in log
    assert "edge" in log  # the VAE's edge term is logged with the other losses


def test_misses_are_listed_with_what_was_asked_and_read():
    scene = ds.make_scene(np.random.default_rng(3))
    image = ds.render(scene)
    assert ev.format_misses([image], [scene]) == "no misses"
    s = scene.shapes[0]
    blank = np.full_like(image, ds.PALETTE[scene.background])
    line = ev.format_misses([blank], [scene])
    assert line.startswith(f"image 0: asked {s.size} {s.colour} {s.shape} {s.position} on {scene.background}; ")
    assert "missed colour, position, shape, size" in line


def test_tokenizer_is_clip_l():
    from sdwebui.demo.train import tokenize

    ids = tokenize(["a red circle on the left, blue background", ""])
    assert ids.shape == (2, 77)
    assert ids[0, :11].tolist() == [49406, 320, 736, 7117, 525, 518, 1823, 267, 1746, 5994, 49407]
    assert ids[1, 0] == 49406 and (ids[1, 1:] == 49407).all()


needs_checkpoint = pytest.mark.skipif(not CHECKPOINT.exists(), reason="the demo checkpoint has not been trained yet")


@pytest.fixture(scope="module")
def demo_model():
    import torch

    from sdwebui.models.loader import load_checkpoint

    return load_checkpoint(CHECKPOINT, device="cpu", dtype=torch.float32)


@needs_checkpoint
def test_checkpoint_is_a_small_single_file_sd1_checkpoint():
    from safetensors import safe_open

    assert CHECKPOINT.stat().st_size < 21 * 1024 * 1024
    with safe_open(str(CHECKPOINT), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"F16"}
    assert meta["sdwebui.native_size"] == "64"
    assert any(k.startswith("model.diffusion_model.") for k in keys)
    assert any(k.startswith("first_stage_model.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)


@needs_checkpoint
def test_checkpoint_loads_through_the_standard_loader(demo_model):
    from sdwebui.models.family import ModelFamily

    assert demo_model.family == ModelFamily.SD1
    assert demo_model.native_size == 64
    assert demo_model.prediction_type == "epsilon"
    assert demo_model.latent_scaling_factor == pytest.approx(0.18215)


@needs_checkpoint
@pytest.mark.parametrize(
    "prompt, colour, shape, background, position",
    [
        ("a red circle on the left, blue background", "red", "circle", "blue", "left"),
        ("a large yellow square in the center, black background", "yellow", "square", "black", "center"),
        ("a white triangle on the right, green background", "white", "triangle", "green", "right"),
    ],
)
def test_checkpoint_draws_what_the_prompt_says(demo_model, prompt, colour, shape, background, position):
    """20 steps, Euler a, CFG 7, through the app's txt2img: most of 4 seeds meet the attributes."""
    images = ev.pipeline_images(demo_model, prompt, 4, seed=1)
    assert len(images) == 4 and images[0].shape == (64, 64, 3)
    dets = [ev.detect(im) for im in images]
    ok = [(d.colour, d.shape, d.background, d.position) == (colour, shape, background, position) for d in dets]
    assert sum(ok) >= 3, dets


@needs_checkpoint
def test_position_words_move_the_shape(demo_model):
    """The same seeds, only the position word changed: the shape follows the word, not the noise."""
    for place in ("left", "right", "top", "bottom"):
        images = ev.pipeline_images(demo_model, f"a large white triangle at the {place}, green background", 4, seed=7)
        positions = [ev.detect(im).position for im in images]
        assert sum(p == place for p in positions) >= 3, (place, positions)
