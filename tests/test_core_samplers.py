"""Samplers: against diffusers' schedulers (an independent implementation) and against closed-form solutions."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from sdwebui.core import schedules
from sdwebui.core.denoiser import CFGDenoiser, DiscreteSchedule, ModelDenoiser
from sdwebui.core.samplers import (
    SAMPLERS,
    UnknownSamplerError,
    find_sampler,
    parse_sampler_name,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
)

# diffusers 0.42 + numpy 2 warn about __array__(copy=...) inside their set_timesteps; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SHAPE = (2, 4, 8, 8)
TOL = 1e-5


# ---------------------------------------------------------------------------------------------------------------
# A small deterministic "UNet": the exact eps of Gaussian data N(0.3, 0.8^2) plus a non-linear, time-dependent term,
# so that the samplers' use of x, t and their history all show in the result. Outputs stay O(1).


def _toy_model(ds: DiscreteSchedule, prediction_type: str = "epsilon", round_t: bool = False):
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(4, 4, generator=gen) * 0.5
    mu, s = 0.3, 0.8

    def model_fn(x_in: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
        if round_t:
            t = t.round()
        sigma = ds.t_to_sigma(t).reshape(-1, 1, 1, 1)
        alpha = 1 / (1 + sigma**2) ** 0.5
        x = x_in / alpha  # back to the VE latent
        x0 = (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)
        x0 = x0 + 0.1 * torch.tanh(torch.einsum("bchw,cd->bdhw", x_in, mix)) * torch.cos(t / 300).reshape(-1, 1, 1, 1)
        eps = (x - x0) / sigma
        if prediction_type == "epsilon":
            return eps
        return alpha * eps - sigma * alpha * x0  # v = alpha_t * eps - sigma_t * x0 (VP sigma_t = sigma * alpha)

    return model_fn


def _noise() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


def _replay(seed: int):
    """A noise sampler drawing what diffusers' step() draws from `torch.Generator().manual_seed(seed)`."""
    gen = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(SHAPE, generator=gen)


@pytest.fixture(scope="module")
def euler_sched():
    return EulerDiscreteScheduler(**SD_SCHEDULER)


@pytest.fixture(scope="module")
def ds(euler_sched):
    return DiscreteSchedule(euler_sched.alphas_cumprod)


# ---------------------------------------------------------------------------------------------------------------
# vs diffusers


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", ["Karras", "Uniform", "Exponential"])
def test_euler_matches_diffusers(ds, prediction_type, schedule):
    model_fn = _toy_model(ds, prediction_type)
    sigmas = schedules.build_sigmas(schedule, 12, ds)
    ref = EulerDiscreteScheduler(**SD_SCHEDULER, prediction_type=prediction_type)
    ref.set_timesteps(sigmas=sigmas.tolist())
    assert torch.equal(ref.sigmas, sigmas)
    x = _noise() * ref.init_noise_sigma
    for t in ref.timesteps:
        x = ref.step(model_fn(ref.scale_model_input(x, t), t.expand(SHAPE[0])), t, x).prev_sample

    ours = sample_euler(ModelDenoiser(model_fn, ds, prediction_type), _noise() * sigmas[0], sigmas)
    assert x.abs().max() < 10  # the comparison is meaningful at this scale
    torch.testing.assert_close(ours, x, atol=TOL, rtol=0)


def test_euler_ancestral_matches_diffusers(ds):
    model_fn = _toy_model(ds)
    ref = EulerAncestralDiscreteScheduler(**SD_SCHEDULER, timestep_spacing="linspace")
    ref.set_timesteps(15)
    sigmas = ref.sigmas.clone()
    gen = torch.Generator().manual_seed(7)
    x = _noise() * ref.init_noise_sigma
    for t in ref.timesteps:
        x = ref.step(model_fn(ref.scale_model_input(x, t), t.expand(SHAPE[0])), t, x, generator=gen).prev_sample

    ours = sample_euler_ancestral(
        ModelDenoiser(model_fn, ds), _noise() * sigmas[0], sigmas, noise_sampler=_replay(7)
    )
    torch.testing.assert_close(ours, x, atol=TOL, rtol=0)


@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_karras_matches_diffusers(ds, steps):
    # diffusers rounds Karras timesteps to integers before calling the model; the toy model rounds t itself so that
    # both sides evaluate the same function.
    model_fn = _toy_model(ds, round_t=True)
    ref = DPMSolverMultistepScheduler(
        **SD_SCHEDULER, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True,
        final_sigmas_type="zero",
    )
    ref.set_timesteps(steps)
    sigmas = schedules.build_sigmas("Karras", steps, ds)
    torch.testing.assert_close(ref.sigmas, sigmas, rtol=1e-6, atol=0)
    # diffusers' DPM-Solver works on the VP latent x / sqrt(1 + sigma^2); start it from exactly our noise.
    x = _noise() * sigmas[0] / (1 + sigmas[0] ** 2) ** 0.5
    for t in ref.timesteps:
        x = ref.step(model_fn(x, t.expand(SHAPE[0])), t, x).prev_sample

    ours = sample_dpmpp_2m(ModelDenoiser(model_fn, ds), _noise() * sigmas[0], sigmas)
    torch.testing.assert_close(ours, x, atol=TOL, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_matches_diffusers(ds, eta, prediction_type):
    model_fn = _toy_model(ds, prediction_type)
    ref = DDIMScheduler(
        **SD_SCHEDULER, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=True, clip_sample=False,
        prediction_type=prediction_type,
    )
    ref.set_timesteps(10)
    sigmas = schedules.build_sigmas("DDIM", 10, ds)
    assert ref.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    torch.testing.assert_close(ds.sigma_to_t(sigmas[:-1]), ref.timesteps.float(), atol=1e-3, rtol=0)
    gen = torch.Generator().manual_seed(5)
    x = _noise() * sigmas[0] / (1 + sigmas[0] ** 2) ** 0.5
    for t in ref.timesteps:
        out = model_fn(x, t.expand(SHAPE[0]).float())
        x = ref.step(out, t, x, eta=eta, generator=gen).prev_sample

    spec = find_sampler("DDIM")
    ours = spec.sample(
        ModelDenoiser(model_fn, ds, prediction_type), _noise() * sigmas[0], sigmas, eta=eta, noise_sampler=_replay(5)
    )
    torch.testing.assert_close(ours, x, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Closed form: data ~ N(mu, s^2) per element. D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2) and the
# probability-flow ODE dx/dsigma = sigma (x - mu) / (s^2 + sigma^2) gives x(sigma) - mu ∝ sqrt(s^2 + sigma^2).

MU, S = 0.5, 0.7


class GaussianDenoiser:
    sigma_min, sigma_max, prediction_type, schedule = 1e-3, 20.0, "epsilon", None

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return (S**2 * x + s2 * MU) / (S**2 + s2)


def _exact(x_start: torch.Tensor, sigma_start: float) -> torch.Tensor:
    return MU + (x_start - MU) * S / math.sqrt(S**2 + sigma_start**2)


def _ode_error(sampler, steps: int) -> float:
    x = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 20.0
    sigmas = schedules.karras(steps, 1e-3, 20.0).double()
    out = sampler(GaussianDenoiser(), x, sigmas)
    return float((out - _exact(x, 20.0)).abs().max())


def test_deterministic_samplers_converge_to_the_ode_solution():
    euler = [_ode_error(sample_euler, n) for n in (10, 20, 40, 80)]
    dpm = [_ode_error(sample_dpmpp_2m, n) for n in (10, 20, 40, 80)]
    assert all(a > b for a, b in zip(euler, euler[1:])), euler
    assert all(a > b for a, b in zip(dpm, dpm[1:])), dpm
    # Euler is first order, DPM++ 2M second order: halving the step size divides the error by ~2 and ~4.
    assert 1.6 < euler[-2] / euler[-1] < 2.6, euler
    assert dpm[-2] / dpm[-1] > 3.0, dpm
    assert all(d < e for d, e in zip(dpm, euler)), (dpm, euler)
    assert dpm[-1] < euler[-1] / 10 and dpm[-1] < 5e-3, (dpm, euler)


def test_ddim_eta0_is_euler():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(4)) * 20
    sigmas = schedules.karras(15, 1e-2, 20.0)
    torch.testing.assert_close(sample_ddim(GaussianDenoiser(), x, sigmas), sample_euler(GaussianDenoiser(), x, sigmas))


def _ancestral_samples(name: str, steps: int, opts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    n = 20000
    sigmas = schedules.karras(steps, 1e-2, 20.0)
    x = torch.randn(n, 1, generator=gen) * sigmas[0]
    out = find_sampler(name).sample(
        GaussianDenoiser(), x, sigmas, noise_sampler=lambda s, sn: torch.randn(n, 1, generator=gen), **opts
    )
    return x, out


@pytest.mark.parametrize("name,opts", [("Euler a", {}), ("DDIM", {"eta": 1.0})])
def test_ancestral_samplers_match_the_target_distribution(name, opts):
    # Ancestral sampling of N(MU, S^2): the sample mean and std approach MU and S as the steps grow (the std of
    # the estimate itself is ~S / sqrt(2 * 20000) = 0.0035; the remaining bias is the discretisation's).
    _, coarse = _ancestral_samples(name, 40, opts)
    x, out = _ancestral_samples(name, 200, opts)
    assert abs(float(out.mean()) - MU) < 0.015
    assert abs(float(out.std()) - S) < 0.02
    assert abs(float(out.std()) - S) < abs(float(coarse.std()) - S)
    # and it is stochastic: the deterministic ODE solution from the same start is a different sample set
    assert float((out - _exact(x, 20.0)).abs().mean()) > 0.1


# ---------------------------------------------------------------------------------------------------------------
# The common contract: callbacks, interrupts, extra_args, dtypes


OWN_STEPS = {"DPM fast": 3, "DPM adaptive": None}
"""Samplers whose callback counts their own steps, not schedule entries: DPM fast makes floor(n/3)+1 steps of n model
calls (6 -> orders 3, 2, 1), DPM adaptive as many as its tolerances need."""


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_contract_and_extra_args(name):
    calls = []
    seen_kwargs = []

    def denoiser(x, sigma, **kw):
        seen_kwargs.append(kw)
        return GaussianDenoiser()(x, sigma)

    sigmas = schedules.karras(6, 0.03, 14.6)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    out = find_sampler(name).sample(
        denoiser, x, sigmas, extra_args={"cond": "c"}, callback=calls.append,
        noise_sampler=lambda s, sn: torch.zeros_like(x),
    )
    assert out.shape == x.shape and torch.isfinite(out).all()
    expected_steps = OWN_STEPS.get(name, 6) or len(calls)
    assert [c["i"] for c in calls] == list(range(expected_steps)) and calls
    assert all(set(c) == {"x", "i", "sigma", "sigma_hat", "denoised"} for c in calls)
    assert float(calls[0]["sigma"]) == pytest.approx(float(sigmas[0]))
    assert all(kw == {"cond": "c"} for kw in seen_kwargs)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_exception_interrupts_sampling(name):
    den = GaussianDenoiser()
    calls_when_raised = []

    def interrupt(d):
        if d["i"] == 2:
            calls_when_raised.append(den.calls)
            raise InterruptedError("stop")

    sigmas = schedules.karras(10, 0.03, 14.6)
    with pytest.raises(InterruptedError):
        find_sampler(name).sample(den, torch.randn(1, 4, 4, 4) * 14.6, sigmas, callback=interrupt)
    # the model is not called again after the callback raised; single-evaluation samplers made exactly 3 calls
    assert calls_when_raised == [den.calls]
    if not find_sampler(name).second_order and name not in ("PLMS", "DPM fast", "DPM adaptive"):
        assert den.calls == 3


def test_euler_churn_draws_noise_only_when_churning():
    draws = []

    def ns(sigma, sigma_next):
        draws.append(float(sigma))
        return torch.zeros(1, 1)

    sigmas = schedules.karras(8, 0.03, 14.6)
    sample_euler(GaussianDenoiser(), torch.ones(1, 1) * 14.6, sigmas, noise_sampler=ns)
    assert draws == []
    sample_euler(GaussianDenoiser(), torch.ones(1, 1) * 14.6, sigmas, noise_sampler=ns, s_churn=1.0, s_tmin=1.0)
    assert draws and all(d >= 1.0 for d in draws)


def test_fp16_model_keeps_the_latent_dtype(ds):
    model_fn = _toy_model(ds)
    half_calls = []

    def fp16_model(x_in, t):
        half_calls.append(x_in.dtype)
        return model_fn(x_in.float(), t).half()

    sigmas = schedules.build_sigmas("Karras", 6, ds)
    ref = sample_dpmpp_2m(ModelDenoiser(model_fn, ds), _noise() * sigmas[0], sigmas)
    out = sample_dpmpp_2m(ModelDenoiser(fp16_model, ds), _noise() * sigmas[0], sigmas)
    assert out.dtype == torch.float32 and half_calls[0] == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=0)  # only the model's output was rounded to fp16


# ---------------------------------------------------------------------------------------------------------------
# Denoisers


def test_model_denoiser_exposes_the_model_and_scales_inputs(ds):
    seen = {}

    def model_fn(x_in, t, **cond):
        seen.update(x_in=x_in, t=t, cond=cond)
        return torch.zeros_like(x_in)

    den = ModelDenoiser(model_fn, ds, "epsilon")
    assert den.sigma_min == pytest.approx(0.0292, abs=1e-4) and den.sigma_max == pytest.approx(14.6146, abs=1e-4)
    x = torch.ones(2, 4, 2, 2) * 3
    sigma = torch.tensor([14.6146, 1.0])
    out = den(x, sigma, encoder_hidden_states="e")
    torch.testing.assert_close(out, x)  # eps = 0 -> x0 = x
    torch.testing.assert_close(seen["x_in"][1], x[1] / 2**0.5)
    torch.testing.assert_close(seen["t"][0], torch.tensor(999.0), atol=1e-2, rtol=0)
    assert seen["cond"] == {"encoder_hidden_states": "e"}
    with pytest.raises(ValueError, match="prediction_type"):
        ModelDenoiser(model_fn, ds, "sample")


def test_discrete_schedule_round_trips(ds):
    t = torch.tensor([0.0, 1.5, 250.25, 998.0, 999.0])
    torch.testing.assert_close(ds.sigma_to_t(ds.t_to_sigma(t)), t, atol=2e-3, rtol=0)
    assert ds.sigma_to_t(ds.t_to_sigma(torch.tensor(250.4)), quantize=True) == 250
    assert torch.all(ds.sigmas[1:] > ds.sigmas[:-1]) and ds.sigmas.dtype == torch.float32


class RecordingDenoiser:
    sigma_min, sigma_max, prediction_type = 0.03, 14.6, "epsilon"
    schedule = None

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, **cond):
        self.calls.append((x.shape[0], cond))
        # the "model" prints the conditioning into the output so CFG's arithmetic can be checked
        emb = cond["encoder_hidden_states"].mean(dim=(1, 2)) + cond["added_cond_kwargs"]["time_ids"].sum(1)
        return x * 0 + emb.reshape(-1, 1, 1, 1) + sigma.reshape(-1, 1, 1, 1)


def _conds(batch: int, tokens: int, value: float):
    return {
        "encoder_hidden_states": torch.full((batch, tokens, 8), value),
        "added_cond_kwargs": {"text_embeds": torch.full((batch, 4), value), "time_ids": torch.full((batch, 6), value)},
    }


def test_cfg_denoiser_batches_cond_and_uncond_in_one_call():
    inner = RecordingDenoiser()
    cfg = CFGDenoiser(inner, _conds(2, 77, 1.0), _conds(2, 77, -1.0), cfg_scale=7.5)
    x = torch.zeros(2, 4, 2, 2)
    out = cfg(x, torch.tensor([2.0, 2.0]), image_cond=torch.ones(2, 5))
    assert len(inner.calls) == 1 and inner.calls[0][0] == 4
    batched = inner.calls[0][1]
    assert batched["added_cond_kwargs"]["time_ids"].shape == (4, 6)
    assert batched["image_cond"].shape == (4, 5)  # shared extra args are duplicated
    cond_v, uncond_v = 1.0 + 6.0 + 2.0, -1.0 - 6.0 + 2.0
    torch.testing.assert_close(out, torch.full_like(x, uncond_v + 7.5 * (cond_v - uncond_v)))
    assert (cfg.sigma_min, cfg.sigma_max, cfg.prediction_type) == (0.03, 14.6, "epsilon")


def test_cfg_denoiser_rejects_incompatible_conds():
    x = torch.zeros(1, 4, 2, 2)
    bad = _conds(1, 77, -1.0)
    bad["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, 4)}
    with pytest.raises(ValueError, match="different keys"):
        CFGDenoiser(RecordingDenoiser(), _conds(1, 77, 1.0), bad, 7.0)(x, torch.tensor([1.0]))
    bad = {**_conds(1, 77, -1.0), "encoder_hidden_states": None}
    with pytest.raises(ValueError, match="differ in kind"):
        CFGDenoiser(RecordingDenoiser(), _conds(1, 77, 1.0), bad, 7.0)(x, torch.tensor([1.0]))


def test_cfg_scale_one_skips_uncond_and_mismatched_lengths_run_separately():
    inner = RecordingDenoiser()
    x = torch.zeros(1, 4, 2, 2)
    out = CFGDenoiser(inner, _conds(1, 77, 1.0), _conds(1, 77, -1.0), cfg_scale=1.0)(x, torch.tensor([1.0]))
    assert [c[0] for c in inner.calls] == [1]
    torch.testing.assert_close(out, torch.full_like(x, 8.0))

    inner = RecordingDenoiser()
    out = CFGDenoiser(inner, _conds(1, 154, 1.0), _conds(1, 77, -1.0), cfg_scale=3.0)(x, torch.tensor([1.0]))
    assert [c[0] for c in inner.calls] == [1, 1]
    torch.testing.assert_close(out, torch.full_like(x, -6.0 + 3.0 * 14.0))


# ---------------------------------------------------------------------------------------------------------------
# Registry


A1111_SAMPLERS = [
    # A1111 1.10: sd_samplers_kdiffusion.samplers_k_diffusion, then sd_samplers_timesteps, then sd_samplers_lcm:
    # (name, aliases, "Automatic" schedule, discard next-to-last sigma)
    ("DPM++ 2M", ("k_dpmpp_2m",), "Karras", False),
    ("DPM++ SDE", ("k_dpmpp_sde",), "Karras", False),
    ("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "Exponential", False),
    ("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), "Exponential", False),
    ("DPM++ 2S a", ("k_dpmpp_2s_a",), "Karras", False),
    ("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), "Exponential", True),
    ("Euler a", ("k_euler_a", "k_euler_ancestral"), "Uniform", False),
    ("Euler", ("k_euler",), "Uniform", False),
    ("LMS", ("k_lms",), "Uniform", False),
    ("Heun", ("k_heun",), "Uniform", False),
    ("DPM2", ("k_dpm_2",), "Karras", True),
    ("DPM2 a", ("k_dpm_2_a",), "Karras", True),
    ("DPM fast", ("k_dpm_fast",), "Uniform", False),
    ("DPM adaptive", ("k_dpm_ad",), "Uniform", False),
    ("Restart", ("restart",), "Karras", False),
    ("DDIM", ("ddim",), "DDIM", False),
    ("DDIM CFG++", ("ddim_cfgpp",), "DDIM", False),
    ("PLMS", ("plms",), "DDIM", False),
    ("UniPC", ("unipc",), "SGM Uniform", False),
    ("LCM", ("k_lcm",), "Uniform", False),
]


def test_registry_names_aliases_and_defaults():
    assert list(SAMPLERS) == [row[0] for row in A1111_SAMPLERS]
    for name, aliases, schedule, discard in A1111_SAMPLERS:
        spec = find_sampler(name)
        assert spec.name == name and spec.aliases == aliases and spec.default_schedule == schedule, name
        assert spec.discard_penultimate_sigma == discard, name
        for alias in aliases:
            assert find_sampler(alias) is spec and find_sampler(alias.upper()) is spec
    assert find_sampler("EULER A").name == "Euler a"
    # A1111's "uses_ensd" samplers, and the Brownian-noise (SDE) ones
    assert {s.name for s in SAMPLERS.values() if s.uses_ensd} == {
        "Euler a", "DPM++ 2S a", "DPM2 a", "DPM fast", "DPM adaptive"
    }
    assert {s.name for s in SAMPLERS.values() if s.brownian_noise} == {
        "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"
    }
    deterministic = {"DPM++ 2M", "Euler", "LMS", "Heun", "DPM2", "DDIM", "DDIM CFG++", "PLMS", "UniPC"}
    assert {s.name for s in SAMPLERS.values() if not s.is_stochastic} == deterministic
    assert all(s.needs_noise == s.is_stochastic for s in SAMPLERS.values())
    # A1111's defaults: eta_ancestral 1 for samplers with eta, eta_ddim 0, UniPC order 3 / bh1 / lower order final
    for spec in SAMPLERS.values():
        if "eta" in spec.options:
            assert spec.options["eta"] == (0.0 if spec.name.startswith("DDIM") else 1.0), spec.name
    assert find_sampler("DPM++ 2M SDE").options["solver_type"] == "midpoint"
    assert find_sampler("DPM++ 2M SDE Heun").options["solver_type"] == "heun"
    assert dict(find_sampler("UniPC").options) == {"order": 3, "variant": "bh1", "lower_order_final": True}
    assert find_sampler("Heun").options["s_churn"] == 0.0 and find_sampler("Restart").options == {"s_noise": 1.0}
    for bad in ("", "k_euler_b", "DPM3"):
        with pytest.raises(KeyError) as excinfo:
            find_sampler(bad)
        assert "Euler a" in str(excinfo.value) and "k_dpmpp_2m" in str(excinfo.value)
    with pytest.raises(ValueError):
        find_sampler("nope")
    assert issubclass(UnknownSamplerError, KeyError)


def test_discard_penultimate_and_sampler_specific_automatic_schedules(ds):
    karras11 = schedules.karras(11, ds.sigma_min, ds.sigma_max)
    expected = torch.cat([karras11[:-2], karras11[-1:]])
    torch.testing.assert_close(find_sampler("DPM2").sigmas(10, ds), expected)
    assert len(find_sampler("DPM2 a").sigmas(10, ds)) == 11
    # the user's "always discard" option adds to samplers that do not discard by themselves
    torch.testing.assert_close(
        find_sampler("Euler").sigmas(10, ds, "Karras", discard_penultimate_sigma=True), expected
    )
    torch.testing.assert_close(find_sampler("UniPC").sigmas(8, ds), schedules.sgm_uniform(8, ds))
    # LCM's "Automatic": A1111's LCM denoiser spacing over the 50 distillation timesteps, snapped to them
    lcm = find_sampler("LCM").sigmas(4, ds)
    torch.testing.assert_close(ds.sigma_to_t(lcm[:-1]), torch.tensor([999.0, 679.0, 339.0, 19.0]), atol=2e-3, rtol=0)
    assert lcm[-1] == 0
    torch.testing.assert_close(find_sampler("LCM").sigmas(4, ds, "Karras"), schedules.karras(4, ds.sigma_min, ds.sigma_max))


def test_sampler_spec_sigmas_resolve_automatic(ds):
    torch.testing.assert_close(find_sampler("DPM++ 2M").sigmas(10, ds), schedules.karras(10, ds.sigma_min, ds.sigma_max))
    torch.testing.assert_close(find_sampler("Euler").sigmas(10, ds), schedules.uniform(10, ds))
    torch.testing.assert_close(find_sampler("DDIM").sigmas(10, ds), schedules.ddim(10, ds))
    torch.testing.assert_close(find_sampler("Euler").sigmas(10, ds, "Karras"), schedules.karras(10, ds.sigma_min, ds.sigma_max))


@pytest.mark.parametrize(
    "name,schedule,expected",
    [
        ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")),
        ("DPM++ 2M", None, ("DPM++ 2M", "Automatic")),
        ("DPM++ 2M", "Exponential", ("DPM++ 2M", "Exponential")),
        ("Euler a", None, ("Euler a", "Automatic")),
        ("euler a karras", None, ("Euler a", "Karras")),
        ("Euler SGMUniform", None, ("Euler", "SGM Uniform")),
        ("Euler sgm_uniform", "Karras", ("Euler", "SGM Uniform")),
        ("k_dpmpp_2m_ka", None, ("DPM++ 2M", "Karras")),
        ("DDIM", "uniform", ("DDIM", "Uniform")),
        ("DPM++ 2M SDE Heun Karras", None, ("DPM++ 2M SDE Heun", "Karras")),
        ("DPM++ 2M SDE Exponential", None, ("DPM++ 2M SDE", "Exponential")),
        ("DPM++ 3M SDE", None, ("DPM++ 3M SDE", "Automatic")),
        ("k_dpm_2_a_ka", None, ("DPM2 a", "Karras")),
        ("k_dpmpp_2m_sde_heun_exp", None, ("DPM++ 2M SDE Heun", "Exponential")),
        ("k_lms_ka", None, ("LMS", "Karras")),
        ("UniPC", None, ("UniPC", "Automatic")),
    ],
)
def test_parse_sampler_name(name, schedule, expected):
    assert parse_sampler_name(name, schedule) == expected


def test_parse_sampler_name_convert_automatic_and_errors():
    assert parse_sampler_name("DPM++ 2M Karras", convert_automatic=True) == ("DPM++ 2M", "Automatic")
    assert parse_sampler_name("Euler Karras", convert_automatic=True) == ("Euler", "Karras")
    with pytest.raises(KeyError, match="DPM\\+\\+ 2M"):
        parse_sampler_name("DPM++ 4M SDE Karras")
    with pytest.raises(KeyError):
        parse_sampler_name("Euler", "Zigzag")
