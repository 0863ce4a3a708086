"""The `sdwebui` command: the server (the default), headless generation and model listing.

Every user-facing failure is one line on stderr naming the problem, and a non-zero exit; nothing is written
for a job that failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from sdwebui import __version__
from sdwebui.app import add_serve_flags, build_services, config_from_args, serve
from sdwebui.config import DEMO_CHECKPOINT, Paths
from sdwebui.core.errors import ParamError
from sdwebui.models.hashing import sha256_of
from sdwebui.pipelines.params import GenerationParams, Txt2ImgParams, param_specs
from sdwebui.prompts.styles import StyleFileError, UnknownStyleError
from sdwebui.server.config import ConfigError, ServerConfig
from sdwebui.server.service import GenerationRequest


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


def add_param_flags(parser: argparse.ArgumentParser, cls: type[GenerationParams]) -> None:
    """One flag per generation parameter, from its declaration (`--steps`, `--cfg-scale`, `--hr-scale`, ...),
    grouped as the declarations group them. A flag left out leaves the parameter to the settings, then to its
    default (width and height: the checkpoint's native size)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in param_specs(cls):
        if not spec.cli_flags:
            continue
        target = parser
        if spec.group:
            target = groups.get(spec.group) or groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        help_text = spec.help or spec.label
        if spec.default is not None and spec.kind is not bool and spec.name not in ("width", "height"):
            help_text = f"{help_text} (default: {spec.default})"
        if spec.kind is bool:
            target.add_argument(*spec.cli_flags, dest=spec.name, action="store_const", const=True, default=None,
                                help=help_text)
        else:
            target.add_argument(*spec.cli_flags, dest=spec.name, type=spec.kind, default=None, help=help_text,
                                choices=spec.choices, metavar=None if spec.choices else spec.name.upper())


def param_values(args: argparse.Namespace, cls: type[GenerationParams]) -> dict[str, Any]:
    """The parameters the command line gave (the others are left to the settings and defaults)."""
    return {spec.name: getattr(args, spec.name) for spec in param_specs(cls)
            if spec.cli_flags and getattr(args, spec.name, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdwebui", description="Stable Diffusion WebUI (A1111-compatible).")
    parser.add_argument("--version", action="version", version=f"sdwebui {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = commands.add_parser("txt2img", help="generate images from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("--model", help="checkpoint name (from the checkpoints folder) or path; default: the first found")
    gen.add_argument("--vae", help='VAE file name or path; "None" = the checkpoint\'s own; default: Automatic')
    gen.add_argument("--styles", nargs="+", default=[], metavar="NAME",
                     help="apply these styles from the styles file, in order")
    add_param_flags(gen, Txt2ImgParams)
    gen.add_argument("--out", help="output folder (default: <data-dir>/outputs/txt2img-images)")
    add_path_flags(gen)
    add_device_flags(gen)

    models = commands.add_parser("models", help="list checkpoints with family, prediction type and hash")
    add_path_flags(models)

    loras = commands.add_parser("loras", help="list LoRA / LyCORIS files: module types, base model, hash")
    add_path_flags(loras)
    embeddings = commands.add_parser("embeddings", help="list textual-inversion embeddings: vectors, width, hash")
    add_path_flags(embeddings)

    commands.add_parser("samplers", help="list samplers (aliases, default schedule) and schedule types")

    serve = commands.add_parser("serve", help="start the server (the default when no command is given)")
    add_serve_flags(serve)
    add_path_flags(serve)
    add_device_flags(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(with_default_command(sys.argv[1:] if argv is None else list(argv)))
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
    A1111-style `./webui.sh --listen --api-auth u:p` start the server, as A1111's `webui.sh ARGS` does."""
    i = 0
    while i < len(argv) and argv[i] in GLOBAL_FLAGS:
        i += 1
    if i < len(argv) and (argv[i] in COMMANDS or argv[i] in ("-h", "--help", "--version")):
        return argv
    return [*argv[:i], "serve", *argv[i:]]


def is_user_error(error: Exception) -> bool:
    from sdwebui.models.files import ModelFileError
    from sdwebui.models.manager import ModelNotFoundError

    return isinstance(error, (ModelFileError, ModelNotFoundError, ParamError, StyleFileError, UnknownStyleError))


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
        upscaler_dirs={
            family: getattr(args, f"{family.lower()}_models_path", None)
            for family in ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")
        },
    )


def cli_config(args, paths) -> ServerConfig:
    """The app the command line runs: the same services as the server's, with its jobs in memory (a server using
    the same data folder keeps its queue and history to itself) and model paths taken as given."""
    return ServerConfig(
        paths=paths, device=args.device, precision="full" if args.no_half else args.precision,
        vae_precision="full" if args.no_half_vae else "auto", prediction_type=args.prediction_type,
        preload=False, threads=args.threads, ui=False, in_memory_store=True, trust_paths=True,
    )


def run_txt2img(args) -> int:
    paths = paths_from(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # here too: the worker sets its own (OpenMP counts per thread)
    services = build_services(cli_config(args, paths))
    request = GenerationRequest(
        kind="txt2img", values={"prompt": args.prompt, **param_values(args, Txt2ImgParams)}, styles=args.styles,
        checkpoint=args.model, vae=args.vae, outdir=str(Path(args.out).resolve()) if args.out else None,
        client="cli",
    )
    services.start()
    try:
        job = services.generation.submit(request)  # checked before any model work
        follow(services, job)
    finally:
        services.close()
    if job.exception is not None:
        raise job.exception
    if job.status != "done":
        raise RuntimeError(job.error or f"the job ended {job.status}")
    result = job.result or {}
    for note in result.get("notes") or []:
        print(f"sdwebui: note: {note}", file=sys.stderr)
    for image in result.get("images") or []:
        print(paths.outputs_dir / image["path"])
    return 0


def follow(services, job) -> None:
    """Show the job's steps on a progress bar (made once sampling starts, so a job that fails while loading its
    model prints its one error line and nothing else) until it ends; Ctrl+C interrupts it, keeping what it made,
    and re-raises."""
    from tqdm import tqdm

    bar = None
    try:
        while not job.wait_sync(0.1):
            p = job.progress
            if p.total_steps:
                if bar is None:
                    bar = tqdm(desc="txt2img", unit="step", file=sys.stderr, leave=False)
                bar.total = p.total_steps * p.batch_count
                bar.n = min(bar.total, p.global_step)
                bar.refresh()
    except KeyboardInterrupt:
        services.generation.interrupt(job.id)
        job.wait_sync(60)
        raise
    finally:
        if bar is not None:
            bar.close()


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
    try:
        config = config_from_args(args, paths_from(args))
    except ConfigError as error:  # a malformed --api-auth or an unreadable credentials file: one line, exit 2
        print(f"sdwebui: error: {error}", file=sys.stderr)
        return 2
    return serve(config)


COMMANDS = {
    "txt2img": run_txt2img,
    "models": run_models,
    "loras": run_loras,
    "embeddings": run_embeddings,
    "samplers": run_samplers,
    "serve": run_serve,
}

if __name__ == "__main__":
    sys.exit(main())
