"""LoRA training (issue 21, item 3) on the tiny SD 1 model: the saved file is kohya's (`lora_unet_*.lora_down` /
`lora_up` / `alpha`, `ss_*` metadata), our LoRA loader applies it at once (`<lora:name:1>` changes the image,
`:0` is bit-identical), the model is restored after training, interrupt saves, resume continues from `ss_steps`,
the loss goes down on a trivial dataset, aspect-ratio buckets, and the native API's `train_lora` job with its 422s."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from sdwebui.models.loader import load_checkpoint
from sdwebui.models.lora import LoraLibrary
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.lora_training import LoraTrainOptions, train_lora
from sdwebui.pipelines.networks import LoraNetworks
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.training_data import bucket_size, dataset_images, read_dataset
from sdwebui.pipelines.txt2img import txt2img


@pytest.fixture(scope="module")
def model(tiny_sd1_path):
    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


def write_dataset(folder: Path, n: int = 3, size=(64, 64)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", size, (20, 20, 200))
        image.paste((220, 30, 30), (16, 16, 48 + i, 48))
        image.save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text("zork, red square" if i else "zork", encoding="utf-8")
    return folder


def draw(model, folder: Path, prompt: str) -> np.ndarray:
    ctx = GenerationContext(model=model, extra_networks=LoraNetworks(LoraLibrary(folder)))
    params = Txt2ImgParams(prompt=prompt, width=64, height=64, steps=3, seed=5, sampler="Euler", rng="cpu")
    return np.asarray(txt2img(ctx, params).images[0])


def test_train_save_kohya_apply_resume_interrupt(tmp_path, model):
    weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    modules = {name: type(m) for name, m in model.unet.named_modules()}
    data = write_dataset(tmp_path / "zork-data")
    out = tmp_path / "Lora" / "zork.safetensors"
    options = LoraTrainOptions(name="zork", output_path=out, data_root=data, rank=4, alpha=2, learn_rate="1e-2",
                               steps=3, batch_size=1, resolution=64, seed=1, log_directory=tmp_path / "log",
                               save_every=2)
    result = train_lora(model, options)
    assert result.step == 3 and len(result.losses) == 3 and not result.interrupted
    # The loaded model is what it was: same module types, same weights.
    assert {name: type(m) for name, m in model.unet.named_modules()} == modules
    assert all(torch.equal(v, weights[k]) for k, v in model.unet.state_dict().items())

    with safe_open(str(out), framework="pt") as file:
        keys, meta = set(file.keys()), file.metadata()
        name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0"
        assert file.get_tensor(f"{name}.lora_down.weight").shape[0] == 4
        assert float(file.get_tensor(f"{name}.alpha")) == 2.0
        assert not torch.all(file.get_tensor(f"{name}.lora_up.weight") == 0)  # trained away from its zero init
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
               for k in keys)
    assert {k.rsplit("_", 1)[-1].split(".")[0] for k in keys} >= {"q", "k", "v", "0"}
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2.0" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_steps"] == "3" and meta["ss_output_name"] == "zork" and meta["ss_num_train_images"] == "3"
    assert json.loads(meta["ss_tag_frequency"]) == {"zork-data": {"zork": 3, "red square": 2}}
    assert meta["ss_resolution"] == "(64, 64)" and meta["ss_learning_rate"] == "1e-2"
    assert sorted(p.name for p in (result.log_dir / "Lora").iterdir()) == ["zork-2.safetensors"]

    # Our loader applies it at once: weight 1 changes the picture, weight 0 is bit-identical.
    plain = draw(model, out.parent, "zork")
    assert np.array_equal(draw(model, out.parent, "zork <lora:zork:0>"), plain)
    assert not np.array_equal(draw(model, out.parent, "zork <lora:zork:1>"), plain)
    summary = LoraLibrary(out.parent)
    assert summary.files()["zork"].path == out

    # Resumed from ss_steps (3 -> 5); interrupted after one more step, that step is saved.
    assert train_lora(model, LoraTrainOptions(**{**options.__dict__, "steps": 5})).step == 5
    calls = []
    stopped = train_lora(model, LoraTrainOptions(**{**options.__dict__, "steps": 50}),
                         on_step=lambda *a: calls.append(a), should_stop=lambda: len(calls) >= 1)
    assert stopped.interrupted and stopped.step == 6
    with safe_open(str(out), framework="pt") as file:
        assert file.metadata()["ss_steps"] == "6"


def test_an_sdxl_lora_trains_with_the_pooled_text_and_size_ids_and_applies(tmp_path, tiny_sdxl_path):
    sdxl = load_checkpoint(tiny_sdxl_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    calls = []
    sdxl.unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    out = tmp_path / "Lora" / "zork-xl.safetensors"
    options = LoraTrainOptions(name="zork-xl", output_path=out, data_root=write_dataset(tmp_path / "data", n=2),
                               rank=4, alpha=4, learn_rate="1e-2", steps=2, batch_size=2, resolution=64, seed=1)
    result = train_lora(sdxl, options)
    assert result.step == 2 and all(np.isfinite(result.losses))
    conditioning = calls[0]["added_cond_kwargs"]
    assert conditioning["text_embeds"].shape[0] == 2  # CLIP-G's pooled caption, per image
    assert conditioning["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2  # the training size, no crop
    with safe_open(str(out), framework="pt") as file:
        assert file.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
        assert any(key.startswith("lora_unet_down_blocks_1_attentions_0") for key in file.keys())
    calls.clear()
    plain = draw(sdxl, out.parent, "zork")
    assert not np.array_equal(draw(sdxl, out.parent, "zork <lora:zork-xl:1>"), plain)


def test_kohya_repeat_folders_count_each_image_that_many_times(tmp_path, model):
    """A dataset laid out for kohya's trainers: `<repeats>_<concept>` subfolders (and images at the top, once)."""
    root = tmp_path / "train"
    write_dataset(root / "10_zork", n=2)
    write_dataset(root / "2_other", n=1)
    (root / "notes").mkdir()  # not kohya's: left out
    Image.new("RGB", (64, 64)).save(root / "notes" / "skip.png")
    found = dataset_images(root)
    assert [(path.parent.name, repeats) for path, repeats in found] == [("10_zork", 10)] * 2 + [("2_other", 2)]
    out = tmp_path / "zork-kohya.safetensors"
    result = train_lora(model, LoraTrainOptions(name="zork-kohya", output_path=out, data_root=root, rank=2,
                                                alpha=1, learn_rate="1e-3", steps=1, batch_size=22,
                                                resolution=64, seed=1))
    assert result.step == 1  # a batch of 22 fits: 2 x 10 + 1 x 2 images an epoch
    with safe_open(str(out), framework="pt") as file:
        meta = file.metadata()
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_zork": {"n_repeats": 10, "img_count": 2},
                                                   "2_other": {"n_repeats": 2, "img_count": 1}}
    assert meta["ss_num_train_images"] == "22"
    assert json.loads(meta["ss_tag_frequency"]) == {"10_zork": {"zork": 2, "red square": 1}, "2_other": {"zork": 1}}


def test_loss_goes_down_on_a_trivial_dataset(tmp_path, model):
    data = write_dataset(tmp_path / "data", n=2)
    options = LoraTrainOptions(name="down", output_path=tmp_path / "down.safetensors", data_root=data, rank=4,
                               alpha=4, learn_rate="5e-3", steps=20, batch_size=2, resolution=64, seed=3,
                               buckets=False)
    losses = train_lora(model, options).losses
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_buckets():
    assert bucket_size((512, 512), 512, 512) == (512, 512)
    w, h = bucket_size((1536, 1024), 512, 512)
    assert w > h and w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512
    w, h = bucket_size((300, 600), 512, 512)
    assert h > w


def test_bucketed_dataset(tmp_path):
    folder = tmp_path / "mixed"
    write_dataset(folder, n=1, size=(96, 64))
    Image.new("RGB", (40, 80)).save(folder / "tall.png")
    sizes = {p.name: img.size for p, img, _ in read_dataset(folder, 64, 64, True, buckets=True)}
    assert sizes["00.png"][0] > sizes["00.png"][1] and sizes["tall.png"][1] > sizes["tall.png"][0]
    assert all(w % 8 == 0 and h % 8 == 0 for w, h in sizes.values())


def test_native_api_train_lora_and_422s(tmp_path, tiny_sd1_path):
    from test_api_support import LiveServer, make_data_dir

    data = make_data_dir(tmp_path / "data", tiny_sd1_path, "tiny-sd1.safetensors")
    write_dataset(data / "train-images")
    (data / "empty").mkdir()
    write_dataset(data / "kohya" / "5_zork", n=1)
    body = {"type": "train_lora", "name": "apilora", "data_root": "train-images", "rank": 2, "alpha": 1,
            "learn_rate": "1e-3:1, 5e-4", "steps": 2, "resolution": 64, "save_every": 1}
    with LiveServer(data) as live, live.client() as client:
        bad = {"data_root": "missing", "rank": 0, "steps": 0, "learn_rate": "fast", "name": "///"}
        for field, value in bad.items():
            refused = client.post("/api/v1/jobs", json={**body, field: value})
            assert refused.status_code == 422, (field, refused.text)
            assert field in refused.text, (field, refused.text)
        refused = client.post("/api/v1/jobs", json={**body, "data_root": "empty"})
        assert refused.status_code == 422 and "data_root" in refused.text
        # kohya's layout: the images are in a repeat folder; the batch may hold them 5 times, not 6
        refused = client.post("/api/v1/jobs", json={**body, "data_root": "kohya", "batch_size": 6})
        assert refused.status_code == 422 and "batch_size" in refused.text and "5 images" in refused.text

        created = client.post("/api/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert job["status"] == "done", job
        assert job["result"]["file"] == "apilora.safetensors" and job["result"]["step"] == 2
        assert (data / "models" / "Lora" / "apilora.safetensors").is_file()
        names = [item["name"] for item in client.get("/sdapi/v1/loras").json()]
        assert "apilora" in names
