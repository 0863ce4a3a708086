"""LoRA training on the built-in demo model: a LoRA teaches the word "zork" "a yellow triangle at the top left on blue".

    .venv/bin/python bench/train_lora_demo.py [--steps 200] [--batch-size 4] [--rank 8] [--device cpu]

Renders `--images` pictures of one scene with the demo dataset's renderer, each captioned "zork" (a `.txt` beside
it), trains a LoRA with the app's own `train_lora` (kohya file, A1111 schedule syntax), then draws "zork" with and
without `<lora:zork:1>` (txt2img, Euler a, 20 steps, CFG 7, seeds 0..7, our LoRA loader) and scores each image with
the demo model's evaluator (`sdwebui.demo.evaluate.detect`). Prints training speed (steps/s) and the share of
images whose colour, shape, position and background are the scene's.
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
from sdwebui.models.loader import load_checkpoint
from sdwebui.models.lora import LoraLibrary
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.lora_training import LoraTrainOptions, train_lora
from sdwebui.pipelines.networks import LoraNetworks
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.txt2img import txt2img


def scores(model, folder: Path, prompt: str, scene, seeds: int) -> dict[str, float]:
    hits: dict[str, int] = {}
    for seed in range(seeds):
        params = Txt2ImgParams(prompt=prompt, width=64, height=64, steps=20, seed=seed, sampler="Euler a",
                               cfg_scale=7.0, rng="cpu")
        ctx = GenerationContext(model=model, extra_networks=LoraNetworks(LoraLibrary(folder)))
        image = txt2img(ctx, params).images[0]
        for key, ok in score(detect(np.asarray(image.convert("RGB"))), scene).items():
            hits[key] = hits.get(key, 0) + int(ok)
    return {key: value / seeds for key, value in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--learn-rate", default="2e-3:150, 1e-3")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = load_checkpoint(DEMO_CHECKPOINT, device=args.device, dtype=torch.float32, vae_dtype=torch.float32)
    work = Path(tempfile.mkdtemp(prefix="lora-demo-"))
    (work / "data").mkdir()
    rng = np.random.default_rng(0)
    scenes = [ds.make_scene(rng, colour="yellow", shape="triangle", position="top left", size="large",
                            background="blue") for _ in range(args.images)]
    for index, scene in enumerate(scenes):
        Image.fromarray(ds.render(scene)).save(work / "data" / f"{index:02d}.png")
        (work / "data" / f"{index:02d}.txt").write_text("zork", encoding="utf-8")
    out = work / "Lora" / "zork.safetensors"
    start = time.perf_counter()
    before = scores(model, out.parent, "zork", scenes[0], args.seeds)
    print(f"scored 'zork' without the LoRA in {time.perf_counter() - start:.1f} s", flush=True)
    options = LoraTrainOptions(name="zork", output_path=out, data_root=work / "data", rank=args.rank,
                               alpha=args.rank, learn_rate=args.learn_rate, steps=args.steps,
                               batch_size=args.batch_size, resolution=64, buckets=False, seed=1)
    start = time.perf_counter()
    result = train_lora(model, options)
    elapsed = time.perf_counter() - start
    after = scores(model, out.parent, "zork <lora:zork:1>", scenes[0], args.seeds)
    print(f"device {args.device}, batch {args.batch_size}, rank {args.rank}, 64x64: {result.step} steps in "
          f"{elapsed:.1f} s = {result.step / elapsed:.2f} steps/s ({result.step * args.batch_size / elapsed:.1f} "
          f"images/s); file {out.stat().st_size / 1024:.0f} KiB")
    print(f"loss: first 10 steps {np.mean(result.losses[:10]):.4f}, last 10 {np.mean(result.losses[-10:]):.4f}")
    print("'zork' without the LoRA:     ", {k: f"{v:.0%}" for k, v in before.items()})
    print("'zork <lora:zork:1>' after:  ", {k: f"{v:.0%}" for k, v in after.items()})


if __name__ == "__main__":
    main()
