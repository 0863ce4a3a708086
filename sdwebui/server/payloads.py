"""Typed job payloads: what a queued job carries, in the queue and in the store, with a schema version.

A payload is everything the worker needs to run the job later, resolved when it was submitted (checkpoint path,
VAE, settings, output folder), so a settings change never alters a job that is already waiting (A1111 #5847),
and a restart re-runs it as it was asked. Stored as JSON in `jobs.params`:

    {"schema": 2, "params": {<Txt2ImgParams / Img2ImgParams fields>}, "checkpoint": "/abs/model.safetensors",
     "vae": "Automatic", "output": {"save": true, "folder": "txt2img-images", ...}, "script": null,
     "alwayson_scripts": [], "init_images": [], ...}

Schema 1 is what sdwebui wrote before this module (a flat dict: `rng` and `eta_noise_seed_delta` beside the
params, `save_images` / `outdir` / `save_to_dirs` at the top, img2img params that inherited txt2img's hires
fields); `load_payload` upgrades it on read, so a database from before the change still runs its queued jobs and
shows its history.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from sdwebui.config import DEMO_CHECKPOINT
from sdwebui.pipelines.extras_params import ExtrasParams
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.params import GenerationParams, Txt2ImgParams
from sdwebui.pipelines.scripts import ScriptCall

SCHEMA_VERSION = 2
PARAMS_TYPES: dict[str, type[GenerationParams]] = {"txt2img": Txt2ImgParams, "img2img": Img2ImgParams}


class Payload(Protocol):
    """What the queue needs of a payload: JSON for the store, and a copy for a job re-queued after a restart."""

    def to_json(self) -> dict[str, Any]: ...

    def recovered(self) -> "Payload":
        """The payload of the job re-queued after a restart: its requester is gone, so its images are saved."""
        ...


@dataclass(frozen=True)
class OutputOptions:
    """Where a job's images go: `folder` is relative to the outputs folder (or absolute for the CLI's `--out`)."""

    save: bool = True
    folder: str = "txt2img-images"
    date_subdir: bool = True
    filename_pattern: str = "[seed]"
    intermediates: tuple[str, ...] = ()
    """The intermediate copies saved beside the images, by suffix (`pipelines.output.INTERMEDIATE_SETTINGS`:
    A1111's `save_images_before_highres_fix`, `save_mask`, ... at submit time)."""

    def __post_init__(self):
        object.__setattr__(self, "intermediates", tuple(self.intermediates))  # a list when read from JSON


@dataclass(frozen=True)
class GridOptions:
    """A1111's grid settings at submit time: whether a job of several images also returns and saves a grid of them
    (never for a job whose request or script said not to), where, and how many rows."""

    make: bool = True
    return_grid: bool = True
    save: bool = True
    only_if_multiple: bool = True
    n_rows: int = -1
    prevent_empty_spots: bool = False
    folder: str = "txt2img-grids"
    filename_pattern: str = ""
    """What follows `grid-NNNN` in a grid's file name: the images' pattern with A1111's `grid_extended_filename`,
    else nothing."""


@dataclass(frozen=True)
class BatchEntry:
    """One image of the img2img tab's "Batch" (a folder on the server), with its mask."""

    name: str
    image: str
    """base64 PNG"""
    mask: str | None = None


@dataclass(frozen=True)
class GenerationPayload:
    """A txt2img or img2img job."""

    params: GenerationParams
    checkpoint: str
    vae: str = "Automatic"
    output: OutputOptions = field(default_factory=OutputOptions)
    grid: GridOptions = field(default_factory=GridOptions)
    nan_check: bool = True
    upscale_tile: tuple[int, int] = (192, 8)
    vae_tiling: tuple[str, int] = ("Automatic", 512)
    """The `tiled_vae` and `tiled_vae_tile_size` settings."""
    preview_every: int = 0
    script: ScriptCall | None = None
    alwayson_scripts: tuple[ScriptCall, ...] = ()
    init_images: tuple[str, ...] = ()
    """base64 PNG (PNG keeps every pixel and the alpha)."""
    mask: str | None = None
    batch: tuple[BatchEntry, ...] = ()
    styles: tuple[str, ...] = ()
    client: str = "native"
    task_id: str | None = None
    is_recovered: bool = False
    hypernetwork: tuple[str, float] | None = None
    """The `sd_hypernetwork` setting (name, `sd_hypernetwork_strength`) at submit time; None: "None"."""
    color_correction: bool = False
    """img2img: A1111's `img2img_color_correction` at submit time."""

    @property
    def kind(self) -> str:
        return self.params.KIND

    def recovered(self) -> "GenerationPayload":
        return replace(self, output=replace(self.output, save=True), is_recovered=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "params": self.params.to_dict(),
            "checkpoint": self.checkpoint,
            "vae": self.vae,
            "output": asdict(self.output),
            "grid": asdict(self.grid),
            "nan_check": self.nan_check,
            "upscale_tile": list(self.upscale_tile),
            "vae_tiling": list(self.vae_tiling),
            "preview_every": self.preview_every,
            "script": self.script.to_json() if self.script else None,
            "alwayson_scripts": [call.to_json() for call in self.alwayson_scripts],
            "init_images": list(self.init_images),
            "mask": self.mask,
            "batch": [asdict(entry) for entry in self.batch],
            "styles": list(self.styles),
            "client": self.client,
            "task_id": self.task_id,
            "recovered": self.is_recovered,
            "hypernetwork": list(self.hypernetwork) if self.hypernetwork else None,
            "color_correction": self.color_correction,
        }

    @classmethod
    def from_json(cls, kind: str, data: Mapping[str, Any]) -> "GenerationPayload":
        return cls(
            params=PARAMS_TYPES[kind].from_dict(data["params"]),
            checkpoint=_existing_checkpoint(str(data["checkpoint"])),
            vae=str(data.get("vae") or "Automatic"),
            output=OutputOptions(**data.get("output", {})),
            # Jobs stored before grids existed made none: they keep to that.
            grid=GridOptions(**data["grid"]) if "grid" in data else GridOptions(make=False),
            nan_check=bool(data.get("nan_check", True)),
            upscale_tile=tuple(data.get("upscale_tile", (192, 8))),
            vae_tiling=(str(data.get("vae_tiling", ("Automatic", 512))[0]), int(data.get("vae_tiling", ("", 512))[1])),
            preview_every=int(data.get("preview_every", 0)),
            script=ScriptCall.from_json(data["script"]) if data.get("script") else None,
            alwayson_scripts=tuple(ScriptCall.from_json(call) for call in data.get("alwayson_scripts") or ()),
            init_images=tuple(data.get("init_images") or ()),
            mask=data.get("mask"),
            batch=tuple(BatchEntry(**entry) for entry in data.get("batch") or ()),
            styles=tuple(data.get("styles") or ()),
            client=str(data.get("client", "native")),
            task_id=data.get("task_id"),
            is_recovered=bool(data.get("recovered", False)),
            hypernetwork=(str(data["hypernetwork"][0]), float(data["hypernetwork"][1]))
            if data.get("hypernetwork") else None,
            color_correction=bool(data.get("color_correction", False)),
        )

    def images(self) -> tuple[list[Image.Image], Image.Image | None]:
        """The init images and mask, decoded."""
        return [decode_png(text) for text in self.init_images], decode_png(self.mask) if self.mask else None


@dataclass(frozen=True)
class ExtrasPayload:
    """An extras (upscaling) job: the images and A1111's extras parameters."""

    params: ExtrasParams
    images: tuple[str, ...]
    names: tuple[str, ...] = ()
    infotexts: tuple[str | None, ...] = ()
    """Each image's own generation infotext (kept in the upscaled PNG, as A1111's extras do)."""
    tile: int = 192
    tile_overlap: int = 8
    output: OutputOptions = field(default_factory=lambda: OutputOptions(save=False, folder="extras-images"))
    client: str = "native"
    is_recovered: bool = False

    kind = "extras"

    def recovered(self) -> "ExtrasPayload":
        return replace(self, output=replace(self.output, save=True), is_recovered=True)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "params": asdict(self.params), "images": list(self.images),
                "names": list(self.names), "infotexts": list(self.infotexts), "tile": self.tile,
                "tile_overlap": self.tile_overlap, "output": asdict(self.output), "client": self.client,
                "recovered": self.is_recovered}

    @classmethod
    def from_json(cls, kind: str, data: Mapping[str, Any]) -> "ExtrasPayload":
        return cls(params=ExtrasParams(**data["params"]), images=tuple(data["images"]),
                   names=tuple(data.get("names") or ()), infotexts=tuple(data.get("infotexts") or ()),
                   tile=int(data.get("tile", 192)), tile_overlap=int(data.get("tile_overlap", 8)),
                   output=OutputOptions(**data.get("output", {})), client=str(data.get("client", "native")),
                   is_recovered=bool(data.get("recovered", False)))


@dataclass(frozen=True)
class LoadModelPayload:
    """Load a checkpoint (A1111's checkpoint switch, done in queue order)."""

    checkpoint: str
    vae: str = "Automatic"

    kind = "load_model"

    def recovered(self) -> "LoadModelPayload":
        return self

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "checkpoint": self.checkpoint, "vae": self.vae}

    @classmethod
    def from_json(cls, kind: str, data: Mapping[str, Any]) -> "LoadModelPayload":
        return cls(checkpoint=_existing_checkpoint(str(data["checkpoint"])), vae=str(data.get("vae") or "Automatic"))


@dataclass(frozen=True)
class MergePayload:
    """A Checkpoint Merger job (`server.model_tools`): `models.merge.MergeOptions` as a dict (the VAE as a path),
    the inputs as (path, name) or None, and where the result goes (decided at submit time)."""

    options: Mapping[str, Any]
    models: tuple[tuple[str, str] | None, ...]
    vae_name: str = "None"
    target: str = ""

    kind = "merge"

    def recovered(self) -> "MergePayload":
        return self

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "options": dict(self.options),
                "models": [list(model) if model else None for model in self.models], "vae_name": self.vae_name,
                "target": self.target}

    @classmethod
    def from_json(cls, kind: str, data: Mapping[str, Any]) -> "MergePayload":
        return cls(options=dict(data["options"]), models=tuple(tuple(m) if m else None for m in data["models"]),
                   vae_name=str(data.get("vae_name", "None")), target=str(data.get("target", "")))


@dataclass(frozen=True)
class ModelToolPayload:
    """A convert / extract_lora / bake_lora job (`server.model_tools`): the tool's arguments (paths resolved at
    submit time) and the output path."""

    tool: str
    args: Mapping[str, Any]
    target: str
    overwrite: bool = False

    @property
    def kind(self) -> str:
        return self.tool

    def recovered(self) -> "ModelToolPayload":
        return self

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "args": dict(self.args), "target": self.target, "overwrite": self.overwrite}

    @classmethod
    def from_json(cls, kind: str, data: Mapping[str, Any]) -> "ModelToolPayload":
        return cls(tool=kind, args=dict(data["args"]), target=str(data["target"]),
                   overwrite=bool(data.get("overwrite", False)))


@dataclass(frozen=True)
class TrainingPayload:
    """A create_embedding / train_embedding / train_hypernetwork job (`server.training`): the checked arguments (paths resolved at
    submit time) and the checkpoint (the `sd_model_checkpoint` setting then) it works on."""

    job: str
    args: Mapping[str, Any]
    checkpoint: str
    vae: str = "Automatic"

    @property
    def kind(self) -> str:
        return self.job

    def recovered(self) -> "TrainingPayload":
        return self

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "args": dict(self.args), "checkpoint": self.checkpoint, "vae": self.vae}

    @classmethod
    def from_json(cls, kind: str, data: Mapping[str, Any]) -> "TrainingPayload":
        return cls(job=kind, args=dict(data["args"]), checkpoint=_existing_checkpoint(str(data["checkpoint"])),
                   vae=str(data.get("vae") or "Automatic"))


PAYLOAD_TYPES = {"txt2img": GenerationPayload, "img2img": GenerationPayload, "extras": ExtrasPayload,
                 "load_model": LoadModelPayload, "merge": MergePayload, "convert": ModelToolPayload,
                 "extract_lora": ModelToolPayload, "bake_lora": ModelToolPayload,
                 "create_embedding": TrainingPayload, "train_embedding": TrainingPayload,
                 "train_hypernetwork": TrainingPayload, "train_lora": TrainingPayload}


def load_payload(kind: str, data: Mapping[str, Any]) -> Any:
    """A stored payload as its type, upgraded from schema 1 when it is older; other kinds (tests' and plug-ins'
    own job kinds) stay dicts."""
    payload_type = PAYLOAD_TYPES.get(kind)
    if payload_type is None:
        return dict(data)
    if "schema" not in data:
        data = upgrade_v1(kind, data)
    return payload_type.from_json(kind, data)


def upgrade_v1(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """A schema-1 payload as schema 2 (see the module docstring for what changed)."""
    data = dict(data)
    output = {
        "save": bool(data.pop("save_images", True)),
        "folder": str(data.pop("outdir", "extras-images" if kind == "extras" else f"{kind}-images")),
        "date_subdir": bool(data.pop("save_to_dirs", True)),
        "filename_pattern": str(data.pop("filename_pattern", "[seed]" if kind != "extras" else "")),
    }
    if kind in PARAMS_TYPES:
        params = dict(data["params"])
        params["rng"] = str(data.pop("rng", "gpu"))
        params["eta_noise_seed_delta"] = int(data.pop("eta_noise_seed_delta", 0))
        data["params"] = params  # txt2img-only fields an img2img job carried are dropped by `from_dict`
        data["batch"] = [{"name": entry.get("name", ""), "image": entry["image"], "mask": entry.get("mask")}
                         for entry in data.get("batch") or ()]
    data["output"] = output
    data["schema"] = SCHEMA_VERSION
    return data


def _existing_checkpoint(path: str) -> str:
    """A stored checkpoint path; the built-in demo model's path is where this install has it (the package moves
    when sdwebui is reinstalled or the checkout is moved, and a queued job must still find it)."""
    if Path(path).name == DEMO_CHECKPOINT.name and not Path(path).exists() and DEMO_CHECKPOINT.is_file():
        return str(DEMO_CHECKPOINT)
    return path


def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


__all__ = ["Payload", "GenerationPayload", "ExtrasPayload", "LoadModelPayload", "MergePayload", "ModelToolPayload", "TrainingPayload", "OutputOptions", "GridOptions",
           "BatchEntry",
           "load_payload", "upgrade_v1", "SCHEMA_VERSION", "encode_png", "decode_png", "PARAMS_TYPES"]
