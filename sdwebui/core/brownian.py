"""Brownian-tree noise for SDE samplers (k-diffusion `BrownianTreeNoiseSampler`, without torchsde).

The SDE samplers (DPM++ SDE, DPM++ 2M SDE, DPM++ 3M SDE) ask for the noise of an interval, `noise(sigma, sigma_next)`,
and DPM++ SDE asks for overlapping intervals within one step ((sigma, sigma_mid) and then (sigma, sigma_next)). For
the result to be a discretisation of ONE Brownian path, and to be independent of how the steps are cut, the noise
must be the normalised increment of a fixed Brownian motion W: `(W(sigma_next) - W(sigma)) / sqrt(|sigma_next -
sigma|)`. k-diffusion (and A1111, which seeds it with each image's seed) gets W from torchsde's `BrownianTree`.

`BrownianTree` here is a virtual Brownian tree (Li et al. 2020, "Scalable Gradients for Stochastic Differential
Equations", sec. 4): W(t) for any t in [t0, t1] is a deterministic function of (seed, t), computed by bisection from
the root: W(t0) = 0, W(t1) ~ N(0, t1 - t0), and the midpoint of every node [a, b] is drawn from the Brownian bridge,
`(W(a) + W(b)) / 2 + sqrt((b - a) / 4) * z`, where z comes from a generator seeded by a hash of (seed, node). Bisection
stops at width <= `tol` (default 1e-5 in sigma units: 21 levels for SD's range) and W is linear inside a leaf. So any
set of queries, in any order, sees one consistent path, and the increment over an interval of length L has the
Brownian law up to a relative variance error below tol / L (under 0.1% for the smallest steps of a 20-step
schedule). Cost: one draw per new tree node, about (depth - shared prefix) per new query point; cached nodes are
reused, so a 20-step DPM++ SDE run draws roughly 700 node tensors per image.

The built-in tree's VALUES differ from torchsde's (its internal random streams are its own). So that A1111 images made
with SDE samplers reproduce pixel for pixel, `BatchedBrownianTree` uses torchsde itself when it is installed (it is a
dependency of the app) and falls back to the built-in tree otherwise. The built-in tree draws on the CPU (float32,
torch's CPU generator) and moves results to the sample's device, so its results are the same on every device.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["BrownianTree", "BatchedBrownianTree", "BrownianTreeNoiseSampler"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _node_seed(entropy: int, level: int, index: int) -> int:
    """A seed for node (level, index) of the tree of `entropy`: a hash, so nodes get independent streams."""
    h = _splitmix64(entropy & _MASK64)
    h = _splitmix64(h ^ level)
    h = _splitmix64(h ^ (index & _MASK64) ^ ((index >> 64) * 0x9E3779B9))
    return h & ((1 << 63) - 1)  # torch's manual_seed takes up to 2**64 - 1; keep it positive and simple


class BrownianTree:
    """A Brownian motion W on [t0, t1] with W(t0) = 0, deterministic from `entropy` (a seed).

    `tree(ta, tb)` is the increment W(tb) - W(ta); `tree(t)` is W(t). Shape, dtype and device follow `w0` (only its
    shape, dtype and device are used: W starts at 0), as in torchsde's `BrownianTree(t0, w0, t1, entropy=...)`.
    """

    def __init__(
        self,
        t0: float | Tensor,
        w0: Tensor,
        t1: float | Tensor,
        entropy: int | None = None,
        *,
        tol: float = 1e-5,
        cache_size: int | None = None,
    ):
        t0, t1 = float(t0), float(t1)
        if not t1 > t0:
            raise ValueError(f"need t0 < t1, got t0={t0}, t1={t1}")
        if entropy is None:
            entropy = int(torch.randint(0, 2**63 - 1, []).item())
        self.t0, self.t1 = t0, t1
        self.shape = tuple(w0.shape)
        self.dtype = w0.dtype
        self.device = w0.device
        self.entropy = int(entropy)
        self.depth = max(1, min(48, math.ceil(math.log2(max((t1 - t0) / tol, 2.0)))))
        self._cache: OrderedDict[tuple[int, int], Tensor] = OrderedDict()
        # Consecutive queries share most of their root-to-leaf paths; two paths' worth of nodes is enough.
        self._cache_size = 2 * self.depth + 8 if cache_size is None else cache_size
        self._w0 = torch.zeros(self.shape, dtype=torch.float32)
        self._w1 = self._normal(0, 0) * math.sqrt(t1 - t0)

    def _normal(self, level: int, index: int) -> Tensor:
        gen = torch.Generator(device="cpu").manual_seed(_node_seed(self.entropy, level, index))
        return torch.randn(self.shape, generator=gen, dtype=torch.float32)

    def _midpoint(self, level: int, index: int, w_a: Tensor, w_b: Tensor, width: float) -> Tensor:
        """W at the midpoint of node (level, index) of width `width` given W at its ends (cached, LRU)."""
        key = (level, index)
        w = self._cache.get(key)
        if w is None:
            # (w_a + w_b) / 2 + sqrt(width / 4) * z, in place on the fresh draw (no temporaries)
            w = self._normal(level + 1, index).mul_(math.sqrt(width / 4))
            w.add_(w_a, alpha=0.5).add_(w_b, alpha=0.5)
            self._cache[key] = w
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return w

    def _w(self, t: float) -> Tensor:
        t = min(max(float(t), self.t0), self.t1)
        a, b = self.t0, self.t1
        w_a, w_b = self._w0, self._w1
        index = 0
        for level in range(self.depth):
            if t == a:
                return w_a
            if t == b:
                return w_b
            m = a + (b - a) / 2
            w_m = self._midpoint(level, index, w_a, w_b, b - a)
            if t < m:
                b, w_b, index = m, w_m, 2 * index
            else:
                a, w_a, index = m, w_m, 2 * index + 1
        frac = (t - a) / (b - a)
        return w_a + (w_b - w_a) * frac

    def __call__(self, ta: float | Tensor, tb: float | Tensor | None = None) -> Tensor:
        if tb is None:
            w = self._w(float(ta)).clone()  # never hand out a cached node
        else:
            w = self._w(float(tb)) - self._w(float(ta))
        return w.to(device=self.device, dtype=self.dtype)


def torchsde_available() -> bool:
    try:
        import torchsde  # noqa: F401
    except ImportError:
        return False
    return True


class BatchedBrownianTree:
    """One Brownian tree per batch item when `seed` is a list (k-diffusion's `BatchedBrownianTree`), else one tree
    for the whole tensor. Calls with (ta, tb) in either order; the sign follows the direction.

    `backend="torchsde"` (the default when torchsde is installed) uses torchsde's `BrownianTree` exactly as
    k-diffusion builds it (`w0` zeros like one image, `entropy` = the image's seed, times as float32 tensors on the
    sample's device), so SDE-sampler images reproduce A1111's bit for bit on the same device. `"builtin"` is the
    virtual tree above: the same law, other values. torchsde is imported lazily: `core` otherwise needs only torch.
    """

    def __init__(
        self,
        x: Tensor,
        t0: float | Tensor,
        t1: float | Tensor,
        seed: int | Sequence[int] | None = None,
        *,
        backend: str | None = None,
    ):
        t0, t1 = float(t0), float(t1)
        self.sign = 1.0 if t0 <= t1 else -1.0
        t0, t1 = min(t0, t1), max(t0, t1)
        if t1 == t0:  # a single-sigma schedule: keep the tree valid, every query is a zero-length interval
            t1 = t0 + 1.0
        self.batched = isinstance(seed, Sequence)
        if self.batched and len(seed) != x.shape[0]:
            raise ValueError(f"{len(seed)} seeds for a batch of {x.shape[0]}")
        self.backend = backend or ("torchsde" if torchsde_available() else "builtin")
        self.device = x.device
        like = x[0] if self.batched else x
        seeds = [int(s) for s in seed] if self.batched else [seed]
        if self.backend == "torchsde":
            import torchsde

            if seeds == [None]:
                seeds = [int(torch.randint(0, 2**63 - 1, []).item())]
            start, end = self._time(t0), self._time(t1)
            w0 = torch.zeros_like(like)
            self.trees = [torchsde.BrownianTree(start, w0, end, entropy=s) for s in seeds]
        elif self.backend == "builtin":
            self.trees = [BrownianTree(t0, like, t1, entropy=s) for s in seeds]
        else:
            raise ValueError(f"unknown Brownian tree backend {backend!r}: use 'torchsde' or 'builtin'")

    def _time(self, t: float) -> Tensor | float:
        # k-diffusion queries torchsde with float32 sigma tensors; the same float32 values give the same path.
        return torch.tensor(t, dtype=torch.float32, device=self.device) if self.backend == "torchsde" else t

    def __call__(self, ta: float, tb: float) -> Tensor:
        ta, tb = float(ta), float(tb)
        sign = self.sign * (1.0 if ta <= tb else -1.0)
        lo, hi = self._time(min(ta, tb)), self._time(max(ta, tb))
        w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign
        return w if self.batched else w[0]


class BrownianTreeNoiseSampler:
    """A `noise_sampler(sigma, sigma_next)` giving the normalised Brownian increment between two noise levels
    (k-diffusion's `BrownianTreeNoiseSampler`): standard normal noise for each interval, and the noise of an interval
    is consistent with the noise of its parts. `seed` is an int, a list of per-image seeds (A1111: the images'
    seeds, so an image's noise does not depend on the batch), or None for a random one. `transform` maps sigma to
    the tree's time (identity, as A1111's k-diffusion uses)."""

    def __init__(
        self,
        x: Tensor,
        sigma_min: float | Tensor,
        sigma_max: float | Tensor,
        seed: int | Sequence[int] | None = None,
        transform: Any = lambda sigma: sigma,
        *,
        backend: str | None = None,
    ):
        self.transform = transform
        t0 = float(transform(torch.as_tensor(float(sigma_min))))
        t1 = float(transform(torch.as_tensor(float(sigma_max))))
        self.tree = BatchedBrownianTree(x, t0, t1, seed, backend=backend)
        self._like = x

    def __call__(self, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
        t0 = float(self.transform(torch.as_tensor(float(sigma))))
        t1 = float(self.transform(torch.as_tensor(float(sigma_next))))
        if t0 == t1:
            return torch.zeros_like(self._like)
        return self.tree(t0, t1) / math.sqrt(abs(t1 - t0))
