"""Sampler registry: A1111 names and aliases -> pure sampler functions over a denoiser.

Each sampler lives in the file of its family with k-diffusion's signature (see `common.py`):

| file | samplers |
|---|---|
| `euler.py` | Euler, Euler a |
| `heun.py` | Heun, DPM2, DPM2 a |
| `lms.py` | LMS |
| `dpmpp.py` | DPM++ 2M, DPM++ 2S a |
| `dpmpp_sde.py` | DPM++ SDE, DPM++ 2M SDE (+ Heun), DPM++ 3M SDE (Brownian-tree noise, `sdwebui.core.brownian`) |
| `dpm_fast.py` | DPM fast, DPM adaptive |
| `restart.py` | Restart (A1111's own) |
| `ddim.py` | DDIM, DDIM CFG++ |
| `plms.py` | PLMS |
| `unipc.py` | UniPC |
| `lcm.py` | LCM |

`registry.py`: `SAMPLERS` maps A1111's display name to a `SamplerSpec`, in A1111 1.10's menu order (its k-diffusion
table, then the timestep samplers, then LCM); `find_sampler` looks names and aliases up case-insensitively;
`parse_sampler_name` splits legacy combined names such as "DPM++ 2M Karras".
`resolve.py`: `resolve_sampling` is what everything else calls: names in, a `ResolvedSampling` (spec + schedule)
out, or a `ParamError` on `sampler` / `scheduler`.

Schedules are orthogonal (A1111 >= 1.9, ComfyUI): a `SamplerSpec` only says which schedule "Automatic" means for
it (A1111's per-sampler `scheduler` option): Karras for DPM++ 2M, the model's own uniform schedule for Euler, DDIM's
timestep spacing for DDIM/PLMS (what A1111's timestep samplers use), ... A1111's timestep samplers (DDIM, DDIM CFG++,
PLMS, UniPC) ignore the schedule type; ours honour it and default to the equivalent schedule.
"""

from __future__ import annotations

from sdwebui.core.samplers.common import default_noise_sampler, get_ancestral_step, to_d
from sdwebui.core.samplers.ddim import sample_ddim, sample_ddim_cfgpp
from sdwebui.core.samplers.dpm_fast import sample_dpm_adaptive, sample_dpm_fast
from sdwebui.core.samplers.dpmpp import sample_dpmpp_2m, sample_dpmpp_2s_ancestral
from sdwebui.core.samplers.dpmpp_sde import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_dpmpp_sde
from sdwebui.core.samplers.euler import sample_euler, sample_euler_ancestral
from sdwebui.core.samplers.heun import sample_dpm_2, sample_dpm_2_ancestral, sample_heun
from sdwebui.core.samplers.lcm import sample_lcm
from sdwebui.core.samplers.lms import sample_lms
from sdwebui.core.samplers.plms import sample_plms
from sdwebui.core.samplers.registry import (
    SAMPLERS,
    SamplerSpec,
    UnknownSamplerError,
    find_sampler,
    parse_sampler_name,
    sampler_names,
)
from sdwebui.core.samplers.resolve import MODEL_OWN_SCHEDULES, ResolvedSampling, resolve_sampling
from sdwebui.core.samplers.restart import sample_restart
from sdwebui.core.samplers.unipc import sample_unipc

__all__ = [
    "SamplerSpec",
    "ResolvedSampling",
    "resolve_sampling",
    "MODEL_OWN_SCHEDULES",
    "SAMPLERS",
    "UnknownSamplerError",
    "find_sampler",
    "sampler_names",
    "parse_sampler_name",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_lms",
    "sample_heun",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpmpp_2m",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_sde",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "sample_dpm_fast",
    "sample_dpm_adaptive",
    "sample_restart",
    "sample_ddim",
    "sample_ddim_cfgpp",
    "sample_plms",
    "sample_unipc",
    "sample_lcm",
    "to_d",
    "get_ancestral_step",
    "default_noise_sampler",
]
