"""LoRA / LyCORIS: every format's weight change against its closed form, key mapping, hashes, the restoring
scope, and a kohya LoRA against diffusers' own `load_lora_weights` on the same tiny model.

The closed forms below are written independently of `lora_formats.py` (explicit per-row norms, block-built
Kronecker products, kernel-position loops), on real layers of the tiny SD 1 model loaded from a single file:
a UNet Linear (cross-attention `to_k`), a 3x3 Conv2d (a resnet's `conv1`) and a CLIP Linear (`q_proj`).
"""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import build_tiny, write_single_file

from sdwebui.models.family import ModelFamily
from sdwebui.models.loader import load_checkpoint
from sdwebui.models.lora import LoraCall, LoraLibrary, build_index, split_key
from sdwebui.models.lora_formats import compute_delta

LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
LINEAR_KOHYA = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
LINEAR_LDM = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"  # layers_per_block 1: block 0 -> 1
CONV = "down_blocks.0.resnets.0.conv1"
CONV_KOHYA = "lora_unet_down_blocks_0_resnets_0_conv1"
CONV_LDM = "lora_unet_input_blocks_1_0_in_layers_2"
TE = "encoder.layers.0.self_attn.q_proj"
TE_KOHYA = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
TE_MULT, UNET_MULT = 0.7, 0.5


def rnd(*shape, seed=0, scale=0.2):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-models")
    out = {}
    for family in (ModelFamily.SD1, ModelFamily.SDXL):
        tiny = build_tiny(family, seed=5)
        out[family] = (tiny, write_single_file(tiny, folder / f"tiny-{family.value}.safetensors"))
    return out


def load(tiny_files, family=ModelFamily.SD1):
    return load_checkpoint(tiny_files[family][1], device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


@pytest.fixture(scope="module")
def sd1(tiny_files):
    return load(tiny_files)


def modules(model):
    unet = dict(model.unet.named_modules())
    te = dict(model.text_encoder.towers[0].module.named_modules())
    return unet[LINEAR], unet[CONV], te[TE]


def snapshot(model):
    return {
        name: t.detach().clone()
        for part in (model.unet, *(tower.module for tower in model.text_encoder.towers))
        for name, t in part.state_dict().items()
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed[:5]


def apply_file(tmp_path, model, tensors, *, name="net", te=TE_MULT, unet=UNET_MULT, metadata=None):
    """Write `tensors` as a LoRA file, apply it, return the three layers' weights inside the scope."""
    save_file(tensors, tmp_path / f"{name}.safetensors", metadata=metadata)
    library = LoraLibrary(tmp_path)
    with library.applied(model, [LoraCall(name, te, unet)]) as report:
        weights = tuple(m.weight.detach().clone() for m in modules(model))
        biases = tuple(None if m.bias is None else m.bias.detach().clone() for m in modules(model))
    return weights, biases, report


def originals(model):
    return tuple(m.weight.detach().clone() for m in modules(model))


# ------------------------------------------------------------------------------------ formats vs closed form


def test_kohya_lora_linear_and_locon_3x3(tmp_path, sd1):
    w_lin, w_conv, w_te = originals(sd1)
    r = 4
    up_l, down_l = rnd(32, r, seed=1), rnd(r, 32, seed=2)
    up_c, down_c = rnd(32, r, 1, 1, seed=3), rnd(r, 32, 3, 3, seed=4)
    up_t, down_t = rnd(32, r, seed=5), rnd(r, 32, seed=6)
    before = snapshot(sd1)
    (lin, conv, te), _, report = apply_file(tmp_path, sd1, {
        f"{LINEAR_KOHYA}.lora_up.weight": up_l, f"{LINEAR_KOHYA}.lora_down.weight": down_l,
        f"{LINEAR_KOHYA}.alpha": torch.tensor(2.0),
        f"{CONV_KOHYA}.lora_up.weight": up_c, f"{CONV_KOHYA}.lora_down.weight": down_c,
        f"{CONV_KOHYA}.alpha": torch.tensor(8.0),
        f"{TE_KOHYA}.lora_up.weight": up_t, f"{TE_KOHYA}.lora_down.weight": down_t,  # no alpha: scale 1
    })
    torch.testing.assert_close(lin, w_lin + UNET_MULT * (2.0 / r) * (up_l @ down_l))
    # conv: for every kernel position (i, j), the change is up @ down[:, :, i, j]
    expected = torch.empty_like(w_conv)
    for i in range(3):
        for j in range(3):
            expected[:, :, i, j] = up_c[:, :, 0, 0] @ down_c[:, :, i, j]
    torch.testing.assert_close(conv, w_conv + UNET_MULT * (8.0 / r) * expected)
    torch.testing.assert_close(te, w_te + TE_MULT * (up_t @ down_t))
    assert report.missing == [] and report.notes == []
    assert_unchanged(sd1, before)


def test_locon_cp_decomposition(tmp_path, sd1):
    _, w_conv, _ = originals(sd1)
    r = 3
    up, down, mid = rnd(32, r, 1, 1, seed=1), rnd(r, 32, 1, 1, seed=2), rnd(r, r, 3, 3, seed=3)
    (_, conv, _), _, _ = apply_file(tmp_path, sd1, {
        f"{CONV_KOHYA}.lora_up.weight": up, f"{CONV_KOHYA}.lora_down.weight": down,
        f"{CONV_KOHYA}.lora_mid.weight": mid, f"{CONV_KOHYA}.alpha": torch.tensor(3.0),
    })
    expected = torch.empty_like(w_conv)
    for i in range(3):
        for j in range(3):
            expected[:, :, i, j] = up[:, :, 0, 0] @ mid[:, :, i, j] @ down[:, :, 0, 0]
    torch.testing.assert_close(conv, w_conv + UNET_MULT * expected)


def test_loha(tmp_path, sd1):
    w_lin, w_conv, _ = originals(sd1)
    r = 2
    t = {n: rnd(*s, seed=i) for i, (n, s) in enumerate(
        [("l1a", (32, r)), ("l1b", (r, 32)), ("l2a", (32, r)), ("l2b", (r, 32)),
         ("c1a", (32, r)), ("c1b", (r, 32 * 9)), ("c2a", (32, r)), ("c2b", (r, 32 * 9))])}
    (lin, conv, _), _, report = apply_file(tmp_path, sd1, {
        f"{LINEAR_KOHYA}.hada_w1_a": t["l1a"], f"{LINEAR_KOHYA}.hada_w1_b": t["l1b"],
        f"{LINEAR_KOHYA}.hada_w2_a": t["l2a"], f"{LINEAR_KOHYA}.hada_w2_b": t["l2b"],
        f"{LINEAR_KOHYA}.alpha": torch.tensor(1.0),
        f"{CONV_KOHYA}.hada_w1_a": t["c1a"], f"{CONV_KOHYA}.hada_w1_b": t["c1b"],
        f"{CONV_KOHYA}.hada_w2_a": t["c2a"], f"{CONV_KOHYA}.hada_w2_b": t["c2b"],
    })
    hadamard = (t["l1a"] @ t["l1b"]) * (t["l2a"] @ t["l2b"])
    torch.testing.assert_close(lin, w_lin + UNET_MULT * 0.5 * hadamard)
    conv_delta = ((t["c1a"] @ t["c1b"]) * (t["c2a"] @ t["c2b"])).reshape(32, 32, 3, 3)
    torch.testing.assert_close(conv, w_conv + UNET_MULT * conv_delta)


def _kron_by_blocks(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rows = [torch.cat([a[i, j] * b for j in range(a.shape[1])], dim=1) for i in range(a.shape[0])]
    return torch.cat(rows, dim=0)


def test_lokr_factorised_and_full(tmp_path, sd1):
    w_lin, w_conv, _ = originals(sd1)
    r = 2
    w1, w2a, w2b = rnd(2, 2, seed=1, scale=1.0), rnd(16, r, seed=2), rnd(r, 16, seed=3)
    c1, c2 = rnd(4, 2, seed=4, scale=1.0), rnd(8, 16, 3, 3, seed=5)
    (lin, conv, _), _, _ = apply_file(tmp_path, sd1, {
        f"{LINEAR_KOHYA}.lokr_w1": w1, f"{LINEAR_KOHYA}.lokr_w2_a": w2a, f"{LINEAR_KOHYA}.lokr_w2_b": w2b,
        f"{LINEAR_KOHYA}.alpha": torch.tensor(1.0),
        f"{CONV_KOHYA}.lokr_w1": c1, f"{CONV_KOHYA}.lokr_w2": c2,
        f"{CONV_KOHYA}.alpha": torch.tensor(4.0),  # neither side factorised: no alpha scaling (A1111)
    })
    torch.testing.assert_close(lin, w_lin + UNET_MULT * 0.5 * _kron_by_blocks(w1, w2a @ w2b))
    expected = torch.empty_like(w_conv)
    for i in range(3):
        for j in range(3):
            expected[:, :, i, j] = _kron_by_blocks(c1, c2[:, :, i, j])
    torch.testing.assert_close(conv, w_conv + UNET_MULT * expected)


def test_full_diff_with_bias(tmp_path, sd1):
    w_lin, w_conv, _ = originals(sd1)
    conv_bias = dict(sd1.unet.named_modules())[CONV].bias.detach().clone()
    d_lin, d_conv, d_bias = rnd(32, 32, seed=1), rnd(32, 32, 3, 3, seed=2), rnd(32, seed=3)
    (lin, conv, _), (_, bias, _), _ = apply_file(tmp_path, sd1, {
        f"{LINEAR_KOHYA}.diff": d_lin, f"{CONV_KOHYA}.diff": d_conv, f"{CONV_KOHYA}.diff_b": d_bias,
    })
    torch.testing.assert_close(lin, w_lin + UNET_MULT * d_lin)
    torch.testing.assert_close(conv, w_conv + UNET_MULT * d_conv)
    torch.testing.assert_close(bias, conv_bias + UNET_MULT * d_bias)
    assert torch.equal(dict(sd1.unet.named_modules())[CONV].bias, conv_bias)


def test_dora_output_and_input_axis(tmp_path, sd1):
    w_lin, w_conv, _ = originals(sd1)
    r = 4
    up, down = rnd(32, r, seed=1), rnd(r, 32, seed=2)
    mag_out = rnd(32, 1, seed=3).abs() + 0.5  # [out, 1]: LyCORIS wd_on_out
    up_c, down_c = rnd(32, r, 1, 1, seed=4), rnd(r, 32, 3, 3, seed=5)
    mag_in = rnd(1, 32, 1, 1, seed=6).abs() + 0.5  # [1, in, 1, 1]: the older input-axis form
    (lin, conv, _), _, _ = apply_file(tmp_path, sd1, {
        f"{LINEAR_KOHYA}.lora_up.weight": up, f"{LINEAR_KOHYA}.lora_down.weight": down,
        f"{LINEAR_KOHYA}.alpha": torch.tensor(2.0), f"{LINEAR_KOHYA}.dora_scale": mag_out,
        f"{CONV_KOHYA}.lora_up.weight": up_c, f"{CONV_KOHYA}.lora_down.weight": down_c,
        f"{CONV_KOHYA}.dora_scale": mag_in,
    })
    merged = w_lin + (2.0 / r) * (up @ down)
    rows = torch.stack([merged[i] / merged[i].norm() * mag_out[i, 0] for i in range(32)])
    torch.testing.assert_close(lin, w_lin + UNET_MULT * (rows - w_lin), atol=1e-5, rtol=1e-5)
    merged_c = w_conv + (up_c.flatten(1) @ down_c.flatten(1)).reshape(32, 32, 3, 3)
    cols = torch.stack([merged_c[:, j] / merged_c[:, j].norm() * mag_in[0, j, 0, 0] for j in range(32)], dim=1)
    torch.testing.assert_close(conv, w_conv + UNET_MULT * (cols - w_conv), atol=1e-5, rtol=1e-5)


def test_peft_and_old_diffusers_keys(tmp_path, sd1):
    w_lin, w_conv, w_te = originals(sd1)
    a, b, ta, tb = rnd(4, 32, seed=1), rnd(32, 4, seed=2), rnd(4, 32, seed=3), rnd(32, 4, seed=4)
    (lin, _, te), _, _ = apply_file(tmp_path, sd1, {
        f"unet.{LINEAR}.lora_A.weight": a, f"unet.{LINEAR}.lora_B.weight": b,
        f"text_encoder.text_model.{TE}.lora_A.weight": ta, f"text_encoder.text_model.{TE}.lora_B.weight": tb,
    })
    torch.testing.assert_close(lin, w_lin + UNET_MULT * (b @ a))
    torch.testing.assert_close(te, w_te + TE_MULT * (tb @ ta))
    processor = LINEAR.replace(".to_k", ".processor.to_k_lora")
    (lin2, _, _), _, _ = apply_file(tmp_path, sd1, {
        f"unet.{processor}.down.weight": a, f"unet.{processor}.up.weight": b}, name="old")
    assert torch.equal(lin2, lin)


def test_ldm_and_diffusers_names_reach_the_same_layers(tmp_path, sd1):
    up, down, up_c, down_c = rnd(32, 2, seed=1), rnd(2, 32, seed=2), rnd(32, 2, 1, 1, seed=3), rnd(2, 32, 3, 3, seed=4)
    tensors = {}
    for lin, conv in ((LINEAR_KOHYA, CONV_KOHYA), (LINEAR_LDM, CONV_LDM)):
        tensors[lin] = {f"{lin}.lora_up.weight": up, f"{lin}.lora_down.weight": down,
                        f"{conv}.lora_up.weight": up_c, f"{conv}.lora_down.weight": down_c}
    (a_lin, a_conv, _), _, _ = apply_file(tmp_path, sd1, tensors[LINEAR_KOHYA], name="diffusersnames")
    (b_lin, b_conv, _), _, report = apply_file(tmp_path, sd1, tensors[LINEAR_LDM], name="ldmnames")
    assert torch.equal(a_lin, b_lin) and torch.equal(a_conv, b_conv)
    assert not torch.equal(a_lin, originals(sd1)[0])


def test_sdxl_index_covers_both_encoders_and_sgm_names(tiny_files):
    model = load(tiny_files, ModelFamily.SDXL)
    index = build_index(model)
    assert index["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"].component == "clip_l"
    assert index["lora_te2_text_model_encoder_layers_1_mlp_fc2"].component == "clip_g"
    assert index["text_encoder_2.text_model.encoder.layers.1.mlp.fc2"].component == "clip_g"
    # SGM names: the tiny SDXL UNet's second level (attention, 2 transformer blocks) is input_blocks.3/4 (lpb 1).
    target = index["lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k"]
    assert target.name == "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"
    assert index["lora_unet_output_blocks_0_1_proj_out"].name == "up_blocks.0.attentions.0.proj_out"


def test_split_key_forms():
    assert split_key("lora_unet_a_b.lora_down.weight") == ("lora_unet_a_b", "lora_down.weight")
    assert split_key("lora_te2_x.hada_w1_a") == ("lora_te2_x", "hada_w1_a")
    assert split_key("unet.a.b.lora_A.weight") == ("unet.a.b", "lora_down.weight")
    assert split_key("unet.a.lora_B.default.weight") == ("unet.a", "lora_up.weight")
    assert split_key("unet.a.attn1.processor.to_out_lora.up.weight") == ("unet.a.attn1.to_out.0", "lora_up.weight")
    assert split_key("unet.a.lora_magnitude_vector") == ("unet.a", "dora_scale")
    assert split_key("something_else") is None


def test_dyn_dim_uses_the_first_ranks():
    up, down = rnd(8, 4, seed=1), rnd(4, 6, seed=2)
    delta = compute_delta({"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(4.0)},
                          torch.Size((8, 6)), dyn_dim=2)
    torch.testing.assert_close(delta.weight, (4.0 / 2) * (up[:, :2] @ down[:2]))


# ----------------------------------------------------------------------------------- the scope and its cache


def _simple_lora(seed=0):
    return {f"{LINEAR_KOHYA}.lora_up.weight": rnd(32, 2, seed=seed), f"{LINEAR_KOHYA}.lora_down.weight": rnd(2, 32, seed=seed + 1),
            f"{TE_KOHYA}.lora_up.weight": rnd(32, 2, seed=seed + 2), f"{TE_KOHYA}.lora_down.weight": rnd(2, 32, seed=seed + 3)}


def test_stacked_networks_add_up_and_weights_are_restored(tmp_path, sd1):
    w_lin = originals(sd1)[0]
    a, b = _simple_lora(0), _simple_lora(10)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    before = snapshot(sd1)
    library = LoraLibrary(tmp_path)
    with library.applied(sd1, [LoraCall("a", 1.0, 0.3), LoraCall("b", 1.0, -0.8)]):
        lin = modules(sd1)[0].weight.detach().clone()
    da = a[f"{LINEAR_KOHYA}.lora_up.weight"] @ a[f"{LINEAR_KOHYA}.lora_down.weight"]
    db = b[f"{LINEAR_KOHYA}.lora_up.weight"] @ b[f"{LINEAR_KOHYA}.lora_down.weight"]
    torch.testing.assert_close(lin, w_lin + 0.3 * da - 0.8 * db)
    assert_unchanged(sd1, before)


def test_same_set_is_reused_not_recomputed_and_exceptions_restore(tmp_path, sd1):
    save_file(_simple_lora(), tmp_path / "a.safetensors")
    library = LoraLibrary(tmp_path)
    before = snapshot(sd1)
    with library.applied(sd1, [LoraCall("a", 1.0, 1.0)]) as first:
        inside = modules(sd1)[0].weight.detach().clone()
    assert not first.reused
    with pytest.raises(RuntimeError):
        with library.applied(sd1, [LoraCall("a", 1.0, 1.0)]) as second:
            assert second.reused
            assert torch.equal(modules(sd1)[0].weight, inside)
            raise RuntimeError("job failed")
    assert_unchanged(sd1, before)
    with library.applied(sd1, [LoraCall("a", 1.0, 0.5)]) as third:  # other multiplier: recomputed
        assert not third.reused
    assert_unchanged(sd1, before)


def test_weight_zero_and_unknown_names(tmp_path, sd1):
    save_file(_simple_lora(), tmp_path / "a.safetensors")
    library = LoraLibrary(tmp_path)
    before = snapshot(sd1)
    with library.applied(sd1, [LoraCall("a", 0.0, 0.0), LoraCall("nope", 1.0, 1.0)]) as report:
        assert_unchanged(sd1, before)
    assert report.missing == ["nope"]
    assert report.notes == ["Failed to find networks: nope"]
    assert report.lora_hashes == f"a: {library.shorthash(library.files()['a'])}"


def test_lora_hashes_addnet_and_sshs_metadata(tmp_path, sd1):
    tensors = _simple_lora()
    _, _, report = apply_file(tmp_path, sd1, tensors, name="style:one", metadata={"ss_output_name": "x"})
    raw = (tmp_path / "style:one.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    addnet = hashlib.sha256(raw[8 + header_len:]).hexdigest()
    assert report.lora_hashes == f"styleone: {addnet[:12]}"
    _, _, report = apply_file(tmp_path, sd1, tensors, name="withhash", metadata={"sshs_model_hash": "f" * 64})
    assert report.lora_hashes == f"withhash: {'f' * 12}"


def test_pickled_lora_via_restricted_loader_and_alias(tmp_path, sd1):
    torch.save(_simple_lora(), tmp_path / "pickled.pt")
    save_file(_simple_lora(3), tmp_path / "file-name.safetensors", metadata={"ss_output_name": "nicename"})
    library = LoraLibrary(tmp_path)
    with library.applied(sd1, [LoraCall("pickled"), LoraCall("nicename")]) as report:
        pass
    pt_hash = hashlib.sha256((tmp_path / "pickled.pt").read_bytes()).hexdigest()[:12]
    assert report.applied[0] == ("pickled", pt_hash) and report.applied[1][0] == "nicename"
    summary = library.describe(library.files()["file-name"])
    assert summary.kinds == ("lora",) and summary.layers == 2


def test_listing_shapes(tmp_path):
    save_file(_simple_lora(), tmp_path / "a.safetensors", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 4)
    library = LoraLibrary(tmp_path)
    (item,) = library.a1111_listing()
    assert item == {"name": "a", "alias": "a", "path": str(tmp_path / "a.safetensors"),
                    "metadata": {"ss_base_model_version": "sdxl_base_v1-0"}}
    assert library.describe(library.files()["a"]).family == "sdxl"
    json.dumps(item)


# --------------------------------------------------------------------------------- against diffusers' loader


def test_kohya_lora_matches_diffusers_load_lora_weights(tmp_path, tiny_files):
    """The UNet part through diffusers' kohya converter; the text-encoder part through diffusers' PEFT path.

    Why not kohya for the text encoder too: diffusers 0.42 converts kohya text-encoder keys to its old
    attention-processor names (`self_attn.to_q_lora.down.weight`), which transformers 5's `CLIPTextModel` no
    longer accepts (its load report lists them as UNEXPECTED and they are dropped). Also, its converter keeps
    per-layer alphas only for some layers (attn2 `to_k`/`to_out` alphas are ignored with a warning and fall back
    to the first alpha), so one alpha is used for every layer here; per-layer alphas are checked against the
    closed form above."""
    pytest.importorskip("peft", reason="diffusers' LoRA loading needs peft (a test dependency)")
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from sdwebui.models.tokenizer import load_clip_tokenizer

    tiny, _ = tiny_files[ModelFamily.SD1]
    model = load(tiny_files)
    r = 4
    kohya: dict[str, torch.Tensor] = {}
    layers = [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 32, 32),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 32, 32),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0", 32, 32),
        ("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj", 256, 32),
        ("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_2", 32, 128),
    ]
    for i, (key, out_features, in_features) in enumerate(layers):
        kohya[f"{key}.lora_up.weight"] = rnd(out_features, r, seed=2 * i, scale=0.5)
        kohya[f"{key}.lora_down.weight"] = rnd(r, in_features, seed=2 * i + 1, scale=0.5)
        kohya[f"{key}.alpha"] = torch.tensor(2.0)
    peft = {}
    for i, (name, out_features, in_features) in enumerate(
        [("encoder.layers.0.self_attn.q_proj", 32, 32), ("encoder.layers.1.mlp.fc1", 64, 32)]
    ):
        peft[f"text_encoder.{name}.lora_A.weight"] = rnd(r, in_features, seed=20 + i, scale=0.5)
        peft[f"text_encoder.{name}.lora_B.weight"] = rnd(out_features, r, seed=30 + i, scale=0.5)
    save_file(kohya, tmp_path / "kohya.safetensors")
    save_file(peft, tmp_path / "peft.safetensors")

    pipe = StableDiffusionPipeline(
        vae=tiny.vae, text_encoder=copy.deepcopy(tiny.text_encoders["clip_l"]), tokenizer=load_clip_tokenizer(),
        unet=copy.deepcopy(tiny.unet), scheduler=EulerDiscreteScheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.load_lora_weights(dict(kohya), adapter_name="kohya")
    pipe.load_lora_weights(dict(peft), adapter_name="peft")
    pipe.set_adapters(["kohya", "peft"], adapter_weights=[0.6, 0.6])

    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [49407] * 70])
    x = rnd(1, 4, 8, 8, seed=99, scale=1.0)
    t = torch.tensor([500.0])
    context = rnd(1, 77, 32, seed=98, scale=1.0)
    library = LoraLibrary(tmp_path)
    with torch.no_grad():
        theirs_te = pipe.text_encoder(input_ids=ids).last_hidden_state
        theirs_unet = pipe.unet(x, t, encoder_hidden_states=context).sample
        with library.applied(model, [LoraCall("kohya", 0.6, 0.6), LoraCall("peft", 0.6, 0.6)]):
            ours_te = model.text_encoder.towers[0].module(input_ids=ids).last_hidden_state
            ours_unet = model.unet(x, t, encoder_hidden_states=context).sample
        plain_te = model.text_encoder.towers[0].module(input_ids=ids).last_hidden_state
        plain_unet = model.unet(x, t, encoder_hidden_states=context).sample
    # The networks change something measurable, and we change it as diffusers does.
    assert (ours_unet - plain_unet).abs().max() > 1e-3 and (ours_te - plain_te).abs().max() > 1e-3
    torch.testing.assert_close(ours_te, theirs_te, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours_unet, theirs_unet, atol=2e-5, rtol=1e-4)


def test_cli_lists_loras(tmp_path, capsys):
    from sdwebui.cli import main

    folder = tmp_path / "loras"
    folder.mkdir()
    save_file(_simple_lora(), folder / "mystyle.safetensors", metadata={"ss_output_name": "nice"})
    assert main(["loras", "--lora-dir", str(folder), "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    short = LoraLibrary(folder).shorthash(LoraLibrary(folder).files()["mystyle"])
    assert out.startswith(f"mystyle [{short}] (alias nice)\tlora\t")
    assert "2 layers" in out
    assert main(["loras", "--lora-dir", str(tmp_path / "none"), "--data-dir", str(tmp_path)]) == 0
    assert "no LoRA files" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- end to end


def _txt2img(model, prompt, library=None, **kwargs):
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.networks import LoraNetworks
    from sdwebui.pipelines.params import Txt2ImgParams
    from sdwebui.pipelines.txt2img import txt2img

    hook = LoraNetworks(library) if library is not None else None
    ctx = GenerationContext(model=model, extra_networks=hook)
    values = dict(prompt=prompt, negative_prompt="blurry", width=64, height=64, steps=3, seed=77, sampler="Euler",
                  rng="cpu")
    values.update(kwargs)
    return txt2img(ctx, Txt2ImgParams(**values))


def test_txt2img_with_lora_weight_zero_reuse_restore_unknown(tmp_path, tiny_files):
    model = load(tiny_files)
    tensors = {**_simple_lora(), f"{CONV_KOHYA}.lora_up.weight": rnd(32, 2, 1, 1, seed=40),
               f"{CONV_KOHYA}.lora_down.weight": rnd(2, 32, 3, 3, seed=41)}
    save_file(tensors, tmp_path / "style.safetensors")
    library = LoraLibrary(tmp_path)
    before = snapshot(model)

    base = _txt2img(model, "a red cube", library)
    zero = _txt2img(model, "a red cube <lora:style:0>", library)
    assert torch.equal(base.latents, zero.latents)  # weight 0 is no LoRA, bit for bit
    one = _txt2img(model, "a red cube <lora:style:1>", library)
    assert (one.latents - base.latents).abs().max() > 1e-4
    assert_unchanged(model, before)  # restored after the job
    again = _txt2img(model, "a red cube <lora:style:1>", library)
    assert torch.equal(again.latents, one.latents)
    te_only = _txt2img(model, "a red cube <lora:style:1:0>", library)
    assert not torch.equal(te_only.latents, one.latents) and not torch.equal(te_only.latents, base.latents)

    short = library.shorthash(library.files()["style"])
    assert f'Lora hashes: "style: {short}"' in one.infotexts[0]
    assert "<lora:style:1>" in one.infotexts[0]  # the prompt is written as typed
    assert f'Lora hashes: "style: {short}"' in zero.infotexts[0]  # listed at weight 0 too, as A1111
    assert "Lora hashes" not in base.infotexts[0]

    missing = _txt2img(model, "a red cube <lora:nope:1>", library)
    assert torch.equal(missing.latents, base.latents)
    assert "Failed to find networks: nope" in missing.notes
    assert_unchanged(model, before)


def test_a1111_api_lists_networks_and_applies_them(tmp_path, tiny_sd1_path):
    from test_api_support import FAST, LiveServer, make_data_dir

    data = make_data_dir(tmp_path / "data", tiny_sd1_path, "tiny-sd1.safetensors")
    (data / "models" / "Lora").mkdir(parents=True)
    save_file(_simple_lora(), data / "models" / "Lora" / "apistyle.safetensors", metadata={"ss_output_name": "api"})
    (data / "embeddings").mkdir()
    torch.save({"string_to_param": {"*": rnd(2, 32, seed=3)}, "step": 5}, data / "embeddings" / "apiemb.pt")
    torch.save({"string_to_param": {"*": rnd(2, 768, seed=3)}}, data / "embeddings" / "wide.pt")
    with LiveServer(data) as live, live.client() as client:
        (item,) = client.get("/sdapi/v1/loras").json()
        assert item["name"] == "apistyle" and item["alias"] == "api" and item["metadata"]["ss_output_name"] == "api"
        response = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cube <lora:apistyle:0.8> apiemb"})
        assert response.status_code == 200, response.text
        extra = json.loads(response.json()["info"])["extra_generation_params"]
        library = LoraLibrary(data / "models" / "Lora")
        assert extra["Lora hashes"] == f"apistyle: {library.shorthash(library.files()['apistyle'])}"
        assert extra["TI hashes"].startswith("apiemb: ")
        listing = client.get("/sdapi/v1/embeddings").json()  # a model is loaded now: widths are checked
        assert listing["loaded"] == {"apiemb": {"step": 5, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                                "shape": 32, "vectors": 2}}
        assert list(listing["skipped"]) == ["wide"]
        assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200


def test_cli_txt2img_applies_lora_from_lora_dir(tmp_path, tiny_sd1_path, capsys):
    from PIL import Image

    from sdwebui.cli import main

    folder = tmp_path / "my-loras"
    folder.mkdir()
    save_file(_simple_lora(), folder / "clistyle.safetensors")
    args = ["--model", str(tiny_sd1_path), "--lora-dir", str(folder), "--data-dir", str(tmp_path),
            "--out", str(tmp_path / "out"), "--steps", "2", "--width", "64", "--height", "64", "--seed", "5"]
    assert main(["txt2img", "a cube <lora:clistyle:0.5> <lora:absent:1>", *args]) == 0
    captured = capsys.readouterr()
    infotext = Image.open(captured.out.strip()).info["parameters"]
    short = LoraLibrary(folder).shorthash(LoraLibrary(folder).files()["clistyle"])
    assert f'Lora hashes: "clistyle: {short}"' in infotext
    assert "note: Failed to find networks: absent" in captured.err


def test_sdxl_lora_reaches_both_text_encoders_and_the_unet(tmp_path, tiny_files):
    model = load(tiny_files, ModelFamily.SDXL)
    keys = {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": ("clip_l", "encoder.layers.0.self_attn.q_proj"),
        "lora_te2_text_model_encoder_layers_1_mlp_fc2": ("clip_g", "text_model.encoder.layers.1.mlp.fc2"),
        "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k": (
            "unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"),
    }
    towers = {t.name: t.module for t in model.text_encoder.towers}
    layers = {k: dict((towers | {"unet": model.unet})[c].named_modules())[n] for k, (c, n) in keys.items()}
    tensors, expected = {}, {}
    for i, (key, layer) in enumerate(layers.items()):
        out_features, in_features = layer.weight.shape
        up, down = rnd(out_features, 2, seed=i), rnd(2, in_features, seed=10 + i)
        tensors |= {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down, f"{key}.alpha": torch.tensor(1.0)}
        multiplier = UNET_MULT if key.startswith("lora_unet") else TE_MULT
        expected[key] = layer.weight.detach() + multiplier * 0.5 * (up @ down)
    save_file(tensors, tmp_path / "xl.safetensors")
    before = snapshot(model)
    with LoraLibrary(tmp_path).applied(model, [LoraCall("xl", TE_MULT, UNET_MULT)]):
        for key, layer in layers.items():
            torch.testing.assert_close(layer.weight, expected[key])
    assert_unchanged(model, before)


def test_unreadable_file_is_noted_and_left_out_of_the_hashes(tmp_path, sd1):
    save_file(_simple_lora(), tmp_path / "good.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"definitely not a pickle")
    library = LoraLibrary(tmp_path)
    before = snapshot(sd1)
    for reused in (False, True):
        with library.applied(sd1, [LoraCall("good"), LoraCall("bad")]) as report:
            assert not torch.equal(modules(sd1)[0].weight, before[f"{LINEAR}.weight"])
        assert report.reused is reused
        assert [name for name, _ in report.applied] == ["good"]
        assert len(report.notes) == 1 and report.notes[0].startswith("Lora bad not loaded: ")
    assert_unchanged(sd1, before)
