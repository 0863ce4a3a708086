"""Model tools beyond A1111's merger, which users otherwise reach for separate scripts for (kohya's
`extract_lora_from_models.py`, checkpoint pruners and converters):

- `extract_lora(tuned, base)`: the difference of two checkpoints as a LoRA, by truncated SVD per layer, in kohya's
  key format (`lora_unet_<LDM name>`, `lora_te_` / `lora_te1_` / `lora_te2_text_model_encoder_layers_N_...`), so
  A1111, ComfyUI and our own loader take it. For each Linear / Conv layer, ΔW = W_tuned − W_base flattened to
  [out, in·kh·kw], ΔW ≈ U_r S_r V_rᵀ: `lora_up` = U_r S_r, `lora_down` = V_rᵀ, `alpha` = r (scale 1). 3x3
  convolutions use `conv_rank` (LoCon). At full rank the LoRA reproduces ΔW up to rounding. Norms, biases and
  embeddings cannot be held by a LoRA; the result counts them.
- `convert_checkpoint(path)`: prune and convert one file, streamed like the merger: drop EMA weights
  (`model_ema.*`), cast float weights to fp16 / bf16 (the schedule buffers stay float32), `.ckpt` in (through the
  restricted unpickler) -> `.safetensors` out; or a diffusers folder -> one single-file checkpoint.
- `bake_loras(checkpoint, [(lora, weight), ...])`: LoRAs merged into a checkpoint's weights with the same code
  that applies them at generation time (`LoraLibrary.applied`), so a baked LoRA at weight w gives the picture the
  runtime LoRA at w gives. The model is loaded once (in the file's precision); every other key is copied as is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdwebui.core.errors import ParamError
from sdwebui.models.detect import detect
from sdwebui.models.family import ModelFamily
from sdwebui.models.files import ModelFileError
from sdwebui.models.merge import MergeInterrupted, output_target
from sdwebui.models.tensor_stream import AtomicOutput, StreamingWriter, TensorSpec, open_source

Progress = Callable[[int, int, str], None]

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_OPENCLIP = {"attn.out_proj.weight": "self_attn_out_proj", "mlp.c_fc.weight": "mlp_fc1", "mlp.c_proj.weight": "mlp_fc2"}
_BASE_VERSION = {ModelFamily.SD1: "sd_v1", ModelFamily.SD2: "sd_v2", ModelFamily.SDXL: "sdxl_base_v1-0",
                 ModelFamily.SDXL_REFINER: "sdxl_refiner_v1-0"}


@dataclass(frozen=True)
class ToolResult:
    path: Path
    counts: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------ extract LoRA


def lora_names(key: str, family: ModelFamily, last_openclip_block: int | None) -> list[tuple[str, slice | None]]:
    """kohya layer names for a checkpoint key (with the row slice of a fused QKV matrix), [] if no LoRA layer."""
    if not key.endswith(".weight") and not key.endswith("in_proj_weight"):
        return []
    if key.startswith("model.diffusion_model."):
        return [("lora_unet_" + key[len("model.diffusion_model."):-len(".weight")].replace(".", "_"), None)]
    clip = {"cond_stage_model.transformer.": "lora_te_", "conditioner.embedders.0.transformer.": "lora_te1_"}
    for prefix, kohya in clip.items():
        if key.startswith(prefix + "text_model.encoder.layers.") and re.search(r"(_proj|fc\d)\.weight$", key):
            return [(kohya + key[len(prefix):-len(".weight")].replace(".", "_"), None)]
    openclip = {"cond_stage_model.model.transformer.resblocks.": "lora_te_",
                "conditioner.embedders.1.model.transformer.resblocks.": "lora_te2_",
                "conditioner.embedders.0.model.transformer.resblocks.": "lora_te2_"}
    for prefix, kohya in openclip.items():
        if not key.startswith(prefix):
            continue
        block, _, rest = key[len(prefix):].partition(".")
        if last_openclip_block is not None and int(block) == last_openclip_block and family == ModelFamily.SD2:
            return []  # SD 2 conditions on the penultimate layer: the last block is never used (nor loaded)
        base = f"{kohya}text_model_encoder_layers_{block}_"
        if rest == "attn.in_proj_weight":
            return [(base + f"self_attn_{name}_proj", None) for name in ("q", "k", "v")]
        if rest in _OPENCLIP:
            return [(base + _OPENCLIP[rest], None)]
    return []


def _svd(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    matrix = delta.flatten(1)
    r = max(1, min(rank, *matrix.shape))
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    up, down = u[:, :r] * s[:r], vh[:r]
    if delta.ndim == 4:
        return up.reshape(delta.shape[0], r, 1, 1), down.reshape(r, *delta.shape[1:]), r
    return up, down, r


def extract_lora(
    tuned: Path,
    base: Path,
    target: Path,
    *,
    rank: int = 32,
    conv_rank: int | None = None,
    precision: str = "fp16",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ToolResult:
    """Write the LoRA of `tuned` − `base` to `target` (a `.safetensors` path); see the module docstring."""
    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise ParamError(("rank",), "must be at least 1")
    dtype = PRECISIONS[precision]
    conv_rank = rank if conv_rank is None else conv_rank
    sources = {}
    try:
        for role, path in (("tuned", tuned), ("base", base)):
            try:
                sources[role] = open_source(path)
            except ModelFileError as error:
                raise ParamError((role,), f"{Path(path).name}: {error.reason}") from None
        families = {}
        for role, source in sources.items():
            try:
                families[role] = detect(source.specs, source.path).family
            except ModelFileError as error:
                raise ParamError((role,), f"{source.path.name}: {error.reason}") from None
        if families["tuned"] != families["base"]:
            raise ParamError(("base",), f"the tuned model is {families['tuned'].spec.title} but the base is "
                                        f"{families['base'].spec.title}")
        family = families["tuned"]
        tuned_src, base_src = sources["tuned"], sources["base"]
        blocks = [int(m[1]) for k in tuned_src.keys() if (m := re.match(r"cond_stage_model\.model\.transformer\.resblocks\.(\d+)\.", k))]
        last = max(blocks) if blocks else None
        out: dict[str, torch.Tensor] = {}
        counts = {"layers": 0, "unchanged": 0, "not_lora": 0}
        keys = tuned_src.keys()
        for index, key in enumerate(keys):
            names = lora_names(key, family, last) if len(tuned_src.specs[key].shape) in (2, 4) else []
            if key not in base_src or tuned_src.specs[key].shape != base_src.specs[key].shape:
                if names:
                    raise ParamError(("base",), f"{key} differs in shape between the models: not the same architecture")
                continue
            if not tuned_src.specs[key].dtype.is_floating_point:
                continue
            delta = tuned_src.get(key).float() - base_src.get(key).float()
            if not names:
                if key.startswith(("model.", "cond_stage_model.", "conditioner.")) and bool(delta.abs().max() > 0):
                    counts["not_lora"] += 1
                continue
            parts = delta.chunk(3, dim=0) if len(names) == 3 else (delta,)
            for (name, _), part in zip(names, parts):
                if not bool(part.abs().max() > 0):
                    counts["unchanged"] += 1
                    continue
                layer_rank = conv_rank if part.ndim == 4 and part.shape[2:] != (1, 1) else rank
                up, down, r = _svd(part, layer_rank)
                out[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
                out[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
                out[f"{name}.alpha"] = torch.tensor(float(r)).to(dtype)
                counts["layers"] += 1
            if progress is not None:
                progress(index + 1, len(keys), "Extracting")
    finally:
        for source in sources.values():
            source.close()
    if not out:
        raise ParamError(("tuned",), "the two models have the same weights in every layer a LoRA can hold")
    metadata = {
        "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
        "ss_network_args": f'{{"conv_dim": "{conv_rank}", "conv_alpha": "{conv_rank}"}}',
        "ss_base_model_version": _BASE_VERSION.get(family, family.value), "ss_v2": str(family == ModelFamily.SD2),
        "sdwebui.extracted_from": f"{Path(tuned).name} - {Path(base).name}",
    }
    _save(out, target, metadata, overwrite)
    notes = []
    if counts["not_lora"]:
        notes.append(f"{counts['not_lora']} changed tensors a LoRA cannot hold (norms, biases, embeddings) left out")
    return ToolResult(target, counts, tuple(notes))


def _save(tensors: dict[str, torch.Tensor], target: Path, metadata: dict[str, str], overwrite: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    output = AtomicOutput(target, overwrite=overwrite)
    try:
        writer = StreamingWriter(output.temp, [(k, TensorSpec(v.dtype, tuple(v.shape))) for k, v in tensors.items()],
                                 metadata)
        try:
            for key, value in tensors.items():
                writer.write(key, value)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        output.commit()
    except BaseException:
        output.discard()
        raise


def tool_target(folder: Path, name: str, *, overwrite: bool, loc: str = "name") -> Path:
    """A result's path inside `folder` (the merger's rules: no escaping the folder, no overwrite without the flag)."""
    try:
        return output_target(folder, name, "safetensors", is_inpainting=False, overwrite=overwrite)
    except ParamError as error:
        raise ParamError((loc,), error.message) from None


# ----------------------------------------------------------------------------------------------- convert / prune


def convert_checkpoint(
    source_path: Path,
    target: Path,
    *,
    precision: str | None = "fp16",
    drop_ema: bool = True,
    overwrite: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ToolResult:
    """Prune / convert one checkpoint file (streamed), or a diffusers folder to one file; see the module docstring."""
    if Path(source_path).is_dir():
        return _convert_diffusers(Path(source_path), target, precision=precision, overwrite=overwrite, progress=progress)
    try:
        source = open_source(source_path)
    except ModelFileError as error:
        raise ParamError(("checkpoint",), f"{Path(source_path).name}: {error.reason}") from None
    try:
        try:
            detect(source.specs, source.path)
        except ModelFileError as error:
            raise ParamError(("checkpoint",), f"{source.path.name}: {error.reason}") from None
        dtype = PRECISIONS[precision] if precision else None
        plan = []
        dropped = 0
        for key, spec in source.specs.items():
            if drop_ema and key.startswith("model_ema."):
                dropped += 1
                continue
            out_dtype = spec.dtype
            if dtype is not None and spec.dtype.is_floating_point and "model" in key:
                out_dtype = dtype  # the schedule buffers (no "model" in their names) keep their precision
            plan.append((key, TensorSpec(out_dtype, spec.shape)))
        write_streamed(target, plan, {**source.metadata, "format": "pt"},
                       lambda key, spec: source.get(key).to(spec.dtype), overwrite=overwrite, progress=progress,
                       label="Converting", should_stop=should_stop)
    finally:
        source.close()
    notes = (f"dropped {dropped} EMA tensors (model_ema.*)",) if dropped else ()
    return ToolResult(target, {"tensors": len(plan), "dropped": dropped}, notes)


def _convert_diffusers(folder: Path, target: Path, *, precision: str | None, overwrite: bool,
                       progress: Progress | None) -> ToolResult:
    """A diffusers folder as one LDM/SGM-layout file: loaded through the loader (its safe reads), written back with
    `ldm_layout` (the loader's exact inverse) plus the schedule; not streamed (one model in memory).

    SD 2's diffusers text encoder lacks OpenCLIP's last block (SD 2 conditions on the penultimate layer, so it is
    never run); single files carry it and loaders drop it, so a copy of the block before it stands in (unused by
    A1111, ComfyUI and us). The prediction type and native size go into the metadata (`modelspec.prediction_type`,
    `sdwebui.native_size`), which our loader reads (A1111 needs a `.yaml` for v-prediction)."""
    from sdwebui.models.ldm_layout import diffusers_to_ldm_checkpoint
    from sdwebui.models.loader import is_diffusers_folder, load_checkpoint

    if not is_diffusers_folder(folder):
        raise ParamError(("checkpoint",), f"{folder.name}: a folder without model_index.json is not a diffusers model")
    dtype = PRECISIONS[precision] if precision else torch.float32
    try:
        model = load_checkpoint(folder, device="cpu", dtype=dtype, vae_dtype=dtype, automatic_vae=False)
    except ModelFileError as error:
        raise ParamError(("checkpoint",), f"{folder.name}: {error.reason}") from None
    towers = {tower.name: tower.module for tower in model.text_encoder.towers}
    state = diffusers_to_ldm_checkpoint(model.family, unet=model.unet, vae=model.vae, text_encoders=towers)
    if "clip_h" in towers:
        prefix = "cond_stage_model.model.transformer.resblocks."
        last = max(int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix))
        for key in [k for k in state if k.startswith(f"{prefix}{last}.")]:
            state[f"{prefix}{last + 1}." + key[len(f"{prefix}{last}."):]] = state[key].clone()
    state["alphas_cumprod"] = model.alphas_cumprod.float()
    metadata = {"format": "pt", "modelspec.prediction_type": model.prediction_type,
                "sdwebui.native_size": str(model.native_size), "sdwebui.converted_from": folder.name}
    tensors = {key: value.detach().contiguous() for key, value in state.items()}
    if progress is not None:
        progress(len(tensors), len(tensors), "Converting")
    _save(tensors, target, metadata, overwrite)
    return ToolResult(target, {"tensors": len(tensors), "dropped": 0},
                      (f"{model.family.spec.title} diffusers folder written as one file",))


# ------------------------------------------------------------------------------------------------- bake LoRAs


def bake_loras(
    checkpoint: Path,
    loras: Sequence[tuple[Path, float]],
    target: Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ToolResult:
    """`loras` ((file, weight), ...) merged into `checkpoint`'s weights, written to `target`."""
    from sdwebui.models.ldm_layout import diffusers_to_ldm_checkpoint
    from sdwebui.models.loader import load_checkpoint
    from sdwebui.models.lora import LoraCall, LoraLibrary

    if not loras:
        raise ParamError(("loras",), "name at least one LoRA (NAME:WEIGHT)")
    source = open_source(checkpoint)
    try:
        weight_dtype = next((s.dtype for k, s in source.specs.items() if k.startswith("model.diffusion_model.")
                             and s.dtype.is_floating_point), torch.float32)
        dtype = torch.float32 if weight_dtype not in (torch.float16, torch.bfloat16) else weight_dtype
        model = load_checkpoint(checkpoint, device="cpu", dtype=dtype, vae_dtype=dtype, automatic_vae=False)
        towers = {tower.name: tower.module for tower in model.text_encoder.towers}

        def ldm() -> dict[str, torch.Tensor]:
            return diffusers_to_ldm_checkpoint(model.family, unet=model.unet, vae=model.vae, text_encoders=towers)

        before = ldm()
        folders = sorted({str(Path(path).parent) for path, _ in loras})
        library = LoraLibrary(folders)
        calls = [LoraCall(Path(path).stem, float(weight), float(weight)) for path, weight in loras]
        changed: dict[str, torch.Tensor] = {}
        with library.applied(model, calls) as report:
            if report.missing:
                raise ParamError(("loras",), f"not found: {', '.join(report.missing)}")
            for key, value in ldm().items():
                old = before.get(key)
                if old is not None and value.data_ptr() != old.data_ptr() and not torch.equal(value, old):
                    changed[key] = value.detach().clone()
        notes = tuple(report.notes)
        before = None
        if not changed:
            raise ParamError(("loras",), "the LoRAs change no weight of this checkpoint (made for another model?)")
        plan = [(key, spec) for key, spec in source.specs.items()]
        baked = ", ".join(f"{Path(p).stem}:{w:g}" for p, w in loras)

        def tensor_for(key: str, spec: TensorSpec) -> torch.Tensor:
            value = changed.get(key)
            return value.reshape(spec.shape).to(spec.dtype) if value is not None else source.get(key)

        write_streamed(target, plan, {**source.metadata, "format": "pt", "sdwebui.baked_loras": baked}, tensor_for,
                       overwrite=overwrite, progress=progress, label="Baking")
    finally:
        source.close()
    return ToolResult(target, {"changed": len(changed), "tensors": len(plan)}, notes)


def write_streamed(target: Path, plan: list[tuple[str, TensorSpec]], metadata: dict,
                   tensor_for: Callable[[str, TensorSpec], torch.Tensor], *, overwrite: bool,
                   progress: Progress | None = None, label: str = "Writing",
                   should_stop: Callable[[], bool] | None = None) -> None:
    """Write `plan`'s tensors one at a time (`tensor_for(key, spec)`) into a hidden file renamed to `target`
    at the end: an error or interrupt leaves no partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    output = AtomicOutput(target, overwrite=overwrite)
    writer = StreamingWriter(output.temp, plan, metadata)
    try:
        for index, (key, spec) in enumerate(plan):
            if should_stop is not None and should_stop():
                raise MergeInterrupted("interrupted; nothing was written")
            writer.write(key, tensor_for(key, spec))
            if progress is not None:
                progress(index + 1, len(plan), label)
        writer.close()
        output.commit()
    except BaseException:
        writer.abort()
        output.discard()
        raise


__all__ = ["extract_lora", "convert_checkpoint", "bake_loras", "lora_names", "tool_target", "ToolResult", "PRECISIONS"]
