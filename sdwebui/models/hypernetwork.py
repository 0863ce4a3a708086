"""Hypernetworks (A1111's `models/hypernetworks/*.pt`): reading and writing A1111's file layout, and applying a set
of them to a loaded model inside a scope.

Reference: A1111 `modules/hypernetworks/hypernetwork.py` (`HypernetworkModule`, `Hypernetwork.save/load`,
`parse_dropout_structure`, `apply_single_hypernetwork`, `apply_hypernetworks`) and `extra_networks_hypernet.py`.

## The file

A `torch.save` of one dict: for each context width the network acts on (an `int` key: 768, 320, 640, 1280 for
SD 1), a pair of state dicts `(for k, for v)` of a `HypernetworkModule`; beside them `name`, `step`,
`layer_structure` (e.g. `[1, 2, 1]`: widths relative to the context width, first and last 1),
`activation_func` (`"linear"`, `"relu"`, `"leakyrelu"`, `"elu"`, `"swish"`, `"tanh"`, `"sigmoid"` or the lower-case
name of any `torch.nn` activation), `is_layer_norm`, `weight_initialization`, `use_dropout`, `dropout_structure`,
`last_layer_dropout`, `activate_output`, `sd_checkpoint`, `sd_checkpoint_name`, `optional_info`. It is read with
the restricted unpickler (`models.files.load_pickle`): tensors and plain containers only.

A module is `nn.Sequential` named `linear`: per step of the layer structure a `Linear`, then (not after the last
one unless `activate_output`) the activation, then a `LayerNorm` when `is_layer_norm`, then a `Dropout` where the
dropout structure says so. The positions matter: they are the state dict's key names (`linear.0.weight`,
`linear.2.weight`, ...). Its output is `x + linear(x) * multiplier`.

## Applying

A1111 runs every cross-attention layer (`CrossAttention.forward`, and the xformers / SDP variants) as
`k = to_k(hyper_k(context))`, `v = to_v(hyper_v(context))`, where `context` is the text conditioning for
cross-attention and the hidden states themselves for self-attention (`context = default(context, x)`), and the
pair used is the one whose width equals the context's last dimension; a width the file has no pair for is left
alone. Several hypernetworks are chained in order. Here the same is done with forward pre-hooks on the `to_k` /
`to_v` of every attention layer of the UNet (diffusers' `Attention`, which both `attn1` and `attn2` are), added
when the scope is entered and removed when it is left: the model's weights are never touched, and a network
whose multiplier is 0 is not hooked at all, so multiplier 0 is bit-exactly no hypernetwork. The modules run in
float32 (A1111's `cond_cast_float`) and their output is cast back to the UNet's dtype.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sdwebui.models.files import ModelFileError, load_pickle
from sdwebui.models.hashing import HashCache, legacy_model_hash, sha256_file

log = logging.getLogger(__name__)

HYPERNETWORK_EXTENSIONS = (".pt",)
"""A1111 lists `**/*.pt` only (`list_hypernetworks`)."""

ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "linear": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
}
# A1111 adds every class of `torch.nn.modules.activation` by its lower-case name (after its own seven, which win).
for _name, _cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass):
    if _cls.__module__ == "torch.nn.modules.activation":
        ACTIVATIONS.setdefault(_name.lower(), _cls)

WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")


class HypernetworkError(ValueError):
    """A hypernetwork's structure is not one A1111 can build (bad layer structure, unknown activation)."""


def parse_dropout_structure(layer_structure: Sequence[float] | None, use_dropout: bool,
                            last_layer_dropout: bool) -> list[float]:
    """A1111's `parse_dropout_structure`: 0.3 after every hidden layer but the last (that one too with
    `last_layer_dropout`), 0 at both ends."""
    layer_structure = list(layer_structure or [1, 2, 1])
    if not use_dropout:
        return [0.0] * len(layer_structure)
    values = [0.0] + [0.3] * (len(layer_structure) - 3)
    values.append(0.3 if last_layer_dropout else 0.0)
    values.append(0.0)
    return values


class HypernetworkModule(torch.nn.Module):
    """One of a pair (k or v) for one context width: `x + linear(x) * multiplier` (A1111's class, same key names)."""

    def __init__(self, dim: int, layer_structure: Sequence[float], activation_func: str | None = None,
                 add_layer_norm: bool = False, activate_output: bool = False,
                 dropout_structure: Sequence[float] | None = None, weight_init: str = "Normal"):
        super().__init__()
        structure = [float(x) for x in layer_structure]
        if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1:
            raise HypernetworkError(f"layer structure {list(layer_structure)} must start and end with 1")
        if activation_func not in (None, "linear") and activation_func not in ACTIVATIONS:
            raise HypernetworkError(f"unsupported activation function {activation_func!r}")
        if dropout_structure is not None and len(dropout_structure) != len(structure):
            raise HypernetworkError(f"dropout structure {list(dropout_structure)} does not match the layer "
                                    f"structure {list(layer_structure)}")
        self.multiplier = 1.0
        layers: list[torch.nn.Module] = []
        for i in range(len(structure) - 1):
            layers.append(torch.nn.Linear(int(dim * structure[i]), int(dim * structure[i + 1])))
            last = i >= len(structure) - 2
            if activation_func not in (None, "linear") and not (last and not activate_output):
                layers.append(ACTIVATIONS[activation_func]())
            if add_layer_norm:
                layers.append(torch.nn.LayerNorm(int(dim * structure[i + 1])))
            if dropout_structure is not None and dropout_structure[i + 1] > 0:
                if not 0 < dropout_structure[i + 1] < 1:
                    raise HypernetworkError("a dropout probability must be 0 or between 0 and 1")
                layers.append(torch.nn.Dropout(p=float(dropout_structure[i + 1])))
        self.linear = torch.nn.Sequential(*layers)
        self._initialise(weight_init, activation_func)

    def _initialise(self, weight_init: str, activation_func: str | None) -> None:
        """A1111's initialisation of a new module (a loaded one overwrites it)."""
        nonlinearity = "leaky_relu" if activation_func == "leakyrelu" else "relu"
        with torch.no_grad():
            for layer in self.linear:
                if not isinstance(layer, (torch.nn.Linear, torch.nn.LayerNorm)):
                    continue
                w, b = layer.weight, layer.bias
                if weight_init == "Normal" or isinstance(layer, torch.nn.LayerNorm):
                    torch.nn.init.normal_(w, mean=0.0, std=0.01)
                    torch.nn.init.zeros_(b)  # A1111: normal_(std=0), i.e. zeros
                elif weight_init == "XavierUniform":
                    torch.nn.init.xavier_uniform_(w)
                    torch.nn.init.zeros_(b)
                elif weight_init == "XavierNormal":
                    torch.nn.init.xavier_normal_(w)
                    torch.nn.init.zeros_(b)
                elif weight_init == "KaimingUniform":
                    torch.nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity)
                    torch.nn.init.zeros_(b)
                elif weight_init == "KaimingNormal":
                    torch.nn.init.kaiming_normal_(w, nonlinearity=nonlinearity)
                    torch.nn.init.zeros_(b)
                else:
                    raise HypernetworkError(f"unknown weight initialization {weight_init!r}")

    def forward(self, x: Tensor) -> Tensor:
        return x + self.linear(x) * (self.multiplier if not self.training else 1)


_OLD_KEYS = {"linear1.bias": "linear.0.bias", "linear1.weight": "linear.0.weight",
             "linear2.bias": "linear.1.bias", "linear2.weight": "linear.1.weight"}


@dataclass
class Hypernetwork:
    """A hypernetwork in memory: `layers[width] = (module for k, module for v)` and A1111's settings."""

    name: str
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]] = field(default_factory=dict)
    layer_structure: list[float] = field(default_factory=lambda: [1.0, 2.0, 1.0])
    activation_func: str | None = None
    weight_init: str = "Normal"
    add_layer_norm: bool = False
    use_dropout: bool = False
    activate_output: bool = False
    last_layer_dropout: bool = False
    dropout_structure: list[float] | None = None
    step: int = 0
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    optional_info: str | None = None
    path: Path | None = None

    @classmethod
    def create(cls, name: str, sizes: Iterable[int], layer_structure: Sequence[float] = (1, 2, 1),
               activation_func: str | None = "linear", weight_init: str = "Normal", add_layer_norm: bool = False,
               use_dropout: bool = False, dropout_structure: Sequence[float] | None = None,
               last_layer_dropout: bool = False, activate_output: bool = False) -> "Hypernetwork":
        """A new hypernetwork (A1111's `create_hypernetwork`), initialised as A1111 initialises one."""
        structure = [float(x) for x in layer_structure]
        if dropout_structure is None:
            dropout_structure = parse_dropout_structure(structure, use_dropout, last_layer_dropout)
        net = cls(name=name, layer_structure=structure, activation_func=activation_func, weight_init=weight_init,
                  add_layer_norm=add_layer_norm, use_dropout=use_dropout, activate_output=activate_output,
                  last_layer_dropout=last_layer_dropout, dropout_structure=[float(x) for x in dropout_structure])
        for size in sizes:
            net.layers[int(size)] = (net._module(int(size)), net._module(int(size)))
        net.eval()
        return net

    def _module(self, size: int) -> HypernetworkModule:
        return HypernetworkModule(size, self.layer_structure, self.activation_func, self.add_layer_norm,
                                  self.activate_output, self.dropout_structure, self.weight_init)

    def modules(self) -> Iterator[HypernetworkModule]:
        for pair in self.layers.values():
            yield from pair

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for module in self.modules() for p in module.parameters()]

    def eval(self) -> "Hypernetwork":
        for module in self.modules():
            module.eval()
            module.requires_grad_(False)
        return self

    def train(self) -> "Hypernetwork":
        for module in self.modules():
            module.train()
            module.requires_grad_(True)
        return self

    def to(self, device: torch.device | str) -> "Hypernetwork":
        for module in self.modules():
            module.to(device=device, dtype=torch.float32)
        return self

    def set_multiplier(self, multiplier: float) -> None:
        for module in self.modules():
            module.multiplier = float(multiplier)

    def state(self) -> dict:
        """The dict A1111's `Hypernetwork.save` writes."""
        data: dict = {size: (_cpu_state(pair[0]), _cpu_state(pair[1])) for size, pair in self.layers.items()}
        data.update({
            "step": self.step, "name": self.name, "layer_structure": self.layer_structure,
            "activation_func": self.activation_func, "is_layer_norm": self.add_layer_norm,
            "weight_initialization": self.weight_init, "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name, "activate_output": self.activate_output,
            "use_dropout": self.use_dropout, "dropout_structure": self.dropout_structure,
            "last_layer_dropout": (self.dropout_structure[-2] != 0) if self.dropout_structure is not None
            else self.last_layer_dropout,
            "optional_info": self.optional_info or None,
        })
        return data

    def save(self, path: str | Path) -> Path:
        """Write A1111's `.pt` (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        torch.save(self.state(), partial)
        os.replace(partial, path)
        self.path = path
        return path


def _cpu_state(module: torch.nn.Module) -> "OrderedDict[str, Tensor]":
    return OrderedDict((k, v.detach().to("cpu").clone()) for k, v in module.state_dict().items())


def hypernetwork_from_data(data: object, name: str, path: Path | None = None) -> Hypernetwork:
    """A1111's `Hypernetwork.load` on an unpickled file; `HypernetworkError` when it is not one."""
    if not isinstance(data, Mapping):
        raise HypernetworkError(f"holds a {type(data).__name__}, not a hypernetwork's dict")
    sizes = {key: value for key, value in data.items() if type(key) is int}
    if not sizes:
        raise HypernetworkError("no layers (not a hypernetwork: no integer context-width keys)")
    structure = data.get("layer_structure") or [1, 2, 1]
    dropout_structure = data.get("dropout_structure")
    use_dropout = bool(dropout_structure is not None and any(dropout_structure)) or bool(data.get("use_dropout", False))
    last_layer_dropout = bool(data.get("last_layer_dropout", False))
    if dropout_structure is None:
        dropout_structure = parse_dropout_structure(structure, use_dropout, last_layer_dropout)
    net = Hypernetwork(
        name=str(data.get("name") or name), layer_structure=[float(x) for x in structure],
        activation_func=data.get("activation_func"), weight_init=str(data.get("weight_initialization") or "Normal"),
        add_layer_norm=bool(data.get("is_layer_norm", False)), use_dropout=use_dropout,
        activate_output=bool(data.get("activate_output", True)), last_layer_dropout=last_layer_dropout,
        dropout_structure=[float(x) for x in dropout_structure], step=int(data.get("step") or 0),
        sd_checkpoint=_text(data.get("sd_checkpoint")), sd_checkpoint_name=_text(data.get("sd_checkpoint_name")),
        optional_info=_text(data.get("optional_info")), path=path,
    )
    for size, pair in sizes.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise HypernetworkError(f"width {size}: expected a (k, v) pair of state dicts")
        modules = []
        for state in pair:
            if not isinstance(state, Mapping):
                raise HypernetworkError(f"width {size}: a module's state is a {type(state).__name__}")
            state = {_OLD_KEYS.get(k, k): v for k, v in state.items()}
            module = HypernetworkModule(size, net.layer_structure, net.activation_func, net.add_layer_norm,
                                        net.activate_output, net.dropout_structure, "Normal")
            try:
                module.load_state_dict(state)
            except RuntimeError as error:
                raise HypernetworkError(f"width {size}: the weights do not fit the stored structure "
                                        f"({str(error).splitlines()[0]})") from None
            modules.append(module)
        net.layers[size] = (modules[0], modules[1])
    return net.eval()


def load_hypernetwork(path: str | Path, *, name: str | None = None) -> Hypernetwork:
    """Read A1111's `.pt` through the restricted unpickler; `ModelFileError` for anything else."""
    path = Path(path)
    data = load_pickle(path)
    try:
        return hypernetwork_from_data(data, name or path.stem, path)
    except HypernetworkError as error:
        raise ModelFileError(path, f"not a hypernetwork: {error}") from None


def _text(value) -> str | None:
    return None if value is None else str(value)


# ------------------------------------------------------------------------------------------------ applying


@dataclass(frozen=True)
class HypernetCall:
    """One `<hypernet:name:multiplier>` (or the `sd_hypernetwork` setting, `from_setting`)."""

    name: str
    multiplier: float = 1.0
    from_setting: bool = False


@dataclass
class AppliedHypernetworks:
    applied: list[tuple[HypernetCall, Path]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def attention_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """Every attention layer with `to_k` / `to_v` (A1111's `CrossAttention`: self- and cross-attention)."""
    return [m for m in unet.modules() if isinstance(getattr(m, "to_k", None), torch.nn.Module)
            and isinstance(getattr(m, "to_v", None), torch.nn.Module)]


@contextmanager
def hooked(unet: torch.nn.Module, networks: Sequence[Hypernetwork]) -> Iterator[None]:
    """`to_k(x)` -> `to_k(h_k(x))` and `to_v(x)` -> `to_v(h_v(x))` for every attention layer of `unet`, the
    networks chained in order, while the block runs (see the module docstring)."""
    if not networks:
        yield
        return
    handles = []

    def pre_hook(index: int):
        def hook(_module, args):
            if not args:
                return None
            x = args[0]
            chain = [net.layers[x.shape[-1]][index] for net in networks if x.shape[-1] in net.layers]
            if not chain:
                return None
            y = x.float()
            for module in chain:
                y = module(y)
            return (y.to(x.dtype), *args[1:])
        return hook

    try:
        for layer in attention_layers(unet):
            handles.append(layer.to_k.register_forward_pre_hook(pre_hook(0)))
            handles.append(layer.to_v.register_forward_pre_hook(pre_hook(1)))
        yield
    finally:
        for handle in handles:
            handle.remove()


class HypernetworkLibrary:
    """The hypernetwork files of `models/hypernetworks/` (one instance per app), loaded on demand and kept for
    the next job while the same files are asked for (A1111's `load_hypernetworks` keeps the loaded ones)."""

    def __init__(self, folder: str | Path, *, hash_cache_dir: str | Path | None = None):
        self.folder = Path(folder)
        self.hash_cache_dir = Path(hash_cache_dir) if hash_cache_dir else None
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[tuple[int, int], Hypernetwork]] = {}

    def files(self) -> dict[str, Path]:
        """A1111's `list_hypernetworks`: every `.pt` below the folder by file name (the first found wins),
        sorted case-insensitively; a file named `None` is not listed."""
        found: dict[str, Path] = {}
        if not self.folder.is_dir():
            return found
        paths = []
        for root, dirs, names in os.walk(self.folder, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            paths.extend(Path(root) / n for n in names
                         if n.lower().endswith(HYPERNETWORK_EXTENSIONS) and not n.startswith("."))
        for path in sorted(paths, key=lambda p: str(p).lower()):
            if path.stem != "None":
                found.setdefault(path.stem, path)
        return found

    def find(self, name: str, files: Mapping[str, Path] | None = None) -> Path | None:
        files = self.files() if files is None else files
        return files.get(name)

    def sha256(self, path: Path) -> str:
        if self.hash_cache_dir is not None:
            return HashCache(self.hash_cache_dir).sha256(path)
        return sha256_file(path)

    def shorthash(self, path: Path) -> str:
        """A1111's `Hypernetwork.shorthash`: the first 10 hex of the SHA-256."""
        return self.sha256(path)[:10]

    @staticmethod
    def legacy_hash(path: Path) -> str:
        """What A1111 wrote as the infotext's `Hypernet hash` (`sd_models.model_hash`: 8 hex)."""
        return legacy_model_hash(path)

    def load(self, path: Path) -> Hypernetwork:
        """The file as a `Hypernetwork` (cached while unchanged); `ModelFileError` when it cannot be read."""
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._loaded.get(str(path))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        net = load_hypernetwork(path)
        with self._lock:
            self._loaded[str(path)] = (stamp, net)
        return net

    def forget(self, keep: Iterable[Path] = ()) -> None:
        keep_keys = {str(p) for p in keep}
        with self._lock:
            self._loaded = {k: v for k, v in self._loaded.items() if k in keep_keys}

    def a1111_listing(self) -> list[dict]:
        return [{"name": name, "path": str(path)} for name, path in self.files().items()]

    @contextmanager
    def applied(self, model, calls: Sequence[HypernetCall]) -> Iterator[AppliedHypernetworks]:
        """Hook `calls` into `model`'s UNet while the block runs. Unknown names and unreadable files are noted
        and skipped (A1111 prints the error and goes on)."""
        report = AppliedHypernetworks()
        files = self.files() if calls else {}
        networks: list[tuple[Hypernetwork, float]] = []
        for call in calls:
            path = files.get(call.name)
            if path is None:
                report.missing.append(call.name)
                continue
            try:
                net = self.load(path)
            except ModelFileError as error:
                report.notes.append(f"Hypernetwork {call.name} not loaded: {error.reason}")
                log.warning("hypernetwork %s not loaded: %s", path, error.reason)
                continue
            report.applied.append((call, path))
            if call.multiplier != 0:
                networks.append((net, call.multiplier))
        if report.missing:
            report.notes.append("Failed to find hypernetworks: " + ", ".join(report.missing))
        self.forget(path for _, path in report.applied)
        unet = model.unet
        device = next(unet.parameters()).device
        # A network asked for twice (two tags) is applied twice, as A1111 does; each use has its own multiplier.
        chained = []
        for net, multiplier in networks:
            if len(chained) and any(net is other for other, _ in chained):
                net = hypernetwork_from_data(net.state(), net.name, net.path)
            net.to(device)
            chained.append((net, multiplier))
        for net, multiplier in chained:
            net.set_multiplier(multiplier)
        with hooked(unet, [net for net, _ in chained]):
            yield report


__all__ = ["Hypernetwork", "HypernetworkModule", "HypernetworkLibrary", "HypernetworkError", "HypernetCall",
           "AppliedHypernetworks", "load_hypernetwork", "hypernetwork_from_data", "parse_dropout_structure",
           "attention_layers", "hooked", "ACTIVATIONS", "WEIGHT_INITS", "HYPERNETWORK_EXTENSIONS"]
