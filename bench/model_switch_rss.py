"""Process memory while switching checkpoints: load A, then B, then A again through the model manager.

The manager must release a model before loading the next, so resident memory after B and after A-again should
be about one model, not two or three. Prints RSS (and CUDA memory when on a GPU) after each load.

    .venv/bin/python bench/model_switch_rss.py
    .venv/bin/python bench/model_switch_rss.py --checkpoints-limit 2   # A1111's sd_checkpoints_limit: A is kept

With `--checkpoints-limit 2` (or `--checkpoint-cache 1`) the switch back to A takes it from the RAM cache, and
RSS after B is two models.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.random_checkpoint import write_random_sd15  # noqa: E402
from sdwebui.config import Paths  # noqa: E402
from sdwebui.models.devices import plan_devices  # noqa: E402
from sdwebui.models.manager import ModelManager  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--folder", type=Path, default=ROOT / "bench" / "out" / "switch")
    parser.add_argument("--checkpoints-limit", type=int, default=1, help="A1111's sd_checkpoints_limit")
    parser.add_argument("--checkpoint-cache", type=int, default=0, help="A1111's sd_checkpoint_cache")
    args = parser.parse_args()

    a = write_random_sd15(args.folder / "Stable-diffusion" / "random-a.safetensors", seed=1)
    b = write_random_sd15(args.folder / "Stable-diffusion" / "random-b.safetensors", seed=2)
    gc.collect()
    paths = Paths.from_flags(data_dir=args.folder, ckpt_dir=args.folder / "Stable-diffusion")
    plan = plan_devices(args.device)
    manager = ModelManager(paths, plan, keep=lambda: (args.checkpoints_limit, args.checkpoint_cache))
    print(f"device: {plan.describe()}; file size: {a.stat().st_size / 2**20:.0f} MiB each")
    print(f"start: RSS {rss_mib():.0f} MiB")
    for label, path in (("A", a), ("B", b), ("A again", a), ("B again", b)):
        start = time.perf_counter()
        manager.get(path)
        seconds = time.perf_counter() - start
        gc.collect()
        cuda = ""
        if plan.device.type == "cuda":
            cuda = f", CUDA allocated {torch.cuda.memory_allocated() / 2**20:.0f} MiB"
        print(f"after loading {label}: {seconds:.2f}s, RSS {rss_mib():.0f} MiB{cuda}")
    manager.unload()
    gc.collect()
    print(f"after unload: RSS {rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
