"""`--opt-channelslast` and `--compile` (`models.fast_paths`): the flags reach the model manager, channels-last
weights give the same image within a level, and the compiled UNet (here with a counting backend that runs the
captured graphs as they are, so no C compiler is needed) compiles on the first job and never again when only the
seed, prompt, CFG scale or step count change (a new size would compile once more: `dynamic=False`); a model in
medvram is not compiled."""

from __future__ import annotations

import numpy as np
import pytest
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
from sdwebui.pipelines.sampling import make_denoiser
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
    assert not config.channels_last and not config.compile_unet and config.compile_mode == "default"
    # --compile-mode implies --compile.
    args = build_parser().parse_args(["serve", "--compile-mode", "reduce-overhead"])
    config = config_from_args(args, paths_from(args))
    assert config.compile_unet and config.compile_mode == "reduce-overhead"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--compile-mode", "fastest"])
    with pytest.raises(ValueError, match="compile mode 'fastest'"):
        FastPaths(compile=True, compile_mode="fastest")


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
    """A torch.compile backend that counts the graphs it is given (and the modes it is asked for) and runs them as
    captured."""

    def __init__(self):
        self.graphs = 0
        self.modes: list[str | None] = []

    def __call__(self, graph_module, example_inputs, mode=None):
        self.graphs += 1
        self.modes.append(mode)
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


def test_the_compile_mode_reaches_torch_compile_and_a_cpu_model_replays_no_graphs(tmp_path, tiny_sd1_path):
    torch._dynamo.reset()
    backend = CountingBackend()
    fast = FastPaths(compile=True, compile_backend=backend, compile_mode="reduce-overhead")
    model = manager(tmp_path, tiny_sd1_path, fast).get(tiny_sd1_path)
    run(model)
    assert backend.modes and set(backend.modes) == {"reduce-overhead"}
    # CUDA graphs exist only on a CUDA device: on the CPU the mode compiles as plain inductor would.
    assert not model.unet_cuda_graphs
    assert any("mode reduce-overhead" in note and "CUDA graphs" not in note for note in model.config_notes)
    torch._dynamo.reset()


def test_a_unet_replaying_cuda_graphs_starts_a_step_per_call_and_its_output_is_copied(tmp_path, tiny_sd1_path,
                                                                                     monkeypatch):
    """What the denoiser does for a UNet compiled with CUDA graphs (`SDModel.unet_cuda_graphs`, set on a CUDA
    device): a new graph step before each call, and a copy of each output, which the next replay would overwrite.
    Shown here on the CPU with the flag set by hand: the calls and the copies are counted, the image is the same."""
    model = manager(tmp_path, tiny_sd1_path, FastPaths()).get(tiny_sd1_path)
    plain = run(model, sampler="DPM++ 2M")  # a sampler that keeps the previous step's output
    steps_begun = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps_begun.append(len(outputs)))
    outputs: list[torch.Tensor] = []
    model.unet.register_forward_hook(lambda module, args, output: outputs.append(output[0]))
    model.unet_cuda_graphs = True
    graphs = run(model, sampler="DPM++ 2M")
    assert outputs and steps_begun == list(range(len(outputs))), "a UNet call did not begin a new graph step"
    assert np.array_equal(plain, graphs)
    # What the denoiser hands the sampler is a copy of the UNet's output, not the graph's buffer.
    model_fn = make_denoiser(model).model_fn
    width = model.unet.config.cross_attention_dim
    returned = model_fn(torch.randn(1, 4, 8, 8), torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 77, width))
    assert returned.data_ptr() != outputs[-1].data_ptr() and torch.equal(returned, outputs[-1])
