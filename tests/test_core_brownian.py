"""The virtual Brownian tree behind the SDE samplers' noise: one consistent path per seed, with Brownian statistics.

Its values are not torchsde's (see `sdwebui/core/brownian.py`); the law is what is tested here, against torchsde's
own tree where torchsde is installed.
"""

from __future__ import annotations

import math

import pytest
import torch

from sdwebui.core.brownian import BatchedBrownianTree, BrownianTree, BrownianTreeNoiseSampler
from sdwebui.core.noise import ImageRNG


def test_one_path_whatever_the_query_order():
    w0 = torch.zeros(3, 4)
    ts = [0.031, 14.6, 2.5, 0.7, 7.3, 0.0292, 1.0]
    a = BrownianTree(0.0292, w0, 14.6146, entropy=42)
    b = BrownianTree(0.0292, w0, 14.6146, entropy=42)
    forward = [a(t) for t in ts]
    backward = [b(t) for t in reversed(ts)][::-1]
    for x, y in zip(forward, backward):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert torch.equal(a(0.0292), torch.zeros(3, 4))  # W(t0) = 0
    assert not torch.equal(BrownianTree(0.0292, w0, 14.6146, entropy=43)(1.0), a(1.0))


def test_increments_add_up_and_noise_is_normalised():
    x = torch.zeros(2, 4, 8, 8)
    ns = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=[1, 2])
    s, m, e = 9.0, 4.0, 1.5
    whole = ns(s, e) * math.sqrt(s - e)
    parts = ns(s, m) * math.sqrt(s - m) + ns(m, e) * math.sqrt(m - e)
    torch.testing.assert_close(whole, parts, atol=1e-5, rtol=0)
    torch.testing.assert_close(ns(e, s), -ns(s, e))  # the direction flips the sign, as in k-diffusion
    assert torch.equal(ns(2.0, 2.0), torch.zeros_like(x))


def test_per_image_seeds_make_the_noise_batch_independent():
    x = torch.zeros(3, 4, 8, 8)
    batched = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=[5, 6, 7])(3.0, 2.0)
    alone = BrownianTreeNoiseSampler(x[:1], 0.03, 14.6, seed=[6])(3.0, 2.0)
    torch.testing.assert_close(batched[1:2], alone, atol=0, rtol=0)
    assert (batched[0] - batched[1]).abs().max() > 0.1
    with pytest.raises(ValueError, match="seeds"):
        BatchedBrownianTree(x, 0.03, 14.6, seed=[1, 2])
    # ImageRNG hands out the same per-image trees, seeded with the image seeds
    ours = ImageRNG((4, 8, 8), [5, 6, 7]).noise_sampler().brownian(x, torch.tensor([14.6, 3.0, 0.03, 0.0]))
    torch.testing.assert_close(ours(3.0, 2.0), batched)


def _increment_stats(noise_fn, pairs):
    """Mean, variance of normalised increments, and correlation of two disjoint ones."""
    draws = [noise_fn(a, b).flatten() for a, b in pairs]
    first = draws[0]
    return float(first.mean()), float(first.var()), float(torch.corrcoef(torch.stack(draws[:2]))[0, 1])


def test_increments_are_standard_normal_and_independent():
    x = torch.zeros(40000)
    ns = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=3)
    # the noise DPM++ SDE asks for: half steps and whole steps of a schedule, disjoint pieces uncorrelated
    mean, var, corr = _increment_stats(ns, [(14.6, 9.0), (9.0, 5.0)])
    assert abs(mean) < 0.02 and abs(var - 1) < 0.03 and abs(corr) < 0.02
    mean, var, corr = _increment_stats(ns, [(0.2, 0.1), (0.1, 0.05)])
    assert abs(mean) < 0.02 and abs(var - 1) < 0.03 and abs(corr) < 0.02
    # overlapping intervals: corr((W(c)-W(a)), (W(b)-W(a))) = sqrt((b-a)/(c-a))
    a, b, c = 3.0, 2.0, 1.0
    corr = float(torch.corrcoef(torch.stack([ns(a, c), ns(a, b)]))[0, 1])
    assert abs(corr - math.sqrt((a - b) / (a - c))) < 0.02
    # and W(t) itself has variance t - t0
    tree = BrownianTree(0.03, x, 14.6, entropy=9)
    assert abs(float(tree(7.0).var()) / (7.0 - 0.03) - 1) < 0.03


def test_same_law_as_torchsde():
    torchsde = pytest.importorskip("torchsde", reason="torchsde (A1111's Brownian tree) is an optional reference")
    x = torch.zeros(20000)
    theirs = torchsde.BrownianTree(t0=0.03, w0=x, t1=14.6, entropy=1)
    ours = BrownianTree(0.03, x, 14.6, entropy=1)
    for a, b in [(14.6, 10.0), (1.0, 0.5), (0.1, 0.03)]:
        v_theirs = float(theirs(b, a).var()) / (a - b)
        v_ours = float(ours(b, a).var()) / (a - b)
        assert abs(v_theirs - 1) < 0.04 and abs(v_ours - 1) < 0.04
    assert not torch.allclose(theirs(0.5, 1.0), ours(0.5, 1.0))  # different values: reproduced in law only


def test_torchsde_backend_reproduces_k_diffusion_noise_exactly():
    """A1111's SDE noise: k-diffusion's BrownianTreeNoiseSampler over torchsde, one tree per image seed."""
    torchsde = pytest.importorskip("torchsde", reason="torchsde is a dependency of the app; the fallback is tested above")
    x = torch.zeros(2, 4, 8, 8)
    seeds = [1234, 1235]
    sigma_min, sigma_max = torch.tensor(0.0292), torch.tensor(14.6146)
    trees = [torchsde.BrownianTree(sigma_min, torch.zeros_like(x[0]), sigma_max, entropy=s) for s in seeds]

    def reference(sigma, sigma_next):  # k-diffusion: sorted times, sign, normalised increment
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = torch.stack([tree(lo, hi) for tree in trees]) * sign
        return w / (t1 - t0).abs().sqrt()

    ours = BrownianTreeNoiseSampler(x, float(sigma_min), float(sigma_max), seed=seeds)
    assert ours.tree.backend == "torchsde"
    for sigma, sigma_next in [(14.6146, 9.0), (9.0, 5.5), (5.5, 3.0), (3.0, 0.0292)]:
        expected = reference(torch.tensor(sigma), torch.tensor(sigma_next))
        assert torch.equal(ours(torch.tensor(sigma), torch.tensor(sigma_next)), expected)
