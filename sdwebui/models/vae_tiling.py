"""Tiled VAE encode and decode: bounded activation memory at any image size, without seams.

diffusers' `AutoencoderKL.enable_tiling` decodes each tile on its own and blends the overlaps; on our VAEs that
leaves visible tiles (up to 170 of 255 levels off on the demo model's trained VAE at 64 px tiles, 44 at 192 px),
because every GroupNorm normalises each tile by its own statistics and the tiles see too little context. So:

- the part of the network at latent resolution (the decoder's `conv_in` + mid-block with its attention; the
  encoder's mid-block and output) runs on the whole latent at once: it is small, and attention needs all of it;
- the part at image resolution (the decoder's up-blocks, the encoder's down-blocks) runs tile by tile, each tile
  with a halo of context around its core (as MultiDiffusion's Tiled VAE and ComfyUI's tiled decode do), and the
  cores are feathered into each other;
- every GroupNorm in the tiled part uses statistics of the whole image: a first pass over the tiles gathers each
  GroupNorm's per-group sums over the tile cores, the second pass normalises with them (the "fast" estimate of
  MultiDiffusion's Tiled VAE, from the tiles rather than a downscaled image).

With exact statistics the halo makes tiled and untiled decodes equal to float noise; the two-pass estimate keeps
the demo VAE's tiled decode within a few levels of the untiled one (the test bounds it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdwebui.models.memory import MemoryPolicy

TILED_VAE_MODES = ("Automatic", "Enable", "Disable")
DECODE_HALO_LATENTS = 8
"""Context around each decoded tile's core, in latent pixels (64 image pixels): the up-blocks' receptive field
that matters (the demo VAE's tiled decode with exact statistics is exact at 8)."""
ENCODE_HALO_PIXELS = 64


@dataclass(frozen=True)
class VaeTiling:
    """The job's tiled-VAE setting (`tiled_vae`, `tiled_vae_tile_size`) and the memory it may plan on."""

    mode: str = "Automatic"
    """Automatic: tile when the estimated activation memory exceeds the budget; Enable: always; Disable: never."""
    tile_size: int = 512
    """Core of a tile, in image pixels (a multiple of 8)."""
    memory: MemoryPolicy | None = None
    """Where the budget comes from (free device memory, `--vram-budget`); None: no budget (never automatic)."""
    forced: bool = False
    """Tile whatever the setting says (the retry after an out-of-memory error)."""

    def wants(self, device: torch.device, channels: int, height: int, width: int, dtype: torch.dtype) -> bool:
        """Whether to tile an image of `height` x `width` pixels through a VAE whose widest image-resolution
        stage has `channels` channels."""
        if self.forced or self.mode == "Enable":
            return True
        if self.mode == "Disable" or self.memory is None:
            return False
        budget = self.memory.budget_bytes(torch.device(device))
        return budget is not None and estimate_activation_bytes(channels, height, width, dtype) > budget


def estimate_activation_bytes(channels: int, height: int, width: int, dtype: torch.dtype) -> int:
    """Peak activation memory of one untiled VAE pass: about six live tensors of the first stage's width at full
    resolution plus the upsampler's double-width one (measured on diffusers' AutoencoderKL: SD's VAE decoding
    1024² in fp16 peaks near 3 GiB)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(8 * channels * height * width * itemsize)


# --------------------------------------------------------------------------------------- GroupNorm statistics


class _SharedGroupNorm:
    """Makes a set of GroupNorms use whole-image statistics inside a scope.

    `gather` pass: normalise as usual, and add each GroupNorm input's per-group sums over the current tile's core
    (`core`: its box in latent-sized units of the tile) to the totals. `apply` pass: normalise with the totals."""

    def __init__(self, norms: list[torch.nn.GroupNorm]):
        self.norms = norms
        self.mode = "gather"
        self.core: tuple[tuple[int, int, int, int], tuple[int, int]] | None = None
        self.sums: dict[torch.nn.GroupNorm, list] = {}

    @contextmanager
    def installed(self) -> Iterator["_SharedGroupNorm"]:
        for norm in self.norms:
            norm.forward = self._forward_for(norm)
        try:
            yield self
        finally:
            for norm in self.norms:
                del norm.forward  # back to the class's forward

    def _forward_for(self, norm: torch.nn.GroupNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            b, c = x.shape[:2]
            groups = norm.num_groups
            if self.mode == "gather":
                (y0, y1, x0, x1), (_, tile_w) = self.core
                scale = x.shape[-1] / tile_w
                core = x[:, :, int(y0 * scale):int(y1 * scale), int(x0 * scale):int(x1 * scale)]
                core = core.float().reshape(b, groups, -1)
                total = self.sums.setdefault(norm, [0.0, 0.0, 0])
                total[0] = total[0] + core.sum(-1)
                total[1] = total[1] + (core * core).sum(-1)
                total[2] += core.shape[-1]
                return F.group_norm(x, groups, norm.weight, norm.bias, norm.eps)
            sum_, sum_sq, count = self.sums[norm]
            mean = sum_ / count
            var = (sum_sq / count - mean * mean).clamp_min(0)
            y = (x.float().reshape(b, groups, -1) - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)
            y = y.reshape(x.shape).to(x.dtype)
            if norm.affine:
                shape = (1, c) + (1,) * (x.dim() - 2)
                y = y * norm.weight.reshape(shape) + norm.bias.reshape(shape)
            return y

        return forward


def _group_norms(*modules: torch.nn.Module) -> list[torch.nn.GroupNorm]:
    return [m for module in modules for m in module.modules() if isinstance(m, torch.nn.GroupNorm)]


# ------------------------------------------------------------------------------------------------ the tiling


def _tiles(height: int, width: int, core: int) -> list[tuple[int, int, int, int]]:
    return [(y, min(y + core, height), x, min(x + core, width))
            for y in range(0, height, core) for x in range(0, width, core)]


def _ramp(length: int, band: int, open_low: bool, open_high: bool) -> torch.Tensor:
    weights = torch.ones(length)
    if band > 0:
        rise = (torch.arange(band) + 0.5) / band
        if open_low:
            weights[:band] = torch.minimum(weights[:band], rise)
        if open_high:
            weights[-band:] = torch.minimum(weights[-band:], rise.flip(0))
    return weights


def _run_tiled(stage: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, *, core: int, halo: int,
               ratio: float, shared: _SharedGroupNorm) -> torch.Tensor:
    """`stage` over `h` tile by tile (two passes: gather the GroupNorm statistics, then apply them), each tile with
    `halo` input pixels of context; the outputs (`ratio` times the input's size) are feathered over a band of
    half the halo around each core."""
    height, width = h.shape[-2:]
    tiles = _tiles(height, width, core)
    feather = halo // 2
    out = weights = None
    for mode in ("gather", "apply"):
        shared.mode = mode
        for y0, y1, x0, x1 in tiles:
            ya, yb, xa, xb = max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo)
            shared.core = ((y0 - ya, y1 - ya, x0 - xa, x1 - xa), (yb - ya, xb - xa))
            result = stage(h[:, :, ya:yb, xa:xb])
            if mode == "gather":
                continue
            if out is None:
                out = torch.zeros((h.shape[0], result.shape[1], round(height * ratio), round(width * ratio)),
                                  dtype=torch.float32, device=result.device)
                weights = torch.zeros((1, 1, *out.shape[-2:]), dtype=torch.float32, device=result.device)
            cy0, cy1 = max(ya, y0 - feather), min(yb, y1 + feather)
            cx0, cx1 = max(xa, x0 - feather), min(xb, x1 + feather)
            piece = result[:, :, round((cy0 - ya) * ratio):round((cy1 - ya) * ratio),
                           round((cx0 - xa) * ratio):round((cx1 - xa) * ratio)].float()
            band = round(2 * feather * ratio)
            wy = _ramp(piece.shape[-2], band, cy0 > 0, cy1 < height).to(piece.device)
            wx = _ramp(piece.shape[-1], band, cx0 > 0, cx1 < width).to(piece.device)
            w = (wy[:, None] * wx[None, :])[None, None]
            region = (slice(None), slice(None), slice(round(cy0 * ratio), round(cy1 * ratio)),
                      slice(round(cx0 * ratio), round(cx1 * ratio)))
            out[region] += piece * w
            weights[region] += w
    return out / weights


def tiled_decode(vae, latents: torch.Tensor, *, tile_size: int = 512,
                 halo: int = DECODE_HALO_LATENTS) -> torch.Tensor:
    """`vae.decode(latents).sample` (unscaled latents in, pixels in [-1, 1] out, float32) in tiles of
    `tile_size` image pixels."""
    decoder = vae.decoder
    with torch.no_grad():
        z = vae.post_quant_conv(latents) if getattr(vae, "post_quant_conv", None) is not None else latents
        h = decoder.conv_in(z)
        upscale_dtype = next(iter(decoder.up_blocks.parameters())).dtype
        h = decoder.mid_block(h, None).to(upscale_dtype)

        def stage(tile: torch.Tensor) -> torch.Tensor:
            for block in decoder.up_blocks:
                tile = block(tile, None)
            return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(tile)))

        ratio = 2 ** (len(decoder.up_blocks) - 1)
        shared = _SharedGroupNorm(_group_norms(decoder.up_blocks, decoder.conv_norm_out))
        with shared.installed():
            return _run_tiled(stage, h, core=max(1, tile_size // ratio), halo=halo, ratio=ratio, shared=shared)


def tiled_encode_mean(vae, pixels: torch.Tensor, *, tile_size: int = 512,
                      halo: int = ENCODE_HALO_PIXELS) -> torch.Tensor:
    """The mean of `vae.encode(pixels).latent_dist` (unscaled), encoding in tiles of `tile_size` pixels."""
    encoder = vae.encoder
    ratio = 2 ** (len(encoder.down_blocks) - 1)
    tile_size = max(ratio, tile_size // ratio * ratio)
    halo = max(ratio, halo // ratio * ratio)
    with torch.no_grad():
        def stage(tile: torch.Tensor) -> torch.Tensor:
            tile = encoder.conv_in(tile)
            for block in encoder.down_blocks:
                tile = block(tile)
            return tile

        shared = _SharedGroupNorm(_group_norms(encoder.down_blocks))
        with shared.installed():
            h = _run_tiled(stage, pixels, core=tile_size, halo=halo, ratio=1 / ratio, shared=shared)
        h = h.to(pixels.dtype)
        h = encoder.mid_block(h)
        moments = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(h)))
        if getattr(vae, "quant_conv", None) is not None:
            moments = vae.quant_conv(moments)
        return moments[:, : moments.shape[1] // 2]


def widest_stage(vae) -> int:
    """Channels of the VAE's image-resolution stage (what its activation memory scales with)."""
    return int(vae.config.block_out_channels[0])


__all__ = ["VaeTiling", "TILED_VAE_MODES", "tiled_decode", "tiled_encode_mean", "estimate_activation_bytes",
           "widest_stage"]
