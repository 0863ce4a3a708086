"""GPU benchmark against diffusers' own pipelines (issue 16), for an H100/H200 through the `device` tool.

SD1.5 at 512x512 and SDXL at 1024x1024, full-size random-weight checkpoints (written once to bench/out/, fp16
single files in the LDM layout, loaded through our real loader), fp16 and bf16. For each family and dtype these
variants run interleaved, round-robin A B C ... A B C ..., after one warm-up each (the warm-up of `compile` and
`graphs` is their compile, reported apart):

- `diffusers`: diffusers' `StableDiffusionPipeline` / `StableDiffusionXLPipeline` (SDPA, the same dtype) on the
  modules of our default load, with its Euler scheduler;
- `default`, `compile` (`--compile`), `graphs` (`--compile-mode reduce-overhead`: compiled, CUDA graphs replayed),
  `medvram`, `lowvram` and `fp8` (`fp8_storage` Enable): ours, each its own load through `ModelManager` as the
  server makes it.

Each run is one image, Euler, CFG 7, `--steps` steps; it/s counts sampler steps over the UNet's seconds (timed by
hooks), s/image is the whole call, peak VRAM is `max_memory_allocated` during the run less what the other
variants keep on the GPU. The table gives each variant's figures and its ratio to diffusers'.

`--lowvram` is also proven in a budget: a child process caps itself with
`torch.cuda.set_per_process_memory_fraction` at 2 GB (SD1.5) / 4 GB (SDXL) and generates one image in lowvram;
the table says whether it fit and its peak.

    python bench/gpu.py                              # everything (the device machine, ~10 min on an H100)
    python bench/gpu.py --families sd15 --dtypes fp16 --modes default compile --steps 20
    python bench/gpu.py --dry-run                    # the plan, nothing run
    python bench/gpu.py --device cpu --tiny          # the smoke path the tests run: tiny models, CPU

Targets (issue 16): SD1.5 512 default >= diffusers' it/s, --compile >= 1.5x diffusers; SDXL 1024 likewise; peak
VRAM at SD1.5 512 fp16 <= diffusers'; lowvram fits SD1.5 in 2 GB and SDXL in 4 GB.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAMILIES = {"sd15": 512, "sdxl": 1024}
DTYPES = ("fp16", "bf16", "fp32")
MODES = ("diffusers", "default", "compile", "graphs", "medvram", "lowvram", "fp8")
LOWVRAM_BUDGET_GB = {"sd15": 2.0, "sdxl": 4.0}
PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, 8k"
NEGATIVE = "blurry, low quality"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (with --tiny)")
    parser.add_argument("--families", nargs="+", choices=tuple(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["fp16", "bf16"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--steps", type=int, default=20, help="sampler steps per image (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    parser.add_argument("--size", type=int, help="image side (default: 512 for SD1.5, 1024 for SDXL; 64 with --tiny)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny random models (the tests' architecture) instead of full-size ones: a smoke run")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for the compile variant (default inductor; eager for a smoke run)")
    parser.add_argument("--no-budget-check", action="store_true", help="skip the lowvram-in-a-budget child runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="where the checkpoints are written")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--budget-child", nargs=3, metavar=("FAMILY", "DTYPE", "GB"), help=argparse.SUPPRESS)
    return parser


@dataclass
class Result:
    family: str
    dtype: str
    variant: str
    seconds: list[float] = field(default_factory=list)
    unet_seconds: list[float] = field(default_factory=list)
    peak_bytes: list[int] = field(default_factory=list)
    warmup_seconds: float = 0.0
    error: str | None = None
    levels_vs_default: tuple[float, int] | None = None
    """Mean and largest |difference| in 8-bit levels from `default`'s image of the same seed (memory modes should
    give the same image within fp16 noise); None for diffusers' pipeline."""

    @property
    def s_per_image(self) -> float | None:
        return min(self.seconds) if self.seconds else None

    @property
    def peak_gb(self) -> float | None:
        return max(self.peak_bytes) / 2**30 if self.peak_bytes else None

    def it_per_s(self, steps: int) -> float | None:
        return steps / min(self.unet_seconds) if self.unet_seconds and min(self.unet_seconds) > 0 else None


def plan(args) -> list[tuple[str, str, int, list[str]]]:
    size = args.size or (64 if args.tiny else None)
    return [(family, dtype, size or FAMILIES[family], list(args.modes)) for family in args.families
            for dtype in args.dtypes]


def checkpoint_path(args, family: str) -> Path:
    import torch

    from sdwebui.models.family import ModelFamily

    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import build_tiny, write_single_file

        path = args.out / f"tiny-{family}.safetensors"
        if not path.exists():
            kind = ModelFamily.SD1 if family == "sd15" else ModelFamily.SDXL
            write_single_file(build_tiny(kind, seed=1), path, dtype=torch.float16)
        return path
    from bench.random_checkpoint import write_random_sd15, write_random_sdxl

    if family == "sd15":
        return write_random_sd15(args.out / "sd15-random-fp16.safetensors")
    return write_random_sdxl(args.out / "sdxl-random-fp16.safetensors")


def precision_of(dtype: str) -> str:
    return {"fp16": "half", "bf16": "bf16", "fp32": "full"}[dtype]


def load_variant(args, family: str, dtype: str, variant: str, checkpoint: Path, data_dir: Path):
    """Our model for `variant`, loaded as the server loads it (ModelManager with the variant's flags)."""
    from sdwebui.config import Paths
    from sdwebui.models.devices import plan_devices
    from sdwebui.models.fast_paths import FastPaths
    from sdwebui.models.manager import ModelManager
    from sdwebui.models.memory import MemoryPolicy

    paths = Paths.from_flags(data_dir=data_dir / variant)
    memory = MemoryPolicy({"medvram": "medvram", "lowvram": "lowvram"}.get(variant, "none"))
    fast = FastPaths(compile=variant in ("compile", "graphs"), compile_backend=args.compile_backend,
                     compile_mode="reduce-overhead" if variant == "graphs" else "default")
    fp8 = ("Enable", False) if variant == "fp8" else ("Disable", False)
    manager = ModelManager(paths, plan_devices(args.device, precision=precision_of(dtype)), memory=memory,
                           fast=fast, fp8=lambda: fp8)
    return manager.get(checkpoint)


def diffusers_pipeline(model):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from sdwebui.models.tokenizer import load_clip_tokenizer

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, timestep_spacing="linspace",
                                       prediction_type=model.prediction_type)
    encoders = model.text_encoder
    if encoders.clip_g is not None:
        return StableDiffusionXLPipeline(vae=model.vae, text_encoder=encoders.clip_l, text_encoder_2=encoders.clip_g,
                                         tokenizer=load_clip_tokenizer("clip_l"),
                                         tokenizer_2=load_clip_tokenizer("clip_g"), unet=model.unet,
                                         scheduler=scheduler, force_zeros_for_empty_prompt=False,
                                         add_watermarker=False)
    return StableDiffusionPipeline(vae=model.vae, text_encoder=encoders.clip_l, tokenizer=load_clip_tokenizer("clip_l"),
                                   unet=model.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


class UnetTimer:
    """Seconds inside the UNet's forward (synchronised on CUDA)."""

    def __init__(self, unet, device):
        import torch

        self.seconds = 0.0
        self._start = 0.0
        self.cuda = device.type == "cuda"
        self._sync = torch.cuda.synchronize if self.cuda else (lambda: None)
        self.handles = [unet.register_forward_pre_hook(self._enter), unet.register_forward_hook(self._leave)]

    def _enter(self, *_):
        self._sync()
        self._start = time.perf_counter()

    def _leave(self, *_):
        self._sync()
        self.seconds += time.perf_counter() - self._start

    def remove(self):
        for handle in self.handles:
            handle.remove()


def resident_bytes(model) -> int:
    """Bytes of `model`'s parameters and buffers that sit on a CUDA device now."""
    modules = [model.unet, model.vae, *(m for m in (model.text_encoder.clip_l, model.text_encoder.clip_g,
                                                    model.text_encoder.clip_h) if m is not None)]
    seen, total = set(), 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_cuda and tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


def run_once(args, variant: str, model, size: int, seed: int):
    """(seconds, UNet seconds, peak bytes, the image as an int16 array or None for diffusers') of one image."""
    import torch

    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.params import Txt2ImgParams
    from sdwebui.pipelines.txt2img import txt2img

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    gc.collect()
    others = 0
    if cuda:
        torch.cuda.synchronize()
        others = torch.cuda.memory_allocated(device) - resident_bytes(model)
        torch.cuda.reset_peak_memory_stats(device)
    timer = UnetTimer(model.unet, device)
    start = time.perf_counter()
    image = None
    try:
        if variant == "diffusers":
            pipe = diffusers_pipeline(model)
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator("cpu").manual_seed(seed)
            pipe(PROMPT, negative_prompt=NEGATIVE, width=size, height=size, num_inference_steps=args.steps,
                 guidance_scale=7.0, generator=generator, output_type="pil")
        else:
            params = Txt2ImgParams(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=args.steps,
                                   cfg_scale=7.0, seed=seed, sampler="Euler", scheduler="Automatic")
            image = txt2img(GenerationContext(model=model), params).images[0]
        if cuda:
            torch.cuda.synchronize()
    finally:
        timer.remove()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - others if cuda else 0
    return seconds, timer.seconds, peak, None if image is None else np.asarray(image, dtype=np.int16)


def bench_family(args, family: str, dtype: str, size: int, variants: list[str], data_dir: Path) -> list[Result]:
    import torch

    checkpoint = checkpoint_path(args, family)
    models, results = {}, {}
    base = None
    for variant in variants:
        result = results[variant] = Result(family, dtype, variant)
        try:
            if variant in ("diffusers", "default"):
                base = base or load_variant(args, family, dtype, "default", checkpoint, data_dir)
                models[variant] = base
            else:
                models[variant] = load_variant(args, family, dtype, variant, checkpoint, data_dir)
            start = time.perf_counter()
            run_once(args, variant, models[variant], size, seed=1)  # warm-up (compile's compile)
            result.warmup_seconds = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - a variant that cannot run is reported, the others go on
            result.error = f"{type(error).__name__}: {error}"[:200]
            models.pop(variant, None)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    first_images: dict[str, np.ndarray] = {}
    for round_index in range(args.repeats):  # interleaved: A B C ... A B C ...
        for variant in variants:
            if variant not in models:
                continue
            try:
                seconds, unet_seconds, peak, image = run_once(args, variant, models[variant], size,
                                                              seed=100 + round_index)
            except Exception as error:  # noqa: BLE001
                results[variant].error = f"{type(error).__name__}: {error}"[:200]
                models.pop(variant)
                continue
            if round_index == 0 and image is not None:
                first_images[variant] = image
            results[variant].seconds.append(seconds)
            results[variant].unet_seconds.append(unet_seconds)
            if torch.device(args.device).type == "cuda":
                results[variant].peak_bytes.append(peak)
    reference = first_images.get("default")
    for variant, image in first_images.items():
        if reference is not None and image.shape == reference.shape:
            difference = np.abs(image - reference)
            results[variant].levels_vs_default = (float(difference.mean()), int(difference.max()))
    models.clear()
    base = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return [results[v] for v in variants]


def budget_check(args, family: str, dtype: str) -> dict:
    """lowvram in a child process capped at LOWVRAM_BUDGET_GB[family]: did one image fit, and its peak."""
    gb = LOWVRAM_BUDGET_GB[family]
    command = [sys.executable, str(Path(__file__).resolve()), "--budget-child", family, dtype, str(gb),
               "--device", args.device, "--steps", str(min(args.steps, 4)), "--out", str(args.out)]
    if args.tiny:
        command.append("--tiny")
    if args.size:
        command += ["--size", str(args.size)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"family": family, "dtype": dtype, "budget_gb": gb, "fits": False,
                "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def budget_child(args) -> int:
    import torch

    family, dtype, gb = args.budget_child[0], args.budget_child[1], float(args.budget_child[2])
    device = torch.device(args.device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gb * 2**30 / total), device)
    size = args.size or (64 if args.tiny else FAMILIES[family])
    with tempfile.TemporaryDirectory() as data_dir:
        model = load_variant(args, family, dtype, "lowvram", checkpoint_path(args, family), Path(data_dir))
        try:
            seconds, _, peak, _ = run_once(args, "lowvram", model, size, seed=1)
        except torch.OutOfMemoryError as error:
            print(json.dumps({"family": family, "dtype": dtype, "budget_gb": gb, "fits": False,
                              "error": str(error).splitlines()[0][:200]}))
            return 0
    print(json.dumps({"family": family, "dtype": dtype, "budget_gb": gb, "fits": True, "seconds": round(seconds, 2),
                      "peak_gb": round(peak / 2**30, 3)}))
    return 0


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[Result], steps: int) -> str:
    lines = ["| family | dtype | variant | it/s | s/image | peak VRAM GB | it/s vs diffusers | s/image vs diffusers |"
             " VRAM vs diffusers | image vs default (mean / max levels) | warm-up s | note |", "|" + "---|" * 12]
    reference = {(r.family, r.dtype): r for r in results if r.variant == "diffusers"}
    for r in results:
        ref = reference.get((r.family, r.dtype))
        ips, ref_ips = r.it_per_s(steps), ref.it_per_s(steps) if ref else None
        ratio_ips = ips / ref_ips if ips and ref_ips else None
        ratio_s = r.s_per_image / ref.s_per_image if ref and r.s_per_image and ref.s_per_image else None
        ratio_vram = r.peak_gb / ref.peak_gb if ref and r.peak_gb and ref.peak_gb else None
        levels = "-" if r.levels_vs_default is None else f"{r.levels_vs_default[0]:.2f} / {r.levels_vs_default[1]}"
        lines.append(f"| {r.family} | {r.dtype} | {r.variant} | {fmt(ips, '.2f')} | {fmt(r.s_per_image, '.3f')} | "
                     f"{fmt(r.peak_gb, '.2f')} | {fmt(ratio_ips, '.2f')} | {fmt(ratio_s, '.2f')} | "
                     f"{fmt(ratio_vram, '.2f')} | {levels} | {r.warmup_seconds:.1f} | {r.error or ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.budget_child:
        return budget_child(args)
    runs = plan(args)
    print(f"device {args.device}; {'tiny' if args.tiny else 'full-size'} random-weight models; Euler, CFG 7, "
          f"{args.steps} steps; {args.repeats} interleaved rounds after a warm-up each")
    for family, dtype, size, variants in runs:
        print(f"  {family} {size}x{size} {dtype}: {' '.join(variants)}")
    if args.dry_run:
        return 0
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here (use --device cpu --tiny for a smoke run)", file=sys.stderr)
        return 2
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    results: list[Result] = []
    budgets: list[dict] = []
    with tempfile.TemporaryDirectory() as data_dir:
        for family, dtype, size, variants in runs:
            done = bench_family(args, family, dtype, size, variants, Path(data_dir))
            results += done
            # Each family and dtype is reported as soon as it is measured (a device run cut off by its time limit
            # still returns what it measured).
            print(table(done, args.steps), flush=True)
            if "lowvram" in variants and not args.no_budget_check and device.type == "cuda":
                budgets.append(budget_check(args, family, dtype))
                print(budget_line(budgets[-1]), flush=True)
            if args.json:
                write_json(args, results, budgets)
    if len(runs) > 1:
        print("all runs:\n" + table(results, args.steps))
        for budget in budgets:
            print(budget_line(budget))
    return 1 if any(r.error for r in results) else 0


def budget_line(budget: dict) -> str:
    verdict = f"fits, peak {budget['peak_gb']} GB, {budget['seconds']} s/image" if budget["fits"] else \
        f"does NOT fit: {budget.get('error')}"
    return f"lowvram in {budget['budget_gb']} GB ({budget['family']} {budget['dtype']}): {verdict}"


def write_json(args, results: list[Result], budgets: list[dict]) -> None:
    args.json.write_text(json.dumps({
        "device": args.device, "steps": args.steps, "repeats": args.repeats, "budgets": budgets,
        "results": [{**{k: v for k, v in vars(r).items()}, "it_per_s": r.it_per_s(args.steps),
                     "s_per_image": r.s_per_image, "peak_gb": r.peak_gb} for r in results]}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
