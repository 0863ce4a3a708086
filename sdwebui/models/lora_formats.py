"""Weight deltas of the LoRA / LyCORIS module types, as closed forms over one layer's tensors.

Reference: A1111's built-in Lora extension (`network_lora.py`, `network_hada.py`, `network_lokr.py`,
`network_full.py`, `lyco_helpers.py`), which follows LyCORIS (KohakuBlueleaf/LyCORIS). For a layer with weight
W (Linear [out, in] or Conv2d [out, in, kh, kw]) each type gives ΔW from the file's tensors, then

    W' = W + multiplier * scale * ΔW,        scale = alpha / rank   (1 when the file has no alpha)

- LoRA / LoCon (kohya `lora_down`/`lora_up`, PEFT `lora_A`/`lora_B`): ΔW = up @ down (flattened over the
  kernel), with `lora_mid` the CP-decomposed conv form ΔW = mid ×₁ up ×₂ down. rank = rows of `down`.
- LoHa (`hada_w1_a`, ...): ΔW = (w1a @ w1b) ⊙ (w2a @ w2b), each factor optionally CP (`hada_t1`/`hada_t2`).
  rank = rows of `hada_w1_b`.
- LoKr (`lokr_w1` or `lokr_w1_a @ lokr_w1_b`, `lokr_w2` or its factors, optional `lokr_t2`): ΔW = w1 ⊗ w2
  (Kronecker). rank = rows of the factorised `_b` matrix; scale 1 when neither side is factorised.
- Full diff (`diff`, `diff_b`): ΔW = diff, Δb = diff_b, scale 1.
- DoRA (`dora_scale` beside any of the above, LyCORIS weight decomposition): the merged weight is
  renormalised per output row (scale shaped [out, 1, ...]) or per input column ([1, in, ...]) to the learned
  magnitude, and the multiplier interpolates: W' = W + multiplier * (dora(W + scale * ΔW) - W).

Difference from A1111, on purpose: A1111 (v1.10 `NetworkModule.apply_weight_decompose`) normalises W + ΔW
*before* the alpha scale and multiplies the renormalised difference by alpha/rank afterwards, which changes the
magnitude DoRA learned whenever alpha != rank; we apply alpha first as LyCORIS (which trains the files) and
ComfyUI do. With alpha == rank (the usual DoRA setting) and multiplier 1 both give the same weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

LORA_PARTS = ("lora_up.weight", "lora_down.weight", "lora_mid.weight")
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
FULL_PARTS = ("diff", "diff_b")
COMMON_PARTS = ("alpha", "dora_scale", "scale")
KNOWN_PARTS = frozenset(LORA_PARTS + LOHA_PARTS + LOKR_PARTS + FULL_PARTS + COMMON_PARTS)


class LoraFormatError(ValueError):
    """A layer's tensors do not form a known module type, or do not fit the layer they name."""


@dataclass(frozen=True)
class ModuleDelta:
    """What one file does to one layer, before the user's multiplier."""

    kind: str
    """"lora", "locon" (LoRA on a conv layer), "loha", "lokr", "full"."""
    weight: Tensor
    """multiplier * scale * ΔW, shaped like the layer's weight (float32); with DoRA, scale * ΔW."""
    bias: Tensor | None = None
    """multiplier * Δb (full diff only)."""
    dora_scale: Tensor | None = None
    """DoRA magnitude; when set, `apply_delta` renormalises (see the module docstring)."""
    multiplier: float = 1.0


def module_kind(parts: Mapping[str, Tensor]) -> str | None:
    """The module type a layer's tensors describe (A1111 tries the types in this order), or None."""
    if "lora_up.weight" in parts and "lora_down.weight" in parts:
        return "lora"
    if all(k in parts for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
        return "loha"
    has_1 = "lokr_w1" in parts or ("lokr_w1_a" in parts and "lokr_w1_b" in parts)
    has_2 = "lokr_w2" in parts or ("lokr_w2_a" in parts and "lokr_w2_b" in parts)
    if has_1 and has_2:
        return "lokr"
    if "diff" in parts:
        return "full"
    return None


def _alpha_scale(parts: Mapping[str, Tensor], rank: int | None) -> float:
    if "scale" in parts:
        return float(parts["scale"])
    alpha = parts.get("alpha")
    if alpha is None or rank is None or rank == 0:
        return 1.0
    return float(alpha) / rank


def _reshape_to(delta: Tensor, shape: torch.Size, what: str) -> Tensor:
    if tuple(delta.shape) == tuple(shape):
        return delta
    if delta.numel() == torch.Size(shape).numel():
        return delta.reshape(shape)
    if len(shape) == 4 and delta.ndim == 4 and shape[1] == 9 and delta.shape[1] == 4 and delta.shape[0] == shape[0]:
        # A LoRA trained on a normal model, used on its inpainting variant (conv_in takes 9 channels): the
        # extra mask/image channels get no change (A1111 pads the same way).
        return torch.nn.functional.pad(delta, (0, 0, 0, 0, 0, 5))
    raise LoraFormatError(f"{what} gives a change of shape {tuple(delta.shape)} for a layer of shape {tuple(shape)}")


def rebuild_cp(t: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """LyCORIS `make_weight_cp`: [r, r, kh, kw] core with [r, out] (wa) and [r, in] (wb) -> [out, in, kh, kw]."""
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


def lora_delta(parts: Mapping[str, Tensor], shape: torch.Size, dyn_dim: int | None = None, factor: float = 1.0) -> Tensor:
    """factor * ΔW of LoRA / LoCon (the factor is applied to the small `up` matrix, not to ΔW)."""
    up, down = parts["lora_up.weight"].float(), parts["lora_down.weight"].float()
    mid = parts.get("lora_mid.weight")
    if dyn_dim is not None:
        up, down = up[:, :dyn_dim], down[:dyn_dim]
    if factor != 1.0:
        up = up * factor
    if mid is not None:
        # up [out, r(,1,1)], down [r, in(,1,1)], mid [r, r, kh, kw]
        delta = torch.einsum("n m k l, i n, m j -> i j k l", mid.float(), up.flatten(1), down.flatten(1))
    else:
        delta = up.flatten(1) @ down.flatten(1)
        if down.ndim == 4:
            delta = delta.reshape(up.shape[0], down.shape[1], *down.shape[2:])
    return _reshape_to(delta, shape, "lora_up @ lora_down")


def loha_delta(parts: Mapping[str, Tensor], shape: torch.Size, factor: float = 1.0) -> Tensor:
    """factor * ΔW of LoHa."""
    w1a, w1b = parts["hada_w1_a"].float() * factor, parts["hada_w1_b"].float()
    w2a, w2b = parts["hada_w2_a"].float(), parts["hada_w2_b"].float()
    t1, t2 = parts.get("hada_t1"), parts.get("hada_t2")
    w1 = rebuild_cp(t1.float(), w1a, w1b) if t1 is not None else w1a @ w1b.flatten(1)
    w2 = rebuild_cp(t2.float(), w2a, w2b) if t2 is not None else w2a @ w2b.flatten(1)
    w1 = _reshape_to(w1, shape, "hada_w1_a @ hada_w1_b")
    w2 = _reshape_to(w2, shape, "hada_w2_a @ hada_w2_b")
    return w1 * w2


def lokr_delta(parts: Mapping[str, Tensor], shape: torch.Size, factor: float = 1.0) -> Tensor:
    """factor * ΔW of LoKr: kron(w1, w2)."""
    w1 = parts.get("lokr_w1")
    w1 = w1.float() if w1 is not None else parts["lokr_w1_a"].float() @ parts["lokr_w1_b"].float()
    w1 = w1 * factor
    w2 = parts.get("lokr_w2")
    if w2 is not None:
        w2 = w2.float()
    elif "lokr_t2" in parts:
        w2 = rebuild_cp(parts["lokr_t2"].float(), parts["lokr_w2_a"].float(), parts["lokr_w2_b"].float())
    else:
        w2 = parts["lokr_w2_a"].float() @ parts["lokr_w2_b"].float().flatten(1)
        if len(shape) == 4 and w2.numel() * w1.numel() == torch.Size(shape).numel() and w1.ndim == 2:
            # A conv layer's w2 factor is stored flattened over the kernel.
            w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
    if w2.ndim == 4 and w1.ndim == 2:
        w1 = w1[:, :, None, None]
    return _reshape_to(torch.kron(w1, w2.contiguous()), shape, "kron(lokr_w1, lokr_w2)")


def lokr_rank(parts: Mapping[str, Tensor]) -> int | None:
    rank = None
    if "lokr_w1_b" in parts:
        rank = int(parts["lokr_w1_b"].shape[0])
    if "lokr_w2_b" in parts:
        rank = int(parts["lokr_w2_b"].shape[0])
    return rank


def compute_delta(
    parts: Mapping[str, Tensor], weight_shape: torch.Size, *, dyn_dim: int | None = None, multiplier: float = 1.0
) -> ModuleDelta:
    """The change one file makes to a layer of shape `weight_shape` at `multiplier` (tensors on any device).

    The scalar factors are folded into the smallest factor matrix before the product: on a full-size model
    the layers are large and every pass over them costs (memory-bound)."""
    kind = module_kind(parts)
    if kind is None:
        raise LoraFormatError(f"unknown module type with tensors {sorted(parts)}")
    dora = parts.get("dora_scale")
    outer = 1.0 if dora is not None else multiplier  # DoRA: the multiplier acts after renormalising
    bias = None
    if kind == "lora":
        down = parts["lora_down.weight"]
        rank = int(down.shape[0]) if dyn_dim is None else min(int(down.shape[0]), dyn_dim)
        delta = lora_delta(parts, weight_shape, dyn_dim, outer * _alpha_scale(parts, rank))
        if len(weight_shape) == 4:
            kind = "locon"
    elif kind == "loha":
        delta = loha_delta(parts, weight_shape, outer * _alpha_scale(parts, int(parts["hada_w1_b"].shape[0])))
    elif kind == "lokr":
        delta = lokr_delta(parts, weight_shape, outer * _alpha_scale(parts, lokr_rank(parts)))
    else:
        delta = _reshape_to(parts["diff"].float(), weight_shape, "diff")
        if outer != 1.0:
            delta = delta * outer
        if "diff_b" in parts:
            bias = parts["diff_b"].float().flatten() * multiplier
    return ModuleDelta(kind, delta, bias, dora.float() if dora is not None else None, multiplier)


def dora_renormalise(merged: Tensor, dora_scale: Tensor) -> Tensor:
    """LyCORIS weight decomposition: scale each output row (or input column) of `merged` to its learned norm."""
    scale = dora_scale.to(merged.device, merged.dtype)
    if scale.shape[0] == merged.shape[0] and (scale.ndim == 1 or scale.shape[1] == 1):
        norm = merged.flatten(1).norm(dim=1).reshape(merged.shape[0], *[1] * (merged.ndim - 1))
        scale = scale.reshape(norm.shape)
    else:
        norm = merged.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, merged.shape[1], *[1] * (merged.ndim - 2))
        scale = scale.reshape(norm.shape)
    return merged * (scale / (norm + torch.finfo(merged.dtype).eps))


def apply_delta(weight: Tensor, delta: ModuleDelta) -> Tensor:
    """W' for one file (float32), computed IN PLACE in `weight`, which must be the caller's own copy."""
    if delta.dora_scale is None:
        return weight.add_(delta.weight.to(weight.device))
    merged = dora_renormalise(weight + delta.weight.to(weight.device), delta.dora_scale)
    return weight.add_(merged.sub_(weight), alpha=delta.multiplier)


__all__ = [
    "ModuleDelta",
    "LoraFormatError",
    "module_kind",
    "compute_delta",
    "apply_delta",
    "lora_delta",
    "loha_delta",
    "lokr_delta",
    "rebuild_cp",
    "dora_renormalise",
    "KNOWN_PARTS",
]
