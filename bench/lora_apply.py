"""Cost of applying a LoRA to a full-size SD1.5 model: first job, next job with the same set, restore.

A kohya-style rank-32 LoRA over every attention/feed-forward Linear of the UNet and every text-encoder Linear
(the usual sd-scripts target set) is written next to a random SD1.5 checkpoint, then applied three times through
`LoraLibrary.applied`. Prints the time of each entry and exit and checks the weights are bit-exact afterwards.

    .venv/bin/python bench/lora_apply.py [--device cpu|cuda] [--rank 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.random_checkpoint import write_random_sd15  # noqa: E402
from sdwebui.models.loader import load_checkpoint  # noqa: E402
from sdwebui.models.lora import LoraCall, LoraLibrary  # noqa: E402


def write_lora(model, path: Path, rank: int) -> int:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in model.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and "transformer_blocks" in name:
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.01
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.01
            tensors[f"{key}.alpha"] = torch.tensor(float(rank // 2))
    for name, module in model.text_encoder.towers[0].module.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = "lora_te_text_model_" + name.removeprefix("text_model.").replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.01
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.01
            tensors[f"{key}.alpha"] = torch.tensor(float(rank // 2))
    save_file({k: v.half() for k, v in tensors.items()}, path)
    return len(tensors) // 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--folder", type=Path, default=ROOT / "bench" / "out" / "lora")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    checkpoint = write_random_sd15(args.folder / "random-sd15.safetensors")
    dtype = getattr(torch, args.dtype)
    model = load_checkpoint(checkpoint, device=args.device, dtype=dtype, vae_dtype=dtype)
    lora_dir = args.folder / "Lora"
    lora_dir.mkdir(exist_ok=True)
    layers = write_lora(model, lora_dir / "bench.safetensors", args.rank)
    print(f"{layers} layers, rank {args.rank}, {args.device} {args.dtype}")
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}

    library = LoraLibrary(lora_dir)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    for label, multiplier in (("first job", 0.8), ("same set again", 0.8), ("other weight", 0.5)):
        sync()
        start = time.perf_counter()
        with torch.inference_mode(), library.applied(model, [LoraCall("bench", multiplier, multiplier)]) as report:
            sync()
            entered = time.perf_counter()
        sync()
        left = time.perf_counter()
        print(f"{label:>15}: enter {1000 * (entered - start):8.1f} ms (reused={report.reused}), "
              f"exit {1000 * (left - entered):6.2f} ms")
    after = model.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "weights not restored"
    print("weights restored bit-exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
