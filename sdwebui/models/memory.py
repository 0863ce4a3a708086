"""Memory modes: where a loaded model's parts live between uses (A1111's `--medvram`, `--lowvram`,
`--medvram-sdxl`; Forge's automatic choice from the free VRAM).

    none     every part stays on the device (A1111's default; the only mode on a CPU, where there is nothing to
             offload to)
    medvram  only the part in use sits on the device: the text encoders, the UNet and the VAE are swapped in when
             they run and the part that ran before goes back to the CPU (A1111's `send_me_to_gpu`, diffusers'
             `enable_model_cpu_offload`). The UNet stays on the device for all the steps of a batch.
    lowvram  as medvram for the text encoders and the VAE; the UNet's layers stream to the device as they run
             (diffusers' group offloading at leaf level, with a CUDA stream that fetches the next layer while the
             current one computes), so the device holds a few layers and the activations, not the UNet.

Both offloading modes are diffusers hooks (`diffusers.hooks`: a `ModelHook` for the swaps, `apply_group_offloading`
for the layers), installed on the model's own modules: the pipelines call the modules as they always do. On the
CPU the hooks run with the CPU as both devices, so the same code path gives bit-identical images (a test), and a
test offloads the UNet's layers to disk to prove that every layer is brought back before it runs.

`choose_mode` makes the automatic choice when a model is loaded: the model's size (from the file's header)
against the free VRAM (or `--vram-budget`, whichever is smaller).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdwebui.models.detect import UNET_PREFIX, VAE_PREFIX
from sdwebui.models.family import ModelFamily

log = logging.getLogger(__name__)

MEMORY_MODES = ("none", "medvram", "lowvram")
"""From most to least device memory; `degrade` walks this list after an out-of-memory error."""

GIB = 1024**3

ACTIVATION_RESERVE = {False: 1.0 * GIB, True: 2.5 * GIB}
"""Device memory kept free for activations (UNet at the family's native size with CFG, the VAE decode) when the
mode is chosen, by `is_sdxl`. Rough: SD 1.5 at 512² peaks at ~0.6 GiB of activations in fp16 with SDPA, SDXL at
1024² at ~1.5-2 GiB, and the allocator needs slack."""

_SWAP_HOOK = "sdwebui_swap"


class OutOfDeviceMemory(RuntimeError):
    """The job ran out of device memory in the least memory-hungry mode: a clear message for the user (it says
    "out of ... memory", so the worker still releases the models after it)."""


@dataclass(frozen=True)
class MemoryPolicy:
    """What the operator asked for on the command line."""

    mode: str = "auto"
    """"auto" (chosen at load from the free VRAM), or one of `MEMORY_MODES` (`--medvram`, `--lowvram`)."""
    medvram_sdxl: bool = False
    """`--medvram-sdxl`: medvram for SDXL models only (an explicit `--lowvram` still wins)."""
    vram_budget_gb: float | None = None
    """`--vram-budget GB`: plan as if the device had at most this much free memory (the automatic mode and the
    automatic tiled VAE use it)."""

    def __post_init__(self):
        if self.mode not in ("auto", *MEMORY_MODES):
            raise ValueError(f"unknown memory mode {self.mode!r}: use auto, none, medvram or lowvram")
        if self.vram_budget_gb is not None and not self.vram_budget_gb > 0:
            raise ValueError(f"--vram-budget must be a positive number of GB, got {self.vram_budget_gb}")

    def budget_bytes(self, device: torch.device) -> int | None:
        """The device memory a job may plan on: the free memory now, capped by `--vram-budget`; None on a device
        whose free memory cannot be read (the CPU) and without a budget."""
        free = free_device_memory(device)
        budget = int(self.vram_budget_gb * GIB) if self.vram_budget_gb else None
        if free is None:
            return budget
        return min(free, budget) if budget is not None else free


@dataclass(frozen=True)
class ModelBytes:
    """A checkpoint's weights in the dtypes they will be loaded in."""

    unet: int
    text_encoders: int
    vae: int

    @property
    def total(self) -> int:
        return self.unet + self.text_encoders + self.vae


@dataclass(frozen=True)
class MemoryChoice:
    mode: str
    reason: str


def choose_mode(policy: MemoryPolicy, family: ModelFamily, device: torch.device, sizes: ModelBytes | None,
                free_bytes: int | None = None) -> MemoryChoice:
    """The mode a model is loaded in. Explicit flags win; otherwise a device without offloading (the CPU, MPS's
    shared memory) keeps everything in place, and a CUDA device gets the least offloading that fits the free
    memory (`free_bytes`: `policy.budget_bytes(device)` when None)."""
    if policy.mode != "auto" and policy.mode != "none":
        return MemoryChoice(policy.mode, f"--{policy.mode}")
    if policy.medvram_sdxl and family.spec.is_sdxl:
        return MemoryChoice("medvram", "--medvram-sdxl (an SDXL model)")
    if policy.mode == "none":
        return MemoryChoice("none", "memory mode none")
    if device.type != "cuda":
        return MemoryChoice("none", f"automatic: nothing to offload to on {device.type}")
    free = policy.budget_bytes(device) if free_bytes is None else free_bytes
    if free is None or sizes is None:
        return MemoryChoice("none", "automatic: free memory or model size unknown")
    reserve = ACTIVATION_RESERVE[family.spec.is_sdxl]
    shown = f"{free / GIB:.1f} GiB free for a {sizes.total / GIB:.1f} GiB model"
    if free >= sizes.total + reserve:
        return MemoryChoice("none", f"automatic: {shown}")
    if free >= sizes.unet + reserve:
        return MemoryChoice("medvram", f"automatic: {shown}")
    return MemoryChoice("lowvram", f"automatic: {shown}")


def estimate_bytes(shapes: dict | None, family: ModelFamily, dtype: torch.dtype,
                   vae_dtype: torch.dtype) -> ModelBytes:
    """Weights per part from a single file's tensor shapes (its header's `TensorInfo`s or shape tuples; nothing is
    read), in the dtypes they are
    loaded in; from the family's usual parameter counts when the shapes are unknown (a diffusers folder)."""
    size, vae_size = _itemsize(dtype), _itemsize(vae_dtype)
    if not shapes:
        unet, text, vae = _FAMILY_PARAMETERS.get(family.spec.is_sdxl, _FAMILY_PARAMETERS[False])
        return ModelBytes(unet * size, text * size, vae * vae_size)
    counts = {"unet": 0, "text": 0, "vae": 0}
    for key, info in shapes.items():
        numel = 1
        for dim in getattr(info, "shape", info):
            numel *= int(dim)
        if key.startswith(UNET_PREFIX):
            counts["unet"] += numel
        elif key.startswith(VAE_PREFIX):
            counts["vae"] += numel
        elif key.startswith(("cond_stage_model.", "conditioner.")):
            counts["text"] += numel
    return ModelBytes(counts["unet"] * size, counts["text"] * size, counts["vae"] * vae_size)


_FAMILY_PARAMETERS = {False: (866_000_000, 340_000_000, 84_000_000), True: (2_567_000_000, 817_000_000, 84_000_000)}
"""(UNet, text encoders, VAE) parameters by `is_sdxl`: SD 2.x's (the larger of SD 1/2) and SDXL base's."""


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def free_device_memory(device: torch.device) -> int | None:
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


# ------------------------------------------------------------------------------------------------ placement


@dataclass
class ModelPlacement:
    """The memory mode of one loaded model and the hooks that carry it out.

    `parts` name the modules that move together ("text_encoder", "unet", "vae"); in medvram and lowvram only the
    part in use is on the device (`resident`). `onloads` counts how often each part was brought to the device
    (what the tests read to see the hooks at work on a CPU, where both devices are the same)."""

    mode: str
    device: torch.device
    offload_device: torch.device
    parts: dict[str, list[torch.nn.Module]]
    resident: tuple[str, list[torch.nn.Module]] | None = None
    onloads: dict[str, int] = field(default_factory=dict)
    offload_dir: Path | None = None
    _hooked: list[torch.nn.Module] = field(default_factory=list)
    _pinned_groups: dict | None = None
    _parts_of: dict = field(default_factory=dict)
    _streamed: set = field(default_factory=set)
    """ids of the modules whose layers group offloading moves (lowvram's UNet): never moved with `.to()`."""
    _beside_unet: dict = field(default_factory=dict)
    """Modules lent for every UNet call (ControlNets, IP-Adapter attention layers) that medvram keeps on the device
    while the UNet is (`lend(..., every_step=True)`), by id; they leave with it."""

    @property
    def offloads(self) -> bool:
        return self.mode != "none"

    @property
    def kept_beside_unet(self) -> tuple[torch.nn.Module, ...]:
        """What medvram keeps on the device with the UNet now (`lend(..., every_step=True)`)."""
        return tuple(self._beside_unet.values())

    def bring(self, part: str, modules: list[torch.nn.Module]) -> None:
        """Put `modules` (the part called `part`) on the device and send the part there before them back to the
        offload device; a no-op when they are there."""
        streamed = self._streamed
        if self.resident is not None and self.resident[1] is modules and all(
                id(m) in streamed or _on(m, self.device) for m in modules):
            return  # (checked, not assumed: a LoRA scope that ends swaps the original CPU tensors back in)
        if self.resident is not None:
            for module in self.resident[1]:
                if id(module) not in streamed:
                    module.to(self.offload_device)
        self._send_back_beside_unet()
        for module in modules:
            if id(module) not in streamed:
                module.to(self.device)
        self.resident = (part, modules)
        self.onloads[part] = self.onloads.get(part, 0) + 1

    @contextmanager
    def lend(self, part: str, modules: list[torch.nn.Module], *, every_step: bool = False):
        """`modules` on the device for the block and back on the offload device after: a model that runs beside the
        checkpoint's parts (a ControlNet, a T2I-Adapter, an IP-Adapter and its image encoder) in medvram and
        lowvram. The resident part stays where it is; counted in `onloads` under `part`.

        `every_step`: the modules run with every UNet call (a ControlNet). medvram then keeps them on the device
        beside the UNet for all the steps, as it keeps the UNet, and sends them back when the UNet leaves (the
        UNet is brought first, since it runs next): one move per pass instead of two per step. lowvram still lends
        them per call, for the least memory."""
        if every_step and self.mode == "medvram":
            self.bring("unet", self.parts["unet"])
            arriving = [module for module in modules if id(module) not in self._beside_unet]
            for module in arriving:
                module.to(self.device)
                self._beside_unet[id(module)] = module
            if arriving:
                self.onloads[part] = self.onloads.get(part, 0) + 1
            yield
            return
        for module in modules:
            module.to(self.device)
        self.onloads[part] = self.onloads.get(part, 0) + 1
        try:
            yield
        finally:
            for module in modules:
                module.to(self.offload_device)

    def _send_back_beside_unet(self) -> None:
        for module in self._beside_unet.values():
            module.to(self.offload_device)
        self._beside_unet.clear()

    def adopt(self, param: torch.nn.Parameter, data: torch.Tensor) -> None:
        """`param.data = data`, also where group offloading keeps its own copy of the weights: with CUDA streams
        each offloaded layer is onloaded from a pinned copy made when the hooks were installed, so a LoRA swapped
        into `param.data` alone would never reach the device."""
        param.data = data
        if self.mode != "lowvram" or self.device.type != "cuda":
            return
        if self._pinned_groups is None:
            self._pinned_groups = {}
            for module in self.parts["unet"][0].modules():
                hook = _group_hook(module)
                if hook is not None:
                    for tensor in hook.group.cpu_param_dict:
                        self._pinned_groups[tensor] = hook.group
        group = self._pinned_groups.get(param)
        if group is not None:
            group.cpu_param_dict[param] = data if data.is_pinned() else data.pin_memory()

    def ensure(self, module: torch.nn.Module) -> None:
        """Bring the part `module` belongs to onto the device, for code that calls its submodules directly (the
        tiled VAE runs the decoder's blocks one by one, past the hooked forward)."""
        found = self._parts_of.get(id(module))
        if found is not None:
            self.bring(*found)

    def hook_part(self, part: str, modules: list[torch.nn.Module]) -> None:
        """Make `modules` one part of this placement: offloaded now, brought to the device when any of them runs.
        (A VAE swapped into a loaded model, `vae.apply_vae`, joins the placement this way.)"""
        from diffusers.hooks import HookRegistry, ModelHook

        placement = self

        class SwapIn(ModelHook):
            """Before a part's module runs: bring its part to the device, and its inputs with it."""

            def pre_forward(self, module, *args, **kwargs):
                placement.bring(part, modules)
                return _to_device(args, placement.device), _to_device(kwargs, placement.device)

        for module in modules:
            self._parts_of[id(module)] = (part, modules)
            if not _group_offloaded(module):
                module.to(self.offload_device)
            # The VAE's encode and decode are not its forward: hook the submodules they call.
            for target in _entry_modules(module):
                registry = HookRegistry.check_if_exists_or_initialize(target)
                if registry.get_hook(_SWAP_HOOK) is not None:
                    registry.remove_hook(_SWAP_HOOK, recurse=False)
                registry.register_hook(SwapIn(), _SWAP_HOOK)
                self._hooked.append(target)

    def install(self, model) -> None:
        """Install this placement's hooks on `model`'s modules."""
        if self.mode == "lowvram":
            from diffusers.hooks import apply_group_offloading

            model.unet.to(self.offload_device)
            streams = self.device.type == "cuda"
            apply_group_offloading(
                model.unet, onload_device=self.device, offload_device=self.offload_device, offload_type="leaf_level",
                use_stream=streams, record_stream=streams, low_cpu_mem_usage=False,
                offload_to_disk_path=str(self.offload_dir) if self.offload_dir is not None else None,
            )
            self._streamed = {id(model.unet)}
        for part, modules in self.parts.items():
            self.hook_part(part, modules)
        self.resident = None

    def park(self, model) -> None:
        """Move every part off the device (a model kept in the RAM cache while another one is used)."""
        for modules in self.parts.values():
            for module in modules:
                if not _group_offloaded(module):
                    module.to(self.offload_device)
        self._send_back_beside_unet()
        self.resident = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def unpark(self, model) -> None:
        """Undo `park`: in mode none every part goes back to the device; the offloading modes bring the parts in
        as they run."""
        if self.mode == "none":
            for modules in self.parts.values():
                for module in modules:
                    module.to(self.device)

    def remove(self, model) -> None:
        """Take the hooks off and put every part on the device (memory mode none)."""
        for target in self._hooked:
            registry = getattr(target, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(_SWAP_HOOK) is not None:
                registry.remove_hook(_SWAP_HOOK, recurse=False)
        self._hooked.clear()
        self._parts_of.clear()
        self._streamed = set()
        self._pinned_groups = None
        if _group_offloaded(model.unet):
            from diffusers.hooks import HookRegistry

            # Bring every layer back first: an offloaded layer holds no weights of its own (a pinned copy, or
            # an empty tensor when offloaded to disk).
            for module in model.unet.modules():
                hook = _group_hook(module)
                if hook is not None:
                    hook.group.onload_()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            registry = HookRegistry.check_if_exists_or_initialize(model.unet)
            for name in ("group_offloading", "lazy_prefetch_group_offloading", "layer_execution_tracker"):
                registry.remove_hook(name, recurse=True)
        for modules in self.parts.values():
            for module in modules:
                module.to(self.device)
        self._send_back_beside_unet()
        self.resident = None


def _entry_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose forward a pipeline calls: the VAE's encoder, decoder and quant convolutions (diffusers'
    `AutoencoderKL.encode/decode` call them directly), else the module itself."""
    names = ("encoder", "decoder", "quant_conv", "post_quant_conv")
    if hasattr(module, "decoder") and hasattr(module, "encoder"):
        return [getattr(module, name) for name in names if isinstance(getattr(module, name, None), torch.nn.Module)]
    return [module]


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    for param in module.parameters():
        return param.device.type == device.type and (device.index is None or param.device.index == device.index)
    return True


def _group_hook(module: torch.nn.Module):
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook("group_offloading") if registry is not None else None


def _group_offloaded(module: torch.nn.Module) -> bool:
    """Whether diffusers' group offloading manages `module`'s layers (then `.to()` must not move it)."""
    return any(_group_hook(sub) is not None for sub in module.modules())


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def model_parts(model) -> dict[str, list[torch.nn.Module]]:
    encoders = [getattr(model.text_encoder, name, None) for name in ("clip_l", "clip_g", "clip_h")]
    return {"text_encoder": [m for m in encoders if m is not None], "unet": [model.unet], "vae": [model.vae]}


def place_model(model, mode: str, *, offload_device: torch.device | str = "cpu",
                offload_dir: Path | None = None) -> ModelPlacement:
    """Put `model` in memory mode `mode` on its device (`model.device`, where it computes); returns the placement,
    also kept as `model.placement`. A model placed before is moved to the new mode. `offload_dir`: lowvram keeps
    the UNet's offloaded layers in files there instead of RAM (diffusers' disk offload)."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {mode!r}")
    placement = getattr(model, "placement", None)
    if placement is not None:
        placement.remove(model)
        placement.mode = mode
        placement.offload_dir = offload_dir
    else:
        placement = ModelPlacement(mode, torch.device(model.device), torch.device(offload_device),
                                   model_parts(model), offload_dir=offload_dir)
    if mode != "none":
        placement.install(model)
    else:
        for modules in placement.parts.values():
            for module in modules:
                module.to(placement.device)
    model.placement = placement
    return placement


def degrade(model) -> str | None:
    """Move `model` to the next mode that uses less device memory (after an out-of-memory error); returns the
    new mode, or None when it is in lowvram already. The placement object is changed in place, so copies of the
    model that share its modules (a swapped-in VAE) share the new mode."""
    placement = getattr(model, "placement", None)
    current = placement.mode if placement is not None else "none"
    index = MEMORY_MODES.index(current)
    if index + 1 >= len(MEMORY_MODES):
        return None
    new = MEMORY_MODES[index + 1]
    log.warning("out of device memory: moving %s to %s", model.info.name, new)
    place_model(model, new)
    return new


def is_out_of_memory(error: BaseException) -> bool:
    """A device allocator's out-of-memory error (CUDA's `torch.OutOfMemoryError`, or another backend's)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def call_with_memory_retry(model, call, what: str):
    """`call()`; after an out-of-memory error, free the device cache, move `model` to lowvram (its UNet's layers
    stream; the other parts leave the device) and try once more. A second out-of-memory error, or one in lowvram
    already, is an `OutOfDeviceMemory` saying what ran out (`what`: "the UNet at 1024x1024, 4 latents a call").
    The model stays in lowvram until it is loaded again."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - anything else goes up as it is
        if not is_out_of_memory(error):
            raise
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
    # (outside the `except`: its traceback would keep the failed call's tensors alive)
    release_device_cache()
    placement = getattr(model, "placement", None)
    if placement is not None and placement.mode == "lowvram":
        raise OutOfDeviceMemory(f"out of device memory in {what} even with --lowvram ({first}): use a smaller image "
                                "size or batch size")
    log.warning("out of device memory in %s: retrying with --lowvram (%s)", what, first)
    place_model(model, "lowvram")
    release_device_cache()
    try:
        return call()
    except Exception as error:  # noqa: BLE001
        if not is_out_of_memory(error):
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
    release_device_cache()
    raise OutOfDeviceMemory(f"out of device memory in {what} even after moving to --lowvram ({message}): use a "
                            "smaller image size or batch size")


def release_device_cache() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["MEMORY_MODES", "MemoryPolicy", "MemoryChoice", "ModelBytes", "ModelPlacement", "choose_mode",
           "estimate_bytes", "place_model", "degrade", "is_out_of_memory", "release_device_cache", "call_with_memory_retry",
           "OutOfDeviceMemory", "free_device_memory"]
