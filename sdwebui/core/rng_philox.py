"""CUDA's `torch.randn` reproduced on any device: A1111's "NV" random number source.

torch on CUDA draws normal numbers with cuRAND's Philox-4x32-10 counter-based generator and a Box-Muller
transform; A1111 (`modules/rng_philox.py`) re-implements that on the CPU so that seeds give the same images on
NVIDIA cards, AMD, Apple and CPUs. This module implements the same algorithm (Salmon et al. 2011, "Parallel
random numbers: as easy as 1, 2, 3") with numpy's uint64 arithmetic:

- number i of the `offset`-th call uses counter (offset, 0, i, 0) and key (seed low 32 bits, seed high 32 bits);
- 10 Philox rounds with the key bumped by the Weyl constants between rounds;
- of the four 32-bit outputs the first two give one normal number by Box-Muller,
  `sqrt(-2 ln u) * sin(2 pi v)` with u, v mapped into (0, 1) the way cuRAND does (float32 constants);
- each `randn` call advances `offset` by one, whatever its size (A1111's behaviour).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PhiloxGenerator", "philox4x32"]

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)

# cuRAND's scaling constants, rounded to float32 as in its (and A1111's) code: 2^-32 and 2^-32 * 2*pi.
_TWO_POW32_INV = float(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox-4x32 on a (4, N) counter and a (2, N) key (uint32 values held in uint64 arrays); returns (4, N)."""
    c0, c1, c2, c3 = (counter[i].astype(np.uint64) for i in range(4))
    k0, k1 = key[0].astype(np.uint64), key[1].astype(np.uint64)
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        p0 = c0 * _M0  # 32 x 32 -> 64 bit products; both factors < 2^32 so uint64 does not overflow
        p1 = c2 * _M1
        c0, c1, c2, c3 = (
            (p1 >> _SHIFT32) ^ c1 ^ k0,
            p1 & _MASK32,
            (p0 >> _SHIFT32) ^ c3 ^ k1,
            p0 & _MASK32,
        )
    return np.stack([c0, c1, c2, c3])


class PhiloxGenerator:
    """A seeded stream of CUDA-compatible normal numbers: `PhiloxGenerator(seed).randn(shape)` equals
    `torch.randn(shape, generator=torch.Generator("cuda").manual_seed(seed), device="cuda")` (A1111 "NV")."""

    def __init__(self, seed: int):
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.seed = seed
        self.offset = 0

    def __repr__(self) -> str:
        return f"PhiloxGenerator(seed={self.seed}, offset={self.offset})"

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        """Standard normal float32 numbers of `shape`; advances the offset by one."""
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n >= 2**32:
            raise ValueError("at most 2**32 numbers per call")
        counter = np.zeros((4, n), dtype=np.uint64)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint64)
        self.offset += 1
        key = np.empty((2, n), dtype=np.uint64)
        key[0] = self.seed & 0xFFFFFFFF
        key[1] = self.seed >> 32
        g = philox4x32(counter, key)
        return _box_muller(g[0], g[1]).reshape(shape)


def _box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The first of the two Box-Muller outputs, computed in float64 and rounded to float32 (as A1111's numpy code
    promotes it), with u, v in (0, 1) offset by half a step so that log(0) never happens."""
    u = x.astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = y.astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)
