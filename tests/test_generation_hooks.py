"""The engine's hooks for scripts (`GenerationContext.hooks`): before each batch (its prompts), around every UNet call
(of every model the job runs: the hires pass's too), after each batch (images and infotext, before they are
handed on to be saved). On a real tiny model; with no hook, or a hook that passes through, the image is the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import ImageOps

from sdwebui.models.loader import load_checkpoint
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.img2img import img2img
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.txt2img import txt2img


class Hooks:
    """A configurable `GenerationHooks`; each hook records what it saw."""

    def __init__(self, *, suffix=None, scale=None, flip=False):
        self.suffix, self.scale, self.flip = suffix, scale, flip
        self.batches, self.calls, self.models, self.after = [], 0, set(), []

    def before_batch(self, batch):
        self.batches.append((batch.batch_index, list(batch.seeds)))
        if self.suffix:
            batch.prompts[:] = [f"{prompt}{self.suffix}" for prompt in batch.prompts]

    def wrap_model_call(self, model, call):
        self.models.add(model.info.name)

        def counted(*args, **kwargs):
            self.calls += 1
            out = call(*args, **kwargs)
            return out * self.scale if self.scale is not None else out

        return counted

    def after_batch(self, batch):
        self.after.append(len(batch.images))
        if self.flip:
            batch.images[:] = [ImageOps.flip(image) for image in batch.images]
            batch.infotext["Flipped"] = True
            batch.notes.append("flipped by a test hook")


@pytest.fixture(scope="module")
def model(tiny_sd1_path):
    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


def run(model, hooks=None, on_images=None, **values):
    params = Txt2ImgParams(**{"prompt": "a red cube", "width": 64, "height": 64, "steps": 3, "seed": 7,
                              "sampler": "Euler", "rng": "cpu", **values})
    return txt2img(GenerationContext(model=model, hooks=hooks, on_images=on_images), params)


def pixels(result):
    return [np.asarray(image) for image in result.images]


def test_a_passing_hook_changes_nothing(model):
    plain = run(model, batch_count=2)
    hooks = Hooks()
    hooked = run(model, hooks, batch_count=2)
    assert torch.equal(plain.latents, hooked.latents) and plain.infotexts == hooked.infotexts
    assert hooks.batches == [(0, [7]), (1, [8])] and hooks.after == [1, 1]
    assert hooks.calls == 2 * 3  # Euler: one (batched CFG) UNet call per step, per batch


def test_before_batch_changes_the_prompts_the_images_and_their_infotext(model):
    plain = run(model, batch_size=2)
    styled = run(model, Hooks(suffix=", watercolor"), batch_size=2)
    assert not torch.equal(plain.latents, styled.latents)
    assert [text.split("\n")[0] for text in styled.infotexts] == ["a red cube, watercolor"] * 2
    assert styled.prompts == ["a red cube, watercolor"] * 2
    # The same text typed in the prompt gives the same image: the hook's prompt is what was encoded.
    typed = run(model, prompt="a red cube, watercolor", batch_size=2)
    assert torch.equal(typed.latents, styled.latents)


def test_wrap_model_call_acts_on_every_unet_call(model):
    plain = run(model)
    scaled = run(model, Hooks(scale=0.5))
    assert not torch.equal(plain.latents, scaled.latents)


def test_after_batch_replaces_images_and_adds_infotext_before_they_are_handed_on(model):
    handed = []
    plain = run(model)
    flipped = run(model, Hooks(flip=True), on_images=handed.append)
    assert np.array_equal(pixels(flipped)[0], np.flipud(pixels(plain)[0]))
    assert parse_infotext(flipped.infotexts[0])["Flipped"] == "True"
    assert "flipped by a test hook" in flipped.notes
    assert handed[0].images == flipped.images and handed[0].infotexts == flipped.infotexts
    assert handed[0].prompts == ["a red cube"]


def test_hooks_reach_the_hires_pass(model):
    hooks = Hooks()
    result = run(model, hooks, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5)
    assert result.images[0].size == (96, 96)
    assert hooks.calls == 3 + 2  # first pass and hires pass
    assert hooks.after == [1]


def test_img2img_runs_the_hooks_too(model):
    from PIL import Image

    hooks = Hooks(suffix=" at dusk", flip=True)
    params = Img2ImgParams(prompt="a cube", width=64, height=64, steps=4, seed=2, sampler="Euler", rng="cpu",
                           denoising_strength=0.5)
    result = img2img(GenerationContext(model=model, hooks=hooks), params, [Image.new("RGB", (64, 64), (9, 99, 199))])
    assert result.infotexts[0].startswith("a cube at dusk\n") and "Flipped: True" in result.infotexts[0]
    assert hooks.calls == 3 and hooks.batches == [(0, [2])]  # strength 0.5 of 4 steps: the last 3
