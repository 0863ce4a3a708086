"""The Checkpoint Merger as a native job: `POST /api/v1/jobs {"type": "merge", ...}` (A1111 has no merge route; its
UI calls `run_modelmerger` with these arguments, so the body uses their names).

A merge reads and writes gigabytes, so it goes through the same queue as generation (one heavy thing at a time),
with progress (tensors done / total), interrupt (nothing is written), and the job record as its history. Names
are checked at submit time like a generation job's checkpoint: only files the checkpoints / VAE folders list,
matched as text, and the whole merge is planned (families, shapes, the output name) before it is queued, so bad
input is a 422 naming the field. The new checkpoint is in the model list as soon as the job is done (the list is
read from the folder; the merge also fills the hash cache, so its title has a hash at once).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdwebui.core.errors import ParamError
from sdwebui.models.hashing import sha256_of
from sdwebui.server.catalog import entry_for, relative_name
from sdwebui.server.payloads import MergePayload, ModelToolPayload

if TYPE_CHECKING:
    from sdwebui.server.queue import JobHandle
    from sdwebui.server.services import Services


class MergeJob(BaseModel):
    """A Checkpoint Merger job, with A1111's `run_modelmerger` argument names and UI defaults."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    type: Literal["merge"] = "merge"
    primary_model_name: str = Field(..., min_length=1, max_length=500, description="A: checkpoint name, title or hash")
    secondary_model_name: str | None = Field(None, max_length=500, description="B (Weighted sum, Add difference)")
    tertiary_model_name: str | None = Field(None, max_length=500, description="C (Add difference)")
    interp_method: Literal["No interpolation", "Weighted sum", "Add difference",
                           "no-interpolation", "weighted-sum", "add-difference"] = "Weighted sum"
    multiplier: float = Field(0.3, ge=-10.0, le=10.0, allow_inf_nan=False, description="M (A1111's slider: 0..1)")
    save_as_half: bool = False
    custom_name: str = Field("", max_length=200, description="file name in the checkpoints folder")
    checkpoint_format: Literal["safetensors", "ckpt"] = "safetensors"
    config_source: int = Field(0, ge=0, le=3, description="copy the .yaml from: 0 A, B or C; 1 B; 2 C; 3 don't")
    bake_in_vae: str = Field("None", max_length=500, description='"None" or a VAE file name')
    discard_weights: str = Field("", max_length=500, description="regex of keys to leave out")
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = Field("{}", max_length=100_000)
    overwrite: bool = Field(False, description="replace an existing checkpoint of the same name")


def prepare_merge(services: "Services", job: MergeJob) -> MergePayload:
    """Resolve the names (folder listings only) and plan the merge; ParamError naming the field."""
    from sdwebui.models.merge import MergeOptions, method_name, plan_merge

    refs = []
    for field in ("primary_model_name", "secondary_model_name", "tertiary_model_name"):
        name = getattr(job, field)
        if not name or name == "None":
            refs.append(None)
            continue
        try:
            path = services.resolve_checkpoint(name)
        except LookupError as error:
            raise ParamError((field,), str(error.args[0]) if error.args else str(error)) from None
        refs.append(_ref(services, path))
    vae = None
    if job.bake_in_vae and job.bake_in_vae not in ("None", "Automatic"):
        try:
            vae = services.resolve_vae(job.bake_in_vae)
        except LookupError as error:
            raise ParamError(("bake_in_vae",), str(error.args[0]) if error.args else str(error)) from None
    values = job.model_dump(exclude={"type", "primary_model_name", "secondary_model_name", "tertiary_model_name",
                                     "bake_in_vae"})
    values["interp_method"] = method_name(job.interp_method)
    options = MergeOptions(**values, bake_in_vae=vae)
    if refs[0] is None:
        raise ParamError(("primary_model_name",), "Failed: Merging requires a primary model.")
    plan, sources, _ = plan_merge(*refs, options, ckpt_dir=services.paths.ckpt_dir)
    for source in sources.values():
        source.close()
    return MergePayload(options=asdict(options) | {"bake_in_vae": str(vae) if vae else None},
                        models=tuple((str(ref.path), ref.name) if ref else None for ref in refs),
                        vae_name=vae.name if vae else "None", target=str(plan.target))


def _ref(services: "Services", path: Path):
    from sdwebui.models.merge import ModelRef

    return ModelRef(path, relative_name(path, services.paths.ckpt_dir))


def run_merge_job(job: "JobHandle", services: "Services") -> dict:
    """Merge with progress (one step per tensor); an interrupt stops between tensors and writes nothing."""
    from sdwebui.models.merge import MergeInterrupted, MergeOptions, ModelRef, merge_checkpoints

    payload: MergePayload = job.payload
    values = dict(payload.options)
    values["bake_in_vae"] = Path(values["bake_in_vae"]) if values.get("bake_in_vae") else None
    options = MergeOptions(**values)
    refs = [ModelRef(Path(model[0]), model[1]) if model else None for model in payload.models]
    stop = job.stop

    def progress(done: int, total: int, text: str) -> None:
        job.progress.textinfo = text
        if done:
            job.report_step(done, total, 0, 1)

    try:
        result = merge_checkpoints(*refs, options, ckpt_dir=services.paths.ckpt_dir,
                                   hash_cache_dir=services.paths.cache_dir, progress=progress,
                                   should_stop=stop.interrupted.is_set if stop is not None else None)
    except MergeInterrupted as error:
        job.interrupted = True
        return {"checkpoint": None, "info": str(error), "notes": []}
    entry = entry_for(services.paths, result.path)
    return {
        "checkpoint": {"title": entry.title, "name": entry.name, "hash": entry.short_hash, "sha256": entry.sha256},
        "info": f"Checkpoint saved to {entry.name}",
        "merged": result.merged, "copied": result.copied, "baked": result.baked, "discarded": result.discarded,
        "config": result.config.name if result.config else None,
        "notes": list(result.notes),
    }


def submit_merge(services: "Services", job: MergeJob):
    """Check and queue a merge job (ParamError before anything is queued; QueueFull when full)."""
    return services.queue.submit("merge", prepare_merge(services, job))


# ---- the other model tools (`models.model_tools`): the same queue, one job type each ------------------------------

_NAME = Field(..., min_length=1, max_length=200, description="the result's file name (extension added)")


class ConvertJob(BaseModel):
    """Prune / convert a checkpoint (or a diffusers folder) into a new `.safetensors` in the checkpoints folder."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["convert"] = "convert"
    checkpoint: str = Field(..., min_length=1, max_length=500)
    precision: Literal["fp16", "bf16", "fp32", "keep"] = "fp16"
    keep_ema: bool = False
    name: str = _NAME
    overwrite: bool = False


class ExtractLoraJob(BaseModel):
    """A LoRA from the difference of two checkpoints (SVD), written to the LoRA folder."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["extract_lora"] = "extract_lora"
    tuned: str = Field(..., min_length=1, max_length=500)
    base: str = Field(..., min_length=1, max_length=500)
    rank: int = Field(32, ge=1, le=4096)
    conv_rank: int | None = Field(None, ge=1, le=4096)
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    name: str = _NAME
    overwrite: bool = False


class LoraWeight(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=500)
    weight: float = Field(1.0, ge=-10.0, le=10.0, allow_inf_nan=False)


class BakeLoraJob(BaseModel):
    """LoRAs merged into a checkpoint, as a new checkpoint."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["bake_lora"] = "bake_lora"
    checkpoint: str = Field(..., min_length=1, max_length=500)
    loras: list[LoraWeight] = Field(..., min_length=1, max_length=20)
    name: str = _NAME
    overwrite: bool = False


TOOL_JOBS = {"convert": ConvertJob, "extract_lora": ExtractLoraJob, "bake_lora": BakeLoraJob}


def _checkpoint(services: "Services", name: str, field: str) -> Path:
    try:
        return services.resolve_checkpoint(name)
    except LookupError as error:
        raise ParamError((field,), str(error.args[0]) if error.args else str(error)) from None


def prepare_tool(services: "Services", job: BaseModel) -> ModelToolPayload:
    """Resolve a tool job's names (folder listings only) and its output path; ParamError naming the field."""
    from sdwebui.models.loader import describe_checkpoint
    from sdwebui.models.model_tools import tool_target

    paths = services.paths
    if isinstance(job, ConvertJob):
        source = _checkpoint(services, job.checkpoint, "checkpoint")
        target = tool_target(paths.ckpt_dir, job.name, overwrite=job.overwrite)
        args = {"source": str(source), "precision": None if job.precision == "keep" else job.precision,
                "drop_ema": not job.keep_ema}
    elif isinstance(job, ExtractLoraJob):
        tuned, base = _checkpoint(services, job.tuned, "tuned"), _checkpoint(services, job.base, "base")
        families = {}
        for field, path in (("tuned", tuned), ("base", base)):
            try:
                families[field] = describe_checkpoint(path).family
            except Exception as error:  # noqa: BLE001 - a ModelFileError or a detection failure: named below
                raise ParamError((field,), f"{path.name}: {getattr(error, 'reason', error)}") from None
        if families["tuned"] != families["base"]:
            raise ParamError(("base",), f"the tuned model is {families['tuned'].spec.title} but the base is "
                                        f"{families['base'].spec.title}")
        target = tool_target(paths.lora_dir, job.name, overwrite=job.overwrite)
        args = {"tuned": str(tuned), "base": str(base), "rank": job.rank, "conv_rank": job.conv_rank,
                "precision": job.precision}
    else:
        source = _checkpoint(services, job.checkpoint, "checkpoint")
        loras = []
        for index, entry in enumerate(job.loras):
            found = services.loras.find(entry.name)
            if found is None:
                raise ParamError(("loras", index, "name"), f"no LoRA {entry.name!r} in the LoRA folder")
            loras.append([str(found.path), entry.weight])
        target = tool_target(paths.ckpt_dir, job.name, overwrite=job.overwrite)
        args = {"source": str(source), "loras": loras}
    return ModelToolPayload(tool=job.type, args=args, target=str(target), overwrite=job.overwrite)


def submit_tool(services: "Services", job: BaseModel):
    """Check and queue a convert / extract_lora / bake_lora job."""
    return services.queue.submit(job.type, prepare_tool(services, job))


def run_tool_job(job: "JobHandle", services: "Services") -> dict:
    from sdwebui.models.merge import MergeInterrupted
    from sdwebui.models.model_tools import bake_loras, convert_checkpoint, extract_lora

    payload: ModelToolPayload = job.payload
    args, target = payload.args, Path(payload.target)

    def progress(done: int, total: int, text: str) -> None:
        job.progress.textinfo = text
        if done:
            job.report_step(done, total, 0, 1)

    stop = job.stop
    try:
        if payload.tool == "convert":
            result = convert_checkpoint(Path(args["source"]), target, precision=args["precision"],
                                        drop_ema=args["drop_ema"], overwrite=payload.overwrite, progress=progress,
                                        should_stop=stop.interrupted.is_set if stop is not None else None)
        elif payload.tool == "extract_lora":
            result = extract_lora(Path(args["tuned"]), Path(args["base"]), target, rank=args["rank"],
                                  conv_rank=args["conv_rank"], precision=args["precision"],
                                  overwrite=payload.overwrite, progress=progress)
        else:
            result = bake_loras(Path(args["source"]), [(Path(p), float(w)) for p, w in args["loras"]], target,
                                overwrite=payload.overwrite, progress=progress)
    except MergeInterrupted as error:
        job.interrupted = True
        return {"file": None, "info": str(error), "notes": []}
    folder = services.paths.lora_dir if payload.tool == "extract_lora" else services.paths.ckpt_dir
    name = relative_name(result.path, folder)
    out = {"file": name, "info": f"Saved {name}", "counts": dict(result.counts), "notes": list(result.notes)}
    if payload.tool != "extract_lora":
        sha256_of(result.path, services.paths.cache_dir)  # listed with its hash at once, as a merge
        entry = entry_for(services.paths, result.path)
        out["checkpoint"] = {"title": entry.title, "name": entry.name, "hash": entry.short_hash}
    return out


__all__ = ["MergeJob", "prepare_merge", "run_merge_job", "submit_merge", "ConvertJob", "ExtractLoraJob",
           "BakeLoraJob", "TOOL_JOBS", "prepare_tool", "submit_tool", "run_tool_job"]
