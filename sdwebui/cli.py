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

from sdwebui import __version__


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


def build_parser() -> argparse.ArgumentParser:
    from sdwebui.pipelines.params import EMPHASIS_MODES

    parser = argparse.ArgumentParser(prog="sdwebui", description="Stable Diffusion WebUI (A1111-compatible).")
    parser.add_argument("--version", action="version", version=f"sdwebui {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = commands.add_parser("txt2img", help="generate images from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("-n", "--negative-prompt", default="")
    gen.add_argument("--model", help="checkpoint name (from the checkpoints folder) or path; default: the first found")
    gen.add_argument("--vae", help='VAE file name or path; "None" = the checkpoint\'s own; default: Automatic')
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--cfg-scale", type=float, default=7.0)
    gen.add_argument("--sampler", default="DPM++ 2M", help='A1111 sampler name or alias, e.g. "Euler a", k_dpmpp_2m')
    gen.add_argument("--scheduler", default="Automatic", help="schedule type, e.g. Karras, Uniform")
    gen.add_argument("--seed", type=int, default=-1, help="-1 = random; image i uses seed + i")
    gen.add_argument("--width", type=int, help="multiple of 8 (default: the model's native size)")
    gen.add_argument("--height", type=int, help="multiple of 8 (default: the model's native size)")
    gen.add_argument("--batch-size", type=int, default=1)
    gen.add_argument("--batch-count", type=int, default=1)
    gen.add_argument("--clip-skip", type=int, default=1, help="stop at the n-th last CLIP layer (A1111's CLIP skip)")
    gen.add_argument("--styles", nargs="+", default=[], metavar="NAME",
                     help="apply these styles from the styles file, in order")
    gen.add_argument("--emphasis", default="Original", choices=EMPHASIS_MODES,
                     help="A1111's emphasis mode for (word:1.2) / [word]")
    seeds = gen.add_argument_group("seed extras (A1111's Extra checkbox)")
    seeds.add_argument("--subseed", type=int, default=-1, help="variation seed (-1 = random)")
    seeds.add_argument("--subseed-strength", type=float, default=0.0, help="variation strength 0..1")
    seeds.add_argument("--seed-resize-from-w", type=int, default=0, help="resize seed from width (0 = off)")
    seeds.add_argument("--seed-resize-from-h", type=int, default=0, help="resize seed from height (0 = off)")
    seeds.add_argument("--rng", choices=["gpu", "cpu", "nv"], default="gpu",
                       help="A1111's RNG source; nv = NVIDIA's GPU noise reproduced on any device")
    seeds.add_argument("--ensd", type=int, default=0, help="eta noise seed delta (A1111 setting)")
    options = gen.add_argument_group("sampler parameters (A1111 settings; default: the sampler's own)")
    options.add_argument("--eta", type=float, help="noise multiplier of ancestral/SDE samplers (1.0) or DDIM (0)")
    options.add_argument("--s-churn", type=float)
    options.add_argument("--s-tmin", type=float)
    options.add_argument("--s-tmax", type=float)
    options.add_argument("--s-noise", type=float)
    options.add_argument("--sigma-min", type=float, help="schedule min sigma (0 = the model's)")
    options.add_argument("--sigma-max", type=float, help="schedule max sigma (0 = the model's)")
    options.add_argument("--rho", type=float, help="schedule rho (0 = the schedule's)")
    options.add_argument("--discard-penultimate-sigma", action="store_true",
                         help="A1111's 'Always discard next-to-last sigma'")
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

    from sdwebui.app import add_serve_flags

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
    from sdwebui.pipelines.params import ParamError
    from sdwebui.prompts.styles import StyleFileError, UnknownStyleError

    return isinstance(error, (ModelFileError, ModelNotFoundError, ParamError, StyleFileError, UnknownStyleError))


def describe_error(error: Exception) -> str:
    from sdwebui.models.manager import ModelNotFoundError

    if isinstance(error, ModelNotFoundError) and error.args:
        return str(error.args[0])
    text = str(error) or type(error).__name__
    if not is_user_error(error):
        text = f"{type(error).__name__}: {text} (run with --debug for the traceback)"
    return text


def paths_from(args):
    from sdwebui.config import Paths

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


def run_txt2img(args) -> int:
    from tqdm import tqdm

    from sdwebui.models.devices import plan_devices
    from sdwebui.models.manager import ModelManager
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.output import save_image
    from sdwebui.pipelines.params import Txt2ImgParams
    from sdwebui.pipelines.txt2img import resolve_sampling, txt2img

    paths = paths_from(args)
    prompt, negative_prompt = args.prompt, args.negative_prompt
    if args.styles:
        from sdwebui.prompts.styles import StyleDatabase

        prompt, negative_prompt = StyleDatabase(paths.styles_files).apply(prompt, negative_prompt, args.styles)

    # Validate everything we can before touching a model file.
    def make_params(width: int, height: int) -> Txt2ImgParams:
        return Txt2ImgParams(
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            sampler=args.sampler,
            scheduler=args.scheduler,
            seed=args.seed,
            batch_size=args.batch_size,
            batch_count=args.batch_count,
            clip_skip=args.clip_skip,
            subseed=args.subseed,
            subseed_strength=args.subseed_strength,
            seed_resize_from_w=args.seed_resize_from_w,
            seed_resize_from_h=args.seed_resize_from_h,
            eta=args.eta,
            s_churn=args.s_churn,
            s_tmin=args.s_tmin,
            s_tmax=args.s_tmax,
            s_noise=args.s_noise,
            sigma_min=args.sigma_min,
            sigma_max=args.sigma_max,
            rho=args.rho,
            discard_penultimate_sigma=args.discard_penultimate_sigma,
            emphasis=args.emphasis,
        )

    make_params(args.width or 512, args.height or 512)
    resolve_sampling(args.sampler, args.scheduler)

    precision = "full" if args.no_half else args.precision
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    devices = plan_devices(args.device, precision=precision, vae_precision="full" if args.no_half_vae else "auto")
    manager = ModelManager(paths, devices, prediction_type=args.prediction_type)
    model = manager.get(args.model, vae=args.vae)
    params = make_params(args.width or model.native_size, args.height or model.native_size)

    bar = tqdm(total=params.steps * params.batch_count, desc="txt2img", unit="step", file=sys.stderr, leave=False)
    from sdwebui.models.embeddings import EmbeddingDatabase
    from sdwebui.models.lora import LoraLibrary
    from sdwebui.pipelines.networks import LoraNetworks

    ctx = GenerationContext(
        model=model, rng=args.rng, eta_noise_seed_delta=args.ensd, on_step=lambda progress: bar.update(1),
        embeddings=EmbeddingDatabase(paths.embeddings_dir),
        extra_networks=LoraNetworks(LoraLibrary(paths.lora_dir, hash_cache_dir=paths.cache_dir)),
    )
    try:
        result = txt2img(ctx, params)
    finally:
        bar.close()
    for note in result.notes:
        print(f"sdwebui: note: {note}", file=sys.stderr)
    outdir = Path(args.out) if args.out else paths.outputs_dir / "txt2img-images"
    for image, seed, infotext in zip(result.images, result.seeds, result.infotexts):
        path = save_image(image, outdir, seed=seed, infotext=infotext, date_subdir=args.out is None)
        print(path)
    return 0


def run_models(args) -> int:
    from sdwebui.models.devices import plan_devices
    from sdwebui.models.files import ModelFileError
    from sdwebui.models.hashing import sha256_of
    from sdwebui.models.loader import describe_checkpoint
    from sdwebui.models.manager import DEMO_CHECKPOINT, ModelManager

    paths = paths_from(args)
    manager = ModelManager(paths, plan_devices("cpu"))
    checkpoints = manager.checkpoints()
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
    from sdwebui.app import config_from_args, serve
    from sdwebui.server.config import ConfigError

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
