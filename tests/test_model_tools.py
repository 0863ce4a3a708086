"""Model tools beyond A1111 (`sdwebui.models.model_tools`) on tiny real checkpoints: a LoRA extracted at full rank
reproduces the difference through our own LoRA loader (kohya key names), a baked LoRA gives the runtime LoRA's
picture, and convert prunes EMA, halves the weights and turns a pickle into safetensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_models import build_tiny, write_single_file

from sdwebui.core.errors import ParamError
from sdwebui.models.family import ModelFamily
from sdwebui.models.loader import load_checkpoint
from sdwebui.models.lora import LoraCall, LoraLibrary
from sdwebui.models.model_tools import bake_loras, convert_checkpoint, extract_lora


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from sdwebui.models.loader import default_alphas_cumprod

    folder = tmp_path_factory.mktemp("tools")
    extra = {"alphas_cumprod": default_alphas_cumprod()}
    return {
        "base": write_single_file(build_tiny(ModelFamily.SD1, seed=0), folder / "base.safetensors", extra=extra),
        "tuned": write_single_file(build_tiny(ModelFamily.SD1, seed=1), folder / "tuned.safetensors", extra=extra),
        "xl_base": write_single_file(build_tiny(ModelFamily.SDXL, seed=0), folder / "xl-base.safetensors"),
        "xl_tuned": write_single_file(build_tiny(ModelFamily.SDXL, seed=1), folder / "xl-tuned.safetensors"),
    }


def load(path):
    return load_checkpoint(path, dtype=torch.float32, vae_dtype=torch.float32, automatic_vae=False)


def lora_layers(model):
    """(name, weight) of every Linear / Conv layer of the UNet and the text encoders."""
    modules = [("unet", model.unet)] + [(t.name, t.module) for t in model.text_encoder.towers]
    for prefix, root in modules:
        for name, module in root.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name != "text_projection":
                yield f"{prefix}.{name}", module.weight  # (kohya leaves SDXL's text projection out, as we do)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_extracted_lora_at_full_rank_reproduces_the_difference(tmp_path, files, family):
    base_path, tuned_path = (files["base"], files["tuned"]) if family == "sd1" else (files["xl_base"], files["xl_tuned"])
    lora = extract_lora(tuned_path, base_path, tmp_path / "diff.safetensors", rank=10_000, precision="fp32")
    keys = load_file(lora.path)
    prefixes = ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_unet_input_blocks_1_1_proj_in") \
        if family == "sd1" else ("lora_te1_text_model_encoder_layers_0_mlp_fc1",
                                 "lora_te2_text_model_encoder_layers_1_self_attn_v_proj", "lora_unet_input_blocks_3_1_proj_in")
    for prefix in (*prefixes, "lora_unet_out_2"):
        assert f"{prefix}.lora_up.weight" in keys and f"{prefix}.lora_down.weight" in keys, prefix
    metadata = safe_open(str(lora.path), "pt").metadata()
    assert metadata["ss_network_module"] == "networks.lora"
    base, tuned = load(base_path), load(tuned_path)
    want = dict(lora_layers(tuned))
    library = LoraLibrary(tmp_path)
    with library.applied(base, [LoraCall("diff")]) as report:
        assert report.applied and not report.missing
        checked = 0
        for name, weight in lora_layers(base):
            torch.testing.assert_close(weight, want[name], rtol=0, atol=2e-5, msg=name)
            checked += 1
    assert checked == len(want) > 30
    assert lora.counts["layers"] >= checked  # SDXL's fused QKV: three layers per matrix


def test_low_rank_extraction_approximates(tmp_path, files):
    lora = extract_lora(files["tuned"], files["base"], tmp_path / "r1.safetensors", rank=1, conv_rank=1)
    tensors = load_file(lora.path)
    assert {v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")} == {1}
    assert all(v.dtype == torch.float16 for v in tensors.values())
    with pytest.raises(ParamError, match="SDXL"):
        extract_lora(files["xl_tuned"], files["base"], tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_baked_lora_gives_the_runtime_loras_picture(tmp_path, files):
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.networks import LoraNetworks
    from sdwebui.pipelines.params import Txt2ImgParams
    from sdwebui.pipelines.txt2img import txt2img

    lora_dir = tmp_path / "Lora"
    extract_lora(files["tuned"], files["base"], lora_dir / "style.safetensors", rank=4, precision="fp32")
    baked = bake_loras(files["base"], [(lora_dir / "style.safetensors", 0.7)], tmp_path / "baked.safetensors")
    assert baked.counts["changed"] > 30
    base_sd, baked_sd = load_file(files["base"]), load_file(baked.path)
    assert list(baked_sd) == list(base_sd)
    assert torch.equal(baked_sd["alphas_cumprod"], base_sd["alphas_cumprod"])
    assert safe_open(str(baked.path), "pt").metadata()["sdwebui.baked_loras"] == "style:0.7"

    def picture(model, prompt, library=None):
        ctx = GenerationContext(model=model, extra_networks=LoraNetworks(library) if library else None)
        params = Txt2ImgParams(prompt=prompt, width=64, height=64, steps=3, seed=5, sampler="Euler", rng="cpu")
        return np.asarray(txt2img(ctx, params).images[0]).astype(int)

    runtime = picture(load(files["base"]), "a cat <lora:style:0.7>", LoraLibrary(lora_dir))
    from_file = picture(load(baked.path), "a cat")
    plain = picture(load(files["base"]), "a cat")
    assert np.abs(runtime - from_file).max() <= 1
    assert np.abs(runtime - plain).max() > 10  # the LoRA does change the picture


def test_convert_prunes_ema_and_halves_a_ckpt(tmp_path, files):
    tiny = build_tiny(ModelFamily.SD1, seed=0)
    from sdwebui.models.loader import default_alphas_cumprod

    ckpt = write_single_file(tiny, tmp_path / "old.ckpt", extra={
        "alphas_cumprod": default_alphas_cumprod(), "model_ema.decay": torch.tensor(0.9999),
        "model_ema.diffusion_modelout2weight": torch.ones(4, 32, 3, 3)})
    result = convert_checkpoint(ckpt, tmp_path / "new.safetensors", precision="fp16")
    out = load_file(result.path)
    assert result.counts["dropped"] == 2 and not any(k.startswith("model_ema.") for k in out)
    assert out["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert out["alphas_cumprod"].dtype == torch.float32
    model = load_checkpoint(result.path, dtype=torch.float32)
    torch.testing.assert_close(model.unet.conv_out.weight, tiny.unet.conv_out.weight.half().float(), rtol=0, atol=0)
    with pytest.raises(ParamError, match="checkpoint"):
        convert_checkpoint(tmp_path / "missing.ckpt", tmp_path / "x.safetensors")


@pytest.mark.parametrize("family", [ModelFamily.SD1, ModelFamily.SD2])
def test_convert_a_diffusers_folder_to_one_file(tmp_path, family):
    from tiny_models import write_diffusers_folder

    tiny = build_tiny(family, seed=2)
    folder = write_diffusers_folder(tiny, tmp_path / "pipe")
    result = convert_checkpoint(folder, tmp_path / "one.safetensors", precision="fp32")
    single, from_folder = load(result.path), load(folder)
    assert single.family == family and single.prediction_type == from_folder.prediction_type
    for (name, weight), (_, other) in zip(lora_layers(single), lora_layers(from_folder)):
        assert torch.equal(weight, other), name
    torch.testing.assert_close(single.alphas_cumprod, from_folder.alphas_cumprod, rtol=0, atol=0)
    ids = torch.randint(0, 49406, (1, 77), generator=torch.Generator().manual_seed(0))
    for a, b in zip(single.text_encoder.towers, from_folder.text_encoder.towers):
        assert torch.equal(a.module(ids, output_hidden_states=True).hidden_states[-2],
                           b.module(ids, output_hidden_states=True).hidden_states[-2])
