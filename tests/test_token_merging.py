"""Token merging (A1111's `token_merging_ratio` settings; ToMe SD in `models.token_merging`): the matching itself,
then txt2img on the tiny SD1 model (whose first UNet level has cross-attention blocks at full latent resolution):
ratio 0 is the unpatched model bit for bit, a ratio changes the image and keeps it finite, the hooks leave with
the scope, the infotext says it as A1111 writes it and pastes back as the settings, and the settings reach a job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdwebui.models.loader import load_checkpoint
from sdwebui.models.token_merging import bipartite_soft_matching_2d, token_merging, transformer_blocks
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.params import Txt2ImgParams, infotext_settings, settings_defaults
from sdwebui.pipelines.txt2img import txt2img


def test_merge_averages_similar_tokens_and_unmerge_puts_every_token_back():
    torch.manual_seed(0)
    h = w = 4
    x = torch.randn(2, h * w, 8)
    # Make the token right of each cell's top-left (destination) token a copy of it: those are the best matches.
    grid = x.view(2, h, w, 8)
    grid[:, 0::2, 1::2] = grid[:, 0::2, 0::2]
    merge, unmerge = bipartite_soft_matching_2d(x, w, h, 2, 2, r=4)
    merged = merge(x)
    assert merged.shape == (2, h * w - 4, 8)
    # The 4 merged sources were exact copies of their destinations: the round trip is lossless.
    assert torch.equal(unmerge(merged), x)
    # r = 0 is the identity.
    merge0, unmerge0 = bipartite_soft_matching_2d(x, w, h, 2, 2, r=0)
    assert merge0(x) is x and unmerge0(x) is x


@pytest.fixture(scope="module")
def model(tiny_sd1_path):
    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


def run(model, **values):
    params = Txt2ImgParams(**{"prompt": "a red square", "negative_prompt": "blurry", "width": 64, "height": 64,
                              "steps": 2, "seed": 11, "sampler": "Euler", "rng": "cpu", **values})
    return txt2img(GenerationContext(model=model), params)


def pixels(result) -> torch.Tensor:
    return torch.from_numpy(np.asarray(result.images[0]).copy())


def hook_count(unet) -> int:
    modules = [unet, *transformer_blocks(unet), *(block.attn1 for block in transformer_blocks(unet))]
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in modules)


def test_ratio_zero_is_the_model_unchanged_and_a_ratio_changes_the_image(model):
    assert transformer_blocks(model.unet), "the tiny UNet has transformer blocks"
    hooks_before = hook_count(model.unet)
    plain = run(model)
    zero = run(model, token_merging_ratio=0.0)
    assert torch.equal(pixels(plain), pixels(zero))
    assert "Token merging" not in plain.infotexts[0]

    merged = run(model, token_merging_ratio=0.5)
    a = pixels(plain).float()
    b = pixels(merged).float()
    assert not torch.equal(a, b)
    assert torch.isfinite(b).all()
    assert "ENSD" not in merged.infotexts[0]
    assert ", Token merging ratio: 0.5," in merged.infotexts[0]
    # The hooks left with the scope: the next plain run is the first one, bit for bit.
    assert hook_count(model.unet) == hooks_before
    again = run(model)
    assert torch.equal(pixels(again), a.to(torch.uint8))


def test_the_scope_merges_only_full_resolution_self_attention(model):
    latents = torch.randn(2, 4, 8, 8)
    t = torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, model.unet.config.cross_attention_dim)
    seen = []

    def observe(_module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).shape[1])

    with torch.no_grad(), token_merging(model.unet, 0.5) as state:
        # Registered after the scope's own hooks, so they see what the attention is given.
        handles = [block.attn1.register_forward_pre_hook(observe, with_kwargs=True)
                   for block in transformer_blocks(model.unet)]
        try:
            out = model.unet(latents, t, encoder_hidden_states=context).sample
        finally:
            for handle in handles:
                handle.remove()
    assert out.shape == latents.shape and torch.isfinite(out).all()
    assert state.merged_calls > 0
    # Full resolution (8x8 latent) is 64 tokens: its self-attentions saw 64 - 32; the 4x4 level is left alone.
    assert sorted(set(seen)) == [16, 32] and 64 not in seen


def test_hires_ratio_in_the_infotext_as_a1111_writes_it(model):
    both = run(model, token_merging_ratio=0.5, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1,
               denoising_strength=0.5)
    assert ", Token merging ratio: 0.5, Token merging ratio hr: 0.5," in both.infotexts[0]
    hr_only = run(model, token_merging_ratio_hr=0.3, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1,
                  denoising_strength=0.5)
    text = hr_only.infotexts[0]
    assert "Token merging ratio: " not in text and ", Token merging ratio hr: 0.3," in text
    # Pasted back: the settings A1111 sets from them.
    parsed = parse_infotext(both.infotexts[0])
    mapping = infotext_settings(Txt2ImgParams, Img2ImgParams)
    assert mapping["Token merging ratio"] == ("token_merging_ratio", float)
    assert mapping["Token merging ratio hr"] == ("token_merging_ratio_hr", float)
    assert float(parsed["Token merging ratio"]) == 0.5 and float(parsed["Token merging ratio hr"]) == 0.5


def test_the_settings_supply_the_ratio_as_a1111_reads_them():
    settings = {"token_merging_ratio": 0.3, "token_merging_ratio_img2img": 0.0, "token_merging_ratio_hr": 0.0}
    assert settings_defaults(Txt2ImgParams, {}, settings, {})["token_merging_ratio"] == 0.3
    assert "token_merging_ratio_hr" not in settings_defaults(Txt2ImgParams, {}, settings, {})
    assert settings_defaults(Img2ImgParams, {}, settings, {})["token_merging_ratio"] == 0.3
    settings["token_merging_ratio_img2img"] = 0.6  # "only applies if non-zero and overrides above"
    assert settings_defaults(Img2ImgParams, {}, settings, {})["token_merging_ratio"] == 0.6
    assert settings_defaults(Txt2ImgParams, {}, settings, {})["token_merging_ratio"] == 0.3
    # A job's own value wins; a ratio above A1111's 0.9 is refused naming the field.
    assert "token_merging_ratio" not in settings_defaults(Txt2ImgParams, {"token_merging_ratio": 0.1}, settings, {})
    with pytest.raises(Exception, match="token_merging_ratio"):
        Txt2ImgParams(token_merging_ratio=0.95)
    assert Txt2ImgParams(token_merging_ratio_hr=0.0, token_merging_ratio=0.4).hires_token_merging_ratio == 0.4


def test_the_setting_reaches_an_api_job_and_a_bad_value_is_refused(tmp_path, tiny_sd1_path):
    from test_api_support import LiveServer, make_data_dir

    data = make_data_dir(tmp_path, tiny_sd1_path, "tiny-sd1.safetensors")
    body = {"prompt": "a red square", "width": 64, "height": 64, "steps": 2, "seed": 3, "sampler_name": "Euler"}
    with LiveServer(data, ui=False) as live, live.client() as client:
        done = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"token_merging_ratio": 0.5}})
        refused = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"token_merging_ratio": 2}})
        # img2img: the setting token_merging_ratio_img2img, unless the request overrides token_merging_ratio
        assert client.post("/sdapi/v1/options", json={"token_merging_ratio_img2img": 0.6}).status_code == 200
        image = done.json()["images"][0]
        from_setting = client.post("/sdapi/v1/img2img", json={**body, "init_images": [image]})
        overridden = client.post("/sdapi/v1/img2img", json={**body, "init_images": [image],
                                                             "override_settings": {"token_merging_ratio": 0.5}})
    assert "Token merging ratio: 0.6" in from_setting.json()["info"]
    assert "Token merging ratio: 0.5" in overridden.json()["info"]
    assert done.status_code == 200, done.text
    assert "Token merging ratio: 0.5" in done.json()["info"]
    assert refused.status_code == 422 and "token_merging_ratio" in refused.text


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_bit_for_bit_the_tomesd_package_a1111_uses(model, ratio):
    """A1111's call (`sd_models.apply_token_merging`): tomesd 0.1.3's `apply_patch(ratio, use_rand=False,
    merge_attn=True, merge_crossattn=False, merge_mlp=False)`. Same UNet output, bit for bit, at 8x8 and 9x7
    latents (a size that does not divide into 2x2 cells)."""
    tomesd = pytest.importorskip("tomesd", reason="tomesd (the test extra) is the reference")
    torch.manual_seed(1)
    for h, w in ((8, 8), (9, 7)):
        latents = torch.randn(2, 4, h, w)
        t = torch.tensor([700.0, 700.0])
        context = torch.randn(2, 77, model.unet.config.cross_attention_dim)
        with torch.no_grad():
            with token_merging(model.unet, ratio):
                ours = model.unet(latents, t, encoder_hidden_states=context).sample
            tomesd.apply_patch(model.unet, ratio=ratio, use_rand=False, merge_attn=True, merge_crossattn=False,
                               merge_mlp=False)
            try:
                reference = model.unet(latents, t, encoder_hidden_states=context).sample
            finally:
                tomesd.remove_patch(model.unet)
            plain = model.unet(latents, t, encoder_hidden_states=context).sample
        assert torch.equal(ours, reference), (h, w)
        assert not torch.equal(ours, plain)
