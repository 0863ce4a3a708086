"""FP8 weight storage (A1111's "FP8 weight" and "Cache FP16 weight for LoRA"), on the CPU: float8 casts work there,
computing in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import build_tiny, write_single_file

from sdwebui.config import Paths
from sdwebui.models.devices import plan_devices
from sdwebui.models.family import ModelFamily
from sdwebui.models.lora import LoraLibrary, lora_calls
from sdwebui.models.manager import ModelManager
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.networks import LoraNetworks
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.txt2img import txt2img
from sdwebui.prompts.extra_networks import ExtraNetworkCall

FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8-data")
    folder = root / "models" / "Stable-diffusion"
    write_single_file(build_tiny(ModelFamily.SD1, seed=1), folder / "sd1.safetensors")
    write_single_file(build_tiny(ModelFamily.SDXL, seed=2), folder / "sdxl.safetensors")
    return root


def manager(data_dir, setting="Enable", cache=False):
    return ModelManager(Paths.from_flags(data_dir), plan_devices("cpu"), fp8=lambda: (setting, cache))


def generate(model, prompt="a red cat", library=None):
    ctx = GenerationContext(model=model, extra_networks=LoraNetworks(library) if library is not None else None)
    return txt2img(ctx, Txt2ImgParams(prompt=prompt, negative_prompt="blurry", width=64, height=64, steps=3, seed=2,
                                      sampler="Euler", rng="cpu"))


def layers(module):
    return [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def test_unet_and_text_encoder_weights_are_stored_in_fp8_and_the_image_stays_close(data_dir):
    plain = manager(data_dir, "Disable").get("sd1")
    model = manager(data_dir, "Enable").get("sd1")
    assert model.fp8 is not None and plain.fp8 is None
    for module in (model.unet, model.text_encoder.clip_l):
        assert {m.weight.dtype for m in layers(module)} == {FP8}
    assert {m.weight.dtype for m in layers(model.vae)} == {torch.float32}  # the VAE is left as it is
    embeddings = [m for m in model.text_encoder.clip_l.modules() if isinstance(m, torch.nn.Embedding)]
    assert embeddings and {m.weight.dtype for m in embeddings} == {torch.float32}  # as A1111: Linear, Conv2d only
    ours, reference = generate(model), generate(plain)
    assert {m.weight.dtype for m in layers(model.unet)} == {FP8}  # stored back after each layer ran
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (ours, reference))
    assert 0 < np.abs(a - b).mean() < 20  # fp8 rounding, not another picture
    assert "Model: sd1, FP8 weight: Enable, Cache FP16 weight for LoRA: False, " in ours.infotexts[0]
    assert "FP8 weight" not in reference.infotexts[0]


def test_enable_for_sdxl_converts_only_sdxl(data_dir):
    models = manager(data_dir, "Enable for SDXL")
    assert models.get("sd1").fp8 is None
    sdxl = models.get("sdxl")
    assert sdxl.fp8 is not None and {m.weight.dtype for m in layers(sdxl.text_encoder.clip_g)} == {FP8}
    assert "FP8 weight: Enable for SDXL" in generate(sdxl).infotexts[0]


def test_a_changed_setting_loads_the_model_again(data_dir):
    setting = {"value": ("Disable", False)}
    models = ModelManager(Paths.from_flags(data_dir), plan_devices("cpu"), fp8=lambda: setting["value"])
    assert models.get("sd1").fp8 is None
    setting["value"] = ("Enable", False)
    assert models.get("sd1").fp8 is not None


def _lora(tmp_path):
    from test_lora import _simple_lora

    folder = tmp_path / "loras"
    folder.mkdir(exist_ok=True)
    save_file(_simple_lora(), folder / "style.safetensors")
    return LoraLibrary(folder)


@pytest.mark.parametrize("cache", [False, True])
def test_loras_apply_to_fp8_weights_and_are_removed(data_dir, tmp_path, cache):
    model = manager(data_dir, "Enable", cache).get("sd1")
    library = _lora(tmp_path)
    before = {name: p.detach().clone() for name, p in model.unet.named_parameters()}
    base = generate(model)
    with_lora = generate(model, "a red cat <lora:style:1>", library)
    assert not torch.equal(with_lora.latents, base.latents)
    assert all(torch.equal(p.detach().view(torch.uint8) if p.dtype == FP8 else p.detach(),
                           before[n].view(torch.uint8) if before[n].dtype == FP8 else before[n])
               for n, p in model.unet.named_parameters())  # restored bit for bit
    assert torch.equal(generate(model).latents, base.latents)
    assert bool(model.fp8.originals) == cache


def test_cached_fp16_weight_is_what_the_lora_is_added_to(data_dir, tmp_path):
    """A1111's `fp16_weight`: with the cache the patched weight is fp8(original + delta), the original never
    rounded to fp8 first; without it, fp8(fp8(original) + delta)."""
    library = _lora(tmp_path)
    calls = lora_calls([ExtraNetworkCall("lora", ("style", "1"))])
    plain = manager(data_dir, "Disable").get("sd1")
    with library.applied(plain, calls):
        names32 = {n: m.weight.detach().clone() for n, m in plain.unet.named_modules()
                   if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    results = {}
    for cache in (True, False):
        model = manager(data_dir, "Enable", cache).get("sd1")
        with library.applied(model, calls):
            results[cache] = {n: m.weight.detach().clone() for n, m in model.unet.named_modules()
                              if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    changed = [n for n in names32 if not torch.equal(results[True][n].view(torch.uint8),
                                                     plain.unet.get_submodule(n).weight.detach().to(FP8)
                                                     .view(torch.uint8))]
    assert changed  # the LoRA reached some layers
    for name in changed:
        assert torch.equal(results[True][name].view(torch.uint8), names32[name].to(FP8).view(torch.uint8))
    assert any(not torch.equal(results[True][n].view(torch.uint8), results[False][n].view(torch.uint8))
               for n in changed)
