"""Score the demo model: does it draw what the prompt says, on prompts it never saw in training?

    python -m sdwebui.demo.evaluate [--model PATH] [--seeds 4]

Prompts cover the held-out (colour, shape, position) triples of `dataset.HELDOUT_TRIPLES`; each is generated
with several seeds at 20 steps, Euler a, CFG 7 (A1111's defaults apart from the size) and read back with
procedural detectors (foreground colour, background colour, centroid position, shape class, size). The
detectors are first checked on ground-truth dataset images, where they should be (nearly) always right.
"""

from __future__ import annotations

import argparse
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdwebui.demo import dataset as ds
from sdwebui.demo.train import TrainConfig, build_text_encoder, build_unet, build_vae, local_txt2img
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.txt2img import txt2img

_PAL_NAMES = list(ds.PALETTE)
_PAL = np.array([ds.PALETTE[n] for n in _PAL_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Detection:
    background: str
    colour: str | None
    shape: str | None
    position: str | None
    size: str | None
    area: int


def _largest_component(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, q = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while q:
            y, x = q.popleft()
            comp.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    q.append((ny, nx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def detect(image: np.ndarray) -> Detection:
    """Read a single-shape image (H x W x 3 uint8, any size) back into attributes."""
    img = image.astype(np.float32)
    size = img.shape[0]
    dist = np.linalg.norm(img[:, :, None, :] - _PAL[None, None], axis=-1)  # H W 8
    nearest = dist.argmin(-1)
    border = np.concatenate([nearest[:2].ravel(), nearest[-2:].ravel(), nearest[:, :2].ravel(), nearest[:, -2:].ravel()])
    bg = int(np.bincount(border, minlength=len(_PAL)).argmax())
    confident = (nearest != bg) & (dist.min(-1) < 70)
    if confident.sum() < 4:
        return Detection(_PAL_NAMES[bg], None, None, None, None, 0)
    fg = int(np.bincount(nearest[confident], minlength=len(_PAL)).argmax())
    # Pixels past the midpoint from the background colour towards the foreground colour.
    d = _PAL[fg] - _PAL[bg]
    t = ((img - _PAL[bg]) @ d) / float(d @ d)
    mask = _largest_component(t > 0.5)
    area = int(mask.sum())
    if area < 4:
        return Detection(_PAL_NAMES[bg], _PAL_NAMES[fg], None, None, None, area)
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    col = 0 if cx < size / 3 else (2 if cx > 2 * size / 3 else 1)
    row = 0 if cy < size / 3 else (2 if cy > 2 * size / 3 else 1)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    bw, bh = x1 - x0, y1 - y0
    fill = area / float(bw * bh)
    upper = (ys < (y0 + y1) / 2).sum() / area
    if upper < 0.38:
        shape = "triangle"
    elif fill > 0.88:
        shape = "square"
    else:
        shape = "circle"
    extent = max(bw, bh) * ds.SIZE / size
    return Detection(
        _PAL_NAMES[bg], _PAL_NAMES[fg], shape, ds.GRID_TO_POSITION[(col, row)],
        "large" if extent > 22 else "small", area,
    )


ATTRIBUTES = ("colour", "background", "position", "shape", "size")


def score(det: Detection, scene: ds.Scene) -> dict[str, bool]:
    s = scene.shapes[0]
    return {
        "colour": det.colour == s.colour, "background": det.background == scene.background,
        "position": det.position == s.position, "shape": det.shape == s.shape, "size": det.size == s.size,
    }


def detector_accuracy(n: int = 500, seed: int = 12345) -> dict[str, float]:
    """Detector accuracy on ground-truth single-shape dataset images (all triples, all backgrounds)."""
    rng = np.random.default_rng(seed)
    hits = {a: 0 for a in ATTRIBUTES}
    for _ in range(n):
        scene = ds.make_scene(rng)
        for k, v in score(detect(ds.render(scene)), scene).items():
            hits[k] += v
    return {k: v / n for k, v in hits.items()}


def evaluate_images(images: list[np.ndarray], scenes: list[ds.Scene]) -> dict[str, float]:
    hits = {a: 0 for a in ATTRIBUTES}
    for img, scene in zip(images, scenes):
        for k, v in score(detect(img), scene).items():
            hits[k] += v
    return {k: v / max(1, len(images)) for k, v in hits.items()}


def format_misses(images: list[np.ndarray], scenes: list[ds.Scene]) -> str:
    """One line per image that missed an attribute: what was asked, what the detectors read."""
    lines = []
    for number, (img, scene) in enumerate(zip(images, scenes)):
        det = detect(img)
        missed = [k for k, ok in score(det, scene).items() if not ok]
        if missed:
            s = scene.shapes[0]
            lines.append(
                f"image {number}: asked {s.size} {s.colour} {s.shape} {s.position} on {scene.background}; "
                f"read {det.size} {det.colour} {det.shape} {det.position} on {det.background} "
                f"(missed {', '.join(missed)})"
            )
    return "\n".join(lines) or "no misses"


DEFAULT_MODEL = Path(__file__).resolve().parent / "sdwebui-demo-shapes-v1.safetensors"


def pipeline_images(model, prompt: str, seeds: int, *, seed: int = 0, steps: int = 20, cfg_scale: float = 7.0,
                    sampler: str = "Euler a") -> list[np.ndarray]:
    """`seeds` images of one prompt through the app's own txt2img (seeds seed, seed+1, ...)."""
    params = Txt2ImgParams(
        prompt=prompt, width=model.native_size, height=model.native_size, steps=steps, cfg_scale=cfg_scale,
        sampler=sampler, seed=seed, batch_size=seeds,
    )
    result = txt2img(GenerationContext(model=model), params)
    return [np.asarray(im.convert("RGB")) for im in result.images]


def _load_local(work_dir: str, weights: str = "diffusion_ema.pt"):
    cfg = TrainConfig()
    vae, te, unet = build_vae(cfg), build_text_encoder(cfg), build_unet(cfg)
    vae.load_state_dict(torch.load(f"{work_dir}/vae.pt", weights_only=True))
    d = torch.load(f"{work_dir}/{weights}", weights_only=True)
    te.load_state_dict(d["text_encoder"])
    unet.load_state_dict(d["unet"])
    return vae.eval(), te.eval(), unet.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdwebui.demo.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="single-file checkpoint (default: the shipped one)")
    p.add_argument("--work-dir", default=None,
                   help="instead, evaluate a training run's intermediate weights (vae.pt, diffusion_ema.pt)")
    p.add_argument("--weights", default="diffusion_ema.pt", help="with --work-dir: diffusion_ema.pt or diffusion_raw.pt")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-grid", default=None)
    p.add_argument("--misses", action="store_true", help="also list each image that missed an attribute")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    det = detector_accuracy()
    print("detector accuracy on ground-truth images: " + ", ".join(f"{k} {v:.1%}" for k, v in det.items()))
    prompts = ds.heldout_prompts()
    images, scenes = [], []
    if a.work_dir:
        vae, te, unet = _load_local(a.work_dir, a.weights)
        for seed in range(a.seeds):
            images += list(local_txt2img(vae, te, unet, [p for p, _ in prompts], seed=seed))
            scenes += [s for _, s in prompts]
        how = f"local sampler on {a.work_dir}"
    else:
        from sdwebui.models.loader import load_checkpoint

        model = load_checkpoint(a.model, device="cpu", dtype=torch.float32)
        by_prompt = [pipeline_images(model, text, a.seeds, seed=1000) for text, _ in prompts]
        for k in range(a.seeds):  # seed-major, like the local path, so grids line up
            images += [imgs[k] for imgs in by_prompt]
            scenes += [s for _, s in prompts]
        how = f"sdwebui txt2img on {a.model}"
    acc = evaluate_images(images, scenes)
    print(f"held-out prompts: {len(prompts)} x {a.seeds} seeds, 20 steps, Euler a, CFG 7 ({how})")
    print("| attribute | accuracy |\n|---|---|")
    for k, v in acc.items():
        print(f"| {k} | {v:.1%} |")
    if a.misses:
        print(format_misses(images, scenes))
    if a.save_grid:
        from PIL import Image

        arr = np.concatenate([np.concatenate(images[i : i + len(prompts)], axis=1) for i in range(0, len(images), len(prompts))])
        Image.fromarray(arr).save(a.save_grid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
