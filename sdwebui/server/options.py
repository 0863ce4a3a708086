"""Settings, with A1111's option names and defaults (`/sdapi/v1/options`), persisted in the store.

Only options this server acts on are listed; their names, types and defaults are A1111's
(`modules/shared_options.py`), plus a few limits of our own (prefixed `api_`) that bound what one request may
ask for. A value is checked against its spec before anything is written, and a whole update is written in one
transaction, so a bad key leaves every setting as it was.

Over the API, folder options and this server's own limits (`api_max_*`) are read-only: a client must not choose
where files are written (A1111's `restrict_api`) nor raise the limits meant to bound it. Those are operator
settings: the command line (`--api-max-pixels`, ...) and the web UI's Settings tab set them.

Keys we do not know (options of A1111 or of extensions that this server does not have) are kept as they were
sent and returned by `GET /options`, as A1111's config keeps every key, so a client's round trip loses nothing;
they change nothing here, which is logged once per key.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdwebui.pipelines.params import EMPHASIS_MODES
from sdwebui.server.store import Store

log = logging.getLogger(__name__)

MAX_UNKNOWN_KEY_CHARS = 200
MAX_UNKNOWN_VALUE_BYTES = 64 * 1024
"""Bounds on a key we do not know and its value (as JSON): they are kept and sent back on every GET."""

class OptionError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class OptionSpec:
    default: Any
    label: str
    kind: type
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    api_writable: bool = True

    def check(self, key: str, value: Any) -> Any:
        if self.kind is bool:
            if not isinstance(value, bool):
                raise OptionError(key, f"must be true or false, got {value!r}")
            return value
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(key, f"must be a number, got {value!r}")
            if self.kind is int:
                if float(value) != int(value):
                    raise OptionError(key, f"must be a whole number, got {value!r}")
                value = int(value)
            else:
                value = float(value)
                if not math.isfinite(value):
                    raise OptionError(key, "must be a finite number")
            if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
                raise OptionError(key, f"must be between {self.minimum:g} and {self.maximum:g}, got {value!r}")
            return value
        if self.kind is str:
            if value is None and self.default is None:
                return None
            if not isinstance(value, str):
                raise OptionError(key, f"must be text, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise OptionError(key, f"must be one of {', '.join(self.choices)}; got {value!r}")
            return value
        if self.kind is list:  # A1111's CheckboxGroup options: a list of names (choices are a hint, not a rule)
            if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
                raise OptionError(key, f"must be a list of names, got {value!r}")
            return list(value)
        raise AssertionError(self.kind)  # pragma: no cover


OPTIONS: dict[str, OptionSpec] = {
    # model
    "sd_model_checkpoint": OptionSpec(None, "Stable Diffusion checkpoint", str),
    "sd_checkpoint_hash": OptionSpec("", "SHA256 hash of the current checkpoint", str, api_writable=False),
    "sd_vae": OptionSpec("Automatic", "SD VAE", str),
    "sd_checkpoints_limit": OptionSpec(1, "Maximum number of checkpoints loaded at the same time", int, minimum=1,
                                       maximum=10),
    "sd_checkpoint_cache": OptionSpec(0, "Checkpoints to cache in RAM", int, minimum=0, maximum=10),
    # optimizations (A1111's "Optimizations" section): applied when a model is loaded
    "fp8_storage": OptionSpec("Disable", "FP8 weight (store the UNet's and text encoders' Linear/Conv weights in "
                              "FP8)", str, choices=("Disable", "Enable for SDXL", "Enable")),
    "cache_fp16_weight": OptionSpec(False, "Cache FP16 weight for LoRA (more RAM; better LoRA quality with FP8)",
                                    bool),
    "CLIP_stop_at_last_layers": OptionSpec(1, "Clip skip", int, minimum=1, maximum=12),
    # A1111's token merging settings (ToMe SD, `models.token_merging`): 0 = off; "only applies if non-zero and
    # overrides above" for the img2img and hires ones, as A1111's help says.
    "token_merging_ratio": OptionSpec(0.0, "Token merging ratio", float, minimum=0.0, maximum=0.9),
    "token_merging_ratio_img2img": OptionSpec(0.0, "Token merging ratio for img2img", float, minimum=0.0,
                                              maximum=0.9),
    "token_merging_ratio_hr": OptionSpec(0.0, "Token merging ratio for high-res pass", float, minimum=0.0,
                                         maximum=0.9),
    "sd_hypernetwork": OptionSpec("None", "Add hypernetwork to prompt (a file name in models/hypernetworks)", str),
    "sd_hypernetwork_strength": OptionSpec(1.0, "Hypernetwork strength", float, minimum=0.0, maximum=1.0),
    "emphasis": OptionSpec("Original", "Emphasis mode", str, choices=EMPHASIS_MODES),
    "disable_nan_check": OptionSpec(
        False, "Do not stop a job whose latents are NaN (A1111's --disable-nan-check; saves black images)", bool
    ),
    # sampling
    "randn_source": OptionSpec("GPU", "Random number generator source", str, choices=("GPU", "CPU", "NV")),
    "eta_noise_seed_delta": OptionSpec(0, "Eta noise seed delta", int, minimum=0, maximum=2**32 - 1),
    "eta_ancestral": OptionSpec(1.0, "Eta for k-diffusion samplers", float, minimum=0, maximum=10),
    "eta_ddim": OptionSpec(0.0, "Eta for DDIM", float, minimum=0, maximum=10),
    "s_churn": OptionSpec(0.0, "sigma churn", float, minimum=0, maximum=100),
    "s_tmin": OptionSpec(0.0, "sigma tmin", float, minimum=0, maximum=1000),
    "s_tmax": OptionSpec(0.0, "sigma tmax (0 = infinity)", float, minimum=0, maximum=1e6),
    "s_noise": OptionSpec(1.0, "sigma noise", float, minimum=0, maximum=10),
    "sigma_min": OptionSpec(0.0, "Schedule min sigma (0 = model's)", float, minimum=0, maximum=1000),
    "sigma_max": OptionSpec(0.0, "Schedule max sigma (0 = model's)", float, minimum=0, maximum=1000),
    "rho": OptionSpec(0.0, "Schedule rho (0 = schedule's)", float, minimum=0, maximum=100),
    "always_discard_next_to_last_sigma": OptionSpec(False, "Always discard next-to-last sigma", bool),
    # face restoration (A1111's "Face restoration" section)
    "face_restoration": OptionSpec(False, "Restore faces", bool),
    "face_restoration_model": OptionSpec("CodeFormer", "Face restoration model", str,
                                         choices=("CodeFormer", "GFPGAN", "RestoreFormer")),
    "code_former_weight": OptionSpec(0.5, "CodeFormer weight (0 = maximum effect; 1 = minimum effect)", float,
                                     minimum=0.0, maximum=1.0),
    "face_restoration_unload": OptionSpec(False, "Move face restoration model from VRAM into RAM after processing",
                                          bool),
    # interrogate (A1111's "Interrogate" section; its DeepBooru options format the WD14 taggers' tags too)
    "interrogate_keep_models_in_memory": OptionSpec(False, "Keep models in VRAM", bool),
    "interrogate_return_ranks": OptionSpec(False, "Include ranks of model tags matches in results", bool),
    "interrogate_clip_num_beams": OptionSpec(1, "BLIP: num_beams", int, minimum=1, maximum=16),
    "interrogate_clip_min_length": OptionSpec(24, "BLIP: minimum description length", int, minimum=1, maximum=128),
    "interrogate_clip_max_length": OptionSpec(48, "BLIP: maximum description length", int, minimum=1, maximum=256),
    "interrogate_clip_dict_limit": OptionSpec(1500, "CLIP: maximum number of lines in text file (0 = no limit)", int,
                                              minimum=0),
    "interrogate_clip_skip_categories": OptionSpec((), "CLIP: skip inquire categories", list,
                                                   choices=("artists", "flavors", "mediums", "movements")),
    "interrogate_deepbooru_score_threshold": OptionSpec(0.5, "deepbooru: score threshold", float, minimum=0.0,
                                                        maximum=1.0),
    "deepbooru_sort_alpha": OptionSpec(True, "deepbooru: sort tags alphabetically", bool),
    "deepbooru_use_spaces": OptionSpec(True, "deepbooru: use spaces in tags", bool),
    "deepbooru_escape": OptionSpec(True, "deepbooru: escape (\\) brackets", bool),
    "deepbooru_filter_tags": OptionSpec("", "deepbooru: filter out those tags (split by comma)", str),
    # upscaling (A1111's "Upscaling" section; one tile setting serves every model family here)
    "ESRGAN_tile": OptionSpec(192, "Tile size for ESRGAN upscalers (0 = no tiling)", int, minimum=0, maximum=512),
    "ESRGAN_tile_overlap": OptionSpec(8, "Tile overlap for ESRGAN upscalers (pixels)", int, minimum=0, maximum=48),
    # VAE (as MultiDiffusion's Tiled VAE, built in: A1111 has no setting of its own for it)
    "tiled_vae": OptionSpec("Automatic", "Tiled VAE encode and decode (Automatic: when the image would not fit the "
                            "GPU memory)", str, choices=("Automatic", "Enable", "Disable")),
    "tiled_vae_tile_size": OptionSpec(512, "Tiled VAE tile size (pixels)", int, minimum=64, maximum=4096),
    # live previews
    "live_previews_enable": OptionSpec(True, "Show live previews of the created image", bool),
    "show_progress_every_n_steps": OptionSpec(
        10, "Live preview display period (steps; -1 = end of each batch, 0 = off)", int, minimum=-1, maximum=1000
    ),
    # saving
    "samples_save": OptionSpec(True, "Always save all generated images (UI jobs)", bool),
    "samples_format": OptionSpec("png", "File format for images", str, choices=("png",)),
    "enable_pnginfo": OptionSpec(True, "Save text information about generation parameters as chunks to png files",
                                 bool),
    "save_to_dirs": OptionSpec(True, "Save images to a subdirectory (by date)", bool),
    "use_original_name_batch": OptionSpec(True, "Use original name for output filename during batch process in "
                                          "extras tab", bool),
    "postprocessing_existing_caption_action": OptionSpec(
        "Ignore", "Action for existing captions (Extras' Caption, when a .txt is already beside the image)", str,
        choices=("Ignore", "Keep", "Prepend", "Append")),
    # A1111's intermediate copies (`pipelines.output.INTERMEDIATE_SETTINGS`), saved beside the images of jobs that
    # save theirs, never returned
    "save_images_before_face_restoration": OptionSpec(False, "Save a copy of image before doing face restoration.",
                                                      bool),
    "save_images_before_highres_fix": OptionSpec(False, "Save a copy of image before applying highres fix.", bool),
    "save_images_before_color_correction": OptionSpec(
        False, "Save a copy of image before applying color correction to img2img results", bool),
    "save_mask": OptionSpec(False, "For inpainting, save a copy of the greyscale mask", bool),
    "save_mask_composite": OptionSpec(False, "For inpainting, save a masked composite", bool),
    "samples_filename_pattern": OptionSpec(
        "", "Images filename pattern ([seed], [steps], [cfg], [sampler], [model_name], [prompt_words], ...; "
        "empty = [seed])", str),
    "outdir_samples": OptionSpec("", "Output directory for images; if empty, defaults to the ones below", str,
                                 api_writable=False),
    "outdir_txt2img_samples": OptionSpec("outputs/txt2img-images", "Output directory for txt2img images", str,
                                         api_writable=False),
    "outdir_img2img_samples": OptionSpec("outputs/img2img-images", "Output directory for img2img images", str,
                                         api_writable=False),
    # grids (A1111's "Saving images/grids"): a batch's images put together, returned first and saved
    "return_grid": OptionSpec(True, "Show grid in gallery", bool),
    "grid_save": OptionSpec(True, "Always save all generated image grids", bool),
    "grid_only_if_multiple": OptionSpec(True, "Do not save grids consisting of one picture", bool),
    "n_rows": OptionSpec(-1, "Grid row count; use -1 for autodetect and 0 for it to be same as batch size", int,
                         minimum=-1, maximum=16),
    "grid_prevent_empty_spots": OptionSpec(False, "Prevent empty spots in grid (when set to autodetect)", bool),
    "grid_format": OptionSpec("png", "File format for grids", str, choices=("png",)),
    "grid_extended_filename": OptionSpec(False, "Add extended info (seed, prompt) to filename when saving grid",
                                         bool),
    "outdir_grids": OptionSpec("", "Output directory for grids; if empty, defaults to two directories below", str,
                               api_writable=False),
    "outdir_txt2img_grids": OptionSpec("outputs/txt2img-grids", "Output directory for txt2img grids", str,
                                       api_writable=False),
    "outdir_img2img_grids": OptionSpec("outputs/img2img-grids", "Output directory for img2img grids", str,
                                       api_writable=False),
    "img2img_color_correction": OptionSpec(
        False, "Apply color correction to img2img results to match original colors.", bool),
    "img2img_fix_steps": OptionSpec(
        False, "With img2img, do exactly the amount of steps the slider specifies", bool),
    "initial_noise_multiplier": OptionSpec(1.0, "Noise multiplier for img2img", float, minimum=0.0, maximum=1.5),
    "inpainting_mask_weight": OptionSpec(1.0, "Inpainting conditioning mask strength", float, minimum=0.0,
                                         maximum=1.0),
    # limits of this server (not in A1111, which has none)
    # (operator settings: read-only over the API; the command line and the Settings tab set them)
    "api_max_pixels": OptionSpec(
        4096 * 4096, "Max width x height x batch size of one request", int, minimum=64, maximum=2**40,
        api_writable=False,
    ),
    "api_max_images": OptionSpec(1000, "Max images per request (batch size x batch count)", int,
                                 minimum=1, maximum=1_000_000, api_writable=False),
    "api_max_steps": OptionSpec(1000, "Max sampling steps", int, minimum=1, maximum=1000, api_writable=False),
    "api_max_queue_size": OptionSpec(1000, "Max jobs waiting in the queue (further requests get 503)", int,
                                     minimum=1, maximum=1_000_000, api_writable=False),
}

LIMIT_FLAGS = {"api_max_pixels": "--api-max-pixels", "api_max_images": "--api-max-images",
               "api_max_steps": "--api-max-steps", "api_max_queue_size": "--api-max-queue-size"}
"""The operator settings the command line sets (`sdwebui serve --api-max-steps 150`)."""


OUTPUT_FOLDER_OPTIONS = ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_grids",
                         "outdir_txt2img_grids", "outdir_img2img_grids")


def output_folder(outputs_dir: Path, value: str, *, key: str = "outdir_txt2img_samples") -> str:
    """An output-folder setting as a folder relative to the outputs folder (`<data-dir>/outputs`).

    A1111's values are relative to its install folder and start with `outputs/` ("outputs/txt2img-images");
    that prefix is read as the outputs folder itself. Folders must stay inside the outputs folder: the history
    and the file routes serve images from there and nowhere else (to write elsewhere, start with another
    `--data-dir`). Raises OptionError naming `key` otherwise."""
    path = Path(value)
    if not path.is_absolute() and path.parts[:1] == ("outputs",):
        path = Path(*path.parts[1:]) if len(path.parts) > 1 else Path()
    root = Path(outputs_dir).resolve()
    target = (root / path).resolve()
    if target != root and root not in target.parents:
        raise OptionError(key, f"must be a folder inside the outputs folder {root}, got {value!r}")
    return target.relative_to(root).as_posix()


class Options:
    """Current option values: A1111's defaults overlaid with what the store holds."""

    def __init__(self, store: Store, outputs_dir: Path | None = None):
        self.store = store
        self.outputs_dir = outputs_dir
        self._noted: set[str] = set()
        self._noted_lock = threading.Lock()

    def get(self, key: str) -> Any:
        spec = OPTIONS[key]
        return self.store.get_setting(key, spec.default)

    def all(self) -> dict[str, Any]:
        stored = self.store.settings()
        return {key: stored.get(key, spec.default) for key, spec in OPTIONS.items()}

    def validate(self, values: Mapping[str, Any], *, from_api: bool = True) -> tuple[dict[str, Any], list[str]]:
        """(checked values to write, ignored unknown keys). Raises OptionError naming the first bad key."""
        current = self.all()
        accepted: dict[str, Any] = {}
        ignored: list[str] = []
        for key, value in values.items():
            spec = OPTIONS.get(key)
            if spec is None:
                ignored.append(key)
                continue
            if from_api and not spec.api_writable:
                if value == current.get(key):
                    continue  # clients post back what they read: that is not an attempt to change it
                where = f" (set it with {LIMIT_FLAGS[key]} or in the Settings tab)" if key in LIMIT_FLAGS else ""
                raise OptionError(key, f"cannot be changed over the API{where}")
            accepted[key] = spec.check(key, value)
            if key in OUTPUT_FOLDER_OPTIONS and self.outputs_dir is not None and accepted[key]:
                output_folder(self.outputs_dir, accepted[key], key=key)
        return accepted, ignored

    def update(self, values: Mapping[str, Any]) -> None:
        """Write already validated values (one transaction)."""
        if values:
            self.store.set_settings(values)

    def unknown(self) -> dict[str, Any]:
        """Stored keys this server does not know (kept for clients, see the module docstring)."""
        return {key: value for key, value in self.store.settings().items() if key not in OPTIONS}

    def check_unknown(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Keys we do not know, as they will be kept (OptionError naming a key that is not plain text or a value
        too large to keep); each is logged once as having no effect here."""
        kept: dict[str, Any] = {}
        for key, value in values.items():
            if not key or len(key) > MAX_UNKNOWN_KEY_CHARS or not key.isprintable():
                raise OptionError(key[:MAX_UNKNOWN_KEY_CHARS], "not an option name this server can keep")
            try:
                size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
            except (TypeError, ValueError):
                raise OptionError(key, "the value is not plain JSON") from None
            if size > MAX_UNKNOWN_VALUE_BYTES:
                raise OptionError(key, f"the value is too large to keep ({size} bytes, at most "
                                       f"{MAX_UNKNOWN_VALUE_BYTES})")
            kept[key] = value
        with self._noted_lock:
            new = [key for key in kept if key not in self._noted]
            self._noted.update(new)
        if new:
            log.info("kept option(s) this server does not use (they have no effect here): %s",
                     ", ".join(sorted(new)))
        return kept


__all__ = ["OPTIONS", "OptionSpec", "Options", "OptionError", "output_folder", "LIMIT_FLAGS"]
