"""`--opt-channelslast` and `--compile` (`models.fast_paths`): the flags reach the model manager, channels-last
weights give the same image within a level, and the compiled UNet (here with a counting backend that runs the
captured graphs as they are, so no C compiler is needed) compiles on the first job and never again when only the
seed, prompt, CFG scale or step count change (a new size would compile once more: `dynamic=False`); a model in
medvram is not compiled."""

from __future__ import annotations

import numpy as np
import torch

from sdwebui.app import config_from_args
from sdwebui.cli import build_parser, paths_from
from sdwebui.config import Paths
from sdwebui.models.devices import plan_devices
from sdwebui.models.fast_paths import FastPaths, is_compiled
from sdwebui.models.manager import ModelManager
from sdwebui.models.memory import MemoryPolicy
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.txt2img import txt2img


def test_the_flags_reach_the_server_config():
    for command in (["serve"], ["txt2img", "a cat"]):
        args = build_parser().parse_args([*command, "--opt-channelslast", "--compile"])
        config = config_from_args(args, paths_from(args)) if command == ["serve"] else None
        if config is not None:
            assert config.channels_last and config.compile_unet
        assert args.opt_channelslast and args.compile
    args = build_parser().parse_args(["serve"])
    config = config_from_args(args, paths_from(args))
    assert not config.channels_last and not config.compile_unet


def manager(tmp_path, checkpoint, fast: FastPaths, memory: MemoryPolicy | None = None) -> ModelManager:
    paths = Paths.from_flags(data_dir=tmp_path)
    paths.ckpt_dir.mkdir(parents=True, exist_ok=True)
    return ModelManager(paths, plan_devices("cpu", precision="full"), fast=fast, memory=memory)


def run(model, **values):
    params = Txt2ImgParams(**{"prompt": "a red square", "negative_prompt": "blurry", "width": 64, "height": 64,
                              "steps": 2, "seed": 11, "sampler": "Euler", "rng": "cpu", **values})
    return np.asarray(txt2img(GenerationContext(model=model), params).images[0], dtype=np.int16)


def test_channels_last_weights_give_the_same_image(tmp_path, tiny_sd1_path):
    plain = manager(tmp_path / "a", tiny_sd1_path, FastPaths()).get(tiny_sd1_path)
    fast = manager(tmp_path / "b", tiny_sd1_path, FastPaths(channels_last=True)).get(tiny_sd1_path)
    conv = fast.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert fast.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert "channels_last memory format (UNet, VAE)" in fast.config_notes
    assert np.abs(run(plain) - run(fast)).max() <= 1


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them as captured."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def test_compile_once_then_no_recompiles_for_seed_prompt_cfg_or_steps(tmp_path, tiny_sd1_path):
    torch._dynamo.reset()
    backend = CountingBackend()
    model = manager(tmp_path, tiny_sd1_path, FastPaths(compile=True, compile_backend=backend)).get(tiny_sd1_path)
    assert is_compiled(model.unet) and any("UNet compiled" in note for note in model.config_notes)
    first = run(model)
    compiled = backend.graphs
    assert compiled > 0
    run(model, seed=12, prompt="a blue circle on a green field", negative_prompt="", cfg_scale=5.0, steps=3)
    assert backend.graphs == compiled, "a new seed, prompt, CFG scale or step count recompiled the UNet"
    # The captured graphs compute what the module does.
    torch._dynamo.reset()
    eager = manager(tmp_path / "eager", tiny_sd1_path, FastPaths()).get(tiny_sd1_path)
    assert np.abs(first - run(eager)).max() <= 1
    torch._dynamo.reset()


def test_a_model_in_medvram_is_not_compiled(tmp_path, tiny_sd1_path):
    backend = CountingBackend()
    model = manager(tmp_path, tiny_sd1_path, FastPaths(compile=True, compile_backend=backend),
                    memory=MemoryPolicy("medvram")).get(tiny_sd1_path)
    assert not is_compiled(model.unet)
    assert any("UNet not compiled" in note and "medvram" in note for note in model.config_notes)
