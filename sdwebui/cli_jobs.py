"""The command line's generation commands: `txt2img`, `img2img` and `extras` run a job through the same
generation service as the server (built by `app.build_services`, with its jobs in memory), show its steps on a
tqdm bar and print the files it wrote; `png-info` prints an image's infotext.

Everything a command can check is checked before any model work, and reported as one line naming the flag or
the file (`CommandError`, exit status 2): the output folder can be written, the device exists, a checkpoint given
as a path is a file, the images open.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from sdwebui.app import build_services
from sdwebui.config import DEMO_CHECKPOINT
from sdwebui.pipelines.extras_params import ExtrasParams
from sdwebui.pipelines.interrogate import TagOptions, format_tags
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.output import read_image_info
from sdwebui.pipelines.params import GenerationParams, Txt2ImgParams, param_specs
from sdwebui.server.config import ServerConfig, memory_fields
from sdwebui.server.service import ExtrasRequest, GenerationRequest, JobHandle
from sdwebui.server.services import Services

PARAMS = {"txt2img": Txt2ImgParams, "img2img": Img2ImgParams}


class CommandError(ValueError):
    """Bad command-line input found before any work: one line, exit status 2."""


# ---- flags -------------------------------------------------------------------------------------------------------


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
        if spec.kind is bool:  # --tiling / --no-tiling: a flag left out leaves it to the default
            target.add_argument(*spec.cli_flags, dest=spec.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            target.add_argument(*spec.cli_flags, dest=spec.name, type=spec.kind, default=None, help=help_text,
                                choices=spec.choices, metavar=None if spec.choices else spec.name.upper())


def param_values(args: argparse.Namespace, cls: type[GenerationParams]) -> dict[str, Any]:
    """The parameters the command line gave (the others are left to the settings and defaults)."""
    values = {spec.name: getattr(args, spec.name) for spec in param_specs(cls)
              if spec.cli_flags and getattr(args, spec.name, None) is not None}
    if getattr(args, "mask_blur", None) is not None:  # A1111's one blur for both directions
        values.setdefault("mask_blur_x", args.mask_blur)
        values.setdefault("mask_blur_y", args.mask_blur)
    return values


def add_generation_flags(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("--model", help="checkpoint name (from the checkpoints folder) or path; default: the first found")
    parser.add_argument("--vae", help='VAE file name or path; "None" = the checkpoint\'s own; default: Automatic')
    parser.add_argument("--styles", nargs="+", default=[], metavar="NAME",
                        help="apply these styles from the styles file, in order")
    add_param_flags(parser, PARAMS[kind])
    parser.add_argument("--out", help=f"output folder (default: <data-dir>/outputs/{kind}-images/<date>)")
    parser.add_argument("--grid", action="store_true",
                        help=f"also save a grid of a batch's images (in --out, else outputs/{kind}-grids)")
    group = parser.add_argument_group("dynamic prompts ({a|b}, {2$$a|b|c}, __wildcard__ from --wildcards-dir)")
    group.add_argument("--combinatorial", action="store_true",
                       help="an image for every combination of the prompt (the batch count is not used)")
    group.add_argument("--max-generations", type=int, default=0, metavar="N",
                       help="with --combinatorial: at most N images (default 0: all combinations)")
    group.add_argument("--no-dynamic-prompts", action="store_true", help="take { } and __name__ as written")


def dynamic_prompts_args(args: argparse.Namespace) -> dict[str, Any]:
    """The always-on "Dynamic Prompts" script's arguments the flags ask for (A1111's `alwayson_scripts`)."""
    if not (args.combinatorial or args.no_dynamic_prompts or args.max_generations):
        return {}
    values: list[Any] = [not args.no_dynamic_prompts, args.combinatorial] + [None] * 16
    values[15] = args.max_generations  # "Max generations", the extension's 16th argument
    return {"dynamic prompts": {"args": values}}


def add_img2img_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mask", help="inpainting mask image (white = repaint), the size of the init image")
    parser.add_argument("--mask-blur", type=int, metavar="PIXELS", help="blur of the mask, both directions "
                        "(A1111's mask_blur; --mask-blur-x / -y set one)")


def add_extras_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upscaler", default="None", help="upscaler name, as `sdwebui` lists them: Lanczos, "
                        "Nearest, or a model file from models/ESRGAN etc. (default: None, no upscaling)")
    parser.add_argument("--scale", type=float, default=2.0, help="scale by (default 2)")
    parser.add_argument("--resize-to", metavar="WxH", help="scale to this size instead of --scale")
    parser.add_argument("--no-crop", action="store_true", help="with --resize-to: keep the aspect ratio, no crop")
    parser.add_argument("--upscaler-2", default="None", help="a second upscaler blended over the first")
    parser.add_argument("--upscaler-2-visibility", type=float, default=0.0, help="its weight, 0..1")
    parser.add_argument("--gfpgan-visibility", type=float, default=0.0,
                        help="restore faces with GFPGAN (models/GFPGAN) after upscaling, blended in at this weight")
    parser.add_argument("--codeformer-visibility", type=float, default=0.0,
                        help="restore faces with CodeFormer (models/Codeformer; optional extra) at this weight")
    parser.add_argument("--codeformer-weight", type=float, default=0.0,
                        help="CodeFormer's fidelity: 0 = maximum effect, 1 = minimum (default 0)")
    parser.add_argument("--out", help="output folder (default: <data-dir>/outputs/extras-images/<date>)")


# ---- running a job -----------------------------------------------------------------------------------------------


def cli_config(args, paths) -> ServerConfig:
    """The app the command line runs: the same services as the server's, with its jobs in memory (a server using
    the same data folder keeps its queue and history to itself) and model paths taken as given."""
    return ServerConfig(
        paths=paths, device=args.device, precision="full" if args.no_half else args.precision,
        vae_precision="full" if args.no_half_vae else "auto", prediction_type=args.prediction_type,
        **memory_fields(args), preload=False, threads=args.threads, ui=False, in_memory_store=True, trust_paths=True,
    )


def check_inputs(args, paths) -> None:
    """What can be checked before any model work (each a CommandError naming the flag or file)."""
    check_device(args.device)
    if args.out:
        check_writable(Path(args.out))
    model = getattr(args, "model", None)
    if model and looks_like_path(model) and not Path(model).exists():
        raise CommandError(f"--model {model}: no such file")


def check_device(device: str) -> None:
    if device in (None, "auto", "cpu"):
        return
    import torch

    kind = device.split(":", 1)[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {device}: no CUDA device here (torch {torch.__version__} sees none); "
                           "use --device cpu or auto")
    if kind == "cuda" and ":" in device and int(device.split(":", 1)[1] or 0) >= torch.cuda.device_count():
        raise CommandError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CommandError(f"--device {device}: Apple's MPS is not available here")
    if kind not in ("cuda", "mps", "cpu"):
        raise CommandError(f"--device {device}: not a device (auto, cpu, cuda, cuda:N or mps)")


def check_writable(folder: Path) -> None:
    """`folder` can be written, or made where its nearest existing parent can be written (nothing is made here)."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise CommandError(f"--out {folder}: {existing} is a file, not a folder")
    try:  # a probe, removed at once: permissions alone do not tell (root, read-only or special file systems)
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise CommandError(f"--out {folder}: cannot write in {existing} ({error.strerror or error})") from None


def looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.endswith((".safetensors", ".ckpt", ".pt", ".bin"))


def open_image(path: str, flag: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise CommandError(f"{flag} {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise CommandError(f"{flag} {path}: not a readable image ({error.__class__.__name__})") from None


def run_job(services: Services, submit, label: str) -> JobHandle:
    """Start the worker, submit (checked before any model work), follow the job to its end; re-raise what it
    raised, so the command reports it as its own."""
    services.start()
    try:
        job = submit()
        follow(services, job, label)
    finally:
        services.close()
    if job.exception is not None:
        raise job.exception
    if job.status != "done":
        raise RuntimeError(job.error or f"the job ended {job.status}")
    return job


def follow(services: Services, job: JobHandle, label: str) -> None:
    """Show the job's steps on a tqdm bar (made once work starts, so a job that fails while loading its model
    prints its one error line and nothing else) until it ends; Ctrl+C interrupts it (keeping what it made) and
    re-raises."""
    from tqdm import tqdm

    bar = None
    try:
        while not job.wait_sync(0.1):
            p = job.progress
            if not p.total_steps:
                continue
            total = p.total_steps * max(1, p.batch_count)
            if bar is None:
                bar = tqdm(total=total, desc=label, unit="step", file=sys.stderr, leave=False)
            bar.total = total
            bar.update(max(0, min(total, p.global_step) - bar.n))
    except KeyboardInterrupt:
        services.generation.interrupt(job.id)
        job.wait_sync(60)
        raise
    finally:
        if bar is not None:
            bar.close()


def report(job: JobHandle, outputs: Path) -> None:
    result = job.result or {}
    for note in result.get("notes") or []:
        print(f"sdwebui: note: {note}", file=sys.stderr)
    for image in result.get("images") or []:
        print(outputs / image["path"])


def say_if_demo_model(services: Services, checkpoint: str) -> None:
    if Path(checkpoint) == DEMO_CHECKPOINT:
        print(f"sdwebui: note: no checkpoint in {services.paths.ckpt_dir}; using the built-in demo model "
              f"{DEMO_CHECKPOINT.stem} (64x64 shapes; see the README)", file=sys.stderr)


# ---- the commands ------------------------------------------------------------------------------------------------


def run_generation(args, paths, kind: str) -> int:
    check_inputs(args, paths)
    images: dict[str, Any] = {}
    if kind == "img2img":
        images["init_images"] = (open_image(args.init_image, "INIT_IMAGE"),)
        if args.mask:
            images["mask"] = open_image(args.mask, "--mask")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # here too: the worker sets its own (OpenMP counts per thread)
    values = {"prompt": args.prompt, **param_values(args, PARAMS[kind])}
    if kind == "img2img":  # the init image's own size unless asked otherwise (A1111's "Resize by" 1)
        init = images["init_images"][0]
        values.setdefault("width", max(8, init.width - init.width % 8))
        values.setdefault("height", max(8, init.height - init.height % 8))
    services = build_services(cli_config(args, paths))
    request = GenerationRequest(
        kind=kind, values=values, styles=args.styles,
        checkpoint=args.model, vae=args.vae, outdir=str(Path(args.out).resolve()) if args.out else None,
        make_grid=args.grid,  # a command asked for images gets exactly those, unless it asks for the grid too
        alwayson_scripts=dynamic_prompts_args(args), client="cli", **images,
    )

    def submit():
        payload = services.generation.prepare(request)
        say_if_demo_model(services, payload.checkpoint)
        return services.queue.submit(payload.kind, payload)

    report(run_job(services, submit, kind), paths.outputs_dir)
    return 0


def run_extras(args, paths) -> int:
    check_inputs(args, paths)
    image = open_image(args.image, "IMAGE")
    resize_mode, width, height = 0, 512, 512
    if args.resize_to:
        try:
            width, height = (int(side) for side in args.resize_to.lower().split("x"))
        except ValueError:
            raise CommandError(f"--resize-to {args.resize_to}: write it as WIDTHxHEIGHT, e.g. 1024x768") from None
        resize_mode = 1
    params = ExtrasParams(resize_mode=resize_mode, upscaling_resize=args.scale, upscaling_resize_w=width,
                          upscaling_resize_h=height, upscaling_crop=not args.no_crop, upscaler_1=args.upscaler,
                          upscaler_2=args.upscaler_2, upscaler_2_visibility=args.upscaler_2_visibility,
                          gfpgan_visibility=args.gfpgan_visibility, codeformer_visibility=args.codeformer_visibility,
                          codeformer_weight=args.codeformer_weight)
    services = build_services(cli_config(args, paths))
    request = ExtrasRequest(params, [(("IMAGE",), image)], names=[Path(args.image).name], save_images=True,
                            client="cli", outdir=str(Path(args.out).resolve()) if args.out else None)
    report(run_job(services, lambda: services.generation.submit_extras(request), "extras"), paths.outputs_dir)
    return 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def add_caption_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="FOLDER", help="the images to caption; each gets NAME.txt beside it")
    parser.add_argument("--tagger", default="wd14", help="a WD14 tagger's folder name in models/interrogators "
                        "(default: wd14, the first one installed); deepdanbooru (models/torch_deepdanbooru); blip "
                        "(a BLIP caption, models/BLIP); clip (A1111's Interrogate CLIP: the BLIP caption and CLIP's "
                        "best artist, flavor, medium and movement, models/BLIP and models/CLIP)")
    parser.add_argument("--threshold", type=float, default=0.5, help="keep tags scored at least this (default 0.5, "
                        "A1111's DeepBooru threshold)")
    parser.add_argument("--sort-by-score", action="store_true", help="best tags first (default: alphabetical)")
    parser.add_argument("--keep-underscores", action="store_true", help="blue_sky, not blue sky")
    parser.add_argument("--no-escape", action="store_true", help="leave ( ) unescaped")
    parser.add_argument("--overwrite", action="store_true", help="replace existing .txt captions (default: skip them)")


def run_caption(args, paths) -> int:
    """Tag every image of a folder with a WD14 tagger or DeepDanbooru, or caption it with BLIP (+ CLIP), and write
    the text to a `.txt` beside each (the captions LoRA trainers read); tags formatted as A1111's DeepBooru
    formats them."""
    from sdwebui.models.taggers import TaggerLibrary  # OpenCV, onnxruntime

    folder = Path(args.folder)
    if not folder.is_dir():
        raise CommandError(f"FOLDER {args.folder}: no such folder")
    if not 0.0 <= args.threshold <= 1.0:
        raise CommandError(f"--threshold {args.threshold}: must be between 0 and 1")
    options = TagOptions(threshold=args.threshold, sort_alpha=not args.sort_by_score,
                         use_spaces=not args.keep_underscores, escape=not args.no_escape)
    if args.tagger in ("clip", "blip", "deepdanbooru"):
        return _caption_with_torch_models(args, paths, folder, options)
    library = TaggerLibrary(paths.models_dir)
    installed = [entry.name for entry in library.entries()]
    name = installed[0] if args.tagger == "wd14" and installed else args.tagger
    if name not in installed:
        raise CommandError(f"--tagger {args.tagger}: put a WD14 tagger's model.onnx and selected_tags.csv in "
                           f"models/interrogators/<name>/ (installed: {', '.join(installed) or 'none'})")
    return _write_captions(args, folder, name, lambda image: format_tags(library.probabilities(name, image)[1],
                                                                         options))


def _caption_with_torch_models(args, paths, folder: Path, options: TagOptions) -> int:
    from sdwebui.models.blip_clip import InterrogateModelMissing  # torch, transformers
    from sdwebui.models.devices import plan_devices
    from sdwebui.models.files import ModelFileError
    from sdwebui.models.interrogate_models import InterrogateModels
    from sdwebui.pipelines.clip_interrogator import (ClipOptions, blip_caption, clip_interrogate,
                                                     deepbooru_probabilities)

    library = InterrogateModels(paths.models_dir, device=plan_devices(getattr(args, "device", None)).device)
    settings = ClipOptions()
    try:
        if args.tagger == "deepdanbooru":
            net = library.deepdanbooru()
            describe = lambda image: format_tags(deepbooru_probabilities(net, image), options)  # noqa: E731
        elif args.tagger == "blip":
            blip = library.blip()
            describe = lambda image: blip_caption(blip, image.convert("RGB"), settings)  # noqa: E731
        else:
            blip, clip = library.blip(), library.clip()
            describe = lambda image: clip_interrogate(blip, clip, image, settings)  # noqa: E731
    except (InterrogateModelMissing, ModelFileError) as error:
        raise CommandError(f"--tagger {args.tagger}: {error}") from None
    return _write_captions(args, folder, args.tagger, describe)


def _write_captions(args, folder: Path, name: str, describe) -> int:
    written = skipped = 0
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        caption = path.with_suffix(".txt")
        if caption.exists() and not args.overwrite:
            skipped += 1
            continue
        caption.write_text(describe(open_image(str(path), "FOLDER")) + "\n", encoding="utf-8")
        print(caption)
        written += 1
    note = f"sdwebui: note: {written} caption(s) written with {name}"
    print(note + (f"; {skipped} image(s) already had one (--overwrite to replace)" if skipped else ""),
          file=sys.stderr)
    return 0


def run_png_info(args) -> int:
    """The infotext of an image (A1111's PNG Info), then its other text items; a note when there is none."""
    image = open_image(args.image, "IMAGE")
    infotext, items = read_image_info(image)
    if infotext:
        print(infotext)
    for key, value in items.items():
        print(f"{key}: {value}")
    if not infotext and not items:
        print(f"sdwebui: note: {args.image} holds no generation parameters", file=sys.stderr)
    return 0


__all__ = ["CommandError", "add_param_flags", "param_values", "add_generation_flags", "add_img2img_flags",
           "add_extras_flags", "cli_config", "run_generation", "run_extras", "run_png_info", "check_writable",
           "add_caption_flags", "run_caption"]
