"""Hypernetworks in A1111's `.pt` layout: the file written here by hand (key names and module positions as A1111's
`HypernetworkModule` makes them), read through the restricted unpickler, applied to the UNet's attention inputs
in a scope, `<hypernet:name:m>` in prompts, multiplier 0 bit-exactly none, a malicious pickle refused, and the
`sd_hypernetwork` setting's infotext over the A1111 API."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import pytest
import torch

from sdwebui.models.files import ModelFileError
from sdwebui.models.hypernetwork import (
    Hypernetwork,
    HypernetworkLibrary,
    attention_layers,
    load_hypernetwork,
)
from sdwebui.models.loader import load_checkpoint

WIDTHS = (32, 64)  # the tiny SD 1 model: text width 32; attention widths 32 and 64


def rnd(*shape, seed=0, scale=0.2):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def deep_state(dim: int, seed: int) -> OrderedDict:
    """A [1, 2, 2, 1] module with relu, layer norm and dropout ([0, 0.3, 0, 0]), as A1111 lays it out:
    Linear 0, ReLU 1, LayerNorm 2, Dropout 3, Linear 4, ReLU 5, LayerNorm 6, Linear 7, LayerNorm 8 (no activation
    after the last Linear: activate_output False)."""
    h = 2 * dim
    return OrderedDict([
        ("linear.0.weight", rnd(h, dim, seed=seed)), ("linear.0.bias", rnd(h, seed=seed + 1)),
        ("linear.2.weight", 1 + rnd(h, seed=seed + 2)), ("linear.2.bias", rnd(h, seed=seed + 3)),
        ("linear.4.weight", rnd(h, h, seed=seed + 4)), ("linear.4.bias", rnd(h, seed=seed + 5)),
        ("linear.6.weight", 1 + rnd(h, seed=seed + 6)), ("linear.6.bias", rnd(h, seed=seed + 7)),
        ("linear.7.weight", rnd(dim, h, seed=seed + 8)), ("linear.7.bias", rnd(dim, seed=seed + 9)),
        ("linear.8.weight", 1 + rnd(dim, seed=seed + 10)), ("linear.8.bias", rnd(dim, seed=seed + 11)),
    ])


def write_deep(path, widths=WIDTHS):
    data = {dim: (deep_state(dim, 10 * dim), deep_state(dim, 10 * dim + 500)) for dim in widths}
    data.update({"step": 1234, "name": "deepnet", "layer_structure": [1, 2, 2, 1], "activation_func": "relu",
                 "is_layer_norm": True, "weight_initialization": "Normal", "sd_checkpoint": "abcdef12",
                 "sd_checkpoint_name": "base", "activate_output": False, "use_dropout": True,
                 "last_layer_dropout": False, "optional_info": None})
    torch.save(data, path)
    return data


def closed_form(state: OrderedDict, x: torch.Tensor, multiplier: float) -> torch.Tensor:
    """The deep module by hand: x + m * LN(L7(LN(relu(L4(LN(relu(L0 x))))))) (dropout is off in eval)."""
    def lin(i, v):
        return v @ state[f"linear.{i}.weight"].T + state[f"linear.{i}.bias"]

    def norm(i, v):
        return torch.nn.functional.layer_norm(v, v.shape[-1:], state[f"linear.{i}.weight"], state[f"linear.{i}.bias"])

    y = norm(2, torch.relu(lin(0, x)))
    y = norm(6, torch.relu(lin(4, y)))
    y = norm(8, lin(7, y))
    return x + y * multiplier


def write_negating(path, widths=WIDTHS):
    """[1, 1], linear: linear(x) = -x, so at multiplier 1 every attention layer's k and v inputs become 0."""
    data = {dim: tuple(OrderedDict([("linear.0.weight", -torch.eye(dim)), ("linear.0.bias", torch.zeros(dim))])
                       for _ in range(2)) for dim in widths}
    data.update({"step": 0, "name": "negate", "layer_structure": [1, 1], "activation_func": "linear",
                 "is_layer_norm": False, "use_dropout": False, "activate_output": False})
    torch.save(data, path)


@pytest.fixture(scope="module")
def model(tiny_sd1_path):
    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


def test_a1111_file_loads_with_its_structure_and_computes_the_closed_form(tmp_path):
    data = write_deep(tmp_path / "deepnet.pt")
    net = load_hypernetwork(tmp_path / "deepnet.pt")
    assert (net.name, net.step, net.sd_checkpoint, net.sd_checkpoint_name) == ("deepnet", 1234, "abcdef12", "base")
    assert net.dropout_structure == [0, 0.3, 0, 0] and net.add_layer_norm and net.activation_func == "relu"
    assert sorted(net.layers) == list(WIDTHS)
    kinds = [type(m).__name__ for m in net.layers[32][0].linear]
    assert kinds == ["Linear", "ReLU", "LayerNorm", "Dropout", "Linear", "ReLU", "LayerNorm", "Linear", "LayerNorm"]
    x = rnd(2, 5, 32, seed=99, scale=1.0)
    net.set_multiplier(0.7)
    for index in (0, 1):
        got = net.layers[32][index](x)
        torch.testing.assert_close(got, closed_form(data[32][index], x, 0.7), rtol=1e-5, atol=1e-6)
    # Written back in the same layout: A1111's keys and settings survive a round trip.
    net.save(tmp_path / "again.pt")
    again = load_hypernetwork(tmp_path / "again.pt")
    assert again.state().keys() == net.state().keys()
    assert again.state()["dropout_structure"] == [0, 0.3, 0, 0] and again.state()["last_layer_dropout"] is False
    again.set_multiplier(0.7)
    torch.testing.assert_close(again.layers[64][1](rnd(3, 64, seed=5)), net.layers[64][1](rnd(3, 64, seed=5)))


def test_old_files_keys_and_a_created_network(tmp_path):
    # The first hypernetworks (NovelAI's) used linear1 / linear2 and no settings: [1, 2, 1], no activation.
    old = {32: tuple(OrderedDict([("linear1.weight", rnd(64, 32, seed=s)), ("linear1.bias", rnd(64, seed=s + 1)),
                                  ("linear2.weight", rnd(32, 64, seed=s + 2)), ("linear2.bias", rnd(32, seed=s + 3))])
                     for s in (1, 9))}
    torch.save(old, tmp_path / "old.pt")
    net = load_hypernetwork(tmp_path / "old.pt")
    x = rnd(4, 32, seed=3, scale=1.0)
    state = old[32][0]
    expected = x + (x @ state["linear1.weight"].T + state["linear1.bias"]) @ state["linear2.weight"].T + state["linear2.bias"]
    torch.testing.assert_close(net.layers[32][0](x), expected, rtol=1e-5, atol=1e-6)
    assert net.name == "old"

    created = Hypernetwork.create("made", [32, 64], layer_structure=[1, 1.5, 1], activation_func="swish",
                                  add_layer_norm=True, use_dropout=True, last_layer_dropout=True)
    assert created.dropout_structure == [0, 0.3, 0]
    created.save(tmp_path / "made.pt")
    loaded = load_hypernetwork(tmp_path / "made.pt")
    assert [type(m).__name__ for m in loaded.layers[64][0].linear] == [
        "Linear", "Hardswish", "LayerNorm", "Dropout", "Linear", "LayerNorm"]


def write_evil(path, marker):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({32: Evil(), "name": "evil"}, path)


def test_malicious_pickle_is_refused(tmp_path):
    write_evil(tmp_path / "evil.pt", tmp_path / "pwned")
    with pytest.raises(ModelFileError, match="refused to load"):
        load_hypernetwork(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def _txt2img(model, prompt, hypernetworks=None, setting=None):
    from sdwebui.models.lora import LoraLibrary
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.networks import LoraNetworks
    from sdwebui.pipelines.params import Txt2ImgParams
    from sdwebui.pipelines.txt2img import txt2img

    hook = LoraNetworks(LoraLibrary([]), hypernetworks, setting)
    ctx = GenerationContext(model=model, extra_networks=hook)
    params = Txt2ImgParams(prompt=prompt, negative_prompt="blurry", width=64, height=64, steps=2, seed=77,
                           sampler="Euler", rng="cpu")
    return txt2img(ctx, params)


def test_prompt_tag_changes_the_image_zero_is_identical_and_hooks_are_removed(tmp_path, model):
    import copy

    from sdwebui.models.hypernetwork import HypernetCall

    write_deep(tmp_path / "deepnet.pt")
    write_negating(tmp_path / "negate.pt")
    write_evil(tmp_path / "evil.pt", tmp_path / "pwned")
    library = HypernetworkLibrary(tmp_path)
    base = _txt2img(model, "a red cube")
    # Multiplier 0 is bit for bit no hypernetwork; an unknown name and a refused pickle are noted, and skipped.
    zero = _txt2img(model, "a red cube <hypernet:deepnet:0><hypernet:nothing:1><hypernet:evil:1>", library)
    assert torch.equal(zero.latents, base.latents)
    assert "Failed to find hypernetworks: nothing" in zero.notes
    assert any("Hypernetwork evil not loaded" in note and "refused" in note for note in zero.notes)
    assert not (tmp_path / "pwned").exists()
    one = _txt2img(model, "a red cube <hypernet:deepnet:1>", library)
    assert (one.latents - base.latents).abs().max() > 1e-4
    assert "<hypernet:deepnet:1>" in one.infotexts[0] and "Hypernet:" not in one.infotexts[0]
    assert all(not layer.to_k._forward_pre_hooks and not layer.to_v._forward_pre_hooks
               for layer in attention_layers(model.unet))  # the scope removed its hooks

    # Where it acts: k and v inputs of every attention layer (self and cross). A network that maps them to 0 is
    # the same as a model whose to_k and to_v weights are all 0.
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for layer in attention_layers(zeroed.unet):
            layer.to_k.weight.zero_()
            layer.to_v.weight.zero_()
    negated = _txt2img(model, "a red cube <hypernet:negate:1>", library)
    torch.testing.assert_close(negated.latents, _txt2img(zeroed, "a red cube").latents, rtol=0, atol=1e-6)

    # The setting's network: added unless a tag names it; written as A1111 wrote `sd_hypernetwork`.
    setting = HypernetCall("deepnet", 0.5, from_setting=True)
    by_setting = _txt2img(model, "a red cube", library, setting)
    assert not torch.equal(by_setting.latents, one.latents) and not torch.equal(by_setting.latents, base.latents)
    legacy = library.legacy_hash(tmp_path / "deepnet.pt")
    assert f"Hypernet: deepnet, Hypernet hash: {legacy}, Hypernet strength: 0.5" in by_setting.infotexts[0]
    tagged = _txt2img(model, "a red cube <hypernet:deepnet:1>", library, setting)
    assert torch.equal(tagged.latents, one.latents) and "Hypernet:" not in tagged.infotexts[0]


def test_a1111_api_lists_hypernetworks_and_the_setting_writes_the_infotext(tmp_path, tiny_sd1_path):
    from test_api_support import FAST, LiveServer, make_data_dir
    from test_textual_inversion import write_dataset

    from sdwebui.pipelines.infotext import parse_infotext

    data = make_data_dir(tmp_path / "data", tiny_sd1_path, "tiny-sd1.safetensors")
    folder = data / "models" / "hypernetworks"
    folder.mkdir(parents=True)
    write_deep(folder / "deepnet.pt")
    with LiveServer(data) as live, live.client() as client:
        assert client.get("/sdapi/v1/hypernetworks").json() == [{"name": "deepnet", "path": str(folder / "deepnet.pt")}]
        plain = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cube", "seed": 3})
        assert client.post("/sdapi/v1/options", json={"sd_hypernetwork": "deepnet",
                                                      "sd_hypernetwork_strength": 0.25}).status_code == 200
        response = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cube", "seed": 3})
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["extra_generation_params"]["Hypernet"] == "deepnet"
        assert str(info["extra_generation_params"]["Hypernet strength"]) == "0.25"
        assert response.json()["images"] != plain.json()["images"]
        parsed = parse_infotext(info["infotexts"][0])
        assert parsed["Prompt"] == "a cube<hypernet:deepnet:0.25>"  # pasted back as A1111 does

        # Create and train one, through A1111's routes.
        body = {"name": "apinet", "enable_sizes": [32, 64], "layer_structure": "1, 1.5, 1",
                "activation_func": "leakyrelu", "add_layer_norm": True}
        created = client.post("/sdapi/v1/create/hypernetwork", json=body)
        assert created.json() == {"info": f"create hypernetwork filename: {folder / 'apinet.pt'}"}
        assert client.post("/sdapi/v1/create/hypernetwork", json=body).status_code == 422  # exists
        bad = client.post("/sdapi/v1/create/hypernetwork", json={**body, "name": "x", "layer_structure": "2, 1"})
        assert bad.status_code == 422 and "layer_structure" in bad.text
        write_dataset(data / "images")
        train = {"hypernetwork_name": "apinet", "data_root": "images", "training_width": 64, "training_height": 64,
                 "steps": 2, "save_hypernetwork_every": 0, "create_image_every": 0,
                 "template_filename": "hypernetwork.txt"}
        assert client.post("/sdapi/v1/train/hypernetwork", json={**train, "hypernetwork_name": "nope"}).status_code == 422
        trained = client.post("/sdapi/v1/train/hypernetwork", json=train)
        assert trained.status_code == 200, trained.text
        assert trained.json()["info"] == f"train hypernetwork complete: filename: {folder / 'apinet.pt'} error: None"
        assert load_hypernetwork(folder / "apinet.pt").step == 2


def test_train_hypernetwork_saves_a1111_files_and_resumes(tmp_path, model):
    from test_textual_inversion import options, write_dataset

    from sdwebui.pipelines.hypernetwork_training import train_hypernetwork

    created = Hypernetwork.create("trained", list(WIDTHS), layer_structure=[1, 2, 1], activation_func="relu",
                                  use_dropout=True, last_layer_dropout=True)
    path = created.save(tmp_path / "trained.pt")
    before = load_hypernetwork(path).layers[32][0].linear[0].weight.clone()
    data_root = write_dataset(tmp_path / "data")
    previews = []
    result = train_hypernetwork(
        model, options(tmp_path, path, data_root, steps=2, learn_rate="0.001", create_image_every=2,
                       save_embedding_every=1), preview=lambda net, prompt, step: previews.append((prompt, step)))
    assert result.step == 2 and len(result.losses) == 2
    trained = load_hypernetwork(path)
    assert trained.step == 2 and trained.name == "trained" and trained.sd_checkpoint == model.info.short_hash
    assert not torch.equal(trained.layers[32][0].linear[0].weight, before)
    assert trained.dropout_structure == [0, 0.3, 0]
    copies = sorted(p.name for p in (result.log_dir / "hypernetworks").iterdir())
    assert copies == ["trained-1.pt", "trained-2.pt"] and load_hypernetwork(result.log_dir / "hypernetworks" /
                                                                           "trained-1.pt").name == "trained-1"
    assert [step for _, step in previews] == [2] and (result.log_dir / "hypernetwork_loss.csv").is_file()
    assert train_hypernetwork(model, options(tmp_path, path, data_root, steps=3, learn_rate="0.001",
                                             save_embedding_every=0)).step == 3  # resumed from step 2
    assert all(not layer.to_k._forward_pre_hooks for layer in attention_layers(model.unet))
