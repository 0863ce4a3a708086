"""The Checkpoint Merger engine (`sdwebui.models.merge`) on tiny real checkpoints written as users download them:
each method key by key against A1111's formula, the inpainting (9-channel) case, bake VAE, discard regex,
metadata, SD2 / SDXL, refusals that write nothing, interrupts, and a merged model that loads and generates."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_models import build_tiny, tiny_vae, write_single_file, write_vae_file

from sdwebui.core.errors import ParamError
from sdwebui.models.family import ModelFamily
from sdwebui.models.hashing import legacy_model_hash, sha256_file
from sdwebui.models.ldm_layout import vae_to_ldm
from sdwebui.models.loader import load_checkpoint
from sdwebui.models.merge import MergeInterrupted, MergeOptions, ModelRef, merge_checkpoints

POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """role -> path: SD1 A/B/C (different seeds, extra keys like real files), SD1 inpainting, SD2 pair, SDXL pair."""
    from sdwebui.models.loader import default_alphas_cumprod

    folder = tmp_path_factory.mktemp("merge-inputs")
    extra = {"alphas_cumprod": default_alphas_cumprod(), POSITION_IDS: torch.arange(77)[None]}
    out = {}
    for role, seed in (("a", 0), ("b", 1), ("c", 2)):
        out[role] = write_single_file(build_tiny(ModelFamily.SD1, seed=seed), folder / f"sd1-{role}.safetensors",
                                      extra=extra, metadata={"modelspec.title": f"model {role}"})
    out["inpaint"] = write_single_file(build_tiny(ModelFamily.SD1_INPAINT, seed=3), folder / "sd1-inpaint.safetensors")
    out["sd2a"] = write_single_file(build_tiny(ModelFamily.SD2, seed=0), folder / "sd2-a.safetensors")
    out["sd2a"].with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    out["sd2b"] = write_single_file(build_tiny(ModelFamily.SD2, seed=1), folder / "sd2-b.safetensors")
    out["sdxla"] = write_single_file(build_tiny(ModelFamily.SDXL, seed=0), folder / "sdxl-a.safetensors")
    out["sdxlb"] = write_single_file(build_tiny(ModelFamily.SDXL, seed=1), folder / "sdxl-b.safetensors")
    out["ckpt_b"] = write_single_file(build_tiny(ModelFamily.SD1, seed=1), folder / "sd1-b.ckpt", extra=extra)
    return out


def ref(path):
    return ModelRef(path, path.name)


def merge(ckpt_dir, a, b=None, c=None, **options):
    return merge_checkpoints(ref(a), ref(b) if b else None, ref(c) if c else None, MergeOptions(**options),
                             ckpt_dir=ckpt_dir)


def merged_key(key: str, tensor: torch.Tensor) -> bool:
    return "model" in key and key != POSITION_IDS and tensor.is_floating_point()


def test_weighted_sum_key_by_key(tmp_path, models):
    result = merge(tmp_path, models["a"], models["b"], interp_method="Weighted sum", multiplier=0.3)
    assert result.path == tmp_path / "0.7(sd1-a) + 0.3(sd1-b).safetensors"  # A1111's generated name
    a, b, out = load_file(models["a"]), load_file(models["b"]), load_file(result.path)
    assert list(out) == list(a)  # A's keys, in A's order
    merged = 0
    for key, value in a.items():
        if merged_key(key, value):
            torch.testing.assert_close(out[key], 0.7 * value + 0.3 * b[key], rtol=0, atol=1e-6)
            merged += 1
        else:
            assert torch.equal(out[key], value), key  # alphas_cumprod, position ids: A's
    assert merged == result.merged > 100
    assert not torch.equal(out["alphas_cumprod"] * 0, out["alphas_cumprod"])


def test_add_difference_key_by_key_with_a_ckpt_input(tmp_path, models):
    result = merge(tmp_path, models["a"], models["ckpt_b"], models["c"], interp_method="add-difference", multiplier=0.5)
    assert result.name == "sd1-a + 0.5(sd1-b - sd1-c).safetensors"
    a, b, c, out = (load_file(models["a"]), load_file(models["b"]), load_file(models["c"]), load_file(result.path))
    for key, value in a.items():
        expected = value + 0.5 * (b[key] - c[key]) if merged_key(key, value) else value
        torch.testing.assert_close(out[key], expected, rtol=0, atol=1e-6)


def test_no_interpolation_save_as_half_keeps_schedule_in_fp32(tmp_path, models):
    result = merge(tmp_path, models["a"], interp_method="No interpolation", save_as_half=True, custom_name="half")
    a, out = load_file(models["a"]), load_file(result.path)
    assert result.path.name == "half.safetensors"
    for key, value in a.items():
        if key == "alphas_cumprod" or not value.is_floating_point():
            assert out[key].dtype == value.dtype and torch.equal(out[key], value)
        else:
            assert out[key].dtype == torch.float16 and torch.equal(out[key], value.half()), key


def test_inpainting_a_with_normal_b_merges_the_shared_channels(tmp_path, models):
    result = merge(tmp_path, models["inpaint"], models["b"], multiplier=0.25, custom_name="inp")
    assert result.path.name == "inp.inpainting.safetensors"  # A1111's suffix
    a, b, out = load_file(models["inpaint"]), load_file(models["b"]), load_file(result.path)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert a[key].shape[1] == 9 and b[key].shape[1] == 4 and out[key].shape == a[key].shape
    torch.testing.assert_close(out[key][:, :4], 0.75 * a[key][:, :4] + 0.25 * b[key], rtol=0, atol=1e-6)
    assert torch.equal(out[key][:, 4:], a[key][:, 4:])
    assert load_checkpoint(result.path).family == ModelFamily.SD1_INPAINT
    meta = json.loads(safe_open(str(result.path), "pt").metadata()["sd_merge_recipe"])
    assert meta["is_inpainting"] is True


def test_refusals_name_the_field_and_write_nothing(tmp_path, models):
    cases = [
        (dict(a=models["b"], b=models["inpaint"]), "secondary_model_name", "A must be the inpainting model"),
        (dict(a=models["a"], b=models["sdxla"]), "secondary_model_name", "different model families"),
        (dict(a=models["a"], b=models["b"], interp_method="Add difference"), "tertiary_model_name", "tertiary"),
        (dict(a=models["a"], b=models["b"], discard_weights="(["), "discard_weights", "regular expression"),
        (dict(a=models["a"], b=models["b"], custom_name="../escape"), "custom_name", "inside the checkpoints folder"),
        (dict(a=models["a"], b=models["b"], custom_name="/tmp/abs"), "custom_name", "inside the checkpoints folder"),
        (dict(a=models["a"], b=models["b"], metadata_json="[1]"), "metadata_json", "JSON object"),
        (dict(a=models["a"], b=models["b"], bake_in_vae=models["a"].parent / "missing.safetensors"), "bake_in_vae",
         "not found"),
    ]
    for kwargs, field, words in cases:
        with pytest.raises(ParamError) as caught:
            merge(tmp_path, **kwargs)
        assert caught.value.loc == (field,) and words in caught.value.message, (field, caught.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_name_needs_overwrite(tmp_path, models):
    first = merge(tmp_path, models["a"], models["b"], custom_name="same")
    with pytest.raises(ParamError, match="already exists"):
        merge(tmp_path, models["a"], models["b"], custom_name="same", multiplier=0.9)
    again = merge(tmp_path, models["a"], models["b"], custom_name="same", multiplier=0.9, overwrite=True)
    assert again.path == first.path
    out, a, b = load_file(again.path), load_file(models["a"]), load_file(models["b"])
    key = "model.diffusion_model.out.2.weight"
    torch.testing.assert_close(out[key], 0.1 * a[key] + 0.9 * b[key], rtol=0, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.safetensors"]


def test_bake_vae_in_diffusers_layout_and_discard_regex(tmp_path, models):
    vae = tiny_vae(seed=99)
    vae_path = write_vae_file(vae, tmp_path / "vae" / "other.safetensors", layout="diffusers")
    ckpt_dir = tmp_path / "ckpt"
    result = merge(ckpt_dir, models["a"], models["b"], bake_in_vae=vae_path, discard_weights=r"^model_ema|alphas_cumprod",
                   save_as_half=True)
    out = load_file(result.path)
    expected = vae_to_ldm(vae.state_dict())
    baked = [k for k in out if k.startswith("first_stage_model.")]
    assert baked and result.baked == len(baked) == len(expected)
    for key in baked:
        want = expected[key.removeprefix("first_stage_model.")].half()
        assert torch.equal(out[key], want.reshape(out[key].shape)), key
    assert "alphas_cumprod" not in out and result.discarded == 1
    recipe = json.loads(safe_open(str(result.path), "pt").metadata()["sd_merge_recipe"])
    assert recipe["bake_in_vae"] == "other.safetensors" and recipe["discard_weights"].startswith("^model_ema")
    # the baked VAE is what the loaded model decodes with
    model = load_checkpoint(result.path, dtype=torch.float32, vae_dtype=torch.float32, automatic_vae=False)
    weight = model.vae.decoder.conv_out.weight
    assert torch.equal(weight, vae.decoder.conv_out.weight.half().float())


def test_metadata_is_a1111s(tmp_path, models):
    result = merge(tmp_path, models["a"], models["b"], multiplier=0.4, metadata_json='{"note": "mine", "n": 3}')
    meta = safe_open(str(result.path), "pt").metadata()
    assert meta["format"] == "pt" and meta["note"] == "mine" and meta["n"] == "3"
    assert meta["modelspec.title"] == "model b"  # copied from the inputs, B's over A's
    recipe = json.loads(meta["sd_merge_recipe"])
    ha, hb = sha256_file(models["a"]), sha256_file(models["b"])
    assert recipe == {
        "type": "webui", "primary_model_hash": ha, "secondary_model_hash": hb, "tertiary_model_hash": None,
        "interp_method": "Weighted sum", "multiplier": 0.4, "save_as_half": False, "custom_name": "",
        "config_source": 0, "bake_in_vae": "None", "discard_weights": "", "is_inpainting": False,
        "is_instruct_pix2pix": False,
    }
    models_meta = json.loads(meta["sd_merge_models"])
    assert models_meta[ha] == {"name": "sd1-a.safetensors", "legacy_hash": legacy_model_hash(models["a"]),
                               "sd_merge_recipe": None}
    assert set(models_meta) == {ha, hb}
    # merging the merge records its ancestry (A1111 carries sd_merge_models over)
    second = merge(tmp_path, result.path, models["c"], custom_name="second")
    nested = json.loads(safe_open(str(second.path), "pt").metadata()["sd_merge_models"])
    assert {ha, hb, sha256_file(result.path), sha256_file(models["c"])} <= set(nested)
    assert nested[sha256_file(result.path)]["sd_merge_recipe"]["multiplier"] == 0.4
    bare = merge(tmp_path, models["a"], models["b"], custom_name="bare", save_metadata=False)
    assert safe_open(str(bare.path), "pt").metadata() in (None, {})


def test_sd2_copies_the_config_and_sdxl_merges(tmp_path, models):
    result = merge(tmp_path, models["sd2a"], models["sd2b"], multiplier=0.5)
    assert result.config == result.path.with_suffix(".yaml") and "parameterization" in result.config.read_text()
    none = merge(tmp_path, models["sd2a"], models["sd2b"], custom_name="noconfig", config_source=3)
    assert none.config is None and not none.path.with_suffix(".yaml").exists()
    xl = merge(tmp_path, models["sdxla"], models["sdxlb"], multiplier=0.5, custom_name="xl")
    a, b, out = load_file(models["sdxla"]), load_file(models["sdxlb"]), load_file(xl.path)
    for key in ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
                "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
                "model.diffusion_model.label_emb.0.0.weight"):
        torch.testing.assert_close(out[key], 0.5 * a[key] + 0.5 * b[key], rtol=0, atol=1e-6)
    assert load_checkpoint(xl.path).family == ModelFamily.SDXL


def test_interrupt_leaves_no_file(tmp_path, models):
    calls = []
    with pytest.raises(MergeInterrupted):
        merge_checkpoints(ref(models["a"]), ref(models["b"]), None, MergeOptions(custom_name="cut"), ckpt_dir=tmp_path,
                          progress=lambda done, total, text: done and calls.append((done, total)),
                          should_stop=lambda: len(calls) >= 20)
    assert calls[-1][0] == 20 and calls[-1][1] > 20
    assert list(tmp_path.iterdir()) == []


def test_merged_model_loads_and_generates(tmp_path, models):
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.params import Txt2ImgParams
    from sdwebui.pipelines.txt2img import txt2img

    result = merge(tmp_path, models["a"], models["b"], multiplier=0.5, save_as_half=True)
    model = load_checkpoint(result.path, dtype=torch.float32, vae_dtype=torch.float32)
    a = load_file(models["a"])
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(model.unet.conv_out.weight, load_file(result.path)[key].float())
    assert not torch.equal(model.unet.conv_out.weight, a[key])
    params = Txt2ImgParams(prompt="a cat", width=64, height=64, steps=2, seed=3, sampler="Euler", rng="cpu")
    images = txt2img(GenerationContext(model=model), params).images
    assert len(images) == 1 and images[0].size == (64, 64)
    assert max(high - low for low, high in images[0].getextrema()) > 10  # a picture, not a flat colour
