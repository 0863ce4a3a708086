"""ControlNet units inside the UNet call, as sd-webui-controlnet's `hook.py` applies them.

Every UNet call (the CFG pass: cond and uncond rows in one batch) first runs each active unit's ControlNet on the
same latents, timesteps and text conditioning, with the unit's control map at the latent's size (x 8), and adds the
scaled residuals of all units to the UNet's down blocks and mid block (diffusers' `down_block_additional_residuals`
/ `mid_block_additional_residual`). The hires pass gets its map at the hires size, as the extension's
`hr_hint_cond`; a unit's `hr_option` ("Both", "Low res only", "High res only") says which passes it acts on, and
canny / mlsd maps use the soft weights in the hires pass, as the extension forces them there.

- *weight*: every residual times the unit's weight (a unit of weight 0 is not run at all, so the image is
  bit-identical to one without it).
- *guidance start / end*: a unit acts while the sampling progress p satisfies start <= p <= end (the extension's
  `guidance_stopped`); start >= end (or start = end = 1) leaves it out. The extension counts p in sampler calls
  over the steps; the UNet call sees only its timestep, so p here is the fraction of the run's timestep range
  already covered, `(t_first - t) / t_first` — the same as the step fraction for A1111's default uniform
  schedules, and a monotone stand-in for the others.
- *control modes* (the extension's soft injection, `ControlMode`): Balanced — the weight on every residual;
  "My prompt is more important" — residual i of 13 scaled by weight * 0.825^(12 - i), so the deepest block gets the
  full weight and the shallow ones less; "ControlNet is more important" — those soft weights and the control on
  the conditional rows only (`cond_mark`: the uncond pass runs without it, so CFG pushes toward the control).
  SDXL's 10 residuals take the first 10 of the 13 soft weights, as the extension does.

T2I-Adapters (the extension's `ControlModelType.T2I_Adapter`): the adapter runs once per map size on the control map
(its first channel for one-channel adapters, as the extension's `PlugableAdapter`), and its features are added
inside the UNet's down path, where the extension adds `total_t2i_adapter_embedding` (LDM input blocks 2, 5, 8, 11;
SDXL: 3, 5, 8 and after the middle block) — diffusers' `down_intrablock_additional_residuals`, which lands in the
same places. Weight, guidance start / end and hr_option as for ControlNets; soft injection scales the features by
weight * (0.25, 0.62, 0.825, 1.0), the extension's adapter soft weights; "ControlNet is more important" puts them on
the conditional rows only.

IP-Adapters (`ControlModelType.IPAdapter`): the unit's image goes through the CLIP image encoder once (its image
embeds, or for plus / full-face adapters the penultimate hidden states) and the adapter's image projection; the
unconditional rows get the projection of zero embeds (plus: of a zero image's hidden states), as diffusers'
`prepare_ip_adapter_image_embeds` does. For the UNet calls where the unit acts, each cross-attention's processor is
wrapped (`IPAttention`, set on the UNet for that call only and restored after it) to add
`weight * to_out(attention(q, to_k_ip(tokens), to_v_ip(tokens)))` to the text attention's output — diffusers'
`IPAdapterAttnProcessor2_0` arithmetic around the UNet's own attention processor, so the text path is untouched.

reference_only / reference_adain / reference_adain+attn (`ControlModelType.AttentionInjection`, no model): before
each UNet call where the unit acts, the reference image's latent (VAE-encoded at the generation size, the unit's
resize mode), noised to the call's timestep (`q_sample`; the noise from a generator seeded by the batch's seed,
where the extension draws unseeded noise, so that a seed gives the same image again), goes through the same UNet ("write"): each self-attention with rank < weight keeps
its input (ranks: i / n over the transformer blocks sorted by width, widest first), and for AdaIN the chosen blocks
keep their per-channel mean / variance. The real call then "reads": self-attention attends to its own tokens and
the reference's; AdaIN renormalises the blocks' outputs to the reference's statistics. Style fidelity (slider 1;
cubed on SDXL; 1 for "ControlNet is more important", 0 for "My prompt is more important" and the hires pass) keeps
the unconditional rows without the reference by that fraction, as the extension's `style_cfg`. The AdaIN blocks are
the extension's (the middle block; LDM input blocks of the levels below the first, output blocks of the levels
above the last) taken at diffusers' resnet / attention outputs, which is where those LDM blocks end except for the
upsampler the last block of a level also holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

import cv2
import torch.nn.functional as F

from sdwebui.models.controlnet import ControlModel, LoadedControlNet
from sdwebui.models.ip_adapter import CLIP_MEAN, CLIP_STD, LoadedIPAdapter, cross_attention_names, image_features
from sdwebui.models.t2i_adapter import LoadedAdapter
from sdwebui.pipelines.context import ModelCall
from sdwebui.pipelines.controlnet_preprocess import (
    fit_control_map,
    pixel_perfect_resolution,
    run_preprocessor,
)
from sdwebui.pipelines.controlnet_units import CONTROL_MODES, HIRES_OPTIONS

SOFT_BASE = 0.825
ADAPTER_SOFT = (0.25, 0.62, 0.825, 1.0)
"""The extension's soft weights for a T2I-Adapter's four features."""


@dataclass
class ActiveUnit:
    """One enabled unit of a run: its checked fields, its ControlNet, and its input: `source()` gives (the input
    image as uint8 RGB, the resize mode), read at the first step (img2img's init image is known only then)."""

    unit: dict
    controlnet: ControlModel
    """The unit's model: a ControlNet, a T2I-Adapter or an IP-Adapter."""
    source: Callable[[], tuple[np.ndarray, str]]
    seed: Callable[[], int] = lambda: 0
    in_hires: Callable[[int, int], bool] = lambda height, width: False
    """Whether a UNet call at (height, width) pixels is the hires fix's second pass."""
    annotators: object = None
    """`models/ControlNetAnnotators` (a Path): where weighted preprocessors find their weights."""
    placement: object = None
    """The checkpoint's `ModelPlacement`: in medvram / lowvram the unit's models (ControlNet, adapter, image
    encoder) live on the offload device and are lent to the device only while they run."""
    encoder: Callable[[], object] | None = None
    """IP-Adapter units: the CLIP image encoder (loaded when first needed)."""
    encode: Callable[[np.ndarray], torch.Tensor] | None = None
    """Reference units: uint8 RGB -> the checkpoint's scaled latents (its VAE)."""
    reference_seed: Callable[[], int] = lambda: 0
    """Reference units: the seed of the reference's noise."""
    _latents: dict = field(default_factory=dict)
    _noise: torch.Generator | None = None
    _maps: dict = field(default_factory=dict)
    _features: dict = field(default_factory=dict)
    _tokens: tuple | None = None

    def control_map(self, height: int, width: int) -> np.ndarray:
        """The preprocessed map fitted to (height, width) pixels (cached per size)."""
        key = (height, width)
        if key not in self._maps:
            unit = self.unit
            image, resize_mode = self.source()
            resolution = unit["processor_res"]
            if unit["pixel_perfect"]:
                resolution = pixel_perfect_resolution(image, height, width, resize_mode)
            detected = run_preprocessor(unit["module"], image, resolution, unit["threshold_a"],
                                        unit["threshold_b"], seed=self.seed(), annotators=self.annotators)
            self._maps[key] = fit_control_map(detected, resize_mode, height, width)
        return self._maps[key]

    def lend(self, part: str, modules: list, *, every_step: bool = False):
        """`modules` on the device for the block when the checkpoint offloads (medvram, lowvram); `every_step`:
        they run with every UNet call, and medvram keeps them beside the UNet (`ModelPlacement.lend`)."""
        placement = self.placement
        if placement is None or not placement.offloads:
            return contextlib.nullcontext()
        return placement.lend(part, modules, every_step=every_step)

    def hint(self, height: int, width: int, device, dtype) -> torch.Tensor:
        """The map as the ControlNet takes it: [1, 3, H, W] in [0, 1] (the extension's `get_pytorch_control`)."""
        detected = self.control_map(height, width)
        # (a copy: a map made from a PIL image is a read-only array, which torch warns about)
        return torch.from_numpy(np.array(detected)).to(device, torch.float32).div(255.0) \
            .permute(2, 0, 1)[None].to(dtype)

    def adapter_features(self, height: int, width: int, device, dtype) -> list[torch.Tensor]:
        """The T2I-Adapter's features for the map at (height, width) pixels ([1, C, h, w] each; cached per size).
        The map is made at a multiple of the adapter's pixel-unshuffle factor (SDXL's 16), so its features have the
        UNet's (ceil-rounded) sizes."""
        key = (height, width)
        if key not in self._features:
            adapter: LoadedAdapter = self.controlnet
            step = adapter.unshuffle
            hint = self.hint(-(-height // step) * step, -(-width // step) * step, device, dtype)
            if adapter.gray_input:
                hint = hint[:, :1]
            with torch.no_grad(), self.lend("t2i_adapter", [adapter.model]):
                self._features[key] = [f.to(dtype) for f in adapter.model(hint)]
        return self._features[key]

    def ip_tokens(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) image tokens of an IP-Adapter unit, [1, N, cross-attention width] each (made once)."""
        if self._tokens is None:
            adapter: LoadedIPAdapter = self.controlnet
            encoder = self.encoder()
            with self.lend("clip_vision", [encoder]), self.lend("ip_adapter", [adapter.image_proj]):
                image, _ = self.source()
                pixels = clip_pixels(image, int(encoder.config.image_size), device, encoder.dtype)
                hidden = adapter.uses_hidden_states
                cond = image_features(encoder, pixels, hidden)
                uncond = image_features(encoder, torch.zeros_like(pixels), hidden) if hidden else \
                    torch.zeros_like(cond)
                proj_dtype = next(adapter.image_proj.parameters()).dtype
                with torch.no_grad():
                    self._tokens = tuple(adapter.project(f.to(proj_dtype)).to(device, dtype) for f in (cond, uncond))
        return self._tokens

    def reference_latent(self, height: int, width: int) -> torch.Tensor:
        """The reference image at (height, width) pixels as latents [1, C, h, w] (cached per size)."""
        key = (height, width)
        if key not in self._latents:
            self._latents[key] = self.encode(self.control_map(height, width))
        return self._latents[key]

    def reference_noise(self, like: torch.Tensor) -> torch.Tensor:
        if self._noise is None:
            self._noise = torch.Generator("cpu").manual_seed(int(self.reference_seed()) & 0xFFFFFFFF)
        return torch.randn(like.shape, generator=self._noise, dtype=torch.float32).to(like.device, like.dtype)

    def active_at(self, progress: float, hires: bool = False) -> bool:
        start, end = self.unit["guidance_start"], self.unit["guidance_end"]
        option = self.unit.get("hr_option", HIRES_OPTIONS[0])
        if (option == HIRES_OPTIONS[1] and hires) or (option == HIRES_OPTIONS[2] and not hires):
            return False
        return self.unit["weight"] > 0 and start < end and start <= progress <= end


def control_scales(unit: dict, count: int, is_sdxl: bool, forced_soft: bool = False) -> list[float]:
    """Each residual's scale: the weight, or the extension's soft-injection weights for the two other modes (and,
    `forced_soft`, for canny / mlsd maps in the hires pass, where the extension forces them)."""
    weight = float(unit["weight"])
    if unit["control_mode"] == CONTROL_MODES[0] and not forced_soft:
        return [weight] * count
    if count == 13 or is_sdxl:
        soft = [weight * SOFT_BASE ** float(12 - i) for i in range(13)]
        return (soft + [weight] * count)[:count]
    return [weight * SOFT_BASE ** float(count - 1 - i) for i in range(count)]


def adapter_scales(unit: dict, count: int, forced_soft: bool = False) -> list[float]:
    """Each T2I-Adapter feature's scale: the weight, or the extension's adapter soft weights (a count other than
    four keeps the deepest ones; the shallower take the first soft weight)."""
    weight = float(unit["weight"])
    if unit["control_mode"] == CONTROL_MODES[0] and not forced_soft:
        return [weight] * count
    soft = [ADAPTER_SOFT[0]] * max(0, count - len(ADAPTER_SOFT)) + list(ADAPTER_SOFT[-count:])
    return [weight * s for s in soft]


def clip_pixels(image: np.ndarray, size: int, device, dtype) -> torch.Tensor:
    """A uint8 RGB(A) array as the CLIP image encoder takes it: resized to `size` with OpenCV's area filter (the
    extension's `cv2.resize(..., (224, 224), INTER_AREA)`) and normalised with CLIP's mean and std. A fourth
    channel is the unit's mask: the normalised pixels are multiplied by (255 - mask) / 255, so what the mask paints
    is left out, as the extension's `ClipVisionDetector` does."""
    resized = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_AREA)
    pixels = torch.from_numpy(np.ascontiguousarray(resized[:, :, :3])).float().div(255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    pixels = (pixels - mean) / std
    if resized.ndim == 3 and resized.shape[2] == 4:
        pixels = pixels * torch.from_numpy(255.0 - resized[:, :, 3].astype(np.float32)).div(255.0)[None]
    return pixels[None].to(device, dtype)


class IPAttention:
    """A cross-attention processor: the UNet's own, plus each active IP-Adapter's image attention
    (diffusers' `IPAdapterAttnProcessor2_0`: `to_out(text + scale * ip) = to_out(text) + scale * W_out ip`)."""

    def __init__(self, base, layers: list[tuple[torch.nn.Linear, torch.nn.Linear, torch.Tensor, float]]):
        self.base = base
        self.layers = layers

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.base(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                        attention_mask=attention_mask, temb=temb, **kwargs)
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        heads = attn.heads
        head_dim = query.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        for to_k, to_v, tokens, scale in self.layers:
            key = to_k(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
            value = to_v(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
            ip = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
            ip = ip.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
            out = out + scale * F.linear(ip, attn.to_out[0].weight) / attn.rescale_output_factor
        return out


class ip_attention:
    """Within the block, the UNet's cross-attentions also attend to the IP-Adapters' image tokens (the processors
    are put back on exit, whatever happens)."""

    def __init__(self, unet, adapters: list[tuple[LoadedIPAdapter, torch.Tensor, float]]):
        self.unet = unet
        self.adapters = adapters
        self.saved: dict | None = None

    def __enter__(self):
        self.saved = dict(self.unet.attn_processors)
        patched = dict(self.saved)
        for k, name in enumerate(cross_attention_names(self.unet)):
            layers = [(adapter.kv[k][0], adapter.kv[k][1], tokens, scale) for adapter, tokens, scale in self.adapters]
            patched[name] = IPAttention(self.saved[name], layers)
        self.unet.set_attn_processor(patched)
        return self

    def __exit__(self, *exc):
        self.unet.set_attn_processor(dict(self.saved))
        return False


REFERENCE_MODULES = ("reference_only", "reference_adain", "reference_adain+attn")


class _ReferenceState:
    """What the reference processors and hooks do now: "write" (keep what they see, when their rank is under
    `weight`), "read" (use what was kept), or nothing."""

    def __init__(self):
        self.mode: str | None = None
        self.weight = 0.0
        self.style = 0.0
        self.attn = False
        self.adain = False
        self.uncond_rows: torch.Tensor | None = None


class ReferenceAttention:
    """A self-attention processor that keeps (write) or attends to (read) the reference's tokens."""

    def __init__(self, base, state: _ReferenceState, rank: float):
        self.base, self.state, self.rank = base, state, rank
        self.bank: list[torch.Tensor] = []
        self.styles: list[float] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        state = self.state
        if state.mode == "write" and state.attn and state.weight > self.rank:
            self.bank.append(hidden_states.detach().clone())
            self.styles.append(state.style)
        elif state.mode == "read" and self.bank:
            context = torch.cat([hidden_states, *self.bank], dim=1)
            with_ref = self.base(attn, hidden_states, encoder_hidden_states=context, attention_mask=attention_mask,
                                 temb=temb, **kwargs)
            style = sum(self.styles) / len(self.styles)
            self.bank, self.styles = [], []
            rows = state.uncond_rows
            if rows is None or not len(rows) or style <= 1e-5:
                return with_ref
            plain = with_ref.clone()
            plain[rows] = self.base(attn, hidden_states[rows], encoder_hidden_states=None,
                                    attention_mask=attention_mask, temb=temb, **kwargs)
            return style * plain + (1.0 - style) * with_ref
        return self.base(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, temb=temb, **kwargs)


class _AdaIN:
    """A forward hook keeping (write) a block output's per-channel mean / variance, or renormalising (read) the
    output to the kept statistics (the extension's `hacked_group_norm_forward`)."""

    EPS = 1e-6

    def __init__(self, state: _ReferenceState, rank: float):
        self.state, self.rank = state, rank
        self.means: list[torch.Tensor] = []
        self.vars: list[torch.Tensor] = []
        self.styles: list[float] = []

    def __call__(self, module, inputs, output):
        rest = None
        if isinstance(output, tuple):  # a transformer block called with return_dict=False
            output, *rest = output
        state = self.state
        if state.mode == "write" and state.adain and state.weight > self.rank:
            var, mean = torch.var_mean(output, dim=(2, 3), keepdim=True, correction=0)
            self.means.append(mean)
            self.vars.append(var)
            self.styles.append(state.style)
        elif state.mode == "read" and self.means:
            var, mean = torch.var_mean(output, dim=(2, 3), keepdim=True, correction=0)
            std = var.clamp_min(self.EPS) ** 0.5
            mean_ref = sum(self.means) / len(self.means)
            std_ref = (sum(self.vars) / len(self.vars)).clamp_min(self.EPS) ** 0.5
            style = sum(self.styles) / len(self.styles)
            self.means, self.vars, self.styles = [], [], []
            normed = (output - mean) / std * std_ref + mean_ref
            rows = state.uncond_rows
            if rows is not None and len(rows) and style > 1e-5:
                plain = normed.clone()
                plain[rows] = output[rows].to(plain.dtype)
                normed = style * plain + (1.0 - style) * normed
            output = normed.to(output.dtype)
        return (output, *rest) if rest is not None else output


def _adain_blocks(unet) -> list[tuple[torch.nn.Module, float]]:
    """The modules whose outputs AdaIN renormalises, with their ranks (the extension's `gn_weight`, doubled)."""
    def level_blocks(block) -> list[torch.nn.Module]:
        attentions = getattr(block, "attentions", None)
        return list(attentions) if attentions is not None and len(attentions) else list(block.resnets)

    inputs = [m for block in list(unet.down_blocks)[1:] for m in level_blocks(block)]
    outputs = [m for block in list(unet.up_blocks)[:-1] for m in level_blocks(block)]
    ranked = [(unet.mid_block, 0.0)]
    ranked += [(m, 2.0 * (1.0 - w / len(inputs))) for w, m in enumerate(inputs)]
    ranked += [(m, 2.0 * w / len(outputs)) for w, m in enumerate(outputs)]
    return ranked


class reference_scope:
    """Within the block, the UNet's self-attentions and AdaIN blocks take part in reference units (processors and
    hooks removed on exit)."""

    def __init__(self, unet):
        from diffusers.models.attention_processor import Attention

        self.unet = unet
        self.state = _ReferenceState()
        attns = [name for name, module in unet.named_modules()
                 if isinstance(module, Attention) and name.endswith("attn1")]
        widths = {name: int(unet.get_submodule(name).to_q.in_features) for name in attns}
        order = sorted(attns, key=lambda name: -widths[name])  # stable: module order among equal widths
        self.ranks = {f"{name}.processor": i / len(order) for i, name in enumerate(order)}
        self.saved: dict | None = None
        self.handles: list = []

    def __enter__(self):
        self.saved = dict(self.unet.attn_processors)
        patched = dict(self.saved)
        for name, rank in self.ranks.items():
            patched[name] = ReferenceAttention(self.saved[name], self.state, rank)
        self.unet.set_attn_processor(patched)
        self.handles = [module.register_forward_hook(_AdaIN(self.state, rank))
                        for module, rank in _adain_blocks(self.unet)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.unet.set_attn_processor(dict(self.saved))
        return False


def style_fidelity(unit: dict, is_sdxl: bool, hires: bool) -> float:
    """The extension's `current_style_fidelity` for a reference unit."""
    if unit["control_mode"] == CONTROL_MODES[2]:
        return 1.0
    if unit["control_mode"] == CONTROL_MODES[1] or hires:
        return 0.0
    style = min(1.0, max(0.0, float(unit["threshold_a"])))
    return style ** 3.0 if is_sdxl else style


def _call_with_ip(call, unet, adapters, x, t, encoder_hidden_states, added_cond_kwargs, c_concat, extra):
    if adapters and unet is not None:
        with ip_attention(unet, adapters):
            return call(x, t, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, c_concat=c_concat, **extra)
    return call(x, t, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, c_concat=c_concat, **extra)


class RunProgress:
    """The sampling progress of the current run from the timesteps the UNet sees: a call at a later (higher)
    timestep than the last one starts a new run (the next batch, the hires pass)."""

    def __init__(self):
        self.first: float | None = None
        self.last: float | None = None

    def at(self, t: torch.Tensor) -> float:
        now = float(torch.as_tensor(t).max())
        if self.first is None or self.last is None or now > self.last + 1e-4:
            self.first = now
        self.last = now
        return 0.0 if self.first <= 0 else min(1.0, max(0.0, (self.first - now) / self.first))


def controlnet_call(call: ModelCall, units: Sequence[ActiveUnit], dtype: torch.dtype, unet=None,
                    alphas_cumprod: torch.Tensor | None = None) -> ModelCall:
    """`call` with the units' residuals, adapter features, image attention and reference injection added to every
    UNet call (see the module docstring); `unet`: the UNet whose attentions IP-Adapter and reference units patch for
    the call; `alphas_cumprod`: its noise schedule (reference units noise their latent with it)."""
    progress = RunProgress()

    def wrapped(x, t, encoder_hidden_states, added_cond_kwargs=None, c_concat=None, cond_mark=None, **extra):
        done = progress.at(t)
        height, width = x.shape[-2] * 8, x.shape[-1] * 8
        hires = any(unit.in_hires(height, width) for unit in units)
        active = [unit for unit in units if unit.active_at(done, hires)]
        if cond_mark is not None:
            extra["cond_mark"] = cond_mark
        mark = cond_mark.to(x.device, dtype).view(-1, 1, 1, 1) if cond_mark is not None else None
        rows = x.shape[0]
        down_total: list[torch.Tensor] | None = None
        mid_total: torch.Tensor | None = None
        for unit in (u for u in active if isinstance(u.controlnet, LoadedControlNet)):
            model = unit.controlnet.model
            hint = unit.hint(height, width, x.device, dtype)
            if getattr(model.config, "conditioning_channels", 3) == 1:  # a grayscale ControlNet (control-LoRA recolor)
                hint = hint.mean(dim=1, keepdim=True)
            hint = hint.expand(rows, -1, -1, -1)
            with unit.lend("controlnet", [model], every_step=True):
                down, mid = model(x.to(dtype), t, encoder_hidden_states=encoder_hidden_states, controlnet_cond=hint,
                                  added_cond_kwargs=added_cond_kwargs, return_dict=False)
            residuals = [*down, mid]
            forced = hires and any(name in unit.unit["module"] for name in ("canny", "mlsd"))
            scales = control_scales(unit.unit, len(residuals), unit.controlnet.is_sdxl, forced)
            residuals = [r * s for r, s in zip(residuals, scales)]
            if unit.unit["control_mode"] == CONTROL_MODES[2] and mark is not None:
                residuals = [r * mark for r in residuals]
            *down, mid = residuals
            down_total = list(down) if down_total is None else [a + b for a, b in zip(down_total, down)]
            mid_total = mid if mid_total is None else mid_total + mid
        features_total: list[torch.Tensor] | None = None
        for unit in (u for u in active if isinstance(u.controlnet, LoadedAdapter)):
            features = unit.adapter_features(height, width, x.device, dtype)
            forced = hires and any(name in unit.unit["module"] for name in ("canny", "mlsd"))
            scales = adapter_scales(unit.unit, len(features), forced)
            features = [f.expand(rows, -1, -1, -1) * s for f, s in zip(features, scales)]
            if unit.unit["control_mode"] == CONTROL_MODES[2] and mark is not None:
                features = [f * mark for f in features]
            features_total = features if features_total is None else \
                [a + b for a, b in zip(features_total, features)]
        if down_total is not None:
            given_down = extra.pop("down_block_additional_residuals", None)
            given_mid = extra.pop("mid_block_additional_residual", None)
            if given_down is not None:
                down_total = [a + b for a, b in zip(given_down, down_total)]
            if given_mid is not None:
                mid_total = given_mid + mid_total
            extra["down_block_additional_residuals"] = tuple(down_total)
            extra["mid_block_additional_residual"] = mid_total
        if features_total is not None:
            given = extra.pop("down_intrablock_additional_residuals", None)
            if given is not None:
                features_total = [a + b for a, b in zip(given, features_total)]
            extra["down_intrablock_additional_residuals"] = list(features_total)  # the UNet pops from it
        adapters = []
        for unit in (u for u in active if isinstance(u.controlnet, LoadedIPAdapter)):
            cond, uncond = unit.ip_tokens(x.device, dtype)
            tokens = cond.expand(rows, -1, -1) if mark is None else \
                mark.view(-1, 1, 1) * cond + (1 - mark.view(-1, 1, 1)) * uncond
            adapters.append((unit.controlnet, tokens, float(unit.unit["weight"])))
        lent = contextlib.ExitStack()
        for unit in (u for u in active if isinstance(u.controlnet, LoadedIPAdapter)):
            lent.enter_context(unit.lend("ip_adapter", [layer for pair in unit.controlnet.kv for layer in pair],
                                         every_step=True))
        with lent:
            return _finish(call, unet, alphas_cumprod, active, adapters, x, t, encoder_hidden_states,
                           added_cond_kwargs, c_concat, cond_mark, extra, rows, height, width, hires)

    return wrapped


def _finish(call, unet, alphas_cumprod, active, adapters, x, t, encoder_hidden_states, added_cond_kwargs,
            c_concat, cond_mark, extra, rows, height, width, hires):
    """The UNet call with the IP-Adapter tokens and, for reference units, their write pass first."""
    references = [u for u in active if u.unit["module"] in REFERENCE_MODULES]
    if not references or unet is None or alphas_cumprod is None:
        return _call_with_ip(call, unet, adapters, x, t, encoder_hidden_states, added_cond_kwargs, c_concat, extra)
    is_sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
    with reference_scope(unet) as scope:
        state = scope.state
        steps = torch.as_tensor(t, device=alphas_cumprod.device).float().round().long().clamp(
            0, len(alphas_cumprod) - 1)
        alpha = alphas_cumprod[steps].to(x.device, torch.float32).reshape(-1, 1, 1, 1)
        for unit in references:
            latent = unit.reference_latent(height, width).to(x.device, torch.float32)
            latent = latent.expand(rows, -1, -1, -1)
            noisy = alpha.sqrt() * latent + (1 - alpha).sqrt() * unit.reference_noise(latent)
            module = unit.unit["module"]
            state.mode, state.weight = "write", float(unit.unit["weight"])
            state.style = style_fidelity(unit.unit, is_sdxl, hires)
            state.attn = module in ("reference_only", "reference_adain+attn")
            state.adain = module in ("reference_adain", "reference_adain+attn")
            ref_concat = None if c_concat is None else \
                torch.cat([torch.zeros_like(latent[:, :1]), latent], dim=1)
            with torch.no_grad():
                call(noisy.to(x.dtype), t, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs,
                     c_concat=ref_concat)
        state.mode = "read"
        state.uncond_rows = None if cond_mark is None else torch.nonzero(cond_mark == 0).flatten().to(x.device)
        return _call_with_ip(call, unet, adapters, x, t, encoder_hidden_states, added_cond_kwargs, c_concat, extra)


__all__ = ["ActiveUnit", "controlnet_call", "control_scales", "adapter_scales", "RunProgress", "IPAttention",
           "ip_attention", "clip_pixels", "reference_scope", "style_fidelity", "REFERENCE_MODULES"]
