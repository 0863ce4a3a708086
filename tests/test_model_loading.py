"""The model-loading layer against tiny real models written in the layouts users download.

"Identical outputs" below means bitwise equal: the loaded modules hold exactly the original tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tiny_models
from tiny_models import build_tiny, token_ids, unet_inputs, unet_output, write_single_file, write_vae_file
from sdwebui.models import convert, ldm_layout
from sdwebui.models.detect import decide_prediction_type, detect, sd2_uses_v_prediction
from sdwebui.models.family import ModelFamily
from sdwebui.models.files import ModelFileError, TensorInfo, read_safetensors_header, read_state_dict
from sdwebui.models.hashing import HashCache, legacy_model_hash, sha256_of, short_hash
from sdwebui.models.loader import (
    default_alphas_cumprod,
    describe_checkpoint,
    find_checkpoints,
    load_checkpoint,
)
from sdwebui.models.vae import apply_vae, find_automatic_vae, find_vaes


# ---------------------------------------------------------------------------------------------- helpers


@torch.no_grad()
def assert_same_model(loaded, original: tiny_models.TinyModel) -> None:
    inputs = unet_inputs(original)
    assert torch.equal(unet_output(loaded.unet, inputs), unet_output(original.unet, inputs)), "UNet output differs"
    z = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.vae.decode(z).sample, original.vae.decode(z).sample), "VAE decode differs"
    image = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert torch.equal(loaded.vae.encode(image).latent_dist.mean, original.vae.encode(image).latent_dist.mean)
    ids = token_ids()
    for name, module in original.text_encoders.items():
        mine = getattr(loaded.text_encoder, name)
        assert type(mine) is type(module)
        expected = module(ids, output_hidden_states=True)
        got = mine(ids, output_hidden_states=True)
        assert len(got.hidden_states) == len(expected.hidden_states)
        for a, b in zip(got.hidden_states, expected.hidden_states):
            assert torch.equal(a, b), f"{name} hidden states differ"
        assert torch.equal(got.last_hidden_state, expected.last_hidden_state)
        assert torch.equal(got[1], expected[1]), f"{name} pooled output / text_embeds differ"


def assert_same_weights(loaded, original: tiny_models.TinyModel) -> None:
    """Cheaper than running the modules: every tensor bitwise equal and the configs that shapes cannot show."""
    pairs = [(loaded.unet, original.unet), (loaded.vae, original.vae)]
    pairs += [(getattr(loaded.text_encoder, n), m) for n, m in original.text_encoders.items()]
    for mine, theirs in pairs:
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert loaded.unet.config.attention_head_dim == original.unet.config.attention_head_dim


# ---------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("family", list(ModelFamily))
def test_detects_every_family_from_keys_and_shapes(family):
    model = build_tiny(family)
    sd = model.ldm_state_dict()
    assert detect(sd).family == family
    # The same from shapes only (what a safetensors header gives).
    shapes = {k: TensorInfo("F32", tuple(v.shape)) for k, v in sd.items()}
    assert detect(shapes).family == family


def test_detects_from_safetensors_header_without_reading_data(tiny_sdxl_refiner_path):
    header = read_safetensors_header(tiny_sdxl_refiner_path)
    assert detect(header.tensors, tiny_sdxl_refiner_path).family == ModelFamily.SDXL_REFINER
    assert header.metadata["sdwebui.native_size"] == "64"


def test_sd2_in_sgm_layout_is_sd2_not_refiner(tiny_sd2_v):
    # SD 2.1 Turbo ships its OpenCLIP under conditioner.embedders.0.model (like the refiner) but has no label_emb.
    sd = {k.replace("cond_stage_model.", "conditioner.embedders.0."): v for k, v in tiny_sd2_v.ldm_state_dict().items()}
    assert detect(sd).family == ModelFamily.SD2


@pytest.mark.parametrize(
    ("keys", "hint"),
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "LoRA"),
        ({"encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3), "decoder.up.0.block.0.conv1.weight": (1,)}, "VAE"),
        ({"string_to_param.*": (1, 768)}, "embedding"),
        ({"down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)}, "diffusers"),
        ({"foo": (1,)}, "model.diffusion_model"),
    ],
)
def test_non_checkpoints_are_named_for_what_they_look_like(keys, hint):
    shapes = {k: torch.empty(s) for k, s in keys.items()}
    with pytest.raises(ModelFileError) as error:
        detect(shapes, "x.safetensors")
    assert "not a Stable Diffusion checkpoint" in error.value.reason
    assert hint in error.value.reason


def test_pix2pix_channel_count_is_rejected_clearly(tiny_sd1):
    sd = tiny_sd1.ldm_state_dict()
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 8, 3, 3)
    with pytest.raises(ModelFileError, match="8 input channels"):
        detect(sd)


# ------------------------------------------------------------------------------------- loading: every family


def test_sd1_single_file_loads_identical_modules(tiny_sd1_path, tiny_sd1, tmp_path):
    model = load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, hash_cache_dir=tmp_path)
    assert model.family == ModelFamily.SD1
    assert model.prediction_type == "epsilon"
    assert model.dtype == model.vae_dtype == torch.float32
    assert model.native_size == 64  # from the file's sdwebui.native_size metadata
    assert model.info.name == "tiny-sd1"
    assert model.info.sha256 == hashlib.sha256(tiny_sd1_path.read_bytes()).hexdigest()
    assert model.vae_info is None
    assert model.latent_scaling_factor == pytest.approx(0.18215)
    assert model.alphas_cumprod.dtype == torch.float32 and model.alphas_cumprod.shape == (1000,)
    assert torch.equal(model.alphas_cumprod, default_alphas_cumprod())
    assert model.text_encoder.clip_g is None and model.text_encoder.clip_h is None
    assert all(not p.requires_grad for p in model.unet.parameters())
    assert not any(t.is_meta for t in [*model.unet.state_dict().values(), *model.text_encoder.clip_l.buffers()])
    assert_same_model(model, tiny_sd1)


def test_sd1_inpainting(tiny_sd1_inpaint_path, tiny_sd1_inpaint):
    model = load_checkpoint(tiny_sd1_inpaint_path)
    assert model.family == ModelFamily.SD1_INPAINT
    assert model.unet.config.in_channels == 9
    assert_same_weights(model, tiny_sd1_inpaint)


def test_sd2_v_prediction_from_yaml_beside_the_file(tiny_sd2_v_path, tiny_sd2_v):
    model = load_checkpoint(tiny_sd2_v_path)
    assert model.family == ModelFamily.SD2
    assert model.prediction_type == "v_prediction"
    assert any(".yaml" in note for note in model.config_notes)
    # clip_h is an OpenCLIP ViT-H converted to CLIPTextModel without the last block (SD2 reads the penultimate layer).
    assert model.text_encoder.clip_h.config.num_hidden_layers == tiny_models.TEXT_LAYERS
    assert model.text_encoder.clip_h.config.hidden_act == "gelu"
    assert_same_model(model, tiny_sd2_v)


def test_prediction_type_override_wins_over_yaml(tiny_sd2_v_path):
    assert load_checkpoint(tiny_sd2_v_path, prediction_type="epsilon").prediction_type == "epsilon"
    assert load_checkpoint(tiny_sd2_v_path, prediction_type="v").prediction_type == "v_prediction"


def test_sd2_without_yaml_or_hint(tiny_sd2_v_path, tmp_path):
    bare = tmp_path / "bare-sd2.safetensors"
    shutil.copy(tiny_sd2_v_path, bare)
    model = load_checkpoint(bare)
    # A non-standard-size SD2 cannot be tested with A1111's UNet heuristic (calibrated on the real UNet).
    assert model.prediction_type == "epsilon"
    assert any("assumed epsilon" in note for note in model.config_notes)


@torch.no_grad()
def test_sd2_v_heuristic_is_a1111s_rule():
    # A1111: mean(unet(x=0.5, t=999, context=0.5) - x) < -1 means v-prediction. A UNet whose output is a constant
    # bias makes the rule observable.
    unet = tiny_models.tiny_unet(ModelFamily.SD2)
    unet.conv_out.weight.zero_()
    unet.conv_out.bias.fill_(-3.0)
    assert sd2_uses_v_prediction(unet) is True
    unet.conv_out.bias.fill_(0.0)
    assert sd2_uses_v_prediction(unet) is False


def test_sdxl_loads_identical_modules(tiny_sdxl_path, tiny_sdxl):
    model = load_checkpoint(tiny_sdxl_path)
    assert model.family == ModelFamily.SDXL
    assert model.unet.config.addition_embed_type == "text_time"
    assert model.unet.config.addition_time_embed_dim == tiny_models.TIME_EMBED
    assert model.latent_scaling_factor == pytest.approx(0.13025)
    assert type(model.text_encoder.clip_g).__name__ == "CLIPTextModelWithProjection"
    assert_same_model(model, tiny_sdxl)


def test_sdxl_refiner_loads_identical_modules(tiny_sdxl_refiner_path, tiny_sdxl_refiner):
    model = load_checkpoint(tiny_sdxl_refiner_path)
    assert model.family == ModelFamily.SDXL_REFINER
    assert model.text_encoder.clip_l is None
    assert model.unet.config.projection_class_embeddings_input_dim == 5 * tiny_models.TIME_EMBED + 32
    assert_same_model(model, tiny_sdxl_refiner)


@pytest.mark.parametrize("family", [ModelFamily.SD2_INPAINT, ModelFamily.SDXL_INPAINT])
def test_other_inpainting_families_load(family, tmp_path):
    original = build_tiny(family)
    model = load_checkpoint(write_single_file(original, tmp_path / f"{family.value}.safetensors"))
    assert model.family == family
    assert_same_weights(model, original)


# ------------------------------------------------------------------------------------ formats and precision


@pytest.mark.parametrize("file_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_file_loads_as_fp32_on_cpu(file_dtype, tiny_sd1, tmp_path):
    path = write_single_file(tiny_sd1, tmp_path / "half.safetensors", dtype=file_dtype)
    model = load_checkpoint(path, device="cpu")
    assert model.dtype == model.vae_dtype == torch.float32
    loaded = dict(model.unet.named_parameters())
    for name, param in tiny_sd1.unet.named_parameters():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], param.to(file_dtype).float()), name
    assert next(model.vae.parameters()).dtype == torch.float32
    assert next(model.text_encoder.clip_l.parameters()).dtype == torch.float32


def test_requested_dtypes_are_applied_per_module(tiny_sd1_path):
    model = load_checkpoint(tiny_sd1_path, dtype=torch.bfloat16, vae_dtype=torch.float32)
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    assert next(model.text_encoder.clip_l.parameters()).dtype == torch.bfloat16
    assert next(model.vae.parameters()).dtype == torch.float32
    assert model.alphas_cumprod.dtype == torch.float32


def test_model_ema_weights_are_ignored(tiny_sd1, tmp_path):
    sd = tiny_sd1.ldm_state_dict()
    ema = {
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32),
    }
    for key, value in sd.items():  # LDM's flattened EMA names, filled with garbage
        if key.startswith("model.diffusion_model."):
            ema["model_ema." + key.removeprefix("model.").replace(".", "")] = torch.full_like(value, 7.0)
    path = write_single_file(tiny_sd1, tmp_path / "with-ema.safetensors", extra=ema)
    model = load_checkpoint(path)
    assert any("model_ema" in note for note in model.config_notes)
    assert_same_weights(model, tiny_sd1)


def test_diffusers_folder(tiny_sd1_diffusers_path, tiny_sd1, tmp_path):
    model = load_checkpoint(tiny_sd1_diffusers_path, hash_cache_dir=tmp_path)
    assert model.family == ModelFamily.SD1
    assert model.info.name == "tiny-sd1-diffusers"
    assert len(model.info.sha256) == 64
    assert model.native_size == 64  # unet sample_size 8 x VAE factor 8
    assert_same_weights(model, tiny_sd1)


def test_diffusers_folder_prediction_type_from_scheduler(tiny_sd2_v, tmp_path):
    folder = tiny_models.write_diffusers_folder(tiny_sd2_v, tmp_path / "sd2v")
    model = load_checkpoint(folder)
    assert model.family == ModelFamily.SD2
    assert model.prediction_type == "v_prediction"
    assert_same_weights(model, tiny_sd2_v)


def test_diffusers_folder_sdxl(tiny_sdxl, tmp_path):
    folder = tiny_models.write_diffusers_folder(tiny_sdxl, tmp_path / "sdxl")
    model = load_checkpoint(folder)
    assert model.family == ModelFamily.SDXL
    assert_same_weights(model, tiny_sdxl)


def test_ckpt_loads_through_the_restricted_unpickler(tiny_sd1_ckpt_path, tiny_sd1):
    model = load_checkpoint(tiny_sd1_ckpt_path)
    assert model.family == ModelFamily.SD1
    assert model.info.name == "tiny-sd1-ckpt"
    assert_same_weights(model, tiny_sd1)


def test_sdxl_v_pred_and_ztsnr_keys(tiny_sdxl, tmp_path):
    extra = {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}
    model = load_checkpoint(write_single_file(tiny_sdxl, tmp_path / "vpred.safetensors", extra=extra))
    assert model.prediction_type == "v_prediction"
    assert model.alphas_cumprod[-1].item() == pytest.approx(4.8973451890853435e-08)
    assert model.alphas_cumprod[0].item() == pytest.approx(default_alphas_cumprod()[0].item(), rel=1e-5)
    only_vpred = load_checkpoint(write_single_file(tiny_sdxl, tmp_path / "v2.safetensors", extra={"v_pred": torch.tensor([])}))
    assert only_vpred.prediction_type == "v_prediction"
    assert torch.equal(only_vpred.alphas_cumprod, default_alphas_cumprod())


def test_alphas_cumprod_is_read_from_the_file(tiny_sd1, tmp_path):
    custom = default_alphas_cumprod() * 0.5
    model = load_checkpoint(write_single_file(tiny_sd1, tmp_path / "a.safetensors", extra={"alphas_cumprod": custom}))
    assert torch.equal(model.alphas_cumprod, custom)


def test_native_size_hints_in_metadata(tiny_sd1, tmp_path):
    path = write_single_file(
        tiny_sd1, tmp_path / "kohya.safetensors", metadata={"sdwebui.native_size": "", "ss_resolution": "(768, 768)"}
    )
    assert load_checkpoint(path).native_size == 768


def test_native_size_peek_reads_each_file_version_once(tiny_sd1, tmp_path, monkeypatch):
    import os

    from sdwebui.models import files
    from sdwebui.models.detect import peek_native_size

    reads = []
    real_read = files.read_safetensors_header
    monkeypatch.setattr(files, "read_safetensors_header", lambda path: reads.append(path) or real_read(path))
    path = write_single_file(tiny_sd1, tmp_path / "m.safetensors", metadata={"sdwebui.native_size": "768"})
    assert [peek_native_size(path) for _ in range(3)] == [768, 768, 768]
    assert len(reads) == 1
    write_single_file(tiny_sd1, path, metadata={"sdwebui.native_size": "640"})  # replaced in place
    os.utime(path, ns=(1, 1))  # even if the clock's resolution hid the change, the time differs now
    assert peek_native_size(path) == 640 and len(reads) == 2


# ------------------------------------------------------------------------------ shapes -> config inference


def test_nonstandard_shapes_are_inferred(tmp_path):
    """Three levels, two resnets per level, two transformer layers, a 3-layer 64-wide text encoder."""
    family = ModelFamily.SD1
    unet = tiny_models.tiny_unet(
        family,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        transformer_layers_per_block=2,
        cross_attention_dim=64,
    )
    clip = tiny_models.tiny_clip_l(layers=3, width=64)
    vae = tiny_models.tiny_vae(channels=(32, 64, 64, 64))
    original = tiny_models.TinyModel(family, unet, vae, {"clip_l": clip})
    model = load_checkpoint(write_single_file(original, tmp_path / "odd.safetensors"))
    assert list(model.unet.config.block_out_channels) == [32, 64, 64]
    assert model.unet.config.layers_per_block == 2
    assert model.unet.config.transformer_layers_per_block == 2
    assert model.text_encoder.clip_l.config.num_hidden_layers == 3
    assert list(model.vae.config.block_out_channels) == [32, 64, 64, 64]
    assert_same_model(model, original)


def test_head_count_override_in_metadata(tmp_path):
    """Heads cannot be seen in shapes; a model built with another count says so in `sdwebui.config`."""
    family = ModelFamily.SD1
    unet = tiny_models.tiny_unet(family, attention_head_dim=4)  # the SD1 rule would say 8
    original = tiny_models.TinyModel(family, unet, tiny_models.tiny_vae(), {"clip_l": tiny_models.tiny_clip_l()})
    inputs = unet_inputs(original)
    plain = load_checkpoint(write_single_file(original, tmp_path / "plain.safetensors"))
    assert plain.unet.config.attention_head_dim == 8
    assert not torch.equal(unet_output(plain.unet, inputs), unet_output(unet, inputs))
    meta = {"sdwebui.config": json.dumps({"unet": {"attention_head_dim": 4}})}
    fixed = load_checkpoint(write_single_file(original, tmp_path / "fixed.safetensors", metadata=meta))
    assert torch.equal(unet_output(fixed.unet, inputs), unet_output(unet, inputs))


def test_shipped_configs_build_the_standard_architectures():
    from diffusers import UNet2DConditionModel

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    # Parameter counts of the published models (SD 1.5, SD 2.1, SDXL base/refiner UNets; CLIP-L, SD 2's
    # 23-layer ViT-H, bigG with projection).
    expected_unets = {
        "unet_sd1": 859_520_964, "unet_sd2": 865_910_724, "unet_sdxl": 2_567_463_684, "unet_sdxl_refiner": 2_259_526_660,
    }
    for name, count in expected_unets.items():
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(convert.shipped_config(name))
        assert sum(p.numel() for p in unet.parameters()) == count, name
    expected_text = {"clip_l": 123_060_480, "clip_h": 340_387_840, "clip_g": 694_659_840}
    for name, count in expected_text.items():
        config = {k: v for k, v in convert.shipped_config(name).items() if k not in ("architectures", "model_type")}
        cls = CLIPTextModelWithProjection if name == "clip_g" else CLIPTextModel
        with torch.device("meta"):
            module = cls(CLIPTextConfig(**config))
        assert sum(p.numel() for p in module.parameters()) == count, name
    assert convert.shipped_config("clip_h")["num_hidden_layers"] == 23
    assert convert.shipped_config("vae_sdxl")["scaling_factor"] == 0.13025


# --------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("family", list(ModelFamily))
def test_ldm_to_diffusers_to_ldm_round_trips_exactly(family, tmp_path):
    original = build_tiny(family)
    path = write_single_file(original, tmp_path / "rt.safetensors", metadata={})
    file_sd = read_state_dict(path)
    model = load_checkpoint(path, prediction_type="epsilon")
    encoders = {n: getattr(model.text_encoder, n) for n in family.spec.text_encoders}
    again = ldm_layout.diffusers_to_ldm_checkpoint(family, unet=model.unet, vae=model.vae, text_encoders=encoders)
    # Keys the diffusers modules cannot hold (SD 2's last OpenCLIP block and projection, logit_scale).
    dropped = set(original.extra)
    assert set(again) == set(file_sd) - dropped
    for key, value in again.items():
        assert torch.equal(value, file_sd[key]), key


# ------------------------------------------------------------------------------------------------- VAE


def test_separate_vae_file_in_every_layout(tiny_sd1_path, tmp_path):
    from sdwebui.models.vae import load_vae_file

    other = tiny_models.tiny_vae(seed=99)
    z = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = other.decode(z).sample
    for layout, name in (("ldm", "a.safetensors"), ("prefixed", "b.safetensors"), ("diffusers", "c.safetensors"), ("ldm", "d.pt")):
        vae = load_vae_file(write_vae_file(other, tmp_path / name, layout=layout), family=ModelFamily.SD1)
        theirs = other.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in vae.state_dict().items()), layout
    vae_path = tmp_path / "a.safetensors"
    model = load_checkpoint(tiny_sd1_path, vae_path=vae_path)
    assert model.vae_info is not None and model.vae_info.path == vae_path
    assert model.vae_info.sha256 == hashlib.sha256(vae_path.read_bytes()).hexdigest()
    assert any("a.safetensors" in note for note in model.config_notes)
    with torch.no_grad():
        assert torch.equal(model.vae.decode(z).sample, expected)
    assert model.latent_scaling_factor == pytest.approx(0.18215)


def test_apply_vae_returns_a_new_model(tiny_sd1_path, tiny_sd1, tmp_path):
    base = load_checkpoint(tiny_sd1_path)
    other = tiny_models.tiny_vae(seed=98)
    swapped = apply_vae(base, write_vae_file(other, tmp_path / "x.safetensors"))
    assert swapped.vae is not base.vae and swapped.unet is base.unet
    assert base.vae_info is None and swapped.vae_info.name == "x"
    z = torch.zeros((1, 4, 8, 8))
    with torch.no_grad():
        assert torch.equal(swapped.vae.decode(z).sample, other.decode(z).sample)


def test_vae_with_wrong_latent_channels_is_refused(tiny_sd1_path, tmp_path):
    from diffusers import AutoencoderKL

    odd = AutoencoderKL(
        latent_channels=16, block_out_channels=(32, 32), norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    with pytest.raises(ModelFileError, match="16 latent channels"):
        load_checkpoint(tiny_sd1_path, vae_path=write_vae_file(odd, tmp_path / "odd.safetensors"))


def test_automatic_vae_beside_the_checkpoint(tiny_sd1_path, tmp_path):
    ckpt = tmp_path / "mymodel.safetensors"
    shutil.copy(tiny_sd1_path, ckpt)
    assert find_automatic_vae(ckpt) is None
    other = tiny_models.tiny_vae(seed=97)
    auto = write_vae_file(other, tmp_path / "mymodel.vae.safetensors")
    assert find_automatic_vae(ckpt) == auto
    model = load_checkpoint(ckpt)
    assert model.vae_info is not None and model.vae_info.path == auto
    z = torch.zeros((1, 4, 8, 8))
    with torch.no_grad():
        assert torch.equal(model.vae.decode(z).sample, other.decode(z).sample)
    assert load_checkpoint(ckpt, automatic_vae=False).vae_info is None


def test_find_vaes(tmp_path):
    vae_dir, ckpt_dir = tmp_path / "VAE", tmp_path / "Stable-diffusion"
    for rel in ("b.safetensors", "sub/A.pt", "c.ckpt", "notes.txt"):
        (vae_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (vae_dir / rel).write_bytes(b"x")
    ckpt_dir.mkdir()
    (ckpt_dir / "m.vae.safetensors").write_bytes(b"x")
    (ckpt_dir / "m.safetensors").write_bytes(b"x")
    names = [p.name for p in find_vaes(vae_dir, ckpt_dir)]
    assert names == ["A.pt", "b.safetensors", "c.ckpt", "m.vae.safetensors"]


# ------------------------------------------------------------------------------------- discovery, describe


def test_find_checkpoints(tmp_path, tiny_sd1_diffusers_path):
    root = tmp_path / "Stable-diffusion"
    for rel in ("b.safetensors", "A.ckpt", "sub/c.safetensors", "b.vae.safetensors", "x.yaml", "d.pt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    shutil.copytree(tiny_sd1_diffusers_path, root / "sub" / "diff")
    found = [p.relative_to(root).as_posix() for p in find_checkpoints(root)]
    assert found == ["A.ckpt", "b.safetensors", "sub/c.safetensors", "sub/diff"]
    assert find_checkpoints(tmp_path / "missing") == []


def test_describe_checkpoint(tiny_sd2_v_path, tiny_sdxl_path, tiny_sd1_diffusers_path, tiny_sd1_ckpt_path):
    sd2 = describe_checkpoint(tiny_sd2_v_path)
    assert (sd2.family, sd2.prediction_type, sd2.format) == (ModelFamily.SD2, "v_prediction", "safetensors")
    assert describe_checkpoint(tiny_sdxl_path).family == ModelFamily.SDXL
    assert describe_checkpoint(tiny_sd1_diffusers_path).format == "diffusers"
    assert describe_checkpoint(tiny_sd1_ckpt_path).family == ModelFamily.SD1


def test_decide_prediction_type_from_metadata(tiny_sd1, tmp_path):
    sd = tiny_sd1.ldm_state_dict()
    decision = decide_prediction_type(tmp_path / "x.safetensors", sd, ModelFamily.SD1, metadata={"modelspec.prediction_type": "v"})
    assert decision.prediction_type == "v_prediction"


# ------------------------------------------------------------------------------------------------- hashing


def test_sha256_and_short_hash(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(os.urandom(3000))
    full = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_of(path) == full
    assert sha256_of(path, tmp_path / "cache") == full
    assert short_hash(full) == full[:10]


def test_hash_cache_is_keyed_by_size_and_mtime(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"a" * 5000)
    cache = HashCache(tmp_path / "cache")
    first = cache.sha256(path)
    stat = path.stat()
    # Same size, same mtime, other content: the cached value must come back (the file is not read again).
    path.write_bytes(b"b" * 5000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert HashCache(tmp_path / "cache").sha256(path) == first
    # A new mtime invalidates the entry.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache.sha256(path) == hashlib.sha256(b"b" * 5000).hexdigest()
    entries = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert entries[str(path.resolve())]["size"] == 5000


def test_legacy_model_hash(tmp_path):
    data = os.urandom(0x100000 + 0x10000 + 100)
    path = tmp_path / "old.ckpt"
    path.write_bytes(data)
    assert legacy_model_hash(path) == hashlib.sha256(data[0x100000 : 0x110000]).hexdigest()[:8]
    assert legacy_model_hash(tmp_path / "missing.ckpt") == "NOFILE"
