"""Token merging for Stable Diffusion (ToMe SD; Bolya & Hoffman 2023, "Token Merging for Fast Stable Diffusion"),
as A1111 applies it through the `tomesd` package: A1111's settings `token_merging_ratio` (and its img2img and
hires-pass variants) merge that fraction of the tokens before each self-attention of the UNet's highest-resolution
transformer blocks and unmerge them after, which makes those attentions cheaper at a small cost in detail.

A1111 calls `tomesd.apply_patch(model, ratio, use_rand=False, merge_attn=True, merge_crossattn=False,
merge_mlp=False)` with tomesd's other defaults (`max_downsample=1`, `sx=sy=2`). tomesd swaps the class of each
diffusers `BasicTransformerBlock` for one with its own copy of `forward` until `remove_patch`; here the same
algorithm runs as hooks on the blocks' public parts that live only inside `token_merging(...)` (patches stay in a
scope), and tests/test_token_merging.py checks the UNet's output bit for bit against tomesd 0.1.3's:

- a pre-hook on the UNet records the latent's height and width (tomesd's `hook_tome_model`);
- a pre-hook on each `BasicTransformerBlock` computes the merge from the block's input, as tomesd's
  `compute_merge` does (`bipartite_soft_matching_random2d` with `no_rand=True`: the top-left token of each 2x2
  cell is a destination, every other token is matched to its most similar destination by cosine similarity, and
  the `ratio x tokens` best-matched ones are averaged into it);
- a pre-hook on the block's self-attention (`attn1`) merges the normalised tokens it is given, and a hook after it
  puts the output back at every original position (`unmerge`), so the residual add sees the full sequence.

Blocks below full latent resolution (`max_downsample` 1) are left alone, as in A1111. Ratio 0 installs nothing:
the model runs exactly as without token merging. The algorithm follows tomesd 0.1.3's `merge.py` (MIT licence).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

MAX_RATIO = 0.9
"""A1111's sliders stop at 0.9 (merging every token of a cell but the destination would be 0.75 of them anyway)."""

Merge = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


def bipartite_soft_matching_2d(metric: Tensor, w: int, h: int, sx: int, sy: int, r: int) -> tuple[Merge, Merge]:
    """(merge, unmerge) for tokens laid out as an `h` x `w` image (tomesd's `bipartite_soft_matching_random2d`
    with `no_rand=True`): in each `sy` x `sx` cell the top-left token is a destination and the others are sources;
    the `r` sources most similar to some destination are averaged into it. `metric` is (B, N, C)."""
    batch, tokens, _ = metric.shape
    if r <= 0:
        return _identity, _identity
    device = metric.device
    with torch.no_grad():
        hsy, wsx = h // sy, w // sx
        # -1 marks each cell's destination (index 0 of the cell: its top-left token), 0 its sources.
        cell = torch.zeros(hsy, wsx, sy * sx, device=device, dtype=torch.int64)
        cell[..., 0] = -1
        view = cell.view(hsy, wsx, sy, sx).transpose(1, 2).reshape(hsy * sy, wsx * sx)
        if hsy * sy < h or wsx * sx < w:  # the image does not divide into cells: the rest are sources
            grid = torch.zeros(h, w, device=device, dtype=torch.int64)
            grid[: hsy * sy, : wsx * sx] = view
        else:
            grid = view
        order = grid.reshape(1, -1, 1).argsort(dim=1)  # destinations first, then sources (stable: in order)
        num_dst = hsy * wsx
        a_idx = order[:, num_dst:, :]  # sources
        b_idx = order[:, :num_dst, :]  # destinations

        def split(x: Tensor) -> tuple[Tensor, Tensor]:
            channels = x.shape[-1]
            src = torch.gather(x, dim=1, index=a_idx.expand(x.shape[0], tokens - num_dst, channels))
            dst = torch.gather(x, dim=1, index=b_idx.expand(x.shape[0], num_dst, channels))
            return src, dst

        normed = metric / metric.norm(dim=-1, keepdim=True)
        a, b = split(normed)
        scores = a @ b.transpose(-1, -2)
        r = min(a.shape[1], r)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]  # sources kept as they are
        src_idx = edge_idx[..., :r, :]  # sources merged ...
        dst_idx = torch.gather(node_idx[..., None], dim=-2, index=src_idx)  # ... into these destinations

    def merge(x: Tensor) -> Tensor:
        src, dst = split(x)
        n, t1, c = src.shape
        unm = torch.gather(src, dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = torch.gather(src, dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce="mean")
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: Tensor) -> Tensor:
        unm_len = unm_idx.shape[1]
        unm, dst = x[..., :unm_len, :], x[..., unm_len:, :]
        n, _, c = unm.shape
        src = torch.gather(dst, dim=-2, index=dst_idx.expand(n, r, c))
        out = torch.zeros(n, tokens, c, device=x.device, dtype=x.dtype)
        out.scatter_(dim=-2, index=b_idx.expand(n, num_dst, c), src=dst)
        sources = a_idx.expand(n, a_idx.shape[1], 1)
        out.scatter_(dim=-2, index=torch.gather(sources, dim=1, index=unm_idx).expand(n, unm_len, c), src=unm)
        out.scatter_(dim=-2, index=torch.gather(sources, dim=1, index=src_idx).expand(n, r, c), src=src)
        return out

    return merge, unmerge


class _State:
    def __init__(self, ratio: float, max_downsample: int, sx: int, sy: int):
        self.ratio = ratio
        self.max_downsample = max_downsample
        self.sx, self.sy = sx, sy
        self.size: tuple[int, int] | None = None
        self.merged_calls = 0
        """Self-attention calls that ran on merged tokens (what the tests check)."""

    def compute(self, x: Tensor) -> tuple[Merge, Merge]:
        """tomesd's `compute_merge` for attention only."""
        if self.size is None or x.ndim != 3:
            return _identity, _identity
        height, width = self.size
        downsample = int(math.ceil(math.sqrt((height * width) // x.shape[1])))
        if downsample > self.max_downsample:
            return _identity, _identity
        w = int(math.ceil(width / downsample))
        h = int(math.ceil(height / downsample))
        if w * h != x.shape[1]:
            return _identity, _identity  # not an image-shaped sequence (should not happen in a UNet)
        r = int(x.shape[1] * self.ratio)
        return bipartite_soft_matching_2d(x, w, h, self.sx, self.sy, r)


def transformer_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet's transformer blocks with a self-attention (`attn1`) and a norm before it."""
    return [module for module in unet.modules()
            if type(module).__name__ == "BasicTransformerBlock" and getattr(module, "attn1", None) is not None]


@contextmanager
def token_merging(unet: torch.nn.Module, ratio: float, *, max_downsample: int = 1, sx: int = 2,
                  sy: int = 2) -> Iterator[_State | None]:
    """Merge `ratio` of the tokens in the self-attention of `unet`'s full-resolution transformer blocks while the
    block runs (A1111's `token_merging_ratio`; see the module docstring). Ratio 0: nothing is installed."""
    if not ratio or ratio <= 0:
        yield None
        return
    if ratio > MAX_RATIO:
        raise ValueError(f"token merging ratio must be at most {MAX_RATIO}, got {ratio}")
    state = _State(float(ratio), max_downsample, sx, sy)
    handles = []

    def record_size(_module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        if isinstance(sample, Tensor) and sample.ndim == 4:
            state.size = (int(sample.shape[2]), int(sample.shape[3]))

    handles.append(unet.register_forward_pre_hook(record_size, with_kwargs=True))
    for block in transformer_blocks(unet):
        pending: dict[str, Merge] = {}

        def before_block(_module, args, kwargs, pending=pending):
            hidden = args[0] if args else kwargs.get("hidden_states")
            pending.clear()
            if isinstance(hidden, Tensor):
                merge, unmerge = state.compute(hidden)
                if merge is not _identity:
                    pending["merge"], pending["unmerge"] = merge, unmerge

        def before_attention(_module, args, kwargs, pending=pending):
            merge = pending.get("merge")
            if merge is None:
                return None
            if args:
                return (merge(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": merge(kwargs["hidden_states"])}

        def after_attention(_module, _args, output, pending=pending):
            unmerge = pending.pop("unmerge", None)
            pending.pop("merge", None)
            if unmerge is None:
                return None
            state.merged_calls += 1
            return unmerge(output)

        handles.append(block.register_forward_pre_hook(before_block, with_kwargs=True))
        handles.append(block.attn1.register_forward_pre_hook(before_attention, with_kwargs=True))
        handles.append(block.attn1.register_forward_hook(after_attention))
    try:
        yield state
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["token_merging", "bipartite_soft_matching_2d", "transformer_blocks", "MAX_RATIO"]
