"""LoRA / LyCORIS networks from `models/Lora/`: finding them, mapping their keys onto our modules, and applying
them to a loaded model inside a scope that restores the weights bit-exactly.

Reference: A1111's built-in Lora extension (`networks.py`: `convert_diffusers_name_to_compvis`,
`load_network`, `network_apply_weights`; `network.py`: hashes and multipliers).

## Key names

Files name layers in one of three ways, all handled from the names of *our* modules (diffusers UNet,
transformers CLIP), so the mapping is exact for any model size:

- kohya with diffusers names (SD 1/2 LoRAs from sd-scripts): `lora_unet_down_blocks_0_attentions_0_proj_in`,
  `lora_te_text_model_encoder_layers_0_self_attn_q_proj`;
- kohya with LDM/SGM names (SDXL LoRAs, A1111's own conversion target): `lora_unet_input_blocks_4_1_proj_in`;
  the LDM name of every UNet layer comes from `ldm_layout.unet_to_ldm` (the exact inverse of our loader's
  conversion), so non-standard block layouts map correctly too. SDXL text encoders are `lora_te1_` (CLIP-L)
  and `lora_te2_` (CLIP-G);
- diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B`, `text_encoder.` / `text_encoder_2.`, the older
  `...processor.to_q_lora.down.weight` and `.lora.down.weight` forms, PEFT's `lora_magnitude_vector` (DoRA).

A key that names no layer of the loaded model is skipped and counted in the report (A1111 prints "Failed to
match keys"); so is a layer whose tensors form no known module type. A network that changes nothing at all (no
layer matches the model, or every layer was skipped: shapes of another model family) is left out of the
infotext's `Lora hashes`, which says what a picture was made with, and the job's notes say so.

## Applying

`LoraLibrary.applied(model, calls)` is a context manager. On entry it computes, for every layer the networks
touch, W' = W + Σ multiplier · scale · ΔW in float32 (formats: `lora_formats.py`), cast to the layer's dtype,
and swaps W' in as the parameter's data; the original tensors are never written, and on exit they are swapped
back: the model is bit-for-bit what it was. The patched tensors of the last set of networks are kept (on the
model's device), so the next job with the same set (same files, same multipliers) swaps them in again without
reading files or recomputing (A1111's `network_current_names`). `release()` drops them.

Multipliers: `te` for text-encoder layers, `unet` for UNet layers (`<lora:name:te:unet>`); a network whose
multipliers are both 0 is not applied at all, so weight 0 is bit-exactly no LoRA.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sdwebui.models.files import ModelFileError, read_safetensors_header, read_state_dict
from sdwebui.models.hashing import HashCache, addnet_hash_file, sha256_file
from sdwebui.models.lora_formats import KNOWN_PARTS, LoraFormatError, apply_delta, compute_delta, module_kind

log = logging.getLogger(__name__)

LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")


# ------------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class LoraFile:
    """A network file on disk (A1111's `NetworkOnDisk`)."""

    name: str
    """The file name without extension: what `<lora:NAME:...>` refers to."""
    path: Path
    metadata: Mapping[str, str]
    size: int
    mtime_ns: int

    @property
    def alias(self) -> str:
        """kohya's `ss_output_name` when the file has one (A1111 accepts it in prompts too)."""
        return self.metadata.get("ss_output_name") or self.name

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix.lower() == ".safetensors"


@dataclass(frozen=True)
class LoraCall:
    """One `<lora:name:te:unet:dyn>` request (what `prompts.extra_networks.LoraArgs` holds)."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


@dataclass(frozen=True)
class LoraSummary:
    """What a file holds, for listings: module types, the model family it was made for, layer count."""

    kinds: tuple[str, ...]
    family: str
    """"sd1", "sd2", "sdxl", "sdxl-refiner" or "unknown"."""
    layers: int


# ------------------------------------------------------------------------------------------- key mapping


@dataclass(frozen=True)
class Target:
    component: str
    """"unet", "clip_l", "clip_h" or "clip_g"."""
    name: str
    """The module's dotted name inside its component."""
    module: torch.nn.Module


def build_index(model) -> dict[str, Target]:
    """Every name a LoRA file may use for a layer of `model` -> the layer (see the module docstring)."""
    from sdwebui.models.ldm_layout import unet_to_ldm

    index: dict[str, Target] = {}
    unet = model.unet
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        target = Target("unet", name, module)
        index["lora_unet_" + name.replace(".", "_")] = target
        index["unet." + name] = target
        try:
            (ldm_key,) = unet_to_ldm({name + ".weight": None}, unet.config)
        except (ValueError, KeyError):
            continue
        index.setdefault("lora_unet_" + ldm_key.removesuffix(".weight").replace(".", "_"), target)

    towers = [(tower.name, tower.module) for tower in model.text_encoder.towers]
    for tower_name, module in towers:
        if len(towers) > 1:
            kohya, diffusers = (("lora_te1_",), ("text_encoder.",)) if tower_name == "clip_l" else (
                ("lora_te2_",), ("text_encoder_2.",))
        elif tower_name == "clip_g":  # the SDXL refiner: its only encoder is SDXL's second one
            kohya, diffusers = ("lora_te2_", "lora_te_"), ("text_encoder_2.", "text_encoder.")
        else:
            kohya, diffusers = ("lora_te_", "lora_te1_"), ("text_encoder.",)
        for name, sub in module.named_modules():
            if not isinstance(sub, torch.nn.Linear):
                continue
            bare = name.removeprefix("text_model.")
            target = Target(tower_name, name, sub)
            for prefix in kohya:
                index[prefix + "text_model_" + bare.replace(".", "_")] = target
            for prefix in diffusers:
                index[prefix + "text_model." + bare] = target
                index[prefix + bare] = target
    return index


_DIFFUSERS_PARTS = (
    (re.compile(r"(.+)\.lora_A(?:\.default)?\.weight$"), "lora_down.weight"),
    (re.compile(r"(.+)\.lora_B(?:\.default)?\.weight$"), "lora_up.weight"),
    (re.compile(r"(.+)\.lora\.down\.weight$"), "lora_down.weight"),
    (re.compile(r"(.+)\.lora\.up\.weight$"), "lora_up.weight"),
    (re.compile(r"(.+)\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$"), "dora_scale"),
)
_PROCESSOR = re.compile(r"(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_DOTTED_PARTS = tuple(sorted((p for p in KNOWN_PARTS if "." in p), key=len, reverse=True))


def split_key(key: str) -> tuple[str, str] | None:
    """A file key -> (layer name as the file spells it, part such as "lora_down.weight"), or None."""
    if key.startswith(("lora_unet_", "lora_te")):
        base, _, part = key.partition(".")
        return (base, part) if part else None
    key = key.removeprefix("base_model.model.")
    if m := _PROCESSOR.match(key):
        layer = "to_out.0" if m[2] == "to_out" else m[2]
        return f"{m[1]}.{layer}", f"lora_{m[3]}.weight"
    for pattern, part in _DIFFUSERS_PARTS:
        if m := pattern.match(key):
            return m[1], part
    for part in _DOTTED_PARTS:
        if key.endswith("." + part):
            return key[: -len(part) - 1], part
    base, dot, part = key.rpartition(".")
    if dot and part in KNOWN_PARTS:
        return base, part
    return None


@dataclass
class ParsedLora:
    """A file's tensors grouped per layer of one model."""

    file: LoraFile
    layers: dict[tuple[str, str], dict[str, Tensor]] = field(default_factory=dict)
    """(component, module name) -> {part: tensor}."""
    unmatched: list[str] = field(default_factory=list)
    """Keys that name no layer of the model."""
    unsupported: list[str] = field(default_factory=list)
    """Layers whose tensors form no known module type."""

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({module_kind(parts) or "?" for parts in self.layers.values()}))


def parse_lora(file: LoraFile, state_dict: Mapping[str, Tensor], index: Mapping[str, Target]) -> ParsedLora:
    parsed = ParsedLora(file)
    targets: dict[tuple[str, str], Target] = {}
    for key, tensor in state_dict.items():
        split = split_key(key)
        if split is None:
            parsed.unmatched.append(key)
            continue
        base, part = split
        target = index.get(base)
        if target is None and not base.startswith(("lora_", "unet.", "text_encoder")):
            target = index.get("unet." + base)  # a PEFT adapter of the UNet alone, saved without a prefix
        if target is None:
            parsed.unmatched.append(key)
            continue
        layer = (target.component, target.name)
        targets[layer] = target
        parsed.layers.setdefault(layer, {})[part] = tensor
    for layer, parts in list(parsed.layers.items()):
        if module_kind(parts) is None:
            parsed.unsupported.append(".".join(layer))
            del parsed.layers[layer]
    return parsed


# ---------------------------------------------------------------------------------------------- patching


@dataclass
class AppliedNetworks:
    """What `LoraLibrary.applied` did: the infotext's `Lora hashes`, and notes for the user."""

    applied: list[tuple[str, str]] = field(default_factory=list)
    """(name as written in the prompt, 12-hex short hash) per network in effect."""
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reused: bool = False
    """True when the patched weights of the previous job were reused (same networks, same multipliers)."""

    @property
    def lora_hashes(self) -> str | None:
        """A1111's `Lora hashes` value: "name: hash, ..." (names without `:` and `,`), None if no network."""
        seen: dict[str, str] = {}
        for name, short in self.applied:
            if short:
                seen.setdefault(name.replace(":", "").replace(",", ""), short)
        return ", ".join(f"{k}: {v}" for k, v in seen.items()) or None


def _set_data(param: torch.nn.Parameter, data: Tensor) -> None:
    param.data = data


class _Patcher:
    """The patched weights of one model for the last set of networks, and the swap in / out."""

    def __init__(self, model) -> None:
        self._model = weakref.ref(model)
        self.lock = threading.RLock()
        self.index: dict[str, Target] | None = None
        self.key: tuple | None = None
        self.patched: list[tuple[torch.nn.Parameter, Tensor, tuple]] = []
        """(parameter, patched tensor, (data_ptr, version) of the original it was computed from)."""
        self.notes: list[str] = []
        """What computing the current set had to say (repeated in the report of every job that reuses it)."""
        self.failed: set[str] = set()
        """Paths of the current set's files that could not be read."""
        self.ineffective: set[str] = set()
        """Paths of the current set's files that changed nothing: no layer matches the model, or every layer was
        skipped (left out of `Lora hashes`, which says what a picture was made with)."""

    @property
    def model(self):
        return self._model()

    def model_index(self) -> dict[str, Target]:
        if self.index is None:
            self.index = build_index(self.model)
        return self.index

    def valid(self) -> bool:
        return all((p.data_ptr(), p._version) == stamp for p, _, stamp in self.patched)

    def compute(self, networks: Sequence[tuple[ParsedLora, LoraCall]], notes: list[str]) -> set[int]:
        """Patch the weights for `networks`; returns the indexes of those of which no layer could be applied
        (every one skipped: shapes for another model family)."""
        per_layer: dict[tuple[str, str], list[tuple[dict[str, Tensor], float, int | None, str, int]]] = {}
        applied = [0] * len(networks)
        skipped = [0] * len(networks)
        for index, (parsed, call) in enumerate(networks):
            for layer, parts in parsed.layers.items():
                multiplier = call.unet if layer[0] == "unet" else call.te
                if multiplier != 0:
                    per_layer.setdefault(layer, []).append((parts, multiplier, call.dyn, call.name, index))
        modules = {(t.component, t.name): t.module for t in self.model_index().values()}
        fp8 = getattr(self.model, "fp8", None)
        base = fp8.lora_base if fp8 is not None else torch.nn.Parameter.detach
        patched: list[tuple[torch.nn.Parameter, Tensor, tuple]] = []
        with torch.no_grad():
            for layer, entries in per_layer.items():
                module = modules[layer]
                weight: torch.nn.Parameter = module.weight
                # A float32 copy of our own (`copy=True`: for a float32 model `.float()` would alias the
                # original, which must never be written); of the cached original for a model stored in fp8 with
                # "Cache FP16 weight for LoRA" (A1111's `fp16_weight`).
                w = base(weight).to(weight.device, torch.float32, copy=True)
                bias_param = getattr(module, "bias", None)
                b = base(bias_param).to(bias_param.device, torch.float32, copy=True) if bias_param is not None else None
                changed_bias = False
                for parts, multiplier, dyn, name, index in entries:
                    try:
                        delta = compute_delta(
                            {k: v.to(w.device) for k, v in parts.items()}, weight.shape, dyn_dim=dyn, multiplier=multiplier
                        )
                        w = apply_delta(w, delta)
                    except (LoraFormatError, RuntimeError) as error:
                        notes.append(f"Lora {name}: layer {'.'.join(layer)} skipped ({error})")
                        skipped[index] += 1
                        continue
                    applied[index] += 1
                    if delta.bias is not None and b is not None:
                        b.add_(delta.bias.to(b.device).reshape(b.shape))
                        changed_bias = True
                patched.append((weight, w.to(weight.dtype), (weight.data_ptr(), weight._version)))
                if changed_bias:
                    patched.append((bias_param, b.to(bias_param.dtype), (bias_param.data_ptr(), bias_param._version)))
        self.patched = patched
        return {index for index in range(len(networks)) if skipped[index] and not applied[index]}

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        originals: list[tuple[torch.nn.Parameter, Tensor]] = []
        # A memory mode that keeps its own copies of offloaded weights (lowvram's pinned copies) must see the swap.
        placement = getattr(self.model, "placement", None)
        swap = placement.adopt if placement is not None else _set_data
        try:
            for param, new, _ in self.patched:
                originals.append((param, param.data))
                swap(param, new)
            yield
        finally:
            for param, old in reversed(originals):
                swap(param, old)

    def release(self) -> None:
        self.key = None
        self.patched = []
        self.notes = []
        self.failed = set()
        self.ineffective = set()


class LoraLibrary:
    """The LoRA files in one or more folders, and the application of a set of them to a model.

    One instance per app (built by the composition root). Thread-safe; a model is patched by one job at a time.
    """

    def __init__(self, folders: str | Path | Iterable[str | Path], *, hash_cache_dir: str | Path | None = None):
        if isinstance(folders, (str, Path)):
            folders = [folders]
        self.folders = [Path(f) for f in folders]
        self.hash_cache_dir = Path(hash_cache_dir) if hash_cache_dir else None
        self._lock = threading.Lock()
        self._headers: dict[str, tuple[tuple[int, int], LoraFile]] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._parsed: dict[tuple, ParsedLora] = {}
        self._patcher: _Patcher | None = None

    # ---- files -------------------------------------------------------------------------------------
    def files(self) -> dict[str, LoraFile]:
        """Every LoRA file by name (file stem; the first one found wins, as in A1111). Re-read on each call;
        a file's metadata is read again only when it changed."""
        found: dict[str, LoraFile] = {}
        headers: dict[str, tuple[tuple[int, int], LoraFile]] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for root, dirs, names in os.walk(folder, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for file_name in sorted(names):
                    if not file_name.lower().endswith(LORA_EXTENSIONS) or file_name.startswith("."):
                        continue
                    path = Path(root) / file_name
                    try:
                        stat = path.stat()
                    except OSError:
                        continue
                    stamp = (stat.st_size, stat.st_mtime_ns)
                    cached = self._headers.get(str(path))
                    if cached is not None and cached[0] == stamp:
                        entry = cached[1]
                    else:
                        metadata: dict[str, str] = {}
                        if file_name.lower().endswith(".safetensors"):
                            try:
                                metadata = dict(read_safetensors_header(path).metadata)
                            except ModelFileError as error:
                                log.warning("LoRA %s skipped: %s", path, error.reason)
                                continue
                        entry = LoraFile(path.stem, path, metadata, stat.st_size, stat.st_mtime_ns)
                    headers[str(path)] = (stamp, entry)
                    found.setdefault(entry.name, entry)
        with self._lock:
            self._headers = headers
        return found

    def find(self, name: str, files: Mapping[str, LoraFile] | None = None) -> LoraFile | None:
        """By name (file stem), then by alias (`ss_output_name`), as A1111's `available_network_aliases`."""
        files = self.files() if files is None else files
        if name in files:
            return files[name]
        for entry in files.values():
            if entry.alias == name:
                return entry
        return None

    def full_hash(self, file: LoraFile) -> str:
        """The hash A1111 shows: `sshs_model_hash` from the metadata, else the addnet hash (`.safetensors`) or the
        file's SHA-256 (other formats)."""
        if file.metadata.get("sshs_model_hash"):
            return file.metadata["sshs_model_hash"]
        key = (str(file.path), file.size, file.mtime_ns)
        with self._lock:
            known = self._hashes.get(key)
        if known is not None:
            return known

        if self.hash_cache_dir is not None:
            digest = HashCache(self.hash_cache_dir).sha256(file.path, addnet=file.is_safetensors)
        else:
            digest = addnet_hash_file(file.path) if file.is_safetensors else sha256_file(file.path)
        with self._lock:
            self._hashes[key] = digest
        return digest

    def shorthash(self, file: LoraFile) -> str:
        """A1111's `NetworkOnDisk.shorthash`: 12 hex digits (the infotext's `Lora hashes`)."""
        return self.full_hash(file)[:12]

    def read(self, file: LoraFile) -> dict[str, Tensor]:
        """The file's tensors (CPU), pickles through the restricted unpickler only."""
        return read_state_dict(file.path)

    def describe(self, file: LoraFile) -> LoraSummary:
        """Module types, family and layer count, from the key names and shapes (header only for safetensors)."""
        if file.is_safetensors:
            shapes = {k: v.shape for k, v in read_safetensors_header(file.path).tensors.items()}
        else:
            shapes = {k: tuple(v.shape) for k, v in self.read(file).items()}
        groups: dict[str, set[str]] = {}
        for key in shapes:
            split = split_key(key)
            if split:
                groups.setdefault(split[0], set()).add(split[1])
        kinds = set()
        for base, parts in groups.items():
            fake = dict.fromkeys(parts, None)
            kind = module_kind(fake) or "?"
            if kind == "lora" and len(shapes.get(f"{base}.lora_down.weight", ())) == 4:
                kind = "locon"
            if "dora_scale" in parts:
                kind += "+dora"
            kinds.add(kind)
        return LoraSummary(tuple(sorted(kinds)), _guess_family(file.metadata, shapes), len(groups))

    def a1111_listing(self) -> list[dict]:
        """The Lora extension's `/sdapi/v1/loras` items."""
        return [
            {"name": f.name, "alias": f.alias, "path": str(f.path), "metadata": dict(f.metadata)}
            for f in self.files().values()
        ]

    # ---- applying ----------------------------------------------------------------------------------
    def _patcher_for(self, model) -> _Patcher:
        with self._lock:
            if self._patcher is None or self._patcher.model is not model:
                self._patcher = _Patcher(model)
                self._parsed = {}
            return self._patcher

    def release(self) -> None:
        """Drop the cached patched weights and parsed files (memory; the next job recomputes)."""
        with self._lock:
            if self._patcher is not None:
                self._patcher.release()
            self._parsed = {}

    @contextmanager
    def applied(self, model, calls: Sequence[LoraCall]) -> Iterator[AppliedNetworks]:
        """Apply `calls` to `model` for the duration of the block; the weights are restored bit-exactly after.

        Unknown names are not an error (as in A1111): they are listed in `missing`, noted and logged."""
        report = AppliedNetworks()
        files = self.files() if calls else {}
        found: list[tuple[LoraFile, LoraCall]] = []
        for call in calls:
            file = self.find(call.name, files)
            if file is None:
                report.missing.append(call.name)
            else:
                found.append((file, call))
        if report.missing:
            note = "Failed to find networks: " + ", ".join(report.missing)  # A1111's comment
            report.notes.append(note)
            log.warning("%s", note)
        # Weight 0 on both parts changes nothing, so nothing is touched (bit-exactly the model); A1111 still
        # lists such a network in `Lora hashes`, and so do we.
        wanted = [(file, call) for file, call in found if call.te != 0 or call.unet != 0]
        if not wanted:
            report.applied = [(call.name, self.shorthash(file)) for file, call in found]
            yield report
            return

        patcher = self._patcher_for(model)
        key = tuple((str(f.path), f.size, f.mtime_ns, c.te, c.unet, c.dyn) for f, c in wanted)
        with patcher.lock:
            if patcher.key == key and patcher.valid():
                report.reused = True
            else:
                patcher.release()
                networks = []
                notes: list[str] = []
                failed: set[str] = set()
                parsed_now: dict[tuple, ParsedLora] = {}
                for file, call in wanted:
                    file_key = (str(file.path), file.size, file.mtime_ns)
                    parsed = self._parsed.get(file_key) or parsed_now.get(file_key)
                    if parsed is None:
                        try:
                            parsed = parse_lora(file, self.read(file), patcher.model_index())
                        except ModelFileError as error:
                            notes.append(f"Lora {call.name} not loaded: {error.reason}")
                            log.warning("LoRA %s not loaded: %s", file.path, error.reason)
                            failed.add(str(file.path))
                            continue
                        if parsed.unmatched:
                            log.info("LoRA %s: %d keys match no layer of this model (e.g. %s)", file.name,
                                     len(parsed.unmatched), parsed.unmatched[0])
                        if parsed.unsupported:
                            notes.append(
                                f"Lora {call.name}: {len(parsed.unsupported)} layers of an unsupported type skipped"
                            )
                    parsed_now[file_key] = parsed
                    networks.append((parsed, call))
                ineffective = {str(networks[index][0].file.path) for index in patcher.compute(networks, notes)}
                for parsed, call in networks:
                    if not parsed.layers:
                        notes.append(f"Lora {call.name}: no layer matches this model; left out of Lora hashes")
                        ineffective.add(str(parsed.file.path))
                    elif str(parsed.file.path) in ineffective:
                        notes.append(f"Lora {call.name}: every layer was skipped (made for another model?); left "
                                     "out of Lora hashes")
                patcher.key, patcher.notes, patcher.failed = key, notes, failed
                patcher.ineffective = ineffective
                self._parsed = parsed_now  # keep only the current set's files in memory
            report.notes.extend(patcher.notes)
            left_out = patcher.failed | patcher.ineffective
            report.applied = [
                (call.name, self.shorthash(file)) for file, call in found if str(file.path) not in left_out
            ]
            with patcher.swapped_in():
                yield report


def _guess_family(metadata: Mapping[str, str], shapes: Mapping[str, tuple]) -> str:
    base = str(metadata.get("ss_base_model_version", ""))
    if base.startswith("sdxl"):
        return "sdxl"
    if str(metadata.get("ss_v2", "")) == "True":
        return "sd2"
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in shapes):
        return "sdxl"
    for key, shape in shapes.items():
        if "attn2" in key and "to_k" in key and ("lora_down" in key or "lora_A" in key) and len(shape) == 2:
            return {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl-refiner"}.get(int(shape[1]), "unknown")
    return "sd1" if metadata else "unknown"


def lora_calls(extra_network_calls: Iterable) -> list[LoraCall]:
    """`<lora:...>` / `<lyco:...>` tags (`prompts.extra_networks.ExtraNetworkCall`) -> `LoraCall`s."""
    out = []
    for call in extra_network_calls:
        if call.kind not in ("lora", "lyco"):
            continue
        args = call.lora_args()
        out.append(LoraCall(args.name, args.te, args.unet, args.dyn))
    return out


__all__ = [
    "LoraLibrary",
    "LoraFile",
    "LoraCall",
    "LoraSummary",
    "AppliedNetworks",
    "ParsedLora",
    "Target",
    "build_index",
    "split_key",
    "parse_lora",
    "lora_calls",
    "LORA_EXTENSIONS",
]
