"""The model-tool commands of `sdwebui`: `merge` (A1111's Checkpoint Merger), `bake-lora`, `extract-lora` and
`convert`, with a progress bar on a terminal.

    sdwebui merge A B [C] --method weighted-sum|add-difference|no-interpolation --multiplier M --name NAME
                  [--save-as-half] [--bake-in-vae VAE] [--discard-weights REGEX] [--format safetensors|ckpt]
    sdwebui bake-lora CKPT LORA[:WEIGHT]... --name NAME
    sdwebui extract-lora TUNED BASE --rank R [--conv-rank R] --name NAME     (to the LoRA folder)
    sdwebui convert CKPT [--precision fp16|bf16|fp32|keep] [--keep-ema] [--name NAME]

A, B, C and the VAE resolve as `--model` and `--vae` do: a name from the model list (file name, name without
extension, A1111's title), a hash, or a path. The result is written to the checkpoints folder. Bad input is one
line on stderr naming the flag or the file, exit status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdwebui.cli_jobs import CommandError
from sdwebui.config import DEMO_CHECKPOINT, Paths
from sdwebui.core.errors import ParamError

MERGE_METHODS = ("weighted-sum", "add-difference", "no-interpolation")
CONFIG_FROM = {"abc": 0, "b": 1, "c": 2, "none": 3}
MERGE_FLAGS = {"primary_model_name": "A", "secondary_model_name": "B", "tertiary_model_name": "C",
               "custom_name": "--name", "discard_weights": "--discard-weights", "bake_in_vae": "--bake-in-vae",
               "metadata_json": "--metadata", "interp_method": "--method", "checkpoint_format": "--format",
               "config_source": "--config-from"}
"""The merge request's fields (A1111's names, which the engine's errors use) as the CLI calls them."""


def add_merge_parser(commands, add_path_flags) -> None:
    merge = commands.add_parser(
        "merge", help="merge two or three checkpoints (A1111's Checkpoint Merger)",
        description="Merge checkpoints as A1111's Checkpoint Merger: weighted-sum A*(1-M) + B*M, add-difference "
                    "A + (B-C)*M, or no-interpolation (A alone: convert, bake a VAE, discard weights). The result goes "
                    "to the checkpoints folder.")
    merge.add_argument("primary", metavar="A", help="primary model: a name from the model list, a hash or a path")
    merge.add_argument("secondary", metavar="B", nargs="?", help="secondary model (weighted-sum, add-difference)")
    merge.add_argument("tertiary", metavar="C", nargs="?", help="tertiary model (add-difference)")
    merge.add_argument("--method", choices=MERGE_METHODS,
                       help="default: add-difference with three models, weighted-sum with two, no-interpolation "
                            "with one")
    merge.add_argument("--multiplier", "-M", type=float, default=0.3, metavar="M", help="default 0.3 (A1111's)")
    merge.add_argument("--name", default="", help="file name in the checkpoints folder (default: A1111's, e.g. "
                                                  "'0.7(a) + 0.3(b)'); the extension is added")
    merge.add_argument("--save-as-half", action="store_true", help="store float32 weights as float16")
    merge.add_argument("--bake-in-vae", metavar="VAE", help="replace the VAE weights with this VAE file's")
    merge.add_argument("--discard-weights", default="", metavar="REGEX", help="leave out keys matching this regex")
    merge.add_argument("--format", choices=("safetensors", "ckpt"), default="safetensors")
    merge.add_argument("--config-from", choices=tuple(CONFIG_FROM), default="abc",
                       help="copy the .yaml beside A, B or C (abc: the first found; default), B, C, or none")
    merge.add_argument("--metadata", default="{}", metavar="JSON", help="extra safetensors metadata (a JSON object)")
    merge.add_argument("--no-metadata", action="store_true", help="write no metadata at all")
    merge.add_argument("--no-recipe", action="store_true", help="leave out sd_merge_recipe / sd_merge_models")
    merge.add_argument("--no-copy-metadata", action="store_true", help="do not copy the inputs' metadata")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing file of the same name")
    add_path_flags(merge)


def resolve_model(name: str, paths: Paths, what: str = "checkpoint") -> Path:
    """A checkpoint as `--model` takes it: a path, or a name / title / hash from the checkpoints folder."""
    from sdwebui.models.loader import find_checkpoints
    from sdwebui.models.manager import match_checkpoint

    candidate = Path(name).expanduser()
    if candidate.exists():
        return candidate.resolve()
    listed = find_checkpoints(paths.ckpt_dir)
    allowed = listed + ([DEMO_CHECKPOINT] if DEMO_CHECKPOINT.is_file() else [])
    found = match_checkpoint(str(name), allowed, paths.ckpt_dir, paths.cache_dir)
    if found is None:
        names = ", ".join(p.stem for p in listed[:20])
        raise CommandError(f"{what}: checkpoint {name!r} is neither a file nor in {paths.ckpt_dir}"
                           + (f" (available: {names})" if names else ""))
    return found


def resolve_vae_file(name: str, paths: Paths) -> Path:
    from sdwebui.models.manager import match_vae
    from sdwebui.models.vae import find_vaes

    candidate = Path(name).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    found = match_vae(str(name), find_vaes(paths.vae_dir, paths.ckpt_dir), paths.vae_dir)
    if found is None:
        raise CommandError(f"--bake-in-vae: VAE {name!r} is neither a file nor in {paths.vae_dir}")
    return found


def model_ref(path: Path, paths: Paths):
    from sdwebui.models.merge import ModelRef

    try:
        name = path.relative_to(paths.ckpt_dir).as_posix()
    except ValueError:
        name = path.name
    return ModelRef(path, name)


class ProgressBar:
    """A tqdm bar over the tensors (drawn on a terminal only)."""

    def __init__(self, label: str):
        self.label = label
        self._bar = None

    def __call__(self, done: int, total: int, text: str) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.label, unit="tensor", file=sys.stderr, disable=None,
                             dynamic_ncols=True, mininterval=0.5)
        self._bar.set_description_str(f"{self.label}: {text}", refresh=False)
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def param_error(error: ParamError, flags: dict[str, str]) -> CommandError:
    where = flags.get(error.field, error.field)
    return CommandError(f"{where}: {error.message}")


def run_merge(args, paths: Paths) -> int:
    from sdwebui.models.merge import MergeOptions, merge_checkpoints

    given = [name for name in (args.primary, args.secondary, args.tertiary) if name]
    method = args.method or {1: "no-interpolation", 2: "weighted-sum", 3: "add-difference"}[len(given)]
    refs = [model_ref(resolve_model(name, paths, role), paths) if name else None
            for name, role in ((args.primary, "A"), (args.secondary, "B"), (args.tertiary, "C"))]
    vae = resolve_vae_file(args.bake_in_vae, paths) if args.bake_in_vae else None
    options = MergeOptions(
        interp_method=method, multiplier=args.multiplier, save_as_half=args.save_as_half, custom_name=args.name,
        checkpoint_format=args.format, config_source=CONFIG_FROM[args.config_from], bake_in_vae=vae,
        discard_weights=args.discard_weights, save_metadata=not args.no_metadata, add_merge_recipe=not args.no_recipe,
        copy_metadata_fields=not args.no_copy_metadata, metadata_json=args.metadata, overwrite=args.overwrite)
    result = _run_tool("merge", MERGE_FLAGS, lambda bar: merge_checkpoints(
        *refs, options, ckpt_dir=paths.ckpt_dir, hash_cache_dir=paths.cache_dir, progress=bar))
    print(f"Checkpoint saved to {result.path} ({result.merged} tensors merged, {result.copied} copied"
          + (f", {result.baked} from the VAE" if result.baked else "")
          + (f", {result.discarded} discarded" if result.discarded else "") + ")")
    if result.config is not None:
        print(f"Config copied to {result.config}")
    return 0


def add_model_tool_commands(commands: argparse._SubParsersAction, add_path_flags) -> None:
    add_merge_parser(commands, add_path_flags)

    bake = commands.add_parser("bake-lora", help="merge LoRAs into a checkpoint (a new file)",
                               description="Merge one or more LoRA / LyCORIS files into a checkpoint's weights at the "
                                           "given weights, with the same code that applies them when generating.")
    bake.add_argument("checkpoint", metavar="CKPT", help="a name from the model list, a hash or a path")
    bake.add_argument("loras", metavar="LORA[:WEIGHT]", nargs="+", help="a LoRA name (models/Lora) or path; weight 1")
    bake.add_argument("--name", required=True, help="the new checkpoint's file name in the checkpoints folder")
    bake.add_argument("--overwrite", action="store_true", help="replace an existing file of the same name")
    add_path_flags(bake)

    extract = commands.add_parser("extract-lora", help="extract a LoRA from a fine-tune and its base model (SVD)",
                                  description="The difference TUNED - BASE as a LoRA (truncated SVD per layer, kohya "
                                              "key names), written to the LoRA folder.")
    extract.add_argument("tuned", metavar="TUNED")
    extract.add_argument("base", metavar="BASE")
    extract.add_argument("--rank", type=int, default=32, help="rank of linear and 1x1 layers (default 32)")
    extract.add_argument("--conv-rank", type=int, help="rank of 3x3 convolutions (default: --rank)")
    extract.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default="fp16")
    extract.add_argument("--name", required=True, help="the LoRA's file name in the LoRA folder")
    extract.add_argument("--overwrite", action="store_true")
    add_path_flags(extract)

    convert = commands.add_parser("convert", help="prune / convert a checkpoint: drop EMA, fp16/bf16, .ckpt -> "
                                                  ".safetensors")
    convert.add_argument("checkpoint", metavar="CKPT")
    convert.add_argument("--precision", choices=("fp16", "bf16", "fp32", "keep"), default="fp16",
                         help="float weights' precision (default fp16; the noise schedule stays float32)")
    convert.add_argument("--keep-ema", action="store_true", help="keep model_ema.* (dropped by default)")
    convert.add_argument("--name", help="file name in the checkpoints folder (default: <name>-<precision>)")
    convert.add_argument("--overwrite", action="store_true")
    add_path_flags(convert)


TOOL_FLAGS = {"tuned": "TUNED", "base": "BASE", "rank": "--rank", "name": "--name", "checkpoint": "CKPT",
              "loras": "LORA"}


def _lora_file(text: str, paths: Paths) -> tuple[Path, float]:
    from sdwebui.models.lora import LoraLibrary

    name, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            name, weight = head, float(tail)
        except ValueError:
            pass
    candidate = Path(name).expanduser()
    if candidate.is_file():
        return candidate.resolve(), weight
    found = LoraLibrary(paths.lora_dir).find(name)
    if found is None:
        raise CommandError(f"LORA: {name!r} is neither a file nor in {paths.lora_dir}")
    return found.path, weight


def _target(folder: Path, name: str, overwrite: bool) -> Path:
    from sdwebui.models.model_tools import tool_target

    return tool_target(folder, name, overwrite=overwrite)


def run_bake_lora(args, paths: Paths) -> int:
    from sdwebui.models.model_tools import bake_loras

    checkpoint = resolve_model(args.checkpoint, paths, "CKPT")
    loras = [_lora_file(text, paths) for text in args.loras]
    result = _run_tool("bake-lora", TOOL_FLAGS, lambda bar: bake_loras(
        checkpoint, loras, _target(paths.ckpt_dir, args.name, args.overwrite), overwrite=args.overwrite,
        progress=bar))
    print(f"Checkpoint saved to {result.path} ({result.counts['changed']} tensors changed by the LoRAs)")
    return 0


def run_extract_lora(args, paths: Paths) -> int:
    from sdwebui.models.model_tools import extract_lora

    tuned, base = resolve_model(args.tuned, paths, "TUNED"), resolve_model(args.base, paths, "BASE")
    result = _run_tool("extract-lora", {**TOOL_FLAGS, "rank": "--rank/--conv-rank"}, lambda bar: extract_lora(
        tuned, base, _target(paths.lora_dir, args.name, args.overwrite), rank=args.rank,
        conv_rank=args.conv_rank, precision=args.precision, overwrite=args.overwrite, progress=bar))
    print(f"LoRA saved to {result.path} ({result.counts['layers']} layers)")
    return 0


def run_convert(args, paths: Paths) -> int:
    from sdwebui.models.model_tools import convert_checkpoint

    source = resolve_model(args.checkpoint, paths, "CKPT")
    precision = None if args.precision == "keep" else args.precision
    name = args.name or f"{source.stem}-{args.precision if precision else 'pruned'}"
    result = _run_tool("convert", TOOL_FLAGS, lambda bar: convert_checkpoint(
        source, _target(paths.ckpt_dir, name, args.overwrite), precision=precision, drop_ema=not args.keep_ema,
        overwrite=args.overwrite, progress=bar))
    print(f"Checkpoint saved to {result.path} ({result.counts['tensors']} tensors)")
    return 0


def _run_tool(label: str, flags: dict[str, str], work):
    """Run a model tool (`work(progress_bar)`, which also picks its output file) under a progress bar; a
    ParamError becomes the CLI's one-line error naming the flag, and the tool's notes are printed. Returns its
    result."""
    bar = ProgressBar(label)
    try:
        result = work(bar)
    except ParamError as error:
        raise param_error(error, flags) from None
    finally:
        bar.close()
    for note in result.notes:
        print(note)
    return result


def run_model_tool(args, paths: Paths) -> int:
    return TOOL_COMMANDS[args.command](args, paths)


TOOL_COMMANDS = {"merge": run_merge, "bake-lora": run_bake_lora, "extract-lora": run_extract_lora,
                 "convert": run_convert}


__all__ = ["add_model_tool_commands", "run_model_tool", "run_merge", "resolve_model", "resolve_vae_file",
           "MERGE_METHODS"]
