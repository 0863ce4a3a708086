"""The shared denoise-from-latent step (img2img / inpainting / hires fix): A1111's strength semantics,
the start sigma, "do exactly the amount of steps", the noise multiplier and the inpainting blend."""

from __future__ import annotations

import pytest
import torch

from sdwebui.core.denoiser import DiscreteSchedule, ModelDenoiser, scaled_linear_alphas_cumprod
from sdwebui.core.samplers import find_sampler
from sdwebui.pipelines.denoise import denoise_latents, denoise_sigmas, img2img_sigmas, img2img_steps


def zero_eps_denoiser():
    """eps = 0 everywhere: D(x, sigma) = x, so every sampler returns its start latent unchanged."""
    return ModelDenoiser(lambda x, t, **kw: torch.zeros_like(x), DiscreteSchedule(scaled_linear_alphas_cumprod()))


@pytest.mark.parametrize("steps,strength,expected", [
    (20, 0.75, (20, 15)), (20, 1.0, (20, 19)), (20, 0.5, (20, 10)), (10, 0.33, (10, 3)), (20, 0.0, (20, 0)),
])
def test_steps_follow_a1111(steps, strength, expected):
    assert img2img_steps(steps, strength) == expected


@pytest.mark.parametrize("steps,strength,expected", [(20, 0.75, (26, 19)), (20, 0.5, (40, 19)), (20, 1.0, (20, 19))])
def test_fix_steps_builds_a_longer_schedule(steps, strength, expected):
    assert img2img_steps(steps, strength, fix_steps=True) == expected


def test_sigmas_are_the_tail_of_the_full_schedule():
    euler = find_sampler("Euler")
    denoiser = zero_eps_denoiser()
    full = euler.sigmas(20, denoiser, "Automatic")
    tail = denoise_sigmas(euler, denoiser, 20, 0.75)
    # A1111: sigmas[steps - t_enc - 1:] -> t_enc + 1 = 16 steps, starting at full[4].
    assert len(tail) - 1 == 16
    assert torch.equal(tail, full[4:])
    assert torch.equal(img2img_sigmas(full, 20, 15), full[4:])
    fixed = denoise_sigmas(euler, denoiser, 20, 0.75, fix_steps=True)
    assert len(fixed) - 1 == 20
    assert torch.equal(fixed, euler.sigmas(26, denoiser, "Automatic")[6:])
    assert torch.equal(denoise_sigmas(euler, denoiser, 20, 0.0), torch.zeros(1))


def test_start_latent_and_noise_multiplier():
    euler = find_sampler("Euler")
    denoiser = zero_eps_denoiser()
    init = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigmas = denoise_sigmas(euler, denoiser, 10, 0.6)
    seen = []
    out = denoise_latents(euler, denoiser, init, noise, sigmas, noise_multiplier=0.5,
                          callback=lambda info: seen.append(info))
    assert len(seen) == len(sigmas) - 1 == 7
    torch.testing.assert_close(seen[0]["x"], init + noise * 0.5 * sigmas[0])
    # D(x) = x: Euler keeps x, so the result is the noised start.
    torch.testing.assert_close(out, init + noise * 0.5 * sigmas[0])


def test_strength_zero_returns_the_init_latent():
    euler = find_sampler("Euler")
    init = torch.randn(2, 4, 8, 8)
    out = denoise_latents(euler, zero_eps_denoiser(), init, torch.randn_like(init), torch.zeros(1))
    assert torch.equal(out, init)


def test_mask_reimposes_the_init_latent_at_every_step():
    euler = find_sampler("Euler")
    denoiser = zero_eps_denoiser()
    init = torch.randn(1, 4, 8, 8)
    noise = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0  # keep the left half
    sigmas = denoise_sigmas(euler, denoiser, 6, 1.0)
    denoised = []
    out = denoise_latents(euler, denoiser, init, noise, sigmas, mask=mask,
                          callback=lambda info: denoised.append(info["denoised"]))
    for step in denoised:
        assert torch.equal(step[..., :4], init[..., :4])
    assert torch.equal(out[..., :4], init[..., :4])
    assert not torch.allclose(out[..., 4:], init[..., 4:])


def test_image_conditioning_reaches_the_model():
    seen = []

    def model_fn(x, t, c_concat=None):
        seen.append(c_concat)
        return torch.zeros_like(x)

    denoiser = ModelDenoiser(model_fn, DiscreteSchedule(scaled_linear_alphas_cumprod()))
    euler = find_sampler("Euler")
    cond = torch.ones(1, 5, 8, 8)
    denoise_latents(euler, denoiser, torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8),
                    denoise_sigmas(euler, denoiser, 4, 0.5), image_conditioning=cond)
    assert seen and all(c is cond for c in seen)
