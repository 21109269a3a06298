"""Cosmos tokenizer blocks, channels-last: resnets, factorised spatial / causal-temporal attention, and the hybrid
(strided conv + average pool) down- and upsamplers, each split into a spatial and a temporal part.

Attribute names follow diffusers' module names (`resnets`, `attentions`, `temp_attentions`, `conv_s`, ...) so the
checkpoint mapping in io.py is a handful of leaf renames.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpetct.models.cosmos.config import BlockPlan, CosmosConfig
from jaxpetct.models.cosmos.layers import CausalConv3d, ConvProjection, FrameNorm
from jaxpetct.parallel.rules import shard

Array = jax.Array
ACT = ("batch", None, None, None, "act_embed")  # (B, T, H, W, C) activations: batch-parallel, channels whole


class ResnetBlock(nnx.Module):
    """norm -> SiLU -> factorised conv, twice, plus a 1x1x1 shortcut when the width changes (dropout is 0 in
    every Cosmos config and is not built)."""

    def __init__(self, cin: int, cout: int, cfg: CosmosConfig, rngs: nnx.Rngs):
        self.norm1 = FrameNorm(cin, cfg)
        self.conv1 = ConvProjection(cin, cout, cfg, rngs)
        self.norm2 = FrameNorm(cout, cfg)
        self.conv2 = ConvProjection(cout, cout, cfg, rngs)
        self.conv_shortcut = CausalConv3d(cin, cout, 1, cfg, rngs) if cin != cout else None

    def __call__(self, x: Array) -> Array:
        residual = x if self.conv_shortcut is None else self.conv_shortcut(x)
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return h + residual.astype(h.dtype)


class Attention(nnx.Module):
    """Single-head attention with 1x1x1 projections and a residual: `temporal=False` attends over the H*W pixels
    of each frame, `temporal=True` over the frames of each pixel with a causal mask."""

    def __init__(self, channels: int, temporal: bool, cfg: CosmosConfig, rngs: nnx.Rngs):
        self.temporal = temporal
        self.norm = FrameNorm(channels, cfg)
        self.to_q = CausalConv3d(channels, channels, 1, cfg, rngs)
        self.to_k = CausalConv3d(channels, channels, 1, cfg, rngs)
        self.to_v = CausalConv3d(channels, channels, 1, cfg, rngs)
        self.to_out = CausalConv3d(channels, channels, 1, cfg, rngs)

    def __call__(self, x: Array) -> Array:
        b, t, h, w, c = x.shape
        normed = self.norm(x)
        q, k, v = self.to_q(normed), self.to_k(normed), self.to_v(normed)
        if self.temporal:  # (B, T, H, W, C) -> (B*H*W, T, 1, C)
            q, k, v = (jnp.transpose(a, (0, 2, 3, 1, 4)).reshape(b * h * w, t, 1, c) for a in (q, k, v))
        else:  # -> (B*T, H*W, 1, C)
            q, k, v = (a.reshape(b * t, h * w, 1, c) for a in (q, k, v))
        out = jax.nn.dot_product_attention(q, k, v, is_causal=self.temporal)
        if self.temporal:
            out = jnp.transpose(out.reshape(b, h, w, t, c), (0, 3, 1, 2, 4))
        else:
            out = out.reshape(b, t, h, w, c)
        return self.to_out(out) + x.astype(out.dtype)


def _avg_pool(x: Array, axes: tuple[int, ...]) -> Array:
    """Mean over non-overlapping pairs along `axes` (stride 2, a trailing odd element dropped, like avg_pool3d)."""
    for axis in axes:
        n = x.shape[axis] // 2
        x = jax.lax.slice_in_dim(x, 0, 2 * n, axis=axis)
        x = x.reshape(*x.shape[:axis], n, 2, *x.shape[axis + 1:]).mean(axis=axis + 1)
    return x


class Downsample(nnx.Module):
    """Hybrid downsampling: space by a stride-2 (1,3,3) conv plus a 2x2 average pool, then time by a stride-2
    causal (3,1,1) conv plus a 2-frame average pool (the first frame repeated in front, so frame 0 stays alone),
    then a 1x1x1 conv. Parameter-free (identity) when it resamples neither."""

    def __init__(self, channels: int, spatial: bool, temporal: bool, cfg: CosmosConfig, rngs: nnx.Rngs):
        self.spatial, self.temporal = spatial, temporal
        self.conv1 = CausalConv3d(channels, channels, (1, 3, 3), cfg, rngs, stride=(1, 2, 2)) if spatial else None
        self.conv2 = CausalConv3d(channels, channels, (3, 1, 1), cfg, rngs, stride=(2, 1, 1)) if temporal else None
        self.conv3 = CausalConv3d(channels, channels, 1, cfg, rngs) if spatial or temporal else None

    def __call__(self, x: Array) -> Array:
        if self.conv3 is None:
            return x
        if self.conv1 is not None:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
            x = self.conv1(x) + _avg_pool(x, (2, 3)).astype(self.conv1.dtype)
        if self.conv2 is not None:
            x = jnp.concatenate([x[:, :1], x], axis=1)
            x = self.conv2(x) + _avg_pool(x, (1,)).astype(self.conv2.dtype)
        return self.conv3(x)


class Upsample(nnx.Module):
    """Inverse of `Downsample`: time by repeating frames (all but the first, which stays single) plus a causal
    (3,1,1) conv residual, then space by 2x2 nearest repeat plus a (1,3,3) conv residual, then a 1x1x1 conv."""

    def __init__(self, channels: int, spatial: bool, temporal: bool, cfg: CosmosConfig, rngs: nnx.Rngs):
        self.conv1 = CausalConv3d(channels, channels, (3, 1, 1), cfg, rngs) if temporal else None
        self.conv2 = CausalConv3d(channels, channels, (1, 3, 3), cfg, rngs, padding=1) if spatial else None
        self.conv3 = CausalConv3d(channels, channels, 1, cfg, rngs) if spatial or temporal else None

    def __call__(self, x: Array) -> Array:
        if self.conv3 is None:
            return x
        if self.conv1 is not None:
            factor = 2 if x.shape[1] > 1 else 1  # a single frame (an image) is not doubled
            x = jnp.repeat(x, factor, axis=1)[:, factor - 1:]
            x = self.conv1(x) + x.astype(self.conv1.dtype)
        if self.conv2 is not None:
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
            x = self.conv2(x) + x.astype(self.conv2.dtype)
        return self.conv3(x)


def _attention_pair(channels: int, cfg: CosmosConfig, rngs: nnx.Rngs) -> tuple[Attention, Attention]:
    return Attention(channels, False, cfg, rngs), Attention(channels, True, cfg, rngs)


class ResampleBlock(nnx.Module):
    """A down block (encoder) or up block (decoder): resnets, each followed by spatial then temporal attention
    when the plan says so, then the block's resampler (`downsample` / `upsample`, or none)."""

    def __init__(self, plan: BlockPlan, up: bool, cfg: CosmosConfig, rngs: nnx.Rngs):
        widths = [plan.in_channels] + [plan.out_channels] * plan.num_resnets
        self.resnets = nnx.List([ResnetBlock(a, b, cfg, rngs) for a, b in zip(widths[:-1], widths[1:])])
        pairs = [_attention_pair(plan.out_channels, cfg, rngs) for _ in range(plan.num_resnets * plan.attention)]
        self.attentions: Optional[nnx.List] = nnx.List([s for s, _ in pairs]) if pairs else None
        self.temp_attentions: Optional[nnx.List] = nnx.List([t for _, t in pairs]) if pairs else None
        sampler = None
        if plan.resample:
            sampler = (Upsample if up else Downsample)(plan.out_channels, plan.spatial, plan.temporal, cfg, rngs)
        self.downsample = None if up else sampler
        self.upsample = sampler if up else None

    def __call__(self, x: Array) -> Array:
        for i, resnet in enumerate(self.resnets):
            x = shard(resnet(x), ACT)
            if self.attentions is not None:
                x = self.temp_attentions[i](self.attentions[i](x))
        for sampler in (self.downsample, self.upsample):
            if sampler is not None:
                x = shard(sampler(x), ACT)
        return x


class MidBlock(nnx.Module):
    """resnet -> spatial attention -> causal temporal attention -> resnet, at the lowest resolution."""

    def __init__(self, channels: int, cfg: CosmosConfig, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(channels, channels, cfg, rngs) for _ in range(2)])
        spatial, temporal = _attention_pair(channels, cfg, rngs)
        self.attentions = nnx.List([spatial])
        self.temp_attentions = nnx.List([temporal])

    def __call__(self, x: Array) -> Array:
        x = shard(self.resnets[0](x), ACT)
        x = self.temp_attentions[0](self.attentions[0](x))
        return shard(self.resnets[1](x), ACT)
