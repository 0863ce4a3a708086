"""Textual-inversion creation and training (A1111's semantics): the learning-rate schedule syntax, the shipped
templates, the dataset's texts, create + train on the tiny SD 1 model (A1111's file layout, read back by the
embeddings loader, resumed from its step, interrupted and saved, the loss going down on a trivial dataset), and
the A1111 routes with their 422s."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from sdwebui.core.errors import ParamError
from sdwebui.models.embeddings import load_embedding
from sdwebui.models.files import load_pickle
from sdwebui.models.loader import load_checkpoint
from sdwebui.pipelines.textual_inversion import (
    LearnRateScheduler,
    TrainOptions,
    diffusion_loss,
    init_vectors,
    list_templates,
    make_text,
    parse_schedule,
    save_embedding,
    train_embedding,
)


@pytest.mark.parametrize("text, max_steps, cur, expected", [
    ("0.005", 1000, 0, [(0.005, 1000)]),
    ("0.005:100, 1e-4:1000, 1e-5", 2000, 0, [(0.005, 100), (1e-4, 1000), (1e-5, 2000)]),
    ("0.005:100, 1e-4:1000, 1e-5", 2000, 150, [(1e-4, 1000), (1e-5, 2000)]),
    ("0.005:100, 1e-4:1000, 1e-5:10000", 500, 0, [(0.005, 100), (1e-4, 500)]),  # cut at max steps, then stops
    ("0.01:50, 0.001:-1", 300, 0, [(0.01, 50), (0.001, 300)]),
    (0.02, 10, 0, [(0.02, 10)]),
])
def test_learn_rate_schedule_syntax(text, max_steps, cur, expected):
    assert parse_schedule(text, max_steps, cur) == expected


@pytest.mark.parametrize("bad", ["", "fast", "0.1:1:2", "0.1:x", "nan"])
def test_bad_schedules_are_refused(bad):
    with pytest.raises(ValueError):
        parse_schedule(bad, 100)


def test_scheduler_moves_on_at_each_end_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = LearnRateScheduler("0.1:2, 0.01:4", 10)
    rates = []
    for step in range(6):
        scheduler.apply(optimizer, step)
        rates.append((optimizer.param_groups[0]["lr"], scheduler.finished))
    assert rates[:2] == [(1.0, False), (1.0, False)]  # the optimizer starts at the first rate (set by its maker)
    assert rates[2] == (0.01, False) and rates[3] == (0.01, False)
    assert rates[4][1] and rates[5][1]


def test_shipped_templates_and_texts():
    templates = list_templates()
    assert {"none.txt", "style.txt", "style_filewords.txt", "subject.txt", "subject_filewords.txt",
            "hypernetwork.txt"} <= set(templates)
    text = lambda name: templates[name].read_text(encoding="utf-8")  # noqa: E731
    assert "[name]" in text("subject.txt") and "[filewords]" not in text("subject.txt")
    assert all("[name]" in line and "[filewords]" in line for line in text("style_filewords.txt").splitlines())
    assert "[filewords]" in text("hypernetwork.txt")
    rng = random.Random(0)
    assert make_text(["a photo of [name], [filewords]"], "myword", "red, square", False, 0.0, rng) == \
        "a photo of myword, red, square"
    dropped = {make_text(["[filewords]"], "w", "a,b,c,d", False, 1.0, rng) for _ in range(5)}
    assert dropped == {""}  # every tag dropped at probability 1
    shuffled = {make_text(["[filewords]"], "w", "a,b,c,d", True, 0.0, rng) for _ in range(30)}
    assert len(shuffled) > 1 and all(sorted(s.split(",")) == ["a", "b", "c", "d"] for s in shuffled)


@pytest.fixture(scope="module")
def model(tiny_sd1_path):
    return load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)


def write_dataset(folder: Path, n: int = 3) -> Path:
    """A trivial dataset: a red square on blue, at one place; captions from `.txt` files for some."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", (64, 64), (20, 20, 200))
        image.paste((220, 30, 30), (16, 16, 48 + i, 48))
        image.save(folder / f"{i:02d}-red square.png")
    (folder / "00-red square.txt").write_text("red, square", encoding="utf-8")
    return folder


def options(tmp_path, path, data, **changes):
    values = dict(embedding_name=path.stem, embedding_path=path, learn_rate="0.05", batch_size=1, gradient_step=1,
                  data_root=data, log_directory=tmp_path / "log", training_width=64, training_height=64,
                  varsize=False, steps=3, clip_grad_mode="disabled", clip_grad_value="0.1", shuffle_tags=False,
                  tag_drop_out=0.0, latent_sampling_method="once", create_image_every=0, save_embedding_every=2,
                  template_file=list_templates()["subject_filewords.txt"], seed=1)
    values.update(changes)
    return TrainOptions(**values)


def test_create_train_resume_and_interrupt(tmp_path, model):
    vectors = init_vectors(model, "square red", 2)
    layer = model.text_encoder.towers[0].module.get_input_embeddings()
    ids = model.text_encoder._tokenize_texts(["square red"])[0]
    torch.testing.assert_close(vectors, layer.weight[ids].detach().float())  # A1111: token i * len // n
    path = save_embedding(tmp_path / "emb" / "myword.pt", vectors, "myword", 0, None, None)
    data = load_pickle(path)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}

    data_root = write_dataset(tmp_path / "data")
    result = train_embedding(model, options(tmp_path, path, data_root, steps=3))
    assert result.step == 3 and len(result.losses) == 3 and not result.interrupted
    trained = load_embedding(path)  # our embeddings loader reads it back
    assert trained.step == 3 and trained.vector_count == 2 and trained.sd_checkpoint == model.info.short_hash
    assert not torch.equal(trained.vectors[""], vectors)
    saved = sorted(p.name for p in (result.log_dir / "embeddings").iterdir())
    assert saved == ["myword-2.pt"] and load_embedding(result.log_dir / "embeddings" / "myword-2.pt").step == 2
    assert (result.log_dir / "textual_inversion_loss.csv").read_text().count("\n") == 4  # header + 3 steps

    # Resumed from its stored step: 3 -> 5; and interrupted after one more step, that step is saved.
    assert train_embedding(model, options(tmp_path, path, data_root, steps=5)).step == 5
    calls = []
    stopped = train_embedding(model, options(tmp_path, path, data_root, steps=9),
                              on_step=lambda *args: calls.append(args), should_stop=lambda: len(calls) >= 1)
    assert stopped.interrupted and stopped.step == 6 and load_embedding(path).step == 6
    # Already past the steps asked for: nothing to do (A1111: "already been trained beyond specified max steps").
    assert train_embedding(model, options(tmp_path, path, data_root, steps=4)).losses == []


def test_loss_goes_down_on_a_trivial_dataset(tmp_path, model):
    from sdwebui.pipelines.textual_inversion import TrainingEmbeddings
    from sdwebui.pipelines.training_data import encode_dataset, read_dataset

    path = save_embedding(tmp_path / "word.pt", init_vectors(model, "", 1), "word", 0, None, None)
    data_root = write_dataset(tmp_path / "data", n=2)
    samples = encode_dataset(model, read_dataset(data_root, 64, 64, False), "once")
    latents = torch.stack([s.latent for s in samples] * 4)

    def fixed_loss() -> float:  # the same timesteps and noise before and after
        embedding = load_embedding(path)
        stack = model.text_encoder
        chunks = [stack.tokenize_weighted([("word", 1.0)], embeddings=TrainingEmbeddings(embedding))[0]] * 8
        with torch.no_grad():
            cond = stack.encode_chunks(chunks).cross_attn
            return float(diffusion_loss(model, latents, cond, torch.Generator().manual_seed(3)))

    before = fixed_loss()
    template = tmp_path / "word-only.txt"
    template.write_text("[name]\n", encoding="utf-8")
    result = train_embedding(model, options(tmp_path, path, data_root, steps=20, template_file=template,
                                            save_embedding_every=0, learn_rate="0.01", batch_size=2))
    assert result.step == 20
    assert fixed_loss() < before - 1e-4


def test_the_alpha_channel_weighs_the_loss(tmp_path, model):
    """A1111's "Use PNG alpha channel as loss weight": the alpha at the latent size, min 0, mean 1, on every latent
    channel; uniform without alpha or with one alpha everywhere. Training with it changes the losses; an opaque
    dataset trains exactly as without it."""
    from sdwebui.pipelines.training_data import alpha_weight

    half = Image.new("RGBA", (64, 48), (200, 30, 30, 255))
    half.paste((200, 30, 30, 0), (0, 0, 32, 48))  # left half transparent
    weight = alpha_weight(half, (4, 6, 8))
    assert weight.shape == (4, 6, 8) and float(weight.min()) == 0.0 and abs(float(weight.mean()) - 1.0) < 1e-6
    assert float(weight[:, :, 0].max()) == 0.0 and torch.allclose(weight[:, :, -1], torch.full((4, 6), 2.0))
    assert torch.equal(alpha_weight(half.convert("RGB"), (4, 6, 8)), torch.ones(4, 6, 8))
    assert torch.equal(alpha_weight(Image.new("RGBA", (64, 48), (1, 2, 3, 255)), (4, 6, 8)), torch.ones(4, 6, 8))

    opaque, cut = write_dataset(tmp_path / "opaque"), tmp_path / "cut"
    cut.mkdir()
    for path in sorted(opaque.glob("*.png")):  # the same pictures, as RGBA files: opaque, or half transparent
        image = Image.open(path).convert("RGBA")
        image.save(path)
        alpha = Image.new("L", image.size, 255)
        alpha.paste(0, (0, 0, 32, 64))
        image.putalpha(alpha)
        image.save(cut / path.name)
    losses = {}
    for label, folder, use_weight in (("plain", opaque, False), ("opaque", opaque, True), ("cut", cut, True),
                                      ("cut-unweighted", cut, False)):
        path = save_embedding(tmp_path / label / "w.pt", init_vectors(model, "", 1), "w", 0, None, None)
        losses[label] = train_embedding(model, options(tmp_path, path, folder, steps=2, save_embedding_every=0,
                                                       use_weight=use_weight)).losses
    assert losses["opaque"] == losses["plain"] == losses["cut-unweighted"]
    assert losses["cut"] != losses["plain"]


def test_sdxl_is_refused(tmp_path, tiny_sdxl_path):
    sdxl = load_checkpoint(tiny_sdxl_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    with pytest.raises(ParamError) as error:
        init_vectors(sdxl, "x", 1)
    assert error.value.loc == ("name",)


def test_a1111_routes_create_train_and_refuse_bad_input(tmp_path, tiny_sd1_path):
    from test_api_support import LiveServer, make_data_dir

    data = make_data_dir(tmp_path / "data", tiny_sd1_path, "tiny-sd1.safetensors")
    write_dataset(data / "train-images")
    (data / "empty").mkdir()
    with LiveServer(data) as live, live.client() as client:
        response = client.post("/sdapi/v1/create/embedding",
                               json={"name": "apiword", "num_vectors_per_token": 3, "init_text": "red square"})
        assert response.status_code == 200, response.text
        assert response.json()["info"] == f"create embedding filename: {data / 'embeddings' / 'apiword.pt'}"
        again = client.post("/sdapi/v1/create/embedding", json={"name": "apiword"})
        assert again.status_code == 422 and "name" in again.text
        assert client.get("/sdapi/v1/embeddings").json()["loaded"]["apiword"]["vectors"] == 3

        body = {"embedding_name": "apiword", "learn_rate": "0.01:1, 0.005", "data_root": "train-images",
                "training_width": 64, "training_height": 64, "steps": 2, "save_embedding_every": 1,
                "create_image_every": 2, "template_filename": "subject_filewords.txt",
                "preview_from_txt2img": True, "preview_prompt": "apiword", "preview_steps": 2, "preview_width": 64,
                "preview_height": 64, "preview_sampler_name": "Euler"}
        bad = {"embedding_name": "nope", "data_root": "missing", "template_filename": "nope.txt", "steps": 0,
               "learn_rate": "fast"}
        for field, value in bad.items():
            refused = client.post("/sdapi/v1/train/embedding", json={**body, field: value})
            assert refused.status_code == 422, (field, refused.text)
            assert field in refused.text, (field, refused.text)
        assert client.post("/sdapi/v1/train/embedding", json={**body, "data_root": "empty"}).status_code == 422
        assert client.post("/sdapi/v1/train/embedding",
                           json={**body, "log_directory": "/tmp/elsewhere"}).status_code == 422

        response = client.post("/sdapi/v1/train/embedding", json=body)
        assert response.status_code == 200, response.text
        path = data / "embeddings" / "apiword.pt"
        assert response.json()["info"] == f"train embedding complete: filename: {path} error: None"
        assert load_embedding(path).step == 2
        (log,) = (data / "textual_inversion").glob("*/apiword")
        assert sorted(p.name for p in (log / "embeddings").iterdir()) == ["apiword-1.pt", "apiword-2.pt"]
        assert [p.name for p in (log / "images").iterdir()] == ["apiword-2.png"]
        assert client.get("/sdapi/v1/embeddings").json()["loaded"]["apiword"]["step"] == 2

        # As a job: /progress follows it (step, loss), /interrupt stops it and the steps done are saved.
        import threading
        import time

        long = {**body, "steps": 10_000, "save_embedding_every": 0, "create_image_every": 0}
        answer: dict = {}
        worker = threading.Thread(target=lambda: answer.update(
            response=live.client().post("/sdapi/v1/train/embedding", json=long)))
        worker.start()
        deadline = time.monotonic() + 120
        progress = {}
        while time.monotonic() < deadline:
            progress = client.get("/sdapi/v1/progress").json()
            if progress["state"]["job"] == "train_embedding" and "Loss:" in (progress["textinfo"] or ""):
                break
            time.sleep(0.2)
        assert "Loss:" in progress["textinfo"] and progress["progress"] > 0, progress
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        worker.join(120)
        assert answer["response"].status_code == 200, answer["response"].text
        assert 2 < load_embedding(path).step < 10_000

        # The native API queues the same jobs (`{"type": "create_embedding" | "train_embedding", ...}`).
        created = client.post("/api/v1/jobs", json={"type": "create_embedding", "name": "nativeword"})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 120
        while client.get(f"/api/v1/jobs/{job_id}").json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.get(f"/api/v1/jobs/{job_id}").json()["result"]["file"] == "nativeword.pt"
        refused = client.post("/api/v1/jobs", json={**body, "type": "train_embedding", "steps": 0})
        assert refused.status_code == 422 and "steps" in refused.text
