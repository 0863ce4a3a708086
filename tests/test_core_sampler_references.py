"""The samplers beyond Euler / DPM++ 2M / DDIM against references: diffusers' schedulers (an independent
implementation; same denoiser, sigmas and replayed noise), A1111's DDIM CFG++ written out in its own VP form, and the
closed-form probability-flow ODE and target distribution of Gaussian data.

The shared toy model, noise and Gaussian denoiser live in `test_core_samplers.py`.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from test_core_samplers import MU, SD_SCHEDULER, SHAPE, TOL, S, GaussianDenoiser, _noise, _replay, _toy_model

from sdwebui import cli
from sdwebui.core import schedules
from sdwebui.core.brownian import BrownianTreeNoiseSampler
from sdwebui.core.denoiser import CFGDenoiser, DiscreteSchedule, ModelDenoiser
from sdwebui.core.noise import ImageRNG
from sdwebui.core.samplers import (
    SAMPLERS,
    find_sampler,
    sample_ddim,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpm_adaptive,
    sample_dpm_fast,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
    sample_euler,
    sample_heun,
    sample_lcm,
    sample_lms,
    sample_plms,
    sample_restart,
    sample_unipc,
)
from sdwebui.core.samplers.lcm import lcm_timesteps
from sdwebui.core.samplers.lms import linear_multistep_coeff
from sdwebui.core.samplers.restart import restart_plan

# diffusers 0.42 + numpy 2 deprecation noise inside their set_timesteps; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def ds():
    return DiscreteSchedule(EulerDiscreteScheduler(**SD_SCHEDULER).alphas_cumprod)


def _k_loop(ref, model_fn, generator=None):
    """diffusers' k-diffusion-style schedulers: VE latent, `scale_model_input` before the model."""
    x = _noise() * ref.init_noise_sigma
    kwargs = {} if generator is None else {"generator": generator}
    for t in ref.timesteps:
        out = model_fn(ref.scale_model_input(x, t), torch.as_tensor(t).float().expand(SHAPE[0]))
        x = ref.step(out, t, x, **kwargs).prev_sample
    return x


def _vp_loop(ref, model_fn, sigma0, generator=None):
    """diffusers' VP schedulers (DPM-Solver, UniPC, PNDM, LCM): start from our noise * sigma0 in VP scaling."""
    x = _noise() * sigma0 / (1 + sigma0**2) ** 0.5
    kwargs = {} if generator is None else {"generator": generator}
    for t in ref.timesteps:
        x = ref.step(model_fn(x, torch.as_tensor(t).float().expand(SHAPE[0])), t, x, **kwargs).prev_sample
    return x


def _close(ours, ref):
    assert ref.abs().max() < 10 and ref.abs().max() > 0.5  # a meaningful scale for an absolute tolerance
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# vs diffusers


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_heun_matches_diffusers(ds, prediction_type):
    model_fn = _toy_model(ds, prediction_type)
    ref = HeunDiscreteScheduler(**SD_SCHEDULER, use_karras_sigmas=True, prediction_type=prediction_type)
    ref.set_timesteps(10)
    sigmas = schedules.build_sigmas("Karras", 10, ds)
    torch.testing.assert_close(torch.cat([ref.sigmas[:1], ref.sigmas[1::2]]), sigmas)  # diffusers interleaves
    ours = sample_heun(ModelDenoiser(model_fn, ds, prediction_type), _noise() * sigmas[0], sigmas)
    _close(ours, _k_loop(ref, model_fn))


def test_lms_matches_diffusers(ds):
    pytest.importorskip("scipy", reason="diffusers' LMS integrates its coefficients with scipy.integrate.quad")
    from diffusers import LMSDiscreteScheduler

    model_fn = _toy_model(ds)
    ref = LMSDiscreteScheduler(**SD_SCHEDULER, use_karras_sigmas=True)
    ref.set_timesteps(12)
    ours = sample_lms(ModelDenoiser(model_fn, ds), _noise() * ref.sigmas[0], ref.sigmas)
    _close(ours, _k_loop(ref, model_fn))


def test_lms_coefficients_are_exact_lagrange_integrals():
    # scipy-free reference: integrate the Lagrange basis polynomials exactly with numpy
    import numpy as np

    t = [14.6, 9.1, 5.5, 3.2, 1.7, 0.9]
    for order in (1, 2, 3, 4):
        i = order - 1 + 1
        for j in range(order):
            nodes = [t[i - k] for k in range(order)]
            others = [n for k, n in enumerate(nodes) if k != j]
            poly = np.poly1d(np.poly(others) if others else [1.0]) / np.prod([nodes[j] - o for o in others])
            exact = np.polyint(poly)(t[i + 1]) - np.polyint(poly)(t[i])
            assert linear_multistep_coeff(order, t, i, j) == pytest.approx(exact, rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError):
        linear_multistep_coeff(3, t, 1, 0)


def test_dpm2_and_dpm2_ancestral_match_diffusers(ds):
    # diffusers rounds Karras timesteps for KDPM2; the toy model rounds t itself so both evaluate the same function
    model_fn = _toy_model(ds, round_t=True)
    sigmas = schedules.build_sigmas("Karras", 10, ds)
    ref = KDPM2DiscreteScheduler(**SD_SCHEDULER, use_karras_sigmas=True)
    ref.set_timesteps(10)
    _close(sample_dpm_2(ModelDenoiser(model_fn, ds), _noise() * sigmas[0], sigmas), _k_loop(ref, model_fn))

    ref = KDPM2AncestralDiscreteScheduler(**SD_SCHEDULER, use_karras_sigmas=True)
    ref.set_timesteps(10)
    expected = _k_loop(ref, model_fn, torch.Generator().manual_seed(3))
    ours = sample_dpm_2_ancestral(ModelDenoiser(model_fn, ds), _noise() * sigmas[0], sigmas, noise_sampler=_replay(3))
    _close(ours, expected)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpmpp_2m_sde_matches_diffusers(ds, solver_type):
    model_fn = _toy_model(ds, round_t=True)
    ref = DPMSolverMultistepScheduler(
        **SD_SCHEDULER, algorithm_type="sde-dpmsolver++", solver_order=2, solver_type=solver_type,
        use_karras_sigmas=True, final_sigmas_type="zero",
    )
    ref.set_timesteps(10)
    sigmas = schedules.build_sigmas("Karras", 10, ds)
    expected = _vp_loop(ref, model_fn, sigmas[0], torch.Generator().manual_seed(4))
    ours = sample_dpmpp_2m_sde(
        ModelDenoiser(model_fn, ds), _noise() * sigmas[0], sigmas, noise_sampler=_replay(4), solver_type=solver_type
    )
    _close(ours, expected)


def test_dpmpp_3m_sde_eta0_matches_diffusers_third_order(ds):
    # With eta = 0 the 3M SDE is DPM-Solver++(3M) with k-diffusion's "heun"-type second-order warm-up step and full
    # order up to the last step (diffusers: solver_type="heun", lower_order_final=False). With eta > 0 diffusers'
    # third-order sde-dpmsolver++ update differs from k-diffusion's: its D2 coefficient has -0.5 where the exact
    # integral (and k-diffusion, which A1111 runs) gives +0.5, so that pairing is not a reference.
    model_fn = _toy_model(ds, round_t=True)
    ref = DPMSolverMultistepScheduler(
        **SD_SCHEDULER, algorithm_type="dpmsolver++", solver_order=3, solver_type="heun", lower_order_final=False,
        use_karras_sigmas=True, final_sigmas_type="zero",
    )
    ref.set_timesteps(10)
    sigmas = schedules.build_sigmas("Karras", 10, ds)
    ours = sample_dpmpp_3m_sde(ModelDenoiser(model_fn, ds), _noise() * sigmas[0], sigmas, eta=0.0)
    _close(ours, _vp_loop(ref, model_fn, sigmas[0]))


class _SnappedNoise:
    """Query a noise sampler at the nearest of known sigmas. A Brownian increment moves by ~sqrt(dt) when its ends
    move by dt, so float32 rounding of sigma(t(sigma)) (a few ulp, done differently by the two implementations)
    changes the noise by ~1e-3; snapping both sides to the same keys compares the algorithms, not the rounding."""

    def __init__(self, inner, keys):
        self.inner, self.keys = inner, torch.as_tensor(keys, dtype=torch.float64)

    def _snap(self, s):
        s = float(s)
        k = self.keys[(self.keys - s).abs().argmin()]
        assert abs(float(k) - s) <= 1e-5 * s
        return float(k)

    def __call__(self, sigma, sigma_next):
        return self.inner(self._snap(sigma), self._snap(sigma_next))


def test_dpmpp_sde_matches_diffusers(ds):
    pytest.importorskip("torchsde", reason="diffusers' DPMSolverSDEScheduler imports torchsde at import time")
    from diffusers import DPMSolverSDEScheduler

    model_fn = _toy_model(ds)
    sigmas = schedules.build_sigmas("Karras", 8, ds)
    s64 = sigmas[:-1].double()
    keys = torch.cat([s64, (s64[:-1] * s64[1:]).sqrt()])  # the schedule and the log-midpoints of its steps

    def noise():
        tree = BrownianTreeNoiseSampler(_noise(), float(sigmas[-2]), float(sigmas[0]), seed=123)
        return _SnappedNoise(tree, keys)

    ref = DPMSolverSDEScheduler(**SD_SCHEDULER, use_karras_sigmas=True)
    ref.set_timesteps(8)
    ref.noise_sampler = noise()  # replaces its torchsde tree: both sides see the same Brownian path
    expected = _k_loop(ref, model_fn)
    ours = sample_dpmpp_sde(ModelDenoiser(model_fn, ds), _noise() * sigmas[0], sigmas, noise_sampler=noise())
    _close(ours, expected)


def test_dpmpp_2s_eta0_matches_diffusers_singlestep(ds):
    # DPM++ 2S a has no ancestral counterpart in diffusers; with eta = 0 it is DPM-Solver++(2S), which diffusers'
    # singlestep scheduler runs on an interleaved grid (first-order step to the midpoint, second-order step over
    # the pair). On an exponential grid every odd point IS the log-midpoint of its neighbours, so 9 diffusers
    # sigmas = our 4 steps + the final Euler step to 0 (diffusers floors these float timesteps to int; the model
    # floors t on both sides).
    base = _toy_model(ds)

    def model_fn(x, t):
        return base(x, torch.as_tensor(t).floor())

    ref = DPMSolverSinglestepScheduler(
        **SD_SCHEDULER, solver_order=2, algorithm_type="dpmsolver++", use_exponential_sigmas=True,
        final_sigmas_type="zero", lower_order_final=True,
    )
    ref.set_timesteps(9)
    assert ref.order_list == [1, 2] * 4 + [1]
    sigmas = torch.cat([ref.sigmas[:-1][::2], ref.sigmas[-1:]])
    torch.testing.assert_close(sigmas, schedules.exponential(5, ds.sigma_min, ds.sigma_max), rtol=1e-5, atol=0)
    ours = sample_dpmpp_2s_ancestral(ModelDenoiser(model_fn, ds), _noise() * sigmas[0], sigmas, eta=0.0)
    _close(ours, _vp_loop(ref, model_fn, sigmas[0]))


def test_plms_matches_diffusers_pndm(ds):
    # epsilon only: for v-prediction diffusers' PNDM combines the raw v outputs across steps, while A1111 (and we)
    # combine noise predictions, so the two differ by design.
    model_fn = _toy_model(ds, round_t=True)
    ref = PNDMScheduler(**SD_SCHEDULER, skip_prk_steps=True, set_alpha_to_one=True, steps_offset=1)
    ref.set_timesteps(10)
    assert ref.timesteps.tolist() == [901, 801, 801, 701, 601, 501, 401, 301, 201, 101, 1]  # 11 model calls
    sigmas = find_sampler("PLMS").sigmas(10, ds)
    calls = []

    def counting(x, t):
        calls.append(1)
        return model_fn(x, t)

    ours = sample_plms(ModelDenoiser(counting, ds), _noise() * sigmas[0], sigmas)
    assert len(calls) == 11
    _close(ours, _vp_loop(ref, model_fn, sigmas[0]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("order,variant,lower_order_final", [
    (1, "bh1", True), (2, "bh1", True), (3, "bh1", True), (3, "bh2", True), (2, "bh2", False), (3, "bh1", False),
])
def test_unipc_matches_diffusers(ds, prediction_type, order, variant, lower_order_final):
    # diffusers' UniPC returns NaN on a step to sigma 0 (lambda = inf in its higher-order terms), so the comparison
    # ends at sigma_min, where both run the same update; our step to 0 is checked against the closed form below.
    model_fn = _toy_model(ds, prediction_type, round_t=True)
    ref = UniPCMultistepScheduler(
        **SD_SCHEDULER, solver_order=order, solver_type=variant, lower_order_final=lower_order_final,
        final_sigmas_type="sigma_min", prediction_type=prediction_type,
    )
    ref.set_timesteps(8)
    sigmas = ref.sigmas.clone()
    expected = _vp_loop(ref, model_fn, sigmas[0]) * (1 + sigmas[-1] ** 2) ** 0.5  # VP -> VE at sigma_min
    ours = sample_unipc(
        ModelDenoiser(model_fn, ds, prediction_type), _noise() * sigmas[0], sigmas,
        order=order, variant=variant, lower_order_final=lower_order_final,
    )
    _close(ours, expected)


@pytest.mark.parametrize("timesteps", [[999, 759, 499, 259], "a1111-4", "a1111-6"])
def test_lcm_matches_diffusers(ds, timesteps):
    if isinstance(timesteps, str):
        timesteps = lcm_timesteps(int(timesteps[-1])).tolist()
    model_fn = _toy_model(ds, round_t=True)
    ref = LCMScheduler(**SD_SCHEDULER)
    ref.set_timesteps(timesteps=timesteps)
    sigmas = torch.cat([ds.sigmas[torch.tensor(timesteps)], torch.zeros(1)])
    expected = _vp_loop(ref, model_fn, sigmas[0], torch.Generator().manual_seed(9))
    ours = sample_lcm(ModelDenoiser(model_fn, ds), _noise() * sigmas[0], sigmas, noise_sampler=_replay(9))
    _close(ours, expected)


# ---------------------------------------------------------------------------------------------------------------
# DDIM CFG++ against A1111's `ddim_cfgpp`, transcribed in its own VP / timestep form


def _cfg_model(ds):
    base = _toy_model(ds)

    def model_fn(x_in, t, encoder_hidden_states):
        # cond and uncond differ by a per-image offset of the noise prediction
        return base(x_in, t) + encoder_hidden_states.reshape(-1, 1, 1, 1)

    return model_fn


def _a1111_ddim_cfgpp(ds, model_fn, cond, uncond, cfg_scale, timesteps, x_ve, eta, gen):
    """A1111 1.10 `sd_samplers_timesteps_impl.ddim_cfgpp` on our timesteps, ending at alpha = 1 (sigma 0)."""
    a_all = ds.alphas_cumprod.double()
    alphas = a_all[timesteps]
    alphas_prev = torch.cat([a_all[timesteps[1:]], torch.ones(1, dtype=torch.float64)])
    sigmas_t = eta * ((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev)).sqrt()
    x = x_ve * alphas[0].sqrt()
    scale = cfg_scale / 12.5
    for i, t in enumerate(timesteps.tolist()):
        tt = torch.full((x.shape[0],), float(t))
        e_c, e_u = model_fn(x, tt, encoder_hidden_states=cond), model_fn(x, tt, encoder_hidden_states=uncond)
        e_t = e_u + scale * (e_c - e_u)
        a_t, a_prev, sigma_t = alphas[i].item(), alphas_prev[i].item(), sigmas_t[i].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
        dir_xt = (1.0 - a_prev - sigma_t**2) ** 0.5 * e_u
        x = a_prev**0.5 * pred_x0 + dir_xt + sigma_t * torch.randn(SHAPE, generator=gen)
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_cfgpp_matches_a1111_formulation(ds, eta):
    model_fn = _cfg_model(ds)
    cond, uncond = torch.tensor([0.3, -0.2]), torch.tensor([-0.1, 0.1])
    sigmas = find_sampler("DDIM CFG++").sigmas(10, ds)
    timesteps = schedules.ddim_timesteps(10)
    expected = _a1111_ddim_cfgpp(
        ds, model_fn, cond, uncond, 7.5, timesteps, _noise() * sigmas[0], eta, torch.Generator().manual_seed(6)
    )
    denoiser = CFGDenoiser(
        ModelDenoiser(model_fn, ds), {"encoder_hidden_states": cond}, {"encoder_hidden_states": uncond}, 7.5
    )
    ours = find_sampler("DDIM CFG++").sample(
        denoiser, _noise() * sigmas[0], sigmas, eta=eta, noise_sampler=_replay(6)
    )
    _close(ours, expected.float())
    assert denoiser.cfg_scale_multiplier == 1.0 and not denoiser.record_uncond  # the hook's scope ended
    plain = sample_ddim(denoiser, _noise() * sigmas[0], sigmas)
    assert (plain - ours).abs().max() > 0.05  # CFG++ is not DDIM


def test_cfg_denoiser_uncond_hook():
    calls = []

    def inner(x, sigma, encoder_hidden_states):
        calls.append(x.shape[0])
        return x * 0 + encoder_hidden_states.reshape(-1, 1, 1, 1)

    inner.sigma_min, inner.sigma_max, inner.prediction_type, inner.schedule = 0.03, 14.6, "epsilon", None
    x, sigma = torch.zeros(1, 1, 2, 2), torch.tensor([1.0])
    cond, uncond = {"encoder_hidden_states": torch.tensor([2.0])}, {"encoder_hidden_states": torch.tensor([1.0])}
    den = CFGDenoiser(inner, cond, uncond, 12.5)
    torch.testing.assert_close(den(x, sigma), torch.full_like(x, 1 + 12.5))
    assert den.last_uncond is None  # nothing recorded outside the hook
    with den.recording_uncond(cfg_scale_multiplier=1 / 12.5):
        out = den(x, sigma)  # effective scale 1: the uncond pass still runs, because it is recorded
        torch.testing.assert_close(out, torch.full_like(x, 2.0))
        torch.testing.assert_close(den.last_uncond, torch.full_like(x, 1.0))
    assert calls == [2, 2] and den.cfg_scale_multiplier == 1.0 and den.last_uncond is None
    solo = CFGDenoiser(inner, cond, None, 7.0)
    with solo.recording_uncond():  # no uncond conditioning at all: the cond pass is the only prediction
        out = solo(x, sigma)
        assert solo.last_uncond is out


# ---------------------------------------------------------------------------------------------------------------
# Closed form: the probability-flow ODE of Gaussian data (see test_core_samplers.py), float64


def _ode_error(sampler, steps, schedule=schedules.karras, **opts):
    x = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 20.0
    sigmas = schedule(steps, 1e-3, 20.0).double()
    out = sampler(GaussianDenoiser(), x, sigmas, **opts)
    # DPM fast / adaptive stop at the smallest non-zero sigma
    end = 1e-3 if sampler in (sample_dpm_fast, sample_dpm_adaptive) else 0.0
    exact = MU + (x - MU) * math.sqrt(S**2 + end**2) / math.sqrt(S**2 + 20.0**2)
    return float((out - exact).abs().max())


def _zero_noise(sigma, sigma_next):
    return torch.zeros(64, 1, dtype=torch.float64)


SECOND_ORDER = [
    ("Heun", sample_heun, {}),
    ("DPM2", sample_dpm_2, {}),
    ("DPM2 a, eta 0", sample_dpm_2_ancestral, {"eta": 0.0}),
    ("DPM++ 2S a, eta 0", sample_dpmpp_2s_ancestral, {"eta": 0.0}),
    ("DPM++ SDE, eta 0", sample_dpmpp_sde, {"eta": 0.0, "noise_sampler": _zero_noise}),
    ("DPM++ 2M SDE, eta 0", sample_dpmpp_2m_sde, {"eta": 0.0}),
    ("DPM++ 2M SDE Heun, eta 0", sample_dpmpp_2m_sde, {"eta": 0.0, "solver_type": "heun"}),
    # 3M: third-order updates, but the first-order start limits the global order to 2 (as in k-diffusion);
    # on its default exponential schedule (on Karras the error is not monotone in the step count)
    ("DPM++ 3M SDE, eta 0", sample_dpmpp_3m_sde, {"eta": 0.0, "schedule": schedules.exponential}),
    # PLMS's fixed-step coefficients are second order on the non-uniform Karras grid
    ("PLMS", sample_plms, {}),
]
HIGHER_ORDER = [
    ("LMS", sample_lms, {}),
    ("UniPC bh1", sample_unipc, {}),
    ("UniPC bh2", sample_unipc, {"variant": "bh2"}),
    ("DPM fast, eta 0", sample_dpm_fast, {"eta": 0.0}),
]


def test_deterministic_samplers_converge_at_their_order():
    steps = (10, 20, 40)
    euler = [_ode_error(sample_euler, n) for n in steps]
    assert 1.8 < euler[1] / euler[2] < 2.2, euler  # first order
    for name, fn, opts in SECOND_ORDER:
        errs = [_ode_error(fn, n, **opts) for n in steps]
        assert errs[-2] / errs[-1] > 3.0, (name, errs)  # halving the steps divides the error by ~4
        assert errs[-1] < euler[-1] / 4, (name, errs, euler)
    for name, fn, opts in HIGHER_ORDER:
        errs = [_ode_error(fn, n, **opts) for n in steps]
        assert errs[1] / errs[2] > 7.0, (name, errs)
        assert errs[2] < euler[2] / 30, (name, errs, euler)
    # UniPC (order 3 + corrector) beats DPM++ 2M, as it should
    assert _ode_error(sample_unipc, 20) < _ode_error(sample_dpmpp_2m, 20) / 3


def test_dpm_adaptive_meets_its_tolerance():
    loose = _ode_error(sample_dpm_adaptive, 10, eta=0.0, rtol=0.05, atol=0.0078)
    tight = _ode_error(sample_dpm_adaptive, 10, eta=0.0, rtol=1e-3, atol=1e-4)
    assert tight < 5e-3 and tight < loose / 5, (loose, tight)


def test_unipc_last_step_to_zero_is_the_x0_prediction():
    # one step from sigma_1 to 0 returns D(x, sigma_1) exactly; on the Gaussian that is the posterior mean
    x = torch.randn(8, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    sigmas = torch.tensor([2.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sample_unipc(GaussianDenoiser(), x, sigmas), GaussianDenoiser()(x, sigmas[:1]))


def test_restart_below_20_steps_is_heun():
    x = torch.randn(16, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 14.6
    sigmas = schedules.karras(19, 0.03, 14.6).double()
    draws = []
    out = sample_restart(GaussianDenoiser(), x, sigmas, noise_sampler=lambda s, sn: draws.append(1))
    assert torch.equal(out, sample_heun(GaussianDenoiser(), x, sigmas)) and not draws


def test_restart_plan_follows_a1111():
    sigmas = schedules.karras(30, 0.03, 14.6)
    plan = restart_plan(sigmas)
    # 30 steps: main Karras schedule of 30 - 9 = 21 steps, plus 9 restart steps once from ~0.1 back up to ~2
    assert len(plan) == 30
    ups = [i for i in range(1, len(plan)) if plan[i][0] > plan[i - 1][1]]
    assert len(ups) == 1 and 1.5 < float(plan[ups[0]][0]) < 2.5 and 0.07 < float(plan[ups[0] - 1][1]) < 0.14
    plan40 = restart_plan(schedules.karras(40, 0.03, 14.6))
    assert sum(plan40[i][0] > plan40[i - 1][1] for i in range(1, len(plan40))) == 2  # 36+ steps: twice
    short = schedules.karras(19, 0.03, 14.6)
    assert restart_plan(short) == list(zip(short[:-1], short[1:]))  # under 20 steps: no restart


# ---------------------------------------------------------------------------------------------------------------
# Stochastic samplers: the target distribution N(MU, S^2) over many independent chains


class ConsistencyDenoiser(GaussianDenoiser):
    """The exact consistency function of the Gaussian's probability-flow ODE, f(x, sigma) = x(0): what an ideal LCM
    predicts (the plain Gaussian denoiser returns the posterior MEAN, which is not a sample)."""

    def __call__(self, x, sigma, **kwargs):
        s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return MU + (x - MU) * S / (S**2 + s2) ** 0.5


STOCHASTIC = [
    # first-order ancestral samplers have an O(step) variance bias: they get more steps
    ("Euler a", {}, 200),
    ("DPM2 a", {}, 60),
    ("DPM++ 2S a", {}, 60),
    ("DPM++ SDE", {}, 40),
    ("DPM++ 2M SDE", {}, 60),
    ("DPM++ 2M SDE Heun", {}, 60),
    ("DPM++ 3M SDE", {}, 60),
    ("DPM fast", {}, 60),
    ("DPM adaptive", {}, 10),
    ("Restart", {}, 30),
    ("LCM", {}, 8),
    ("DDIM", {"eta": 1.0}, 200),
    ("DDIM CFG++", {"eta": 1.0}, 200),
]


@pytest.mark.parametrize("name,opts,steps", STOCHASTIC)
def test_stochastic_samplers_match_the_target_distribution(name, opts, steps):
    n = 8000
    gen = torch.Generator().manual_seed(11)
    sigmas = schedules.karras(steps, 1e-2, 20.0)
    x = torch.randn(n, 1, generator=gen) * sigmas[0]
    spec = find_sampler(name)
    if spec.brownian_noise:
        noise = BrownianTreeNoiseSampler(x, float(sigmas[-2]), float(sigmas[0]), seed=5)
    else:
        noise = lambda s, sn: torch.randn(n, 1, generator=gen)  # noqa: E731
    denoiser = ConsistencyDenoiser() if name == "LCM" else GaussianDenoiser()
    out = spec.sample(denoiser, x, sigmas, noise_sampler=noise, **opts)
    # the estimate's own std is ~S / sqrt(2 n) = 0.0055 for the std, S / sqrt(n) = 0.008 for the mean
    assert abs(float(out.mean()) - MU) < 0.03, float(out.mean())
    assert abs(float(out.std()) - S) < 0.035, float(out.std())
    deterministic = MU + (x - MU) * S / math.sqrt(S**2 + float(sigmas[0]) ** 2)
    assert float((out - deterministic).abs().mean()) > 0.1  # and it is stochastic


# ---------------------------------------------------------------------------------------------------------------
# Every sampler on every schedule; seeds through ImageRNG; the CLI table


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_on_every_schedule(ds, name):
    spec = find_sampler(name)
    model = ModelDenoiser(_toy_model(ds), ds)
    for label in schedules.SCHEDULES:
        sigmas = spec.sigmas(4, model, label)
        x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
        gen = torch.Generator().manual_seed(1)
        out = spec.sample(model, x, sigmas, noise_sampler=lambda s, sn: torch.randn(x.shape, generator=gen))
        assert out.shape == x.shape and torch.isfinite(out).all(), (name, label)
        assert out.abs().max() < 50, (name, label)


@pytest.mark.parametrize("name", ["DPM++ SDE", "DPM++ 2M SDE", "Euler a"])
def test_image_noise_is_batch_independent_with_brownian_trees(ds, name):
    spec = find_sampler(name)
    model = ModelDenoiser(_toy_model(ds), ds)
    sigmas = spec.sigmas(6, model)

    def run(seeds):
        rng = ImageRNG((4, 8, 8), seeds)
        x = rng.first() * sigmas[0]
        return spec.sample(model, x, sigmas, noise_sampler=rng.noise_sampler())

    pair = run([7, 8])
    torch.testing.assert_close(run([8])[0], pair[1], atol=1e-6, rtol=0)
    assert (pair[0] - run([9])[0]).abs().max() > 0.01
    if spec.brownian_noise:  # the seeded tree replaced the ImageRNG stream: a different result from plain draws
        rng = ImageRNG((4, 8, 8), [8])
        x = rng.first() * sigmas[0]
        plain = spec.function(model, x, sigmas, noise_sampler=rng.noise_sampler(), **spec.options)
        assert (plain[0] - pair[1]).abs().max() > 1e-3


def test_cli_lists_samplers_and_schedules(capsys):
    assert cli.main(["samplers"]) == 0
    out = capsys.readouterr().out
    for spec in SAMPLERS.values():
        assert any(line.startswith(spec.name + " ") and spec.aliases[0] in line for line in out.splitlines()), spec.name
    heun = next(line for line in out.splitlines() if line.startswith("DPM++ 2M SDE Heun "))
    assert "k_dpmpp_2m_sde_heun" in heun and heun.rstrip().endswith("Exponential")
    assert "schedule types: Automatic, Uniform, Karras" in out and "Align Your Steps" in out
