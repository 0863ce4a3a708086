"""The Checkpoint Merger: A1111's `modules/extras.py: run_modelmerger`, streamed tensor by tensor.

Methods (A1111's names; the CLI's in brackets), M the multiplier:

| method | needs | each merged key |
|---|---|---|
| Weighted sum [weighted-sum] | A, B | A·(1−M) + B·M |
| Add difference [add-difference] | A, B, C | A + (B − C)·M (a key B has and C lacks: B − C counts as 0) |
| No interpolation [no-interpolation] | A | A (format conversion, fp16, VAE baking, discarding) |

A1111's key rules, kept: the output has A's keys, in A's order; a key is merged when its name contains "model"
(every UNet, VAE and text-encoder weight; not the schedule buffers such as `alphas_cumprod`) and B has it;
`cond_stage_model.transformer.text_model.embeddings.position_ids` is copied from A; B's keys that A lacks are
dropped. An inpainting A (9 UNet input channels) merges with a normal B on the 4 channels they share and keeps
A's 5 extra ones (the output is named `<name>.inpainting`); a normal A with an inpainting B is refused, as in
A1111. A baked-in VAE replaces A's `first_stage_model.*` weights it has keys for; the discard regex
(`re.search`) drops matching keys last. Metadata: A1111's `sd_merge_recipe` and `sd_merge_models` (by
SHA-256), the inputs' own metadata when asked, the user's JSON, and `format: pt`.

Differences from A1111, on purpose:
- Streaming: A1111 loads A, B and C whole; here every key is read, merged and written on its own (see
  `tensor_stream`), so memory stays near a few tensors whatever the model size. The output is renamed into
  place at the end: an interrupt leaves nothing behind.
- Checked before anything is written: the families must match (SD 1.x with SD 1.x, SDXL with SDXL, ...), and
  every merged key must have the same shape in A and B (and C); A1111 fails half-way or, worse, broadcasts.
- Integer tensors (position ids) are always copied from A (A1111 turns SDXL's into floats).
- Arithmetic in float32 at least (A1111 computes fp16 inputs in fp16), then cast to the output dtype.
- "Save as float16" halves every float32 weight (A1111 halves only the keys it merged in the weighted-sum and
  add-difference modes), but keeps the schedule buffers (`alphas_cumprod`, ...) in float32, where fp16 would
  move the sigmas.
- A custom name stays inside the checkpoints folder, and an existing file is kept unless `overwrite` is set
  (A1111 overwrites silently).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sdwebui.core.errors import ParamError
from sdwebui.models.detect import VAE_PREFIX, config_yaml_beside, detect
from sdwebui.models.family import ModelFamily
from sdwebui.models.files import ModelFileError
from sdwebui.models.hashing import legacy_model_hash, sha256_of
from sdwebui.models.tensor_stream import AtomicOutput, StreamingWriter, TensorSource, TensorSpec, open_source

METHODS = {"Weighted sum": "weighted-sum", "Add difference": "add-difference", "No interpolation": "no-interpolation"}
"""A1111's interpolation method names -> the CLI's."""
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
"""A1111's "Copy config from" choices; the request holds the index (A1111's `type="index"` radio)."""
CHECKPOINT_FORMATS = ("ckpt", "safetensors")
SKIP_ON_MERGE = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)
"""A1111's `checkpoint_dict_skip_on_merge`."""

_BASE_FAMILY = {ModelFamily.SD1_INPAINT: ModelFamily.SD1, ModelFamily.SD2_INPAINT: ModelFamily.SD2,
                ModelFamily.SDXL_INPAINT: ModelFamily.SDXL}
_ROLE_FIELDS = {"A": "primary_model_name", "B": "secondary_model_name", "C": "tertiary_model_name"}

Progress = Callable[[int, int, str], None]
"""(done, total, what is happening) after each tensor."""


class MergeInterrupted(Exception):
    """The job was interrupted; nothing was written."""


def method_name(value: str) -> str:
    """A1111's method name for any accepted spelling ("Weighted sum", "weighted-sum", "weighted_sum")."""
    text = str(value).strip()
    for name, slug in METHODS.items():
        if text.lower() in (name.lower(), slug, slug.replace("-", "_")):
            return name
    raise ParamError(("interp_method",), f"unknown method {value!r}: use {', '.join(METHODS)}")


@dataclass(frozen=True)
class MergeOptions:
    """A1111's `run_modelmerger` arguments (its names), the models given as paths."""

    interp_method: str = "Weighted sum"
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: int = 0
    bake_in_vae: Path | None = None
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"
    overwrite: bool = False


@dataclass(frozen=True)
class ModelRef:
    """An input model: its file and the names A1111 records (`name`: relative to the checkpoints folder with
    extension; `model_name`: without extension, folders joined by "_")."""

    path: Path
    name: str

    @property
    def model_name(self) -> str:
        stem = self.name.replace("/", "_").replace("\\", "_")
        return stem.rsplit(".", 1)[0] if "." in Path(stem).name else stem


@dataclass
class _Step:
    key: str
    spec: TensorSpec
    op: str
    """"copy" (A), "merge" (all channels), "merge4" (the first 4 input channels of an inpainting A), "vae"."""


@dataclass
class MergePlan:
    """Everything checked and decided before a byte is written."""

    a: ModelRef
    b: ModelRef | None
    c: ModelRef | None
    options: MergeOptions
    family: ModelFamily
    target: Path
    steps: list[_Step]
    is_inpainting: bool
    vae_keys: dict[str, str] = field(default_factory=dict)
    """Output key -> the baked VAE's key."""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MergeResult:
    path: Path
    name: str
    merged: int
    copied: int
    discarded: int
    baked: int
    notes: tuple[str, ...] = ()
    config: Path | None = None


def _is_model_key(key: str) -> bool:
    return "model" in key


def _family_of(source: TensorSource, role: str) -> ModelFamily:
    try:
        return detect(source.specs, source.path).family
    except ModelFileError as error:
        raise ParamError((_ROLE_FIELDS[role],), f"{role} ({source.path.name}): {error.reason}") from None


def _promote(*dtypes: torch.dtype) -> torch.dtype:
    out = dtypes[0]
    for dtype in dtypes[1:]:
        out = torch.promote_types(out, dtype)
    return out


def _half(key: str, dtype: torch.dtype, options: MergeOptions) -> torch.dtype:
    if options.save_as_half and dtype == torch.float32 and _is_model_key(key):
        return torch.float16
    return dtype


def output_target(ckpt_dir: Path, name: str, checkpoint_format: str, *, is_inpainting: bool, overwrite: bool) -> Path:
    """Where a result named `name` goes: inside `ckpt_dir` (a name that would leave it is refused), A1111's
    `.inpainting` suffix for an inpainting result, the format's extension; an existing file only with
    `overwrite`."""
    text = str(name).strip()
    loc = ("custom_name",)
    for ext in (".safetensors", ".ckpt"):
        if text.lower().endswith(ext):
            text = text[: -len(ext)]
    if not text or any(ch in text for ch in "\0\\:") or any(ord(ch) < 32 for ch in text):
        raise ParamError(loc, f"{name!r} is not a usable file name")
    parts = Path(text).parts
    if Path(text).is_absolute() or any(part in ("..", ".") for part in parts) or parts[-1].startswith("."):
        raise ParamError(loc, f"{name!r}: the name must stay inside the checkpoints folder (no absolute path, no ..)")
    file_name = text + (".inpainting" if is_inpainting else "") + "." + checkpoint_format
    root = Path(ckpt_dir).resolve()
    target = (root / file_name).resolve()
    if not target.is_relative_to(root) or target == root:
        raise ParamError(loc, f"{name!r}: the name must stay inside the checkpoints folder")
    if target.exists() and not overwrite:
        raise ParamError(loc, f"{target.relative_to(root).as_posix()} already exists in the checkpoints folder; "
                              "choose another name or allow overwriting")
    if target.is_dir():
        raise ParamError(loc, f"{target.relative_to(root).as_posix()} is a folder")
    return target


def default_name(method: str, a: ModelRef, b: ModelRef | None, c: ModelRef | None, multiplier: float) -> str:
    """A1111's generated file name (`filename_weighted_sum` and friends)."""
    if method == "Weighted sum":
        return f"{round(1 - multiplier, 2)}({a.model_name}) + {round(multiplier, 2)}({b.model_name})"
    if method == "Add difference":
        return f"{a.model_name} + {round(multiplier, 2)}({b.model_name} - {c.model_name})"
    return a.model_name


def _vae_source_keys(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A VAE file as LDM keys without prefix (its layout converted), read whole: a VAE is ~160 M parameters."""
    from sdwebui.models.convert import is_diffusers_vae_layout
    from sdwebui.models.files import read_state_dict
    from sdwebui.models.ldm_layout import vae_to_ldm
    from sdwebui.models.vae import vae_state_dict

    raw = read_state_dict(path, keys=lambda k: not k.startswith(("loss", "model_ema.")))
    sd = vae_state_dict(raw)
    if not sd:
        raise ParamError(("bake_in_vae",), f"{path.name} holds no VAE weights")
    if is_diffusers_vae_layout(sd):
        return vae_to_ldm(sd), "diffusers"
    return sd, "ldm"


def plan_merge(
    a: ModelRef,
    b: ModelRef | None,
    c: ModelRef | None,
    options: MergeOptions,
    *,
    ckpt_dir: Path,
) -> tuple[MergePlan, dict[str, TensorSource], dict[str, torch.Tensor]]:
    """Check the inputs and decide every output key's source, dtype and shape (headers only; a `.ckpt` is
    unpickled through the restricted loader, memory-mapped). Raises ParamError naming the request field."""
    method = method_name(options.interp_method)
    options = MergeOptions(**{**asdict(options), "interp_method": method})
    if options.checkpoint_format not in CHECKPOINT_FORMATS:
        raise ParamError(("checkpoint_format",), f"use {' or '.join(CHECKPOINT_FORMATS)}")
    if options.config_source not in range(len(CONFIG_SOURCES)):
        raise ParamError(("config_source",), f"use 0..3 ({', '.join(CONFIG_SOURCES)})")
    needs_b = method != "No interpolation"
    needs_c = method == "Add difference"
    if needs_b and b is None:
        raise ParamError(("secondary_model_name",), "Failed: Merging requires a secondary model.")
    if needs_c and c is None:
        raise ParamError(("tertiary_model_name",), f"Failed: Interpolation method ({method}) requires a tertiary model.")
    b = b if needs_b else None
    c = c if needs_c else None
    discard = None
    if options.discard_weights:
        try:
            discard = re.compile(options.discard_weights)
        except re.error as error:
            raise ParamError(("discard_weights",), f"not a valid regular expression ({error})") from None
    if options.save_metadata:
        try:
            extra = json.loads(options.metadata_json or "{}")
        except ValueError as error:
            raise ParamError(("metadata_json",), f"not valid JSON ({error})") from None
        if not isinstance(extra, dict):
            raise ParamError(("metadata_json",), "must be a JSON object")

    sources: dict[str, TensorSource] = {}
    for role, ref in (("A", a), ("B", b), ("C", c)):
        if ref is None:
            continue
        try:
            sources[role] = open_source(ref.path)
        except ModelFileError as error:
            raise ParamError((_ROLE_FIELDS[role],), f"{ref.path.name}: {error.reason}") from None
    families = {role: _family_of(source, role) for role, source in sources.items()}
    family = families["A"]
    for role, other in families.items():
        if _BASE_FAMILY.get(other, other) != _BASE_FAMILY.get(family, family):
            raise ParamError((_ROLE_FIELDS[role],),
                             f"A is {family.spec.title} but {role} is {other.spec.title}: checkpoints of different "
                             "model families cannot be merged")
    if "B" in families and family.spec.unet_in_channels == 4 and families["B"].spec.unet_in_channels == 9:
        raise ParamError(("secondary_model_name",),
                         "When merging inpainting model with a normal one, A must be the inpainting model.")

    vae_tensors: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    if options.bake_in_vae is not None:
        try:
            vae_tensors, layout = _vae_source_keys(Path(options.bake_in_vae))
        except ModelFileError as error:
            raise ParamError(("bake_in_vae",), str(error)) from None
        if layout == "diffusers":
            notes.append(f"VAE {Path(options.bake_in_vae).name} converted from the diffusers layout")

    A, B, C = sources["A"], sources.get("B"), sources.get("C")
    steps: list[_Step] = []
    vae_keys: dict[str, str] = {}
    is_inpainting = False
    for key in A.keys():
        if discard is not None and discard.search(key):
            continue
        spec = A.specs[key]
        op, dtype, shape = "copy", spec.dtype, spec.shape
        if B is not None and _is_model_key(key) and key in B and key not in SKIP_ON_MERGE and spec.dtype.is_floating_point:
            b_spec = B.specs[key]
            other = [b_spec.dtype]
            if C is not None and key in C:
                c_spec = C.specs[key]
                if c_spec.shape != b_spec.shape:
                    raise ParamError(("tertiary_model_name",), f"{key} has shape {list(c_spec.shape)} in C but "
                                     f"{list(b_spec.shape)} in B: B and C are not the same architecture")
                other.append(c_spec.dtype)
            if b_spec.shape == spec.shape:
                op, dtype = "merge", _promote(spec.dtype, *other)
            elif (len(spec.shape) == 4 and len(b_spec.shape) == 4 and spec.shape[1] == 9 and b_spec.shape[1] == 4
                  and spec.shape[0:1] + spec.shape[2:] == b_spec.shape[0:1] + b_spec.shape[2:]):
                op, is_inpainting = "merge4", True  # A's tensor is written into: it keeps A's dtype
            else:
                raise ParamError(("secondary_model_name",), f"{key} has shape {list(b_spec.shape)} in B but "
                                 f"{list(spec.shape)} in A: these checkpoints are not the same architecture")
        if vae_tensors and key.startswith(VAE_PREFIX) and key[len(VAE_PREFIX):] in vae_tensors:
            vae_key = key[len(VAE_PREFIX):]
            tensor = vae_tensors[vae_key]
            if tensor.numel() != _numel(shape):
                raise ParamError(("bake_in_vae",), f"the VAE's {vae_key} has shape {list(tensor.shape)}, the model's "
                                 f"{list(shape)}: a VAE of another kind")
            op, dtype = "vae", tensor.dtype
            vae_keys[key] = vae_key
        steps.append(_Step(key, TensorSpec(_half(key, dtype, options), tuple(shape)), op))
    if vae_tensors and not vae_keys:
        raise ParamError(("bake_in_vae",), "none of the VAE's weights match the model's VAE (first_stage_model.*): "
                         "is A a checkpoint with a VAE, and the file a VAE?")
    if vae_tensors:
        notes.append(f"baked in VAE {Path(options.bake_in_vae).name} ({len(vae_keys)} tensors)")
    if family.spec.unet_in_channels == 9 and B is not None:
        is_inpainting = True
    name = options.custom_name.strip() or default_name(method, a, b, c, options.multiplier)
    target = output_target(Path(ckpt_dir), name, options.checkpoint_format, is_inpainting=is_inpainting,
                           overwrite=options.overwrite)
    plan = MergePlan(a, b, c, options, family, target, steps, is_inpainting, vae_keys, notes)
    return plan, sources, vae_tensors


def _numel(shape) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def _parsed_metadata(metadata: Mapping[str, str]) -> dict:
    """A1111's `read_metadata_from_safetensors`: values that are JSON objects are parsed."""
    out = {}
    for key, value in metadata.items():
        if isinstance(value, str) and value[:1] == "{":
            try:
                out[key] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    return out


def merge_metadata(plan: MergePlan, sources: Mapping[str, TensorSource], *, hashes: Mapping[Path, str],
                   legacy_hashes: Mapping[Path, str], bake_in_vae_name: str = "None") -> dict[str, str]:
    """The output's safetensors metadata, as A1111 writes it."""
    options = plan.options
    metadata: dict[str, str] = {}
    if not options.save_metadata:
        return metadata
    refs = [(plan.a, sources["A"]), (plan.b, sources.get("B")), (plan.c, sources.get("C"))]
    if options.copy_metadata_fields:
        for ref, source in refs:
            if ref is not None and source is not None:
                metadata.update(source.metadata)
    for key, value in json.loads(options.metadata_json or "{}").items():
        metadata[str(key)] = value if isinstance(value, str) else json.dumps(value)
    metadata["format"] = "pt"
    if options.add_merge_recipe:
        recipe = {
            "type": "webui",
            "primary_model_hash": hashes[plan.a.path],
            "secondary_model_hash": hashes[plan.b.path] if plan.b else None,
            "tertiary_model_hash": hashes[plan.c.path] if plan.c else None,
            "interp_method": options.interp_method,
            "multiplier": options.multiplier,
            "save_as_half": options.save_as_half,
            "custom_name": options.custom_name,
            "config_source": options.config_source,
            "bake_in_vae": bake_in_vae_name,
            "discard_weights": options.discard_weights,
            "is_inpainting": plan.is_inpainting,
            "is_instruct_pix2pix": False,
        }
        models: dict = {}
        for ref, source in refs:
            if ref is None or source is None:
                continue
            own = _parsed_metadata(source.metadata)
            models[hashes[ref.path]] = {"name": ref.name, "legacy_hash": legacy_hashes[ref.path],
                                        "sd_merge_recipe": own.get("sd_merge_recipe")}
            earlier = own.get("sd_merge_models")
            if isinstance(earlier, dict):
                models.update(earlier)
        metadata["sd_merge_recipe"] = json.dumps(recipe)
        metadata["sd_merge_models"] = json.dumps(models)
    return metadata


def _merged(op: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, method: str, m: float) -> torch.Tensor:
    """One key's merge, in float32 at least, in place on a copy of A's tensor (the fewest tensor-sized buffers)."""
    work = _promote(a.dtype, b.dtype, torch.float32, *([c.dtype] if c is not None else []))
    out = a.to(work, copy=True)
    part = out[:, 0:4] if op == "merge4" else out
    other = b.to(work)
    if method == "Weighted sum":
        part.mul_(1 - m).add_(other, alpha=m)
    elif c is not None:  # Add difference; without C's key B - C counts as 0 (A1111 zeroes B's), so A stays
        part.add_(other - c.to(work), alpha=m)
    return out


def run_merge(
    plan: MergePlan,
    sources: Mapping[str, TensorSource],
    vae_tensors: Mapping[str, torch.Tensor],
    *,
    metadata: Mapping[str, str],
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MergeResult:
    """Write the planned merge to `plan.target` (atomically); MergeInterrupted when `should_stop` says so."""
    options = plan.options
    method = options.interp_method
    A, B, C = sources["A"], sources.get("B"), sources.get("C")
    plan.target.parent.mkdir(parents=True, exist_ok=True)
    output = AtomicOutput(plan.target, overwrite=options.overwrite)
    total = len(plan.steps)
    counts = {"merge": 0, "merge4": 0, "copy": 0, "vae": 0}
    writer = None
    collected: dict[str, torch.Tensor] | None = None
    try:
        if options.checkpoint_format == "safetensors":
            writer = StreamingWriter(output.temp, [(s.key, s.spec) for s in plan.steps], metadata or None)
        else:
            collected = {}  # a pickle cannot be streamed: held whole (A1111's ckpt output)
        for index, step in enumerate(plan.steps):
            if should_stop is not None and should_stop():
                raise MergeInterrupted("interrupted; nothing was written")
            if step.op == "vae":
                tensor = vae_tensors[plan.vae_keys[step.key]].reshape(step.spec.shape)
            elif step.op == "copy":
                tensor = A.get(step.key)
            else:
                tensor = _merged(step.op, A.get(step.key), B.get(step.key),
                                 C.get(step.key) if C is not None and step.key in C else None, method,
                                 float(options.multiplier))
            counts[step.op] += 1
            tensor = tensor.to(step.spec.dtype)
            if writer is not None:
                writer.write(step.key, tensor)
            else:
                collected[step.key] = tensor.clone()
            del tensor
            if progress is not None:
                progress(index + 1, total, "Merging" if B is not None else "Converting")
        if writer is not None:
            writer.close()
        else:
            torch.save(collected, output.temp)
        path = output.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        output.discard()
        raise
    finally:
        for source in sources.values():
            source.close()
    config = copy_config(plan)
    discarded = 0
    if options.discard_weights:
        pattern = re.compile(options.discard_weights)
        discarded = sum(1 for key in A.specs if pattern.search(key))
    return MergeResult(path=path, name=path.name, merged=counts["merge"] + counts["merge4"], copied=counts["copy"],
                       discarded=discarded, baked=counts["vae"], notes=tuple(plan.notes), config=config)


def copy_config(plan: MergePlan) -> Path | None:
    """A1111's `create_config`: the `.yaml` beside A, B or C (or the one chosen) copied beside the result."""
    refs = {"A": plan.a, "B": plan.b, "C": plan.c}
    order = {0: ("A", "B", "C"), 1: ("B",), 2: ("C",), 3: ()}[plan.options.config_source]
    for role in order:
        ref = refs[role]
        found = config_yaml_beside(ref.path) if ref is not None else None
        if found is not None:
            target = plan.target.with_suffix(".yaml")
            temp = target.with_name(f".{target.name}.partial")
            shutil.copyfile(found, temp)
            temp.replace(target)
            return target
    return None


def merge_checkpoints(
    a: ModelRef,
    b: ModelRef | None = None,
    c: ModelRef | None = None,
    options: MergeOptions = MergeOptions(),
    *,
    ckpt_dir: Path,
    hash_cache_dir: Path | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MergeResult:
    """Plan, hash the inputs (for the recipe), merge and write; the one call the CLI and the server make."""
    plan, sources, vae_tensors = plan_merge(a, b, c, options, ckpt_dir=ckpt_dir)
    try:
        refs = [ref for ref in (plan.a, plan.b, plan.c) if ref is not None]
        hashes, legacy = {}, {}
        if plan.options.save_metadata and plan.options.add_merge_recipe and plan.options.checkpoint_format == "safetensors":
            for ref in refs:
                if progress is not None:
                    progress(0, len(plan.steps), f"Hashing {ref.path.name}")
                hashes[ref.path] = sha256_of(ref.path, hash_cache_dir)
                legacy[ref.path] = legacy_model_hash(ref.path)
        vae_name = Path(plan.options.bake_in_vae).name if plan.options.bake_in_vae else "None"
        metadata = merge_metadata(plan, sources, hashes=hashes, legacy_hashes=legacy, bake_in_vae_name=vae_name) \
            if plan.options.checkpoint_format == "safetensors" else {}
    except BaseException:
        for source in sources.values():
            source.close()
        raise
    result = run_merge(plan, sources, vae_tensors, metadata=metadata, progress=progress, should_stop=should_stop)
    if hash_cache_dir is not None:
        sha256_of(result.path, hash_cache_dir)  # A1111 hashes the new model, so its title has a hash at once
    return result


__all__ = ["METHODS", "CONFIG_SOURCES", "CHECKPOINT_FORMATS", "MergeOptions", "ModelRef", "MergePlan", "MergeResult",
           "MergeInterrupted", "method_name", "plan_merge", "run_merge", "merge_checkpoints", "merge_metadata",
           "output_target", "default_name", "copy_config"]
