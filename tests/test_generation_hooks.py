"""The engine's hooks for scripts (`GenerationContext.hooks`): before each batch (its prompts), around every UNet call
(of every model the job runs: base, hires checkpoint, refiner), after each batch (images and infotext, before they
are handed on to be saved). On real tiny models; with no hook, or a hook that passes through, the image is the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from tiny_models import build_tiny, write_single_file

from sdwebui.core.noise import ImageRNG
from sdwebui.core.samplers import resolve_sampling
from sdwebui.models.family import ModelFamily
from sdwebui.models.loader import load_checkpoint
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.img2img import img2img
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.sampling import make_denoiser
from sdwebui.pipelines.txt2img import txt2img


class Hooks:
    """A configurable `GenerationHooks`; each hook records what it saw."""

    def __init__(self, *, prompts=None, negative_prompts=None, suffix=None, scale=None, flip=False):
        self.prompts, self.negative_prompts, self.suffix = prompts, negative_prompts, suffix
        self.scale, self.flip = scale, flip
        self.batches, self.after, self.seen_images = [], [], []
        self.calls: dict[str, int] = {}
        """UNet calls per model (by checkpoint name)."""

    def before_batch(self, batch):
        self.batches.append((batch.batch_index, list(batch.seeds)))
        if self.suffix:
            batch.prompts[:] = [f"{prompt}{self.suffix}" for prompt in batch.prompts]
        if self.prompts:
            batch.prompts[:] = self.prompts
        if self.negative_prompts:
            batch.negative_prompts[:] = self.negative_prompts

    def wrap_model_call(self, model, call):
        name = model.info.name
        self.calls.setdefault(name, 0)

        def counted(*args, **kwargs):
            self.calls[name] += 1
            out = call(*args, **kwargs)
            return out * self.scale if self.scale is not None else out

        return counted

    def after_batch(self, batch):
        self.after.append(len(batch.images))
        self.seen_images.extend(np.asarray(image) for image in batch.images)
        if self.flip:
            batch.images[:] = [ImageOps.flip(image) for image in batch.images]
            batch.infotext["Flipped"] = True
            batch.notes.append("flipped by a test hook")


@pytest.fixture(scope="module")
def model(tiny_sd1_path):
    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


@pytest.fixture(scope="module")
def other_models(tmp_path_factory, tiny_sdxl_path, tiny_sdxl_refiner_path):
    """Checkpoints by name for `ctx.load_model`: a second SD1 (hires checkpoint), SDXL and its refiner."""
    folder = tmp_path_factory.mktemp("hook-models")
    paths = {"sd1-other": write_single_file(build_tiny(ModelFamily.SD1, seed=7), folder / "tiny-sd1-other.safetensors"),
             "sdxl": tiny_sdxl_path, "refiner": tiny_sdxl_refiner_path}
    loaded = {name: load_checkpoint(path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
              for name, path in paths.items()}
    return loaded


def run(model, hooks=None, on_images=None, load_model=None, **values):
    params = Txt2ImgParams(**{"prompt": "a red cube", "negative_prompt": "blurry", "width": 64, "height": 64,
                              "steps": 3, "seed": 7, "sampler": "Euler", "rng": "cpu", **values})
    ctx = GenerationContext(model=model, hooks=hooks, on_images=on_images, load_model=load_model)
    return txt2img(ctx, params)


def pixels(result):
    return [np.asarray(image) for image in result.images]


def test_a_passing_hook_changes_nothing(model):
    plain = run(model, batch_count=2)
    hooks = Hooks()
    hooked = run(model, hooks, batch_count=2)
    assert torch.equal(plain.latents, hooked.latents) and plain.infotexts == hooked.infotexts
    assert all(np.array_equal(a, b) for a, b in zip(pixels(plain), pixels(hooked)))
    assert hooks.batches == [(0, [7]), (1, [8])] and hooks.after == [1, 1]
    assert hooks.calls == {model.info.name: 2 * 3}  # Euler: one (batched CFG) UNet call per step, per batch


def test_before_batch_changes_the_prompts_the_images_and_their_infotext(model):
    plain = run(model, batch_size=2)
    styled = run(model, Hooks(suffix=", watercolor"), batch_size=2)
    assert not torch.equal(plain.latents, styled.latents)
    assert [text.split("\n")[0] for text in styled.infotexts] == ["a red cube, watercolor"] * 2
    assert styled.prompts == ["a red cube, watercolor"] * 2
    # The same text typed in the prompt gives the same image: the hook's prompt is what was encoded.
    typed = run(model, prompt="a red cube, watercolor", batch_size=2)
    assert torch.equal(typed.latents, styled.latents)


def test_before_batch_gives_each_image_its_own_prompt_and_negative_prompt(model):
    hooks = Hooks(prompts=["a red cube", "a green ball"], negative_prompts=["blurry", "dark"])
    result = run(model, hooks, batch_size=2)
    first, second = (parse_infotext(text) for text in result.infotexts)
    assert (first["Prompt"], first["Negative prompt"]) == ("a red cube", "blurry")
    assert (second["Prompt"], second["Negative prompt"]) == ("a green ball", "dark")
    assert result.prompts == ["a red cube", "a green ball"] and result.negative_prompts == ["blurry", "dark"]
    plain = run(model, batch_size=2)
    # Image 1 keeps the job's prompts: the same image as without the hook (up to float noise from encoding other
    # texts in the same text-encoder batch); image 2 follows its own prompts (it differs by whole units).
    scale = max(1.0, float(plain.latents.abs().max()))
    torch.testing.assert_close(result.latents[0], plain.latents[0], atol=1e-5 * scale, rtol=0)
    assert not torch.allclose(result.latents[1], plain.latents[1], atol=1e-2 * scale, rtol=0)


def test_wrap_model_call_acts_on_every_unet_call(model):
    plain = run(model)
    scaled = run(model, Hooks(scale=0.5))
    assert not torch.equal(plain.latents, scaled.latents)
    assert not np.array_equal(pixels(plain)[0], pixels(scaled)[0])
    zeroed = run(model, Hooks(scale=0.0))
    # An epsilon model that predicts no noise denoises x to x itself: Euler then never moves, and the result is the
    # seed's initial noise at the first sigma.
    sigmas = resolve_sampling("Euler").sampler.sigmas(3, make_denoiser(model), "Automatic")
    start = ImageRNG((4, 8, 8), [7], device="cpu", rng="cpu").first() * sigmas[0]
    torch.testing.assert_close(zeroed.latents, start)


def test_after_batch_replaces_images_and_adds_infotext_before_they_are_handed_on(model):
    handed = []
    plain = run(model)
    hooks = Hooks(flip=True)
    flipped = run(model, hooks, on_images=handed.append)
    assert np.array_equal(hooks.seen_images[0], pixels(plain)[0])  # the hook saw the decoded image
    assert np.array_equal(pixels(flipped)[0], np.flipud(pixels(plain)[0]))
    assert parse_infotext(flipped.infotexts[0])["Flipped"] == "True"
    assert flipped.notes.count("flipped by a test hook") == 1
    assert len(handed) == 1 and handed[0].images == flipped.images and handed[0].infotexts == flipped.infotexts
    assert parse_infotext(handed[0].infotexts[0])["Flipped"] == "True"
    assert handed[0].prompts == ["a red cube"]


def test_after_batch_notes_are_merged_once_per_job(model):
    result = run(model, Hooks(flip=True), batch_count=2)
    assert result.notes.count("flipped by a test hook") == 1
    assert all(parse_infotext(text)["Flipped"] == "True" for text in result.infotexts)


def test_hooks_reach_the_hires_pass(model):
    hooks = Hooks()
    result = run(model, hooks, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5)
    assert result.images[0].size == (96, 96)
    assert hooks.calls == {model.info.name: 3 + 2}  # first pass and hires pass
    assert hooks.after == [1]
    scaled = run(model, Hooks(scale=0.5), enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2,
                 denoising_strength=0.5)
    assert not torch.equal(result.latents, scaled.latents)


def test_hooks_reach_a_hires_checkpoint(model, other_models):
    hooks = Hooks()
    run(model, hooks, load_model=other_models.__getitem__, enable_hr=True, hr_second_pass_steps=2,
        denoising_strength=0.5, hr_checkpoint="sd1-other")
    assert hooks.calls == {model.info.name: 3, other_models["sd1-other"].info.name: 2}


def test_hooks_reach_the_refiner(other_models):
    base, refiner = other_models["sdxl"], other_models["refiner"]
    hooks = Hooks()
    result = run(base, hooks, load_model=other_models.__getitem__, steps=6, refiner_checkpoint="refiner",
                 refiner_switch_at=0.5)
    assert "Refiner" in parse_infotext(result.infotexts[0])
    assert hooks.calls[base.info.name] > 0 and hooks.calls[refiner.info.name] > 0
    assert hooks.calls[base.info.name] + hooks.calls[refiner.info.name] == 6


def test_img2img_runs_the_hooks_too(model):
    hooks = Hooks(suffix=" at dusk", flip=True)
    params = Img2ImgParams(prompt="a cube", width=64, height=64, steps=4, seed=2, sampler="Euler", rng="cpu",
                           denoising_strength=0.5)
    result = img2img(GenerationContext(model=model, hooks=hooks), params, [Image.new("RGB", (64, 64), (9, 99, 199))])
    assert result.infotexts[0].startswith("a cube at dusk\n") and "Flipped: True" in result.infotexts[0]
    assert hooks.calls == {model.info.name: 3} and hooks.batches == [(0, [2])]  # strength 0.5 of 4 steps: the last 3


def test_img2img_after_batch_sees_the_pasted_overlay(model):
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    hooks = Hooks()
    params = Img2ImgParams(prompt="a cube", width=64, height=64, steps=3, seed=2, sampler="Euler", rng="cpu",
                           denoising_strength=0.8, mask_blur_x=0, mask_blur_y=0)
    img2img(GenerationContext(model=model, hooks=hooks), params, [init], mask)
    seen = hooks.seen_images[0]
    # Outside the mask the original is composited back before the hook runs (A1111's `postprocess_image` order).
    assert np.array_equal(seen[:, 32:], np.asarray(init)[:, 32:])
    assert not np.array_equal(seen[:, :32], np.asarray(init)[:, :32])
