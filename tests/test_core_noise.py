"""Seeded noise: A1111's seed semantics (per-image generators, variation seeds, seed resize, ENSD, NV RNG)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sdwebui.core import noise
from sdwebui.core.noise import ImageRNG, batch_noise, batch_seeds, fix_seed, image_noise, random_seed, slerp
from sdwebui.core.rng_philox import PhiloxGenerator
from sdwebui.core.samplers import find_sampler
from sdwebui.core.schedules import karras

SHAPE = (4, 8, 8)


def _torch_first(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_regression_table_cpu_seed_1234():
    # torch's CPU generator for seed 1234, shape (4, 8, 8): if these change, every A1111 "CPU" seed changes.
    x = image_noise(1234, SHAPE, rng="cpu")
    expected_row = torch.tensor([-0.11171857, -0.49659011, 0.16307370, -0.88168776])
    torch.testing.assert_close(x[0, 0, :4], expected_row, atol=1e-7, rtol=0)
    torch.testing.assert_close(x[3, 7, 4:], torch.tensor([-1.05449700, -0.19732134, 0.85221046, -0.40655673]), atol=1e-7, rtol=0)
    assert float(x.sum()) == pytest.approx(-14.89551926, abs=1e-4)
    # small tensors take torch's scalar path (different numbers): recorded too
    torch.testing.assert_close(image_noise(1234, (2,), rng="cpu"), torch.tensor([0.04613046, 0.40240282]), atol=1e-7, rtol=0)


def test_gpu_source_on_a_cpu_device_is_the_cpu_generator():
    torch.testing.assert_close(image_noise(99, SHAPE, rng="GPU", device="cpu"), image_noise(99, SHAPE, rng="cpu"))
    assert noise._generator_device("gpu", torch.device("cpu")).type == "cpu"
    assert noise._generator_device("gpu", torch.device("mps")).type == "cpu"
    assert noise._generator_device("gpu", torch.device("cuda", 0)).type == "cuda"
    assert noise._generator_device("cpu", torch.device("cuda", 0)).type == "cpu"
    with pytest.raises(ValueError, match="gpu, cpu, nv"):
        image_noise(1, SHAPE, rng="tpu")


@pytest.mark.parametrize("rng", ["cpu", "nv"])
def test_image_i_is_independent_of_the_batch(rng):
    single = image_noise(1001, SHAPE, rng=rng)
    for seeds, index in (([1001], 0), ([1000, 1001, 1002], 1), ([5, 6, 7, 1001], 3)):
        torch.testing.assert_close(batch_noise(seeds, SHAPE, rng=rng)[index], single, atol=0, rtol=0)
    if rng == "cpu":
        torch.testing.assert_close(single, _torch_first(1001))


def test_sampler_noise_streams_are_per_image():
    # The ancestral noise of image i continues image i's own generator, whatever else is in the batch.
    solo = ImageRNG(SHAPE, [42], rng="cpu")
    batch = ImageRNG(SHAPE, [7, 42, 8], rng="cpu")
    solo_draws = [solo.next() for _ in range(4)]
    batch_draws = [batch.next() for _ in range(4)]
    for a, b in zip(solo_draws, batch_draws):
        torch.testing.assert_close(a[0], b[1], atol=0, rtol=0)
    gen = torch.Generator().manual_seed(42)
    for draw in solo_draws:
        torch.testing.assert_close(draw[0], torch.randn(SHAPE, generator=gen), atol=0, rtol=0)


def test_euler_a_is_batch_independent_end_to_end():
    def denoiser(x, sigma, **kw):
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)

    sigmas = karras(8, 0.03, 14.6)

    def run(seeds):
        rng = ImageRNG(SHAPE, seeds, rng="cpu", eta_noise_seed_delta=31337)
        x = rng.first() * sigmas[0]
        return find_sampler("Euler a").sample(denoiser, x, sigmas, noise_sampler=rng.noise_sampler())

    torch.testing.assert_close(run([3, 4])[1], run([4])[0], atol=0, rtol=0)
    assert not torch.equal(run([3])[0], run([4])[0])


def test_eta_noise_seed_delta():
    plain = ImageRNG(SHAPE, [500], rng="cpu")
    ensd = ImageRNG(SHAPE, [500], rng="cpu", eta_noise_seed_delta=31337)
    # the initial noise is the seed's, with or without ENSD
    torch.testing.assert_close(ensd.next(), plain.next(), atol=0, rtol=0)
    # later draws: seed's generator continued, or a fresh generator seeded with seed + ENSD
    gen = torch.Generator().manual_seed(500)
    torch.randn(SHAPE, generator=gen)
    torch.testing.assert_close(plain.next()[0], torch.randn(SHAPE, generator=gen), atol=0, rtol=0)
    torch.testing.assert_close(ensd.next()[0], _torch_first(500 + 31337), atol=0, rtol=0)


def test_variation_seed_strength():
    base = image_noise(10, SHAPE, rng="cpu")
    sub = image_noise(20, SHAPE, rng="cpu")
    torch.testing.assert_close(image_noise(10, SHAPE, rng="cpu", subseed=20, subseed_strength=0.0), base, atol=0, rtol=0)
    torch.testing.assert_close(image_noise(10, SHAPE, rng="cpu", subseed=20, subseed_strength=1.0), sub, atol=1e-5, rtol=0)
    mid = image_noise(10, SHAPE, rng="cpu", subseed=20, subseed_strength=0.3)
    torch.testing.assert_close(mid, slerp(0.3, base, sub))
    assert (mid - base).abs().max() > 0.05 and (mid - sub).abs().max() > 0.05
    # slerp keeps the scale of the noise (a plain lerp would shrink it)
    assert float(mid.std()) == pytest.approx(float(base.std()), rel=0.15)
    # A1111 normalises along dim 1 (H of a C x H x W latent): each (c, :, w) column keeps its norm blend
    norms = mid.norm(dim=1)
    assert torch.all(norms > 0.5 * torch.minimum(base.norm(dim=1), sub.norm(dim=1)))


def test_variation_seed_in_a_batch_uses_per_image_subseeds():
    seeds, subseeds = batch_seeds(100, 3, subseed=200, subseed_strength=0.5)
    assert seeds == [100, 100, 100] and subseeds == [200, 201, 202]
    batch = batch_noise(seeds, SHAPE, rng="cpu", subseeds=subseeds, subseed_strength=0.5)
    torch.testing.assert_close(batch[2], image_noise(100, SHAPE, rng="cpu", subseed=202, subseed_strength=0.5))
    assert batch_seeds(100, 3) == ([100, 101, 102], [100, 101, 102])


def test_seed_resize_pastes_the_original_noise_in_the_centre():
    small = image_noise(77, (4, 6, 6), rng="cpu")
    full = image_noise(77, (4, 8, 8), rng="cpu")
    resized = image_noise(77, (4, 8, 8), rng="cpu", seed_resize_from=(6, 6))
    torch.testing.assert_close(resized[:, 1:7, 1:7], small, atol=0, rtol=0)
    border = torch.ones(4, 8, 8, dtype=torch.bool)
    border[:, 1:7, 1:7] = False
    torch.testing.assert_close(resized[border], full[border], atol=0, rtol=0)
    # from a larger size: the centre crop of the old noise
    large = image_noise(77, (4, 12, 10), rng="cpu")
    torch.testing.assert_close(image_noise(77, (4, 8, 8), rng="cpu", seed_resize_from=(12, 10)), large[:, 2:10, 1:9])
    # non-rectangular mix: taller and narrower than the target
    mixed = image_noise(77, (4, 8, 8), rng="cpu", seed_resize_from=(10, 4))
    torch.testing.assert_close(mixed[:, :, 2:6], image_noise(77, (4, 10, 4), rng="cpu")[:, 1:9, :])
    # off (A1111's -1 / 0) and same size are no-ops
    torch.testing.assert_close(image_noise(77, (4, 8, 8), rng="cpu", seed_resize_from=(-1, -1)), full)
    torch.testing.assert_close(image_noise(77, (4, 8, 8), rng="cpu", seed_resize_from=(8, 8)), full)


def test_seed_resize_consumes_one_draw_like_a1111():
    rng = ImageRNG(SHAPE, [5], rng="cpu", seed_resize_from=(6, 6))
    rng.first()
    gen = torch.Generator().manual_seed(5)
    torch.randn(SHAPE, generator=gen)
    torch.testing.assert_close(rng.next()[0], torch.randn(SHAPE, generator=gen), atol=0, rtol=0)


def test_slerp_quirks_are_kept():
    a = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1))
    # near-parallel inputs fall back to A1111's (argument-swapped) lerp
    torch.testing.assert_close(slerp(0.25, a, a * 1.0001), a * 0.25 + a * 1.0001 * 0.75)


def test_nv_rng_matches_a1111_reference_values():
    # A1111 modules/rng_philox.py docstring: Generator(seed=0).randn((3, 4)) == torch.randn on CUDA, seed 0
    expected = np.array(
        [
            [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
            [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
            [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
        ]
    )
    g = PhiloxGenerator(0)
    got = g.randn((3, 4))
    assert got.dtype == np.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    # each call advances the offset by one, whatever its size
    assert g.offset == 1
    second = g.randn((3, 4))
    assert not np.allclose(second, got)
    g2 = PhiloxGenerator(0)
    g2.randn((7,))
    np.testing.assert_array_equal(g2.randn((3, 4)), second)
    # numbers are a prefix-stable function of their index within one call
    np.testing.assert_array_equal(PhiloxGenerator(0).randn((20,))[:12], got.reshape(-1))


def test_nv_rng_statistics_and_source():
    x = PhiloxGenerator(123456789012).randn((200_000,))  # a seed above 2**32 exercises the key's high word
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    assert not np.array_equal(PhiloxGenerator(1).randn((8,)), PhiloxGenerator(2**32 + 1).randn((8,)))
    via_source = image_noise(0, (3, 4), rng="NV")
    np.testing.assert_array_equal(via_source.numpy(), PhiloxGenerator(0).randn((3, 4)))
    ensd = ImageRNG((3, 4), [0], rng="nv", eta_noise_seed_delta=5)
    ensd.next()
    np.testing.assert_array_equal(ensd.next()[0].numpy(), PhiloxGenerator(5).randn((3, 4)))
    with pytest.raises(ValueError):
        PhiloxGenerator(-1)


def test_seeds():
    r = random.Random(0)
    seeds = [random_seed(r) for _ in range(1000)]
    assert all(0 <= s < 4294967294 for s in seeds) and len(set(seeds)) > 990
    assert fix_seed(12) == 12 and fix_seed("34") == 34 and fix_seed(5.0) == 5
    assert 0 <= fix_seed(-1) < 4294967294
    assert 0 <= fix_seed(None) < 4294967294 and 0 <= fix_seed("") < 4294967294
    assert fix_seed(-1, random.Random(3)) == random.Random(3).randrange(4294967294)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: compares with CUDA's own torch.randn")
def test_gpu_and_nv_sources_on_cuda():
    shape = (4, 64, 64)
    for seed in (0, 1234, 4294967293):
        cuda = torch.randn(shape, generator=torch.Generator("cuda").manual_seed(seed), device="cuda")
        torch.testing.assert_close(image_noise(seed, shape, rng="gpu", device="cuda"), cuda, atol=0, rtol=0)
        nv = image_noise(seed, shape, rng="nv", device="cpu")
        torch.testing.assert_close(nv, cuda.cpu(), atol=1e-5, rtol=0)
    cpu_on_cuda = image_noise(7, shape, rng="cpu", device="cuda")
    assert cpu_on_cuda.device.type == "cuda"
    torch.testing.assert_close(cpu_on_cuda.cpu(), image_noise(7, shape, rng="cpu"), atol=0, rtol=0)
