"""Textual inversion on the built-in demo model: a new word learns "a yellow triangle at the top left on blue".

    .venv/bin/python bench/train_embedding_demo.py [--steps 300] [--batch-size 4] [--device cpu]

Renders `--images` pictures of one scene with the demo dataset's renderer, creates a 1-vector embedding `zork`
(all zeros: it starts meaning nothing), trains it with the app's own `train_embedding` (template "[name]", A1111's
schedule syntax), then draws the word alone with txt2img (Euler a, 20 steps, CFG 7, seeds 0..7) and scores each
image with the demo model's evaluator (`sdwebui.demo.evaluate.detect`), before and after. Prints training speed
(steps/s) and the share of images whose colour, shape, position and background are the scene's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdwebui.config import DEMO_CHECKPOINT
from sdwebui.demo import dataset as ds
from sdwebui.demo.evaluate import detect, score
from sdwebui.models.embeddings import load_embedding
from sdwebui.models.loader import load_checkpoint
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.textual_inversion import (
    TrainingEmbeddings,
    TrainOptions,
    init_vectors,
    save_embedding,
    train_embedding,
)
from sdwebui.pipelines.txt2img import txt2img


def scores(model, path: Path, scene, seeds: int) -> dict[str, float]:
    embedding = load_embedding(path)
    hits: dict[str, int] = {}
    for seed in range(seeds):
        params = Txt2ImgParams(prompt="zork", width=64, height=64, steps=20, seed=seed, sampler="Euler a",
                               cfg_scale=7.0, rng="cpu")
        image = txt2img(GenerationContext(model=model, embeddings=TrainingEmbeddings(embedding)), params).images[0]
        for key, ok in score(detect(np.asarray(image.convert("RGB"))), scene).items():
            hits[key] = hits.get(key, 0) + int(ok)
    return {key: value / seeds for key, value in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--learn-rate", default="0.05:150, 0.02")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = load_checkpoint(DEMO_CHECKPOINT, device=args.device, dtype=torch.float32, vae_dtype=torch.float32)
    work = Path(tempfile.mkdtemp(prefix="ti-demo-"))
    (work / "data").mkdir()
    rng = np.random.default_rng(0)
    scenes = [ds.make_scene(rng, colour="yellow", shape="triangle", position="top left", size="large",
                            background="blue") for _ in range(args.images)]
    for index, scene in enumerate(scenes):
        Image.fromarray(ds.render(scene)).save(work / "data" / f"{index:02d}.png")
    (work / "name.txt").write_text("[name]\n", encoding="utf-8")
    path = save_embedding(work / "zork.pt", init_vectors(model, "", 1), "zork", 0, None, None)
    before = scores(model, path, scenes[0], args.seeds)
    options = TrainOptions("zork", path, args.learn_rate, args.batch_size, 1, work / "data", None, 64, 64, False,
                           args.steps, "disabled", "0.1", False, 0.0, "once", 0, 0, work / "name.txt", seed=1)
    start = time.perf_counter()
    result = train_embedding(model, options)
    elapsed = time.perf_counter() - start
    after = scores(model, path, scenes[0], args.seeds)
    print(f"device {args.device}, batch {args.batch_size}, 64x64: {result.step} steps in {elapsed:.1f} s = "
          f"{result.step / elapsed:.2f} steps/s ({result.step * args.batch_size / elapsed:.1f} images/s)")
    print(f"loss: first 10 steps {np.mean(result.losses[:10]):.4f}, last 10 {np.mean(result.losses[-10:]):.4f}")
    print("'zork' before:", {k: f"{v:.0%}" for k, v in before.items()})
    print("'zork' after: ", {k: f"{v:.0%}" for k, v in after.items()})


if __name__ == "__main__":
    main()
