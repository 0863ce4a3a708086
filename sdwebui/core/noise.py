"""Seeded noise with A1111's seed semantics (`modules/rng.py`, `modules/processing.py`).

The rules users rely on (an A1111 seed reproduces an A1111 image):

- Every image has its own generator seeded with its seed; the image's initial latent noise is that generator's
  first draw. Image i is therefore the same whatever the batch size or its position in the batch.
- Batch seeds: `seed + i` for image i, unless a variation (subseed) strength is set, in which case every image
  shares `seed` and the subseeds count up instead (`batch_seeds`).
- Variation seed ("subseed"): the noise is `slerp(strength, noise(seed), noise(subseed))`, A1111's slerp (which
  normalises along dim 1, i.e. per channel/column of a C x H x W latent). Strength 0: no variation; 1: the
  subseed's noise.
- "Resize seed from" W x H: noise is generated at the old latent size and pasted, centred, into noise of the new
  size drawn from the same seed (cropped when the old size is larger), so an image keeps its composition.
- Stochastic samplers (Euler a, ...) draw their fresh noise from the same per-image generators, continuing after
  the initial noise (`ImageRNG.next`): batch-size independent too.
- SDE samplers (DPM++ SDE, DPM++ 2M SDE, 3M SDE) draw from a Brownian tree per image seeded with the image's seed
  (`ImageNoiseSampler.brownian`, `sdwebui.core.brownian`), as A1111 does with torchsde; the values differ from
  torchsde's, the law is the same.
- ENSD (eta noise seed delta, A1111 setting `eta_noise_seed_delta`, default 0): when non-zero, after the initial
  noise the per-image generators are re-seeded with `seed + ENSD`, so ancestral noise comes from `seed + ENSD`
  while the initial noise still comes from `seed` (A1111 1.6+ `ImageRNG.first`). A1111 records "ENSD" in the
  infotext only for samplers that use it (`SamplerSpec.uses_ensd`) with eta != 0.

Random sources (A1111 setting "Random number generator source", `randn_source`):

- "gpu" (A1111's default "GPU"): `torch.randn` with a generator on the sampling device. On CUDA that is CUDA's
  Philox stream; on a machine without CUDA (CPU, and Apple MPS, which A1111 also routes to the CPU) it is the
  CPU generator, so "gpu" and "cpu" give identical noise there, and a CPU-only run does NOT reproduce an image
  made with "GPU" on an NVIDIA card. Use "nv" for that.
- "cpu": the CPU generator on every device (what A1111's "CPU" does: portable between machines running torch).
- "nv": `rng_philox.PhiloxGenerator`, CUDA's randn computed on the CPU: reproduces NVIDIA "GPU" seeds anywhere.

All noise is float32, created on the generator's device and moved to `device`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sdwebui.core.brownian import BrownianTreeNoiseSampler
from sdwebui.core.rng_philox import PhiloxGenerator

__all__ = [
    "RNG_SOURCES",
    "MAX_SEED",
    "random_seed",
    "fix_seed",
    "batch_seeds",
    "slerp",
    "create_generator",
    "image_noise",
    "batch_noise",
    "ImageRNG",
    "ImageNoiseSampler",
]

RNG_SOURCES = ("gpu", "cpu", "nv")
MAX_SEED = 4294967294
"""`random_seed()` draws from [0, MAX_SEED) like A1111's `random.randrange(4294967294)`."""


def random_seed(rng: random.Random | None = None) -> int:
    """A fresh seed for seed -1, as A1111's `get_fixed_seed`: `int(random.randrange(4294967294))`."""
    return int((rng or random).randrange(MAX_SEED))


def fix_seed(seed: int | float | str | None, rng: random.Random | None = None) -> int:
    """A1111's `get_fixed_seed`: None, "", -1 (or any unparsable string) -> a random seed; otherwise int(seed)."""
    if seed is None or seed == "":
        return random_seed(rng)
    if isinstance(seed, str):
        try:
            seed = int(float(seed.strip()))
        except ValueError:
            return random_seed(rng)
    seed = int(seed)
    return random_seed(rng) if seed == -1 else seed


def batch_seeds(
    seed: int, n: int, *, subseed: int | None = None, subseed_strength: float = 0.0
) -> tuple[list[int], list[int]]:
    """Per-image (seeds, subseeds) for n images, A1111's `all_seeds` / `all_subseeds` rule: seeds count up from
    `seed` unless a variation strength is set, in which case all images share `seed` and the subseeds count up."""
    seeds = [int(seed) + (i if subseed_strength == 0 else 0) for i in range(n)]
    subseeds = [int(subseed if subseed is not None else seed) + i for i in range(n)]
    return seeds, subseeds


def slerp(val: float, low: Tensor, high: Tensor) -> Tensor:
    """A1111's spherical interpolation (`modules/rng.py`), kept exactly for seed compatibility: vectors are
    normalised along dim 1; when they are nearly parallel it falls back to the (quirky, argument-swapped) linear
    `low * val + high * (1 - val)` that A1111 uses."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _source(rng: str) -> str:
    source = str(rng).strip().lower()
    if source not in RNG_SOURCES:
        raise ValueError(f"unknown random number source {rng!r}; valid: {', '.join(RNG_SOURCES)} (any case)")
    return source


def _generator_device(source: str, device: torch.device) -> torch.device:
    # "gpu" draws on the sampling device only when that is CUDA (A1111 routes MPS and CPU to the CPU generator).
    if source == "gpu" and device.type == "cuda":
        return device
    return torch.device("cpu")


Generator = torch.Generator | PhiloxGenerator


def create_generator(seed: int, *, device: torch.device | str = "cpu", rng: str = "gpu") -> Generator:
    """A1111's `create_generator`: a generator seeded with `seed` for the given source and sampling device."""
    source = _source(rng)
    if source == "nv":
        return PhiloxGenerator(int(seed))
    return torch.Generator(_generator_device(source, torch.device(device))).manual_seed(int(seed))


def _draw(generator: Generator, shape: Sequence[int], device: torch.device) -> Tensor:
    if isinstance(generator, PhiloxGenerator):
        return torch.from_numpy(generator.randn(shape)).to(device)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32).to(device)


def _resize_shape(shape: Sequence[int], seed_resize_from: Sequence[int] | None) -> tuple[int, ...]:
    if seed_resize_from is None:
        return tuple(shape)
    h, w = (int(v) for v in seed_resize_from)
    if h <= 0 or w <= 0:  # A1111: -1 / 0 mean "off"
        return tuple(shape)
    return (*tuple(shape)[:-2], h, w)


def _first_noise(
    seed: int,
    generator: Generator,
    shape: tuple[int, ...],
    device: torch.device,
    source: str,
    subseed: int | None,
    subseed_strength: float,
    seed_resize_from: Sequence[int] | None,
) -> Tensor:
    """One image's initial noise (A1111 `ImageRNG.first`, per image). Draws exactly one `shape` tensor from
    `generator`; the subseed and resize-source noises come from fresh generators."""
    noise_shape = _resize_shape(shape, seed_resize_from)
    subnoise = None
    if subseed is not None and subseed_strength != 0:
        subnoise = _draw(create_generator(subseed, device=device, rng=source), noise_shape, device)
    if noise_shape != shape:
        noise = _draw(create_generator(seed, device=device, rng=source), noise_shape, device)
    else:
        noise = _draw(generator, shape, device)
    if subnoise is not None:
        noise = slerp(subseed_strength, noise, subnoise)
    if noise_shape != shape:
        x = _draw(generator, shape, device)
        # Paste the old-size noise into the centre of the new-size noise (A1111's arithmetic, including the crop
        # when the old size is larger).
        dx = (shape[-1] - noise_shape[-1]) // 2
        dy = (shape[-2] - noise_shape[-2]) // 2
        w = noise_shape[-1] if dx >= 0 else noise_shape[-1] + 2 * dx
        h = noise_shape[-2] if dy >= 0 else noise_shape[-2] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        sx, sy = max(-dx, 0), max(-dy, 0)
        x[..., ty : ty + h, tx : tx + w] = noise[..., sy : sy + h, sx : sx + w]
        noise = x
    return noise


class ImageRNG:
    """Per-image generators for a batch (A1111's `rng.ImageRNG`).

    `first()` (or the first `next()`) is the batch's initial noise [B, *shape]; every later `next()` is fresh noise
    for the samplers, drawn from the same per-image generators (re-seeded with seed + ENSD after the first draw
    when `eta_noise_seed_delta` is non-zero). `noise_sampler()` adapts `next` to the samplers' `noise_sampler`.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        *,
        device: torch.device | str = "cpu",
        rng: str = "gpu",
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from: Sequence[int] | None = None,
        eta_noise_seed_delta: int = 0,
    ):
        if not seeds:
            raise ValueError("at least one seed is needed")
        self.shape = tuple(int(s) for s in shape)
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.source = _source(rng)
        self.subseeds = None if subseeds is None else [int(s) for s in subseeds]
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from = None if seed_resize_from is None else tuple(int(v) for v in seed_resize_from)
        self.eta_noise_seed_delta = int(eta_noise_seed_delta or 0)
        self.generators = [create_generator(s, device=self.device, rng=self.source) for s in self.seeds]
        self.is_first = True

    def first(self) -> Tensor:
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subseed = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0  # A1111 pads missing subseeds with 0
            xs.append(
                _first_noise(
                    seed, generator, self.shape, self.device, self.source,
                    subseed, self.subseed_strength, self.seed_resize_from,
                )
            )
        if self.eta_noise_seed_delta:
            self.generators = [
                create_generator(s + self.eta_noise_seed_delta, device=self.device, rng=self.source)
                for s in self.seeds
            ]
        self.is_first = False
        return torch.stack(xs)

    def next(self) -> Tensor:
        if self.is_first:
            return self.first()
        return torch.stack([_draw(g, self.shape, self.device) for g in self.generators])

    def noise_sampler(self) -> ImageNoiseSampler:
        """A sampler `noise_sampler(sigma, sigma_next)` drawing `next()`; call `first()` before sampling.

        It also knows the images' seeds: `.brownian(x, sigmas)` is the Brownian-tree noise sampler seeded per image
        that A1111 gives its SDE samplers; `SamplerSpec.sample` switches to it for samplers with `brownian_noise`."""
        return ImageNoiseSampler(self)


class ImageNoiseSampler:
    """`ImageRNG.noise_sampler()`: fresh per-image noise for ancestral steps, and the per-image Brownian tree."""

    def __init__(self, rng: ImageRNG):
        self.rng = rng

    @property
    def seeds(self) -> list[int]:
        return list(self.rng.seeds)

    def __call__(self, sigma: Any = None, sigma_next: Any = None) -> Tensor:
        return self.rng.next()

    def brownian(self, x: Tensor, sigmas: Tensor) -> BrownianTreeNoiseSampler:
        """A1111's `create_noise_sampler`: one Brownian tree per image, seeded with the image's seed (not seed +
        ENSD), over [smallest non-zero sigma, largest sigma]; torchsde's tree when installed, as A1111 (`brownian.py`)."""
        positive = sigmas[sigmas > 0]
        sigma_min = float(positive.min()) if positive.numel() else float(sigmas.max())
        return BrownianTreeNoiseSampler(x, sigma_min, float(sigmas.max()), seed=self.seeds)


def image_noise(
    seed: int,
    shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    rng: str = "gpu",
    subseed: int | None = None,
    subseed_strength: float = 0.0,
    seed_resize_from: Sequence[int] | None = None,
) -> Tensor:
    """The initial noise of one image, shape `shape` (C, H, W of the latent), float32 on `device`.

    `seed_resize_from` is the latent (height, width) the seed was first used at (A1111's "Resize seed from" width
    and height divided by the latent factor 8); None or a non-positive value turns it off.
    """
    source = _source(rng)
    device = torch.device(device)
    generator = create_generator(seed, device=device, rng=source)
    return _first_noise(
        int(seed), generator, tuple(int(s) for s in shape), device, source,
        None if subseed is None else int(subseed), float(subseed_strength), seed_resize_from,
    )


def batch_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    rng: str = "gpu",
    subseeds: Sequence[int] | None = None,
    subseed_strength: float = 0.0,
    seed_resize_from: Sequence[int] | None = None,
) -> Tensor:
    """Initial noise for a batch [len(seeds), *shape]: `image_noise` per image, stacked (so image i does not depend
    on the batch). Use `ImageRNG` instead when a stochastic sampler needs the continuing per-image streams."""
    return ImageRNG(
        shape, seeds, device=device, rng=rng, subseeds=subseeds,
        subseed_strength=subseed_strength, seed_resize_from=seed_resize_from,
    ).first()

