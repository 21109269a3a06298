"""`CosmosTokenizer`: NVIDIA's Cosmos continuous causal video tokenizer (CV8x8x8 and its family) in Flax NNX.

The same network as diffusers' `AutoencoderKLCosmos` (same parameters, same results to float32 rounding), but
channels-last: `encode` takes (B, T, H, W, C) in [-1, 1] and returns the latent (B, T', H', W', latent_channels)
that diffusers' `encode(x).latent_dist.mode()` returns channels-first; `decode` is the inverse map. The latent
is deterministic (diffusers' IdentityDistribution: no sampling, no KL term).
"""
from __future__ import annotations

import jax
from flax import nnx

from jaxpetct.models.cosmos.blocks import ACT, MidBlock, ResampleBlock
from jaxpetct.models.cosmos.config import CosmosConfig
from jaxpetct.models.cosmos.layers import CausalConv3d, ConvProjection, FrameNorm, patchify, unpatchify
from jaxpetct.parallel.rules import shard

Array = jax.Array


def _run(block: nnx.Module, x: Array) -> Array:
    return block(x)


def _runner(cfg: CosmosConfig):
    return nnx.remat(_run) if cfg.remat else _run


class Encoder(nnx.Module):
    """Haar patching -> conv_in -> down blocks -> mid block -> norm, SiLU -> conv_out (latent_channels)."""

    def __init__(self, cfg: CosmosConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        widths = cfg.encoder_block_out_channels
        self.conv_in = ConvProjection(cfg.in_channels * cfg.patch_size ** 3, widths[0], cfg, rngs)
        self.down_blocks = nnx.List([ResampleBlock(plan, False, cfg, rngs) for plan in cfg.encoder_plan()])
        self.mid_block = MidBlock(widths[-1], cfg, rngs)
        self.norm_out = FrameNorm(widths[-1], cfg)
        self.conv_out = ConvProjection(widths[-1], cfg.latent_channels, cfg, rngs)

    def __call__(self, x: Array) -> Array:
        cfg, run = self.cfg, _runner(self.cfg)
        x = shard(self.conv_in(patchify(x, cfg.patch_size, cfg.patch_type)), ACT)
        for block in self.down_blocks:
            x = run(block, x)
        x = run(self.mid_block, x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


class Decoder(nnx.Module):
    """conv_in -> mid block -> up blocks -> norm, SiLU -> conv_out (out_channels * p^3) -> inverse Haar."""

    def __init__(self, cfg: CosmosConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        widths = tuple(reversed(cfg.decode_block_out_channels))
        self.conv_in = ConvProjection(cfg.latent_channels, widths[0], cfg, rngs)
        self.mid_block = MidBlock(widths[0], cfg, rngs)
        self.up_blocks = nnx.List([ResampleBlock(plan, True, cfg, rngs) for plan in cfg.decoder_plan()])
        self.norm_out = FrameNorm(widths[-1], cfg)
        self.conv_out = ConvProjection(widths[-1], cfg.out_channels * cfg.patch_size ** 3, cfg, rngs)

    def __call__(self, z: Array) -> Array:
        cfg, run = self.cfg, _runner(self.cfg)
        x = run(self.mid_block, shard(self.conv_in(z), ACT))
        for block in self.up_blocks:
            x = run(block, x)
        x = self.conv_out(jax.nn.silu(self.norm_out(x)))
        return unpatchify(x, cfg.patch_size, cfg.patch_type)


class CosmosTokenizer(nnx.Module):
    """Video (B, T, H, W, C) <-> latent (B, T', H', W', latent_channels); see the module docstring.

    Shapes: `cfg.latent_shape(T, H, W)` and `cfg.decoded_shape(T', H', W')`. With the CV8x8x8 layout, T = 1 + 8k
    frames give T' = 1 + k latent frames and decode back to exactly T frames; H and W must be multiples of 8.
    """

    def __init__(self, cfg: CosmosConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs)
        self.decoder = Decoder(cfg, rngs)
        self.quant_conv = CausalConv3d(cfg.latent_channels, cfg.latent_channels, 1, cfg, rngs)
        self.post_quant_conv = CausalConv3d(cfg.latent_channels, cfg.latent_channels, 1, cfg, rngs)

    def encode(self, x: Array) -> Array:
        """(B, T, H, W, in_channels) in [-1, 1] -> latent (B, T', H', W', latent_channels), compute dtype."""
        cfg = self.cfg
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"Cosmos encode expects (B, T, H, W, {cfg.in_channels}) channels-last, got {x.shape}")
        cfg.latent_shape(*x.shape[1:4])  # a clear error for sizes the layers cannot take
        x = shard(x.astype(cfg.compute_dtype), ACT)
        return self.quant_conv(self.encoder(x))

    def decode(self, z: Array) -> Array:
        """Latent (B, T', H', W', latent_channels) -> video (B, T, H, W, out_channels), roughly in [-1, 1]."""
        cfg = self.cfg
        if z.ndim != 5 or z.shape[-1] != cfg.latent_channels:
            raise ValueError(f"Cosmos decode expects (B, T', H', W', {cfg.latent_channels}), got {z.shape}")
        return self.decoder(self.post_quant_conv(shard(z.astype(cfg.compute_dtype), ACT)))

    def __call__(self, x: Array) -> Array:
        """Reconstruction decode(encode(x)): what the tokenizer's L1 + SSIM loss compares with x."""
        return self.decode(self.encode(x))
