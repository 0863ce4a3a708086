"""The `sdwebui` command: the server (the default), headless generation and model listing.

Every user-facing failure is one line on stderr naming the problem, and a non-zero exit; nothing is written
for a job that failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sdwebui import __version__
from sdwebui.app import add_serve_flags, config_from_args, serve
from sdwebui.cli_models import add_model_tool_commands, run_model_tool
from sdwebui.cli_jobs import (  # noqa: F401 - param_values: part of the CLI's API (tests read flags with it)
    CommandError,
    check_device,
    add_caption_flags,
    add_extras_flags,
    add_generation_flags,
    add_img2img_flags,
    param_values,
    run_caption,
    run_extras,
    run_generation,
    run_png_info,
)
from sdwebui.config import COMPILE_MODES, DEMO_CHECKPOINT, Paths
from sdwebui.core.errors import ParamError
from sdwebui.models.hashing import sha256_of
from sdwebui.prompts.styles import StyleFileError, UnknownStyleError
from sdwebui.server.config import ConfigError


def add_path_flags(parser: argparse.ArgumentParser) -> None:
    """A1111's folder flags, accepted by every command that loads models."""
    group = parser.add_argument_group("folders (A1111 flag names)")
    group.add_argument("--data-dir", help="root for models/, outputs/, embeddings/ (default: current directory)")
    group.add_argument("--models-dir", help="default: <data-dir>/models")
    group.add_argument("--ckpt-dir", help="checkpoints folder (default: <models-dir>/Stable-diffusion)")
    group.add_argument("--vae-dir", help="VAE folder (default: <models-dir>/VAE)")
    group.add_argument("--lora-dir", help="LoRA folder (default: <models-dir>/Lora)")
    group.add_argument("--embeddings-dir", help="textual-inversion folder (default: <data-dir>/embeddings)")
    group.add_argument(
        "--styles-file", action="append", metavar="PATH",
        help="A1111 styles.csv to read; repeatable, wildcards allowed (default: <data-dir>/styles.csv)",
    )
    group.add_argument("--wildcards-dir", metavar="DIR",
                       help="dynamic prompts' wildcard files, __name__ -> name.txt (default: <data-dir>/wildcards)")
    group.add_argument("--controlnet-dir", metavar="DIR",
                       help="another ControlNet models folder, besides <models-dir>/ControlNet")
    for family in ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT"):
        group.add_argument(
            f"--{family.lower()}-models-path", metavar="DIR",
            help=f"{family} upscaler models folder (default: <models-dir>/{family})",
        )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def add_memory_flags(group) -> None:
    """A1111's memory flags (and Forge's `--always-high-vram`); without them the mode is chosen from the free VRAM
    when a model is loaded (`models.memory`)."""
    group.add_argument("--medvram", action="store_true",
                       help="A1111's flag: keep only the model part in use (text encoder, UNet, VAE) on the GPU")
    group.add_argument("--lowvram", action="store_true",
                       help="A1111's flag: stream the UNet's layers to the GPU as they run (least VRAM, slowest)")
    group.add_argument("--medvram-sdxl", action="store_true", help="A1111's flag: --medvram for SDXL models only")
    group.add_argument("--always-high-vram", action="store_true",
                       help="Forge's flag: keep every part on the GPU (no automatic offloading)")
    group.add_argument("--vram-budget", type=_positive_float, metavar="GB",
                       help="plan as if the GPU had at most this much free memory (memory mode, tiled VAE)")
    group.add_argument("--opt-channelslast", action="store_true",
                       help="A1111's flag: store the UNet's and VAE's weights channels-last (faster convolutions "
                            "on tensor-core GPUs)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet (static shapes: each new image or batch size compiles once; "
                            "seeds and prompts do not). Needs the whole model on the GPU (not with --medvram or "
                            "--lowvram)")
    group.add_argument("--compile-mode", choices=COMPILE_MODES, metavar="MODE",
                       help="torch.compile's mode; implies --compile. reduce-overhead: replay CUDA graphs (fastest "
                            "for small batches on a fast GPU); max-autotune: also search kernels (long first "
                            "compile); max-autotune-no-cudagraphs; default")


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("device")
    group.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cuda:1, mps or cpu")
    group.add_argument(
        "--precision", default="auto", choices=["auto", "half", "bf16", "full"], help="UNet/text encoder precision"
    )
    group.add_argument("--no-half", action="store_true", help="A1111's flag: run everything in fp32")
    group.add_argument(
        "--threads", type=_positive_int, metavar="N",
        help="CPU threads for generation (default: torch's choice, one per core); on a CPU shared with other "
        "work, fewer threads are often faster",
    )
    group.add_argument("--no-half-vae", action="store_true", help="A1111's flag: run the VAE in fp32")
    group.add_argument(
        "--prediction-type",
        choices=["epsilon", "v_prediction"],
        help="override the detected prediction type (SD2 768-v models without a .yaml beside them)",
    )
    add_memory_flags(group)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdwebui", description="Stable Diffusion WebUI (A1111-compatible).")
    parser.add_argument("--version", action="version", version=f"sdwebui {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = commands.add_parser("txt2img", help="generate images from a prompt")
    gen.add_argument("prompt")
    add_generation_flags(gen, "txt2img")
    add_path_flags(gen)
    add_device_flags(gen)

    i2i = commands.add_parser("img2img", help="repaint an image (inpaint with --mask)")
    i2i.add_argument("init_image", metavar="INIT_IMAGE")
    i2i.add_argument("prompt")
    add_img2img_flags(i2i)
    add_generation_flags(i2i, "img2img")
    add_path_flags(i2i)
    add_device_flags(i2i)

    ext = commands.add_parser("extras", help="upscale an image (A1111's Extras)")
    ext.add_argument("image", metavar="IMAGE")
    add_extras_flags(ext)
    add_path_flags(ext)
    add_device_flags(ext)

    cap = commands.add_parser("caption", help="tag a folder's images with a WD14 tagger: NAME.txt beside each")
    add_caption_flags(cap)
    add_path_flags(cap)

    png = commands.add_parser("png-info", help="print the generation parameters an image carries")
    png.add_argument("image", metavar="IMAGE")

    models = commands.add_parser("models", help="list checkpoints with family, prediction type and hash")
    add_path_flags(models)

    loras = commands.add_parser("loras", help="list LoRA / LyCORIS files: module types, base model, hash")
    add_path_flags(loras)
    embeddings = commands.add_parser("embeddings", help="list textual-inversion embeddings: vectors, width, hash")
    add_path_flags(embeddings)

    commands.add_parser("samplers", help="list samplers (aliases, default schedule) and schedule types")

    add_model_tool_commands(commands, add_path_flags)

    serve = commands.add_parser("serve", help="start the server (the default when no command is given)")
    add_serve_flags(serve)
    add_path_flags(serve)
    add_device_flags(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = with_default_command(sys.argv[1:] if argv is None else list(argv))
    except CommandError as error:
        print(f"sdwebui: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("sdwebui: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`sdwebui samplers | head`): not an error; keep Python's exit flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # noqa: BLE001 - the one place that turns failures into a message
        if args.debug:
            raise
        print(f"sdwebui: error: {describe_error(error)}", file=sys.stderr)
        return 2 if is_user_error(error) else 1


GLOBAL_FLAGS = ("--debug",)
"""Options of `sdwebui` itself that take no value and may come before the command."""


def with_default_command(argv: list[str]) -> list[str]:
    """`argv` with `serve` put in when no command is named, so `sdwebui`, `./webui.sh --port 7861` and
    A1111-style `./webui.sh --listen --api-auth u:p` start the server, as A1111's `webui.sh ARGS` does. A word
    that is neither a command nor an option is a CommandError listing the commands."""
    i = 0
    while i < len(argv) and argv[i] in GLOBAL_FLAGS:
        i += 1
    if i < len(argv) and (argv[i] in COMMANDS or argv[i] in ("-h", "--help", "--version")):
        return argv
    if i < len(argv) and not argv[i].startswith("-"):
        raise CommandError(f"unknown command {argv[i]!r}; the commands are: {', '.join(COMMANDS)} "
                           "(none: serve; sdwebui COMMAND --help for its options)")
    return [*argv[:i], "serve", *argv[i:]]


def is_user_error(error: Exception) -> bool:
    from sdwebui.models.files import ModelFileError
    from sdwebui.models.manager import ModelNotFoundError

    return isinstance(error, (ModelFileError, ModelNotFoundError, ParamError, StyleFileError, UnknownStyleError,
                              CommandError))


def describe_error(error: Exception) -> str:
    from sdwebui.models.manager import ModelNotFoundError

    if isinstance(error, ModelNotFoundError) and error.args:
        return str(error.args[0])
    if isinstance(error, ParamError) and error.loc in (("checkpoint",), ("vae",), ("styles",)):
        return error.message  # "checkpoint x not found in ...", "unknown style 'x'": the message names it
    text = str(error) or type(error).__name__
    if not is_user_error(error):
        text = f"{type(error).__name__}: {text} (run with --debug for the traceback)"
    return text


def paths_from(args):
    return Paths.from_flags(
        data_dir=args.data_dir,
        models_dir=args.models_dir,
        ckpt_dir=args.ckpt_dir,
        vae_dir=args.vae_dir,
        lora_dir=args.lora_dir,
        embeddings_dir=args.embeddings_dir,
        styles_file=getattr(args, "styles_file", None),
        wildcards_dir=getattr(args, "wildcards_dir", None),
        controlnet_dir=getattr(args, "controlnet_dir", None),
        upscaler_dirs={
            family: getattr(args, f"{family.lower()}_models_path", None)
            for family in ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")
        },
    )


def run_txt2img(args) -> int:
    return run_generation(args, paths_from(args), "txt2img")


def run_img2img(args) -> int:
    return run_generation(args, paths_from(args), "img2img")


def run_extras_command(args) -> int:
    return run_extras(args, paths_from(args))


def run_caption_command(args) -> int:
    return run_caption(args, paths_from(args))


def run_models(args) -> int:
    from sdwebui.models.files import ModelFileError
    from sdwebui.models.loader import describe_checkpoint, find_checkpoints

    paths = paths_from(args)
    checkpoints = find_checkpoints(paths.ckpt_dir)
    if not checkpoints and DEMO_CHECKPOINT.is_file():
        checkpoints = [DEMO_CHECKPOINT]
        print(f"(no checkpoints in {paths.ckpt_dir}; the built-in demo model is used)")
    if not checkpoints:
        print(f"no checkpoints in {paths.ckpt_dir}")
        return 0
    for path in checkpoints:
        try:
            summary = describe_checkpoint(path)
            short_hash = sha256_of(path, paths.cache_dir)[:10] if path.is_file() else "-"
            print(f"{path.stem} [{short_hash}]\t{summary.family.value}\t{summary.prediction_type}\t{path}")
        except ModelFileError as error:
            print(f"{path.stem}\tunreadable: {error.reason}\t{path}")
    return 0


def run_loras(args) -> int:
    from sdwebui.models.files import ModelFileError
    from sdwebui.models.lora import LoraLibrary

    paths = paths_from(args)
    library = LoraLibrary(paths.lora_dir, hash_cache_dir=paths.cache_dir)
    files = library.files()
    if not files:
        print(f"no LoRA files in {paths.lora_dir}")
        return 0
    for name, file in files.items():
        alias = f" (alias {file.alias})" if file.alias != name else ""
        try:
            summary = library.describe(file)
            kinds = "+".join(summary.kinds) or "no layers"
            print(f"{name} [{library.shorthash(file)}]{alias}\t{kinds}\t{summary.family}\t"
                  f"{summary.layers} layers\t{file.path}")
        except ModelFileError as error:
            print(f"{name}\tunreadable: {error.reason}\t{file.path}")
    return 0


def run_embeddings(args) -> int:
    from sdwebui.models.embeddings import EmbeddingDatabase

    paths = paths_from(args)
    database = EmbeddingDatabase(paths.embeddings_dir)
    found, errors = database.embeddings, database.errors
    if not found and not errors:
        print(f"no embeddings in {paths.embeddings_dir}")
        return 0
    families = {768: "sd1 (CLIP-L)", 1024: "sd2 (OpenCLIP-H)", 1280: "sdxl-refiner (CLIP-G)", 2048: "sdxl"}
    for name, embedding in found.items():
        family = families.get(embedding.shape, f"{embedding.shape}-wide")
        vectors = f"{embedding.vector_count} vector{'s' if embedding.vector_count != 1 else ''}"
        print(f"{name} [{embedding.shorthash}]\t{vectors}\t{family}\t{embedding.path}")
    for name, reason in errors.items():
        print(f"{name}\tunreadable: {reason}")
    return 0


def run_samplers(args) -> int:
    from sdwebui.core.samplers import SAMPLERS
    from sdwebui.core.schedules import SCHEDULES

    rows = [("sampler", "aliases", "default schedule (Automatic)")]
    for spec in SAMPLERS.values():
        schedule = "own (LCM timesteps)" if spec.automatic_sigmas is not None else spec.default_schedule
        if spec.discard_penultimate_sigma:
            schedule += ", discard penultimate sigma"
        rows.append((spec.name, ", ".join(spec.aliases), schedule))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, aliases, schedule in rows:
        print(f"{name:<{width[0]}}  {aliases:<{width[1]}}  {schedule}")
    print()
    print("schedule types: " + ", ".join(SCHEDULES))
    return 0


def run_serve(args) -> int:
    check_device(args.device)  # before the server starts: a job would fail on it later
    try:
        config = config_from_args(args, paths_from(args))
    except ConfigError as error:  # a malformed --api-auth or an unreadable credentials file: one line, exit 2
        print(f"sdwebui: error: {error}", file=sys.stderr)
        return 2
    return serve(config)


COMMANDS = {
    "txt2img": run_txt2img,
    "img2img": run_img2img,
    "extras": run_extras_command,
    "png-info": run_png_info,
    "caption": run_caption_command,
    "models": run_models,
    "loras": run_loras,
    "embeddings": run_embeddings,
    "samplers": run_samplers,
    "serve": run_serve,
    "merge": lambda args: run_model_tool(args, paths_from(args)),
    "bake-lora": lambda args: run_model_tool(args, paths_from(args)),
    "extract-lora": lambda args: run_model_tool(args, paths_from(args)),
    "convert": lambda args: run_model_tool(args, paths_from(args)),
}

if __name__ == "__main__":
    sys.exit(main())
