"""Time our txt2img against diffusers' StableDiffusionPipeline on the same weights, in one run.

A full-size SD1.5-architecture checkpoint with random weights is written once in the single-file LDM layout
(the layout users download) to bench/out/, loaded through our real loader, and then both pipelines run the
same modules, prompt, size, sampler (Euler, the same sigmas) and seed. Prints seconds and the ratio
ours / diffusers (target: <= 1.0). No timing asserts live in the test suite; this script is the measurement.

    .venv/bin/python bench/txt2img_vs_diffusers.py --sizes 256 512 --steps 4 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.random_checkpoint import write_random_sd15  # noqa: E402
from sdwebui.core.samplers import resolve_sampling  # noqa: E402
from sdwebui.models.devices import plan_devices  # noqa: E402
from sdwebui.models.loader import load_checkpoint  # noqa: E402
from sdwebui.pipelines.context import GenerationContext  # noqa: E402
from sdwebui.pipelines.params import Txt2ImgParams  # noqa: E402
from sdwebui.pipelines.sampling import make_denoiser  # noqa: E402
from sdwebui.pipelines.txt2img import txt2img  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on mars"
NEGATIVE = "blurry, low quality"


def diffusers_pipeline(model):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        timestep_spacing="linspace", prediction_type=model.prediction_type,
    )
    from sdwebui.models.tokenizer import load_clip_tokenizer

    return StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder.clip_l, tokenizer=load_clip_tokenizer("clip_l"),
        unet=model.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def time_call(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first-call allocations, kernel selection
    times = []
    for _ in range(repeats):
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "bench" / "out" / "sd15-random-fp16.safetensors")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    plan = plan_devices(args.device)
    t0 = time.perf_counter()
    write_random_sd15(args.checkpoint)
    t1 = time.perf_counter()
    model = load_checkpoint(args.checkpoint, device=plan.device, dtype=plan.dtype, vae_dtype=plan.vae_dtype)
    load_seconds = time.perf_counter() - t1
    pipe = diffusers_pipeline(model)
    print(f"device: {plan.describe()}; threads: {torch.get_num_threads()}")
    print(f"checkpoint ready in {t1 - t0:.1f}s; our loader: {load_seconds:.1f}s")

    sampling = resolve_sampling("Euler", "Automatic")
    rows = []
    for size in args.sizes:
        params = Txt2ImgParams(
            prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=args.steps,
            cfg_scale=7.0, sampler="Euler", seed=1234, rng="cpu",
        )
        sigmas = sampling.sampler.sigmas(args.steps, make_denoiser(model), "Automatic")
        ctx = GenerationContext(model=model)

        def ours():
            return txt2img(ctx, params)

        def theirs():
            generator = torch.Generator("cpu").manual_seed(1234)
            return pipe(
                PROMPT, negative_prompt=NEGATIVE, width=size, height=size, guidance_scale=7.0,
                sigmas=sigmas.tolist(), generator=generator, output_type="pil",
            )

        ours_times = time_call(ours, args.repeats)
        theirs_times = time_call(theirs, args.repeats)
        ratio = statistics.median(ours_times) / statistics.median(theirs_times)
        rows.append({"size": size, "steps": args.steps, "ours_s": statistics.median(ours_times),
                     "diffusers_s": statistics.median(theirs_times), "ratio": ratio})
        print(f"{size}x{size}, {args.steps} steps: ours {statistics.median(ours_times):.2f}s, "
              f"diffusers {statistics.median(theirs_times):.2f}s, ratio ours/diffusers {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"device": plan.describe(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
