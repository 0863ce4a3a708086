"""Train the demo model from scratch: a small SD-architecture checkpoint on the procedural shapes dataset.

    python -m sdwebui.demo.train --out sdwebui/demo/sdwebui-demo-shapes-v1.safetensors

Three phases, the same parts SD 1.x has, built with the same classes the loader builds:

1. `AutoencoderKL` (factor 8, 4 latent channels), L1 + MSE + an edge term + a small KL term, weighted towards
   the shapes' pixels (they are what the prompt is about, and only 5-20 % of the image). Afterwards the
   latent code is centred and rescaled per channel (folded into `quant_conv` / `post_quant_conv`) so that SD's
   own `scaling_factor` 0.18215 gives unit-variance latents: the checkpoint needs no special case.
2. The dataset's latents are encoded once (posterior mean and std), so diffusion training never runs the VAE.
3. `CLIPTextModel` (CLIP-L's vocabulary and 77 positions, fed by the real CLIP BPE tokenizer, padded with
   `<|endoftext|>` as A1111 does) and `UNet2DConditionModel` (SD 1.x's block structure) trained jointly:
   epsilon prediction, SD's scaled-linear betas (0.00085 -> 0.012, 1000 steps), 10 % of captions replaced by
   the empty prompt "" (so classifier-free guidance with A1111's empty negative prompt works), Min-SNR-5
   loss weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"), an
   auxiliary loss that makes the text encoder keep the caption's attributes apart (`text_aux_weight`) and an
   EMA of the weights, which is what gets saved: after `stop_after` steps of the `unet_steps` schedule.

Everything is seeded; on the same machine and thread count the run is reproducible.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdwebui.demo import dataset as ds
from sdwebui.models.family import ModelFamily
from sdwebui.models.ldm_layout import diffusers_to_ldm_checkpoint

SD_SCALING_FACTOR = 0.18215
MODEL_NAME = "sdwebui-demo-shapes-v1"


@dataclass
class TrainConfig:
    out: str = "sdwebui/demo/sdwebui-demo-shapes-v1.safetensors"
    seed: int = 0
    threads: int = 1
    n_images: int = 10000
    two_shape_prob: float = 0.15
    # VAE
    vae_steps: int = 3600
    vae_batch: int = 8
    vae_fg_weight: float = 9.0
    vae_lr: float = 1.5e-3
    vae_kl: float = 1e-6
    vae_edge_weight: float = 1.0
    """Weight of an L1 loss on horizontal and vertical pixel differences. Plain L1/MSE let a small square come
    back as a round blob (about a quarter of the small shapes changed class in a round trip after 1,800
    steps); the edge term makes corners and straight sides cost what they are worth to the prompt."""
    # text encoder + UNet
    unet_steps: int = 12000
    """Length of the learning-rate schedule (warm-up, then cosine to 10 %)."""
    stop_after: int | None = 5000
    """Stop after this many steps of the `unet_steps` schedule and export (None: run it all). Held-out colour
    accuracy peaked early and then fell as the model fitted the training combinations (local sampler: 100 % at
    5,000 steps, 79 % at 12,000), so the shipped model is the EMA after 5,000 steps of the 12,000-step run."""
    batch: int = 64
    lr: float = 8e-4
    warmup: int = 100
    ema: float = 0.995
    """EMA decay of the saved weights: a window of ~200 steps. 0.999 (a ~1000-step window) lags far behind
    in a run of a few thousand steps."""
    min_snr_gamma: float = 5.0
    text_aux_weight: float = 0.1
    """Weight of an auxiliary loss that makes the text encoder say each single-shape caption's position,
    colour, shape and background from its (mean) hidden states (linear heads, dropped after training). Trained only
    through the UNet, the encoder let the position words collapse (left/right differ 10x less than
    colours), so the UNet never saw what it should bind to; 0 = off."""
    high_noise_weight: float = 1.0
    """Up to this factor more weight on high-noise steps (x min(1/SNR, factor)). In the epsilon loss a wrong
    layout at high noise costs only SNR x its x0 error (0.005x at t=999), so layout, which is decided there,
    is barely learned from the prompt; 1 = plain Min-SNR."""
    cond_dropout: float = 0.1
    sample_every: int = 1000
    work_dir: str = "bench/out/demo_train"
    resume: str | None = None
    """A `diffusion_raw.pt` of an earlier run to continue from (its `diffusion_ema.pt` beside it seeds the EMA);
    the run then trains `unet_steps` more steps with its own warm-up and cosine schedule."""
    # architecture
    vae_channels: tuple[int, ...] = (32, 32, 64, 64)
    vae_layers: int = 1
    vae_norm_groups: int = 8
    """GroupNorm groups in the VAE. SD's 32 would put one channel in each group at width 32: GroupNorm then
    normalises each channel over the image, and a flat background comes out as zero whatever its colour, so
    the decoder cannot paint flat colours. 8 groups keep 4 channels per group, as SD's VAE has at width 128.
    Written to the checkpoint's `sdwebui.config` metadata, which the loader applies."""
    unet_channels: tuple[int, ...] = (64, 64, 96, 96)
    unet_layers: int = 1
    text_hidden: int = 64
    text_layers: int = 3
    notes: dict = field(default_factory=dict)


# ---- model builders -----------------------------------------------------------------------------------


def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels), layers_per_block=cfg.vae_layers,
        norm_num_groups=cfg.vae_norm_groups,
        sample_size=ds.SIZE, scaling_factor=SD_SCALING_FACTOR,
    )


def build_text_encoder(cfg: TrainConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    # CLIP-L's conventions where shapes cannot tell them: 64-dim heads, quick_gelu, eps 1e-5.
    config = CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden, num_hidden_layers=cfg.text_layers,
        num_attention_heads=max(1, cfg.text_hidden // 64), hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=cfg.text_hidden,
    )
    return CLIPTextModel(config)


def build_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=ds.SIZE // 8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        block_out_channels=tuple(cfg.unet_channels), layers_per_block=cfg.unet_layers,
        cross_attention_dim=cfg.text_hidden, attention_head_dim=8,  # SD 1.x: 8 heads per block
        norm_num_groups=32,
    )


def sd_alphas_cumprod() -> torch.Tensor:
    """SD's training schedule: scaled-linear betas 0.00085 -> 0.012 over 1000 steps."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


# ---- tokenizer ----------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@lru_cache(maxsize=1)
def clip_tokenizer():
    """The CLIP ViT-L/14 BPE tokenizer: the project's shipped one when available, else rebuilt from
    open_clip's `bpe_simple_vocab_16e6.txt.gz` (same ids: OpenAI's vocabulary)."""
    try:
        from sdwebui.models.tokenizer import load_clip_tokenizer  # type: ignore[attr-defined]

        return load_clip_tokenizer("clip_l")
    except (ImportError, AttributeError):
        pass
    import open_clip
    from transformers import CLIPTokenizer

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(m.split()) for m in gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges)


def tokenize(prompts: list[str]) -> torch.Tensor:
    """77 ids per prompt: BOS, up to 75 tokens, EOS, then EOS as padding (A1111's SD 1.x chunk)."""
    tok = clip_tokenizer()
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, add_special_tokens=True).input_ids
    return torch.tensor(ids, dtype=torch.long)


def encode_text(text_encoder, prompts: list[str]) -> torch.Tensor:
    """SD 1.x conditioning: the last hidden state (after the final layer norm), CLIP skip 1."""
    return text_encoder(tokenize(prompts)).last_hidden_state


# ---- phases -------------------------------------------------------------------------------------------


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def _image_differences(x: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical neighbour differences, side by side (N x C x (H-1) x (W-1) x 2)."""
    return torch.stack([x[:, :, 1:, :-1] - x[:, :, :-1, :-1], x[:, :, :-1, 1:] - x[:, :, :-1, :-1]], dim=-1)


def train_vae(cfg: TrainConfig, images: torch.Tensor, log, work: Path) -> torch.nn.Module:
    from tqdm import tqdm

    g = torch.Generator().manual_seed(cfg.seed + 1)
    vae = build_vae(cfg)
    with torch.no_grad():
        # Start the posterior nearly deterministic (std ~0.02). With log-variance 0 at init the sampled
        # latents are mostly noise and the decoder learns nothing until the encoder has outgrown it, which
        # takes thousands of steps that a CPU budget does not have; the KL term is tiny either way.
        vae.quant_conv.bias[vae.config.latent_channels :] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    n = images.shape[0]
    # Per-image background colour (median of the border), to weight the loss towards the shapes: they cover
    # 5-20 % of the pixels but carry everything the prompt asks for.
    border = torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    bg = border.median(dim=2).values[:, :, None, None]
    probe = images[:32]
    bar = tqdm(range(cfg.vae_steps), desc="vae", mininterval=5)
    for step in bar:
        for grp in opt.param_groups:
            grp["lr"] = _lr_at(step, cfg.vae_steps, cfg.vae_lr, 50)
        # Whole images: crops shift GroupNorm and mid-block attention statistics away from what the VAE sees
        # at inference, and an autoencoder trained on crops reconstructs whole images markedly worse.
        idx = torch.randint(0, n, (cfg.vae_batch,), generator=g)
        x = images[idx]
        fg = ((x - bg[idx]).abs().amax(dim=1, keepdim=True) > 0.1).float()
        w = 1.0 + cfg.vae_fg_weight * fg
        w = w / w.mean()
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        err = rec - x
        l1 = (err.abs() * w).mean()
        kl = post.kl().mean()
        edge = (_image_differences(rec) - _image_differences(x)).abs().mean()
        loss = l1 + 0.5 * (err.pow(2) * w).mean() + cfg.vae_edge_weight * edge + cfg.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.vae_steps - 1:
            bar.set_postfix(l1=f"{l1.item():.4f}")
            log(f"vae step {step} weighted l1 {l1.item():.4f} plain l1 {err.abs().mean().item():.4f} edge {edge.item():.4f} kl {kl.item():.1f}")
        if (step + 1) % 250 == 0:
            with torch.no_grad():
                _save_recon_grid(work / "vae_recon_progress.png", probe, vae.decode(vae.encode(probe).latent_dist.mean).sample)
    vae.eval()
    return vae


@torch.no_grad()
def normalise_vae_latents(vae, images: torch.Tensor, log) -> None:
    """Centre and scale each latent channel so that `latent * 0.18215` has zero mean and unit variance,
    by folding an affine map into `quant_conv` (encoder side) and its inverse into `post_quant_conv`."""
    means = []
    for chunk in images[:4096].split(256):
        means.append(vae.encode(chunk).latent_dist.mean)
    m = torch.cat(means)
    mu, sd = m.mean(dim=(0, 2, 3)), m.std(dim=(0, 2, 3))
    k = (1.0 / SD_SCALING_FACTOR) / sd  # per-channel gain
    qc, pqc = vae.quant_conv, vae.post_quant_conv
    lc = mu.numel()
    # quant_conv rows [0:lc] are the mean, [lc:2lc] the log-variance.
    qc.weight[:lc] *= k.view(-1, 1, 1, 1)
    qc.bias[:lc] = (qc.bias[:lc] - mu) * k
    qc.bias[lc:] += 2 * torch.log(k)
    # post_quant_conv(z') with z' = (z - mu) * k  ==  post_quant_conv(z)
    w = pqc.weight.clone()  # [out, in, 1, 1]
    pqc.bias += (w[:, :, 0, 0] @ mu)
    pqc.weight.copy_(w / k.view(1, -1, 1, 1))
    log(f"latent mean {mu.tolist()} std {sd.tolist()} -> gain {k.tolist()}")


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for chunk in images.split(256):
        post = vae.encode(chunk).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def _save_recon_grid(path: Path, x: torch.Tensor, rec: torch.Tensor) -> None:
    from PIL import Image

    def row(t):
        a = ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return np.concatenate(list(a), axis=1)

    arr = np.concatenate([row(x[:16]), row(rec[:16]), row(x[16:32]), row(rec[16:32])], axis=0)
    Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.Resampling.NEAREST).save(path)


class EMA:
    def __init__(self, modules: list[torch.nn.Module], decay: float):
        self.decay = decay
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        self.modules = modules
        self.resumed = False
        """A resumed EMA keeps its full decay from the first step (the warm-up ramp is for a fresh one)."""

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = self.decay if self.resumed else min(self.decay, (1 + step) / (10 + step))
        for s, m in zip(self.shadow, self.modules):
            for ps, pm in zip(s.parameters(), m.parameters()):
                ps.lerp_(pm, 1 - d)


FIXED_SAMPLE_PROMPTS = [
    "a red circle on the left, blue background",
    "a large yellow square in the center, black background",
    "a small green triangle at the top, white background",
    "a purple circle in the bottom right corner, orange background",
    "a large white triangle on the right, green background",
    "an orange square at the bottom, purple background",
    "a blue circle at the top left, yellow background",
    "a black square on the left and a white circle on the right, red background",
]


# ---- a minimal local sampler over diffusers modules (A1111's Euler a), for training-time grids -------


def _sd_sigmas() -> torch.Tensor:
    ac = sd_alphas_cumprod()
    return ((1 - ac) / ac).sqrt()


def _sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    ls = sigma.log()
    dists = ls - log_sigmas[:, None]
    low = dists.ge(0).cumsum(0).argmax(0).clamp(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = ((log_sigmas[low] - ls) / (log_sigmas[low] - log_sigmas[high])).clamp(0, 1)
    return (1 - w) * low + w * high


@torch.no_grad()
def local_txt2img(vae, text_encoder, unet, prompts: list[str], *, seed: int = 0, steps: int = 20,
                  cfg_scale: float = 7.0, size: int = ds.SIZE) -> np.ndarray:
    """k-diffusion's Euler ancestral over the discrete SD schedule (A1111's default spacing), eps model,
    CFG against the empty prompt. Returns N x size x size x 3 uint8. For training-time grids and for
    testing the training loop; the app itself uses `sdwebui.pipelines`."""
    sig_all = _sd_sigmas()
    log_sigmas = sig_all.log()
    t = torch.linspace(999, 0, steps)
    lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
    sigmas = torch.cat([((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp(), torch.zeros(1)])
    n = len(prompts)
    cond = encode_text(text_encoder, prompts)
    uncond = encode_text(text_encoder, [""]).expand(n, -1, -1)
    ctx = torch.cat([uncond, cond])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 4, size // 8, size // 8), generator=g) * sigmas[0]
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        ts = _sigma_to_t(s.view(1), log_sigmas).expand(2 * n)
        xin = torch.cat([x, x]) / (s**2 + 1).sqrt()
        eps = unet(xin, ts, ctx).sample
        eu, ec = eps.chunk(2)
        denoised = x - (eu + cfg_scale * (ec - eu)) * s
        s_up = min(float(s_next), math.sqrt(float(s_next**2 * (s**2 - s_next**2) / s**2)))
        s_down = math.sqrt(float(s_next**2) - s_up**2)
        x = x + (x - denoised) / s * (s_down - s)
        if s_next > 0:
            x = x + torch.randn(x.shape, generator=g) * s_up
    img = vae.decode(x / SD_SCALING_FACTOR).sample
    return ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_sample_grid(path: Path, vae, text_encoder, unet, prompts: list[str], seed: int = 0) -> None:
    from PIL import Image

    imgs = []
    for s in range(2):
        imgs.append(local_txt2img(vae, text_encoder, unet, prompts, seed=seed + s * 1000))
    arr = np.concatenate([np.concatenate(list(b), axis=1) for b in imgs], axis=0)
    Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.Resampling.NEAREST).save(path)


def train_diffusion(cfg: TrainConfig, latents, latent_stds, scenes, vae, log, work: Path):
    from tqdm import tqdm

    g = torch.Generator().manual_seed(cfg.seed + 2)
    rng = np.random.default_rng(cfg.seed + 3)
    text_encoder, unet = build_text_encoder(cfg), build_unet(cfg)
    if cfg.resume:
        raw = torch.load(cfg.resume, weights_only=True)
        text_encoder.load_state_dict(raw["text_encoder"])
        unet.load_state_dict(raw["unet"])
        log(f"resumed from {cfg.resume}")
    ema = EMA([text_encoder, unet], cfg.ema)
    ema_file = Path(cfg.resume).with_name("diffusion_ema.pt") if cfg.resume else None
    if ema_file is not None and ema_file.is_file():
        shadow = torch.load(ema_file, weights_only=True)
        ema.shadow[0].load_state_dict(shadow["text_encoder"])
        ema.shadow[1].load_state_dict(shadow["unet"])
        ema.resumed = True
    params = list(text_encoder.parameters()) + list(unet.parameters())
    aux_attributes = {"position": ds.POSITIONS, "colour": ds.COLOURS, "shape": ds.SHAPES, "background": ds.COLOURS}
    aux_heads = torch.nn.ModuleDict({
        name: torch.nn.Linear(text_encoder.config.hidden_size, len(values)) for name, values in aux_attributes.items()
    })
    opt = torch.optim.AdamW(params + list(aux_heads.parameters()), lr=cfg.lr, weight_decay=0.0)
    ac = sd_alphas_cumprod()
    snr = ac / (1 - ac)
    weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # Min-SNR-gamma for epsilon prediction
    weight = weight * torch.clamp(1 / snr, min=1.0, max=cfg.high_noise_weight)
    n = latents.shape[0]
    steps = min(cfg.unet_steps, cfg.stop_after or cfg.unet_steps)
    bar = tqdm(range(steps), desc="unet", mininterval=5)
    ema_loss = None
    t0 = time.time()
    for step in bar:
        for grp in opt.param_groups:
            grp["lr"] = _lr_at(step, cfg.unet_steps, cfg.lr, cfg.warmup)
        idx = torch.randint(0, n, (cfg.batch,), generator=g)
        z0 = latents[idx] + latent_stds[idx] * torch.randn(latents[idx].shape, generator=g)
        z0 = z0 * SD_SCALING_FACTOR
        prompts = [
            "" if rng.random() < cfg.cond_dropout else ds.caption(scenes[int(i)], rng) for i in idx.tolist()
        ]
        t = torch.randint(0, 1000, (cfg.batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        cond = encode_text(text_encoder, prompts)
        pred = unet(zt, t, cond).sample
        per = ((pred - eps) ** 2).mean(dim=(1, 2, 3))
        loss = (per * weight[t]).mean()
        if cfg.text_aux_weight > 0:
            single = [int(i) for i in idx.tolist() if len(scenes[int(i)].shapes) == 1]
            if single:
                pooled = encode_text(text_encoder, [ds.caption(scenes[i], rng, full=True) for i in single]).mean(1)
                for name, values in aux_attributes.items():
                    owner = (lambda i: scenes[i]) if name == "background" else (lambda i: scenes[i].shapes[0])
                    target = torch.tensor([values.index(getattr(owner(i), name)) for i in single])
                    loss = loss + cfg.text_aux_weight * F.cross_entropy(aux_heads[name](pooled), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{ema_loss:.4f}")
            log(f"unet step {step} loss {ema_loss:.4f} lr {opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s")
        if cfg.sample_every and ((step + 1) % cfg.sample_every == 0 or step == steps - 1):
            te_e, un_e = ema.shadow
            save_sample_grid(work / f"samples_{step + 1:06d}.png", vae, te_e, un_e, FIXED_SAMPLE_PROMPTS)
            torch.save({"text_encoder": te_e.state_dict(), "unet": un_e.state_dict()}, work / "diffusion_ema.pt")
            torch.save({"text_encoder": text_encoder.state_dict(), "unet": unet.state_dict()}, work / "diffusion_raw.pt")
    return ema.shadow


def export_checkpoint(path: Path, vae, text_encoder, unet, cfg: TrainConfig, extra_meta: dict | None = None) -> None:
    """One single-file LDM-layout fp16 .safetensors, like a community SD 1.x checkpoint."""
    from safetensors.torch import save_file

    sd = diffusers_to_ldm_checkpoint(ModelFamily.SD1, unet=unet, vae=vae, text_encoders={"clip_l": text_encoder})
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    meta = {
        "sdwebui.native_size": str(ds.SIZE),
        "sdwebui.description": (
            "sdwebui demo model: a tiny SD 1.x-architecture checkpoint trained from scratch on procedural "
            "coloured shapes (64x64). Not an art model."
        ),
        "sdwebui.train_config": json.dumps(asdict(cfg)),
        "modelspec.title": MODEL_NAME,
        # What shapes cannot tell the loader (see `TrainConfig.vae_norm_groups`).
        "sdwebui.config": json.dumps({"vae": {"norm_num_groups": cfg.vae_norm_groups}}),
    }
    meta.update(extra_meta or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdwebui.demo.train", description=__doc__.split("\n")[0])
    defaults = TrainConfig()
    p.add_argument("--out", default=defaults.out, help="where to write the single-file .safetensors")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--n-images", type=int, default=defaults.n_images)
    p.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    p.add_argument("--unet-steps", type=int, default=defaults.unet_steps, help="length of the LR schedule")
    p.add_argument("--stop-after", type=int, default=defaults.stop_after,
                   help="stop after this many steps of that schedule and export (0: run it all)")
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--vae-batch", type=int, default=defaults.vae_batch)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--sample-every", type=int, default=defaults.sample_every)
    p.add_argument("--work-dir", default=defaults.work_dir, help="sample grids, logs and intermediate weights")
    p.add_argument("--vae-from", default=None, help="reuse a trained VAE (vae.pt from an earlier work dir)")
    p.add_argument("--resume", default=None,
                   help="continue the text encoder + UNet from an earlier run's diffusion_raw.pt (with --vae-from)")
    p.add_argument("--warmup", type=int, default=defaults.warmup)
    p.add_argument("--high-noise-weight", type=float, default=defaults.high_noise_weight)
    p.add_argument("--text-aux-weight", type=float, default=defaults.text_aux_weight)
    p.add_argument("--no-export", action="store_true", help="skip writing the single-file checkpoint")
    a = p.parse_args(argv)
    cfg = TrainConfig(
        out=a.out, seed=a.seed, threads=a.threads, n_images=a.n_images, vae_steps=a.vae_steps,
        unet_steps=a.unet_steps, stop_after=a.stop_after or None, batch=a.batch, vae_batch=a.vae_batch, lr=a.lr, sample_every=a.sample_every,
        work_dir=a.work_dir, resume=a.resume, warmup=a.warmup, high_noise_weight=a.high_noise_weight,
        text_aux_weight=a.text_aux_weight,
    )
    # One thread by default: on a shared 2-core machine a second OpenMP thread mostly waits for the first.
    torch.set_num_threads(cfg.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started (e.g. inside a test session)
        pass
    torch.manual_seed(cfg.seed)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "train_log.txt", "a")

    def log(msg: str) -> None:
        logf.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        logf.flush()

    t_start = time.time()
    log(f"config {json.dumps(asdict(cfg))}")
    images_np, scenes = ds.make_dataset(cfg.n_images, cfg.seed, cfg.two_shape_prob)
    images = _images_to_tensor(images_np)
    log(f"dataset {len(scenes)} images in {time.time() - t_start:.0f}s")

    if a.vae_from:
        vae = build_vae(cfg)
        vae.load_state_dict(torch.load(a.vae_from, weights_only=True))
        vae.eval()
        torch.save(vae.state_dict(), work / "vae.pt")  # the work dir holds every part, as after a full run
    else:
        vae = train_vae(cfg, images, log, work)
        normalise_vae_latents(vae, images, log)
        torch.save(vae.state_dict(), work / "vae.pt")
    log(f"vae ready at {time.time() - t_start:.0f}s")
    latents, stds = encode_latents(vae, images)
    log(f"latents {tuple(latents.shape)} scaled std {(latents * SD_SCALING_FACTOR).std():.3f} at {time.time() - t_start:.0f}s")
    with torch.no_grad():
        rec = vae.decode(latents[:64]).sample
        log(f"vae reconstruction L1 (first 64) {(rec - images[:64]).abs().mean():.4f}")
        _save_recon_grid(work / "vae_recon.png", images[:32], rec[:32])
    text_encoder, unet = train_diffusion(cfg, latents, stds, scenes, vae, log, work)
    elapsed = time.time() - t_start
    log(f"training done in {elapsed / 60:.1f} min")
    if not a.no_export:
        export_checkpoint(Path(cfg.out), vae, text_encoder, unet, cfg, {"sdwebui.train_minutes": f"{elapsed / 60:.1f}"})
        log(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
