"""Sigma schedules: the contract (n+1 float32 values, descending, ending in 0), reference values, the registry."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from sdwebui.core import schedules
from sdwebui.core.denoiser import DiscreteSchedule, ModelDenoiser, scaled_linear_alphas_cumprod
from sdwebui.core.schedules import SCHEDULES, build_sigmas, find_schedule

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.fixture(scope="module")
def ds():
    return DiscreteSchedule(scaled_linear_alphas_cumprod())


def test_sd_sigma_range(ds):
    # the values A1111 shows for SD1/SD2/SDXL (m_sigma_min / m_sigma_max)
    assert ds.sigma_min == pytest.approx(0.029168, abs=1e-5)
    assert ds.sigma_max == pytest.approx(14.614642, abs=1e-4)
    # LDM's float64 schedule and diffusers' float32 one agree to float32 precision
    ref = EulerDiscreteScheduler(**SD_SCHEDULER).alphas_cumprod
    torch.testing.assert_close(ds.alphas_cumprod, ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("label", [s for s in SCHEDULES if s != "Automatic"])
@pytest.mark.parametrize("steps", [1, 2, 7, 20, 33])
def test_schedule_contract(ds, label, steps):
    sigmas = build_sigmas(label, steps, ds)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert sigmas[-1] == 0
    assert torch.all(sigmas[:-1] > 0)
    assert torch.all(sigmas[1:] < sigmas[:-1]), sigmas
    assert float(sigmas[0]) <= ds.sigma_max * 1.001


@pytest.mark.parametrize("label", ["Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Normal"])
def test_schedules_span_the_model_range(ds, label):
    sigmas = build_sigmas(label, 20, ds)
    assert float(sigmas[0]) == pytest.approx(ds.sigma_max, rel=1e-4)
    if label != "SGM Uniform":  # SGM Uniform leaves the last timestep out by design
        assert float(sigmas[-2]) == pytest.approx(ds.sigma_min, rel=1e-3)


def test_karras_matches_diffusers(ds):
    for steps in (5, 20, 50):
        ref = DPMSolverMultistepScheduler(**SD_SCHEDULER, use_karras_sigmas=True, final_sigmas_type="zero")
        ref.set_timesteps(steps)
        torch.testing.assert_close(schedules.karras(steps, ds.sigma_min, ds.sigma_max), ref.sigmas, rtol=1e-5, atol=0)
        ref = EulerDiscreteScheduler(**SD_SCHEDULER, use_karras_sigmas=True)
        ref.set_timesteps(steps)
        torch.testing.assert_close(build_sigmas("Karras", steps, ds), ref.sigmas, rtol=1e-5, atol=0)


def test_karras_formula_and_rho():
    sigmas = schedules.karras(3, 0.1, 10.0, rho=7.0)
    mid = ((10.0 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7
    torch.testing.assert_close(sigmas, torch.tensor([10.0, mid, 0.1, 0.0]))
    # rho = 1 is linear in sigma
    torch.testing.assert_close(schedules.karras(3, 1.0, 3.0, rho=1.0), torch.tensor([3.0, 2.0, 1.0, 0.0]))


def test_exponential_matches_diffusers(ds):
    ref = EulerDiscreteScheduler(**SD_SCHEDULER, use_exponential_sigmas=True)
    ref.set_timesteps(12)
    torch.testing.assert_close(build_sigmas("Exponential", 12, ds), ref.sigmas, rtol=1e-5, atol=0)
    # evenly spaced in log sigma; polyexponential with rho 1 is the same schedule
    logs = build_sigmas("Exponential", 12, ds)[:-1].log()
    torch.testing.assert_close(logs.diff(), torch.full((11,), float(logs.diff()[0])), atol=1e-5, rtol=0)
    torch.testing.assert_close(build_sigmas("Polyexponential", 12, ds), build_sigmas("Exponential", 12, ds))


def test_uniform_is_the_model_schedule(ds):
    # t = linspace(999, 0, n): for n = 10 these are the integer timesteps 999, 888, ..., 0, so the sigmas are the
    # model's own, which diffusers' "linspace" spacing also picks.
    ref = EulerDiscreteScheduler(**SD_SCHEDULER, timestep_spacing="linspace")
    ref.set_timesteps(10)
    torch.testing.assert_close(schedules.uniform(10, ds), ref.sigmas, rtol=2e-5, atol=0)
    torch.testing.assert_close(schedules.uniform(10, ds)[:-1], ds.sigmas[torch.arange(999, -1, -111)], rtol=1e-6, atol=0)
    assert schedules.automatic is schedules.uniform


def test_ddim_schedule_is_ddims_leading_timesteps(ds):
    for steps in (10, 20, 30, 50):
        ref = DDIMScheduler(**SD_SCHEDULER, timestep_spacing="leading", steps_offset=1)
        ref.set_timesteps(steps)
        assert schedules.ddim_timesteps(steps).tolist() == ref.timesteps.tolist()
        torch.testing.assert_close(schedules.ddim(steps, ds)[:-1], ds.sigmas[ref.timesteps])
    assert schedules.ddim_timesteps(20)[:3].tolist() == [951, 901, 851]


def test_sgm_uniform_simple_normal_reference_values(ds):
    # SGM Uniform: t = linspace(999, 0, n + 1)[:-1]  (4 steps: 999, 749.25, 499.5, 249.75)
    expected = ds.t_to_sigma(torch.tensor([999.0, 749.25, 499.5, 249.75]))
    torch.testing.assert_close(schedules.sgm_uniform(4, ds)[:-1], expected, rtol=1e-4, atol=0)
    # Simple: every 1000/n-th model sigma from the top (4 steps: indices 999, 749, 499, 249)
    torch.testing.assert_close(schedules.simple(4, ds)[:-1], ds.sigmas[[999, 749, 499, 249]])
    # Normal: t = linspace(999, 0, n)
    torch.testing.assert_close(schedules.normal(4, ds)[:-1], ds.t_to_sigma(torch.tensor([999.0, 666.0, 333.0, 0.0])), rtol=1e-4, atol=0)


def test_kl_optimal_is_evenly_spaced_in_arctan():
    sigmas = schedules.kl_optimal(5, 0.03, 14.6)
    angles = torch.atan(sigmas[:-1].double())
    torch.testing.assert_close(angles.diff(), torch.full((4,), float(angles.diff()[0]), dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(sigmas[0]) == pytest.approx(14.6, rel=1e-6) and float(sigmas[-2]) == pytest.approx(0.03, rel=1e-5)


def test_align_your_steps_tables():
    sd15 = schedules.align_your_steps(11)
    torch.testing.assert_close(sd15[:-1], torch.tensor(schedules.AYS_SIGMAS["sd15"]))
    sdxl = schedules.align_your_steps(11, model_family="sdxl")
    torch.testing.assert_close(sdxl[:-1], torch.tensor(schedules.AYS_SIGMAS["sdxl"]))
    s20 = schedules.align_your_steps(20)
    assert float(s20[0]) == pytest.approx(14.615) and float(s20[-2]) == pytest.approx(0.029)
    assert build_sigmas("Align Your Steps", 11, None, model_family="sdxl-refiner")[1] == pytest.approx(6.315)


def test_beta_quantiles():
    # Beta(1, 1) is uniform, Beta(2, 1) has CDF x^2, symmetric Beta(a, a) has median 1/2
    for q in (0.1, 0.37, 0.5, 0.9):
        assert schedules._beta_ppf(q, 1.0, 1.0) == pytest.approx(q, abs=1e-12)
        assert schedules._beta_ppf(q, 2.0, 1.0) == pytest.approx(math.sqrt(q), abs=1e-12)
    assert schedules._beta_ppf(0.5, 0.6, 0.6) == pytest.approx(0.5, abs=1e-12)
    # against mpmath's regularised incomplete beta (an independent implementation)
    mpmath = pytest.importorskip("mpmath")
    for q, a, b in ((0.05, 0.6, 0.6), (0.25, 0.6, 0.6), (0.93, 0.6, 0.6), (0.3, 2.5, 0.7)):
        x = schedules._beta_ppf(q, a, b)
        assert float(mpmath.betainc(a, b, 0, x, regularized=True)) == pytest.approx(q, abs=1e-12)
    sigmas = schedules.beta(5, 0.03, 14.6)
    assert float(sigmas[0]) == pytest.approx(14.6) and float(sigmas[-2]) == pytest.approx(0.03)
    # Beta(0.6, 0.6) puts more steps at both ends than in the middle
    gaps = sigmas[:-1].diff().abs()
    assert gaps[1] > gaps[0] and gaps[2] > gaps[3]


def test_build_sigmas_options(ds):
    den = ModelDenoiser(lambda x, t: x, ds)
    # a denoiser, a CFG wrapper or the schedule itself all work
    torch.testing.assert_close(build_sigmas("karras", 10, den), build_sigmas("Karras", 10, ds))
    # Automatic -> the given default
    torch.testing.assert_close(build_sigmas("Automatic", 10, ds), schedules.uniform(10, ds))
    torch.testing.assert_close(build_sigmas("Automatic", 10, ds, automatic="Karras"), build_sigmas("Karras", 10, ds))
    # overrides; 0 / None mean the model's own (A1111)
    torch.testing.assert_close(build_sigmas("Karras", 10, ds, sigma_min=0.1, sigma_max=10.0, rho=3.0), schedules.karras(10, 0.1, 10.0, 3.0))
    torch.testing.assert_close(build_sigmas("Karras", 10, ds, sigma_min=0, rho=0), build_sigmas("Karras", 10, ds))
    torch.testing.assert_close(build_sigmas("Exponential", 10, None, sigma_min=0.1, sigma_max=10.0), schedules.exponential(10, 0.1, 10.0))
    # discard the penultimate sigma: n + 1 steps, the next-to-last dropped
    full = build_sigmas("Karras", 11, ds)
    torch.testing.assert_close(build_sigmas("Karras", 10, ds, discard_penultimate_sigma=True), torch.cat([full[:-2], full[-1:]]))


def test_build_sigmas_errors(ds):
    with pytest.raises(KeyError, match="Karras"):
        build_sigmas("Zigzag", 10, ds)
    with pytest.raises(ValueError, match="needs"):
        build_sigmas("Uniform", 10, None)
    with pytest.raises(ValueError, match="sigma_min"):
        build_sigmas("Karras", 10, None)
    with pytest.raises(ValueError):
        build_sigmas("Karras", 0, ds)
    with pytest.raises(TypeError, match="alpha"):
        build_sigmas("Karras", 10, ds, alpha=0.5)


def test_registry():
    assert list(SCHEDULES)[:4] == ["Automatic", "Uniform", "Karras", "Exponential"]
    assert find_schedule("SGMUniform").label == "SGM Uniform"
    assert find_schedule("sgm_uniform").label == "SGM Uniform"
    assert find_schedule("KARRAS").label == "Karras"
    assert find_schedule("Align Your Steps").name == "align_your_steps"
    with pytest.raises(ValueError, match="Exponential"):  # also a KeyError; the message lists the valid names
        find_schedule("Linear")


def test_img2img_steps_a1111():
    # 20 steps at strength 0.5: schedule for 20, t_enc 10 -> sample the last 11 sigmas (10 model steps + 1 extra)
    assert schedules.img2img_steps(20, 0.5) == (20, 10)
    assert schedules.img2img_steps(20, 1.0) == (20, 19)
    assert schedules.img2img_steps(20, 0.0) == (20, 0)
    assert schedules.img2img_steps(20, 0.5, fix_steps=True) == (40, 19)
    assert schedules.img2img_steps(20, 0.3, fix_steps=True) == (66, 19)
    steps, t_enc = schedules.img2img_steps(20, 0.5)
    sigmas = schedules.karras(steps, 0.03, 14.6)[steps - t_enc - 1 :]
    assert len(sigmas) == t_enc + 2 and sigmas[-1] == 0
