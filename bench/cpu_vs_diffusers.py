"""CPU benchmark against diffusers' own pipeline, interleaved A B A B in one process (issue 16).

A full-size SD1.5-architecture checkpoint with random weights (written once to bench/out/, fp16 single file in the
LDM layout) is loaded through our real loader; diffusers' `StableDiffusionPipeline` is built on the same modules,
so the two differ only in the pipeline code. Each size runs ours and theirs alternately (`--repeats` pairs after
one warm-up each), same prompt, sigmas (Euler), CFG and seed. Every UNet, text-encoder and VAE-decoder call is
timed by forward hooks on the shared modules, so each image's seconds split into text encode, UNet steps, VAE
decode and the rest (pipeline code).

The loader: our `load_checkpoint` against reading the file's bytes (page cache warm, both), and the peak RSS of a
fresh process that loads the checkpoint (`VmHWM`), in a subprocess each; the model classes' first import in that
process is timed apart from the load (once per process, not per checkpoint).

    .venv/bin/python bench/cpu_vs_diffusers.py --runs 256:8 512:4 --repeats 2 --threads 2

Targets (issue 16): ours <= 0.8x diffusers' seconds per image at both sizes; load <= 1.5x the raw read.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.random_checkpoint import write_random_sd15  # noqa: E402
from bench.txt2img_vs_diffusers import NEGATIVE, PROMPT, diffusers_pipeline  # noqa: E402
from sdwebui.core.samplers import resolve_sampling  # noqa: E402
from sdwebui.models.loader import load_checkpoint  # noqa: E402
from sdwebui.pipelines.context import GenerationContext  # noqa: E402
from sdwebui.pipelines.params import Txt2ImgParams  # noqa: E402
from sdwebui.pipelines.sampling import make_denoiser  # noqa: E402
from sdwebui.pipelines.txt2img import txt2img  # noqa: E402

PHASES = ("text", "unet", "vae")


class PhaseTimer:
    """Seconds spent inside each phase's modules (forward pre/post hooks; nested calls counted once)."""

    def __init__(self, modules: dict[str, list[torch.nn.Module]]):
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth: dict[str, int] = defaultdict(int)
        self._start: dict[str, float] = {}
        self.handles = []
        for phase, targets in modules.items():
            for module in targets:
                self.handles.append(module.register_forward_pre_hook(self._enter(phase)))
                self.handles.append(module.register_forward_hook(self._leave(phase)))

    def _enter(self, phase):
        def hook(module, args):
            if self._depth[phase] == 0:
                self._start[phase] = time.perf_counter()
            self._depth[phase] += 1
        return hook

    def _leave(self, phase):
        def hook(module, args, output):
            self._depth[phase] -= 1
            if self._depth[phase] == 0:
                self.seconds[phase] += time.perf_counter() - self._start[phase]
        return hook

    def take(self) -> dict[str, float]:
        taken = {phase: self.seconds.get(phase, 0.0) for phase in PHASES}
        self.seconds.clear()
        return taken


def timed(fn, timer: PhaseTimer) -> dict[str, float]:
    gc.collect()
    timer.take()
    start = time.perf_counter()
    fn()
    total = time.perf_counter() - start
    phases = timer.take()
    return {"total": total, **phases, "other": total - sum(phases.values())}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def loader_figures(checkpoint: Path, threads: int | None, source: Path = ROOT) -> dict[str, float]:
    """Raw read, our loader (each in a fresh process, page cache warm) and each process's peak RSS. `source`: the
    sdwebui tree whose loader runs (another checkout, to compare a change)."""
    prelude = "import resource, sys, time; sys.path.insert(0, %r)\n" % str(source)
    if threads:
        prelude += f"import torch; torch.set_num_threads({threads})\n"
    hwm = ("print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    raw = prelude + (
        f"t = time.perf_counter()\nf = open({str(checkpoint)!r}, 'rb')\n"
        "while f.readinto(buf := bytearray(64 << 20)): pass\n"
        "print(time.perf_counter() - t)\n" + hwm)
    # The model classes' first import (diffusers' UNet and VAE, transformers' CLIP: ~4 s on 2 cores) is paid once
    # per process, not per load (a server pays it in its start-up load), so it is timed on its own.
    ours = prelude + (
        "import torch\nt = time.perf_counter()\nfrom sdwebui.models.loader import load_checkpoint\n"
        "from diffusers import AutoencoderKL, UNet2DConditionModel\nfrom transformers import CLIPTextModel\n"
        "print(time.perf_counter() - t)\n"
        f"t = time.perf_counter()\nm = load_checkpoint({str(checkpoint)!r}, device='cpu', dtype=torch.float32,"
        " vae_dtype=torch.float32)\nprint(time.perf_counter() - t)\n" + hwm)
    figures = {}
    for name, code in (("raw_read", raw), ("ours", ours), ("raw_read_2", raw), ("ours_2", ours)):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        if name.startswith("ours"):
            figures[f"{name}_import_s"] = float(out.pop(0))
        figures[f"{name}_s"], figures[f"{name}_peak_rss_mib"] = float(out[0]), int(out[1]) / 1024
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["256:8", "512:4"], help="SIZE:STEPS pairs")
    parser.add_argument("--repeats", type=int, default=2, help="ours/diffusers pairs per size, after a warm-up")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "bench" / "out" / "sd15-random-fp16.safetensors")
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--loader-only", action="store_true")
    parser.add_argument("--loader-source", type=Path, default=ROOT,
                        help="an sdwebui tree whose loader to measure (e.g. a `git archive` of another commit)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    write_random_sd15(args.checkpoint)

    report: dict = {"threads": torch.get_num_threads(), "runs": []}
    if not args.skip_loader:
        report["loader"] = f = loader_figures(args.checkpoint, args.threads, args.loader_source)
        raw, ours = min(f["raw_read_s"], f["raw_read_2_s"]), min(f["ours_s"], f["ours_2_s"])
        imports = min(f["ours_import_s"], f["ours_2_import_s"])
        print(f"loader ({args.loader_source}): ours {ours:.2f}s vs raw read {raw:.2f}s (ratio {ours / raw:.2f}), "
              f"plus {imports:.2f}s for the model classes' first import in a process; peak RSS ours {max(f['ours_peak_rss_mib'], f['ours_2_peak_rss_mib']):.0f} MiB, raw read "
              f"{f['raw_read_peak_rss_mib']:.0f} MiB", flush=True)
    if args.loader_only:
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return 0

    model = load_checkpoint(args.checkpoint, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    pipe = diffusers_pipeline(model)
    timer = PhaseTimer({"text": [model.text_encoder.clip_l], "unet": [model.unet],
                        "vae": [model.vae.decoder, model.vae.post_quant_conv]})
    sampling = resolve_sampling("Euler", "Automatic")
    for run in args.runs:
        size, steps = (int(part) for part in run.split(":"))
        params = Txt2ImgParams(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=steps,
                               cfg_scale=7.0, sampler="Euler", seed=1234, rng="cpu")
        sigmas = sampling.sampler.sigmas(steps, make_denoiser(model), "Automatic").tolist()
        ctx = GenerationContext(model=model)

        def ours():
            return txt2img(ctx, params)

        def theirs():
            return pipe(PROMPT, negative_prompt=NEGATIVE, width=size, height=size, guidance_scale=7.0,
                        sigmas=sigmas, generator=torch.Generator("cpu").manual_seed(1234), output_type="pil")

        timed(ours, timer), timed(theirs, timer)  # warm-up
        ours_runs, theirs_runs = [], []
        for _ in range(args.repeats):  # interleaved: A B A B
            ours_runs.append(timed(ours, timer))
            theirs_runs.append(timed(theirs, timer))
        a, b = median_of(ours_runs), median_of(theirs_runs)
        report["runs"].append({"size": size, "steps": steps, "ours": a, "diffusers": b,
                               "ratio": a["total"] / b["total"]})

    print(f"CPU, {report['threads']} threads; full-size SD1.5 architecture, random weights; Euler, CFG 7; "
          f"medians of {args.repeats} interleaved pairs")
    print(f"{'run':>10} | {'':9} | {'total s':>8} | {'text':>6} | {'UNet':>7} | {'VAE':>6} | {'other':>6}")
    for row in report["runs"]:
        label = f"{row['size']}²×{row['steps']}"
        for who in ("ours", "diffusers"):
            f = row[who]
            print(f"{label:>10} | {who:9} | {f['total']:8.2f} | {f['text']:6.2f} | {f['unet']:7.2f} | "
                  f"{f['vae']:6.2f} | {f['other']:6.2f}")
        print(f"{label:>10} | {'ratio':9} | {row['ratio']:8.3f} | "
              + " | ".join(f"{row['ours'][p] / max(row['diffusers'][p], 1e-9):{w}.3f}"
                           for p, w in (("text", 6), ("unet", 7), ("vae", 6), ("other", 6))))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
