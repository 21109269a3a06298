"""CT-ViT: the 3D video-style ViT encoder of CT-CLIP (itself the encoder half of Phenaki's C-ViViT), in Flax NNX.

A PET/CT volume (B, C, D, H, W) is cut into tubelets of tp slices x p x p pixels, embedded, then mixed by
*factorised* attention: spatial blocks attend over the h x w grid of one temporal index (slab of tp slices),
temporal blocks attend along the slab axis at one grid position. The output keeps the grid, (B, T, h, w, dim), because
the paper's projector consumes each slab's whole 24 x 24 x 512 grid as one visual token.

Faithful to CT-CLIP's CTViT encoder path (same parameter set, so its weights map one to one):
  * patch embedding LayerNorm -> Linear -> LayerNorm, features ordered (c, tp, p, p);
  * every block: PEG (depthwise 3x3x3 conv, causal along slabs) + cosine-sim attention (bias-free LayerNorm,
    l2-normalised q/k with learned per-dim scales, logit scale 8) + GEGLU feed-forward; bias-free LayerNorm at the end
    of each stack;
  * spatial attention gets a continuous position bias (an MLP of signed-log relative offsets, SwinV2).
An option and deliberate differences:
  * ``temporal_causal`` (flag): CT-CLIP's temporal *attention* is bidirectional (only its PEG is causal); Phenaki's is
    causal with an ALiBi bias. Off reproduces CT-CLIP; on makes the whole encoder causal along the slab axis
    (a later slab never changes an earlier slab's tokens), which is what a streaming/partial-volume use needs.
  * CT-CLIP applies the temporal-stack PEG to a (b h w) t d tensor reshaped as if it were (b t h w d), i.e. on a
    scrambled grid; we apply it on the true (t, h, w) grid.
  * the spatial position bias MLP runs on the (2h-1)(2w-1) distinct offsets and is gathered to (h w)^2 pairs,
    identical values at ~1/150th of the work of evaluating it on all 576^2 pairs at 24 x 24.
  * the VQ codebook and decoder are not part of the encoder and are not built.
Dropout is 0 in CT-CLIP's configuration and is not built either.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpetct.models.decoder_config import Precision
from jaxpetct.parallel.rules import param_axes, shard

Array = jax.Array
GRID_ACT = ("batch", None, None, None, "act_embed")  # (B, T, h, w, d) activations: batch-parallel, features whole


@dataclasses.dataclass(frozen=True)
class CTViTConfig(Precision):
    """Shape and options of the encoder. The input shape is fixed: the projector consumes a fixed h x w x dim grid."""

    channels: int = 1  # 1 = PET or CT, 2 = PET and CT stacked as channels
    depth: int = 140  # slices (the "temporal" axis of the video ViT)
    height: int = 480
    width: int = 480
    patch_size: int = 20
    temporal_patch_size: int = 10
    dim: int = 512
    spatial_depth: int = 4
    temporal_depth: int = 4
    heads: int = 8
    dim_head: int = 32
    ff_mult: float = 4.0
    temporal_causal: bool = False  # see module docstring; True = Phenaki-style causal attention + ALiBi
    peg_causal: bool = True  # CT-CLIP: PEG pads two slabs before, none after
    attn_logit_scale: float = 8.0  # cosine-sim attention temperature (CT-CLIP's ``scale``)
    position_bias_layers: int = 2
    # CT-CLIP LayerNorms each raw patch before embedding it. That normalises away the amplitude of a few hot PET
    # voxels in a patch of cool ones (a focal lesion); a random or briefly trained encoder then cannot see lesions
    # (docs/results.md, "Does the model see lesions?"). Keep it for CT-CLIP weights; the tiny default turns it off.
    patch_input_norm: bool = True
    # Append one feature per token: a linear lesion-centre logit, trained by encoder_pretrain's lesion_map objective
    # (models/lesion_map.py) and handed to the VLM with the rest of CT-ViT. The projector then sees a detector's
    # verdict per token, which a small decoder learns to read from few examples; the 32 raw features it must
    # first learn to combine. Off for CT-CLIP weights (the paper).
    lesion_channel: bool = False
    remat: bool = False
    dtype: Any = "float32"  # compute dtype (activations, matmuls); a name or a JAX dtype
    param_dtype: Any = "float32"  # storage dtype of the weights

    def __post_init__(self):
        if self.channels not in (1, 2):
            raise ValueError(f"CT-ViT takes 1 (PET or CT) or 2 (PET+CT) channels, got channels={self.channels}")
        for name, size, patch in (("depth", self.depth, self.temporal_patch_size),
                                  ("height", self.height, self.patch_size), ("width", self.width, self.patch_size)):
            if size <= 0 or patch <= 0 or size % patch:
                raise ValueError(f"CT-ViT {name}={size} must be a positive multiple of its patch size {patch}")

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(C, D, H, W) the encoder accepts; the data stage resizes volumes to this."""
        return (self.channels, self.depth, self.height, self.width)

    @property
    def grid(self) -> tuple[int, int, int]:
        """(T, h, w): visual tokens per volume and the spatial grid each one carries."""
        return (self.depth // self.temporal_patch_size, self.height // self.patch_size, self.width // self.patch_size)

    @property
    def slice_tokens(self) -> tuple[int, ...]:
        """The token (T index) of each input slice: slabs of temporal_patch_size slices (lesion_map targets)."""
        return tuple(z // self.temporal_patch_size for z in range(self.depth))

    @property
    def out_dim(self) -> int:
        """Features per output token: dim, plus the lesion logit when lesion_channel."""
        return self.dim + int(self.lesion_channel)

    @property
    def patch_features(self) -> int:
        return self.channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def ff_inner(self) -> int:
        return int(self.ff_mult * (2 / 3) * self.dim)  # GEGLU keeps the parameter count of a 4x MLP, as in CT-CLIP

    @classmethod
    def paper(cls, channels: int = 1, **overrides) -> "CTViTConfig":
        """ViMed-PET / CT-CLIP: 140x480x480 -> 14 tokens of a 24x24x512 grid."""
        return cls(channels=channels, **overrides)

    @classmethod
    def tiny(cls, channels: int = 1, **overrides) -> "CTViTConfig":
        """16x32x32 -> 4 tokens of a 4x4x32 grid: trains in seconds on a CPU."""
        base = dict(channels=channels, depth=16, height=32, width=32, patch_size=8, temporal_patch_size=4, dim=32,
                    spatial_depth=1, temporal_depth=1, heads=2, dim_head=16, position_bias_layers=2)
        base.update(overrides)
        return cls(**base)


class ScaleNorm(nnx.Module):
    """LayerNorm with a learned gain and a fixed zero bias (CT-CLIP's ``LayerNorm``; torch eps 1e-5)."""

    def __init__(self, dim: int, cfg: CTViTConfig):
        self.scale = nnx.Param(jnp.ones((dim,), cfg.weight_dtype), **param_axes("norm"))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        return ((x32 - mean) * jax.lax.rsqrt(var + 1e-5) * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def _layernorm(dim: int, cfg: CTViTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=1e-5, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs,
                         scale_metadata=param_axes("norm"), bias_metadata=param_axes("norm"))


def _linear(din: int, dout: int, axes: tuple[str, str], cfg: CTViTConfig, rngs: nnx.Rngs, bias: bool) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs,
                      kernel_metadata=param_axes(*axes), bias_metadata=param_axes(axes[1]))


def alibi_slopes(heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al.), including the non-power-of-two rule, as Phenaki/CT-CLIP use them."""
    def pow2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]

    if math.log2(heads).is_integer():
        return np.asarray(pow2(heads), np.float32)
    closest = 2 ** math.floor(math.log2(heads))
    return np.asarray(pow2(closest) + pow2(2 * closest)[0::2][: heads - closest], np.float32)


def alibi_bias(length: int, heads: int) -> np.ndarray:
    """(heads, length, length) bias -slope_h * |i - j|."""
    pos = np.arange(length)
    return -np.abs(pos[None, :] - pos[:, None])[None] * alibi_slopes(heads)[:, None, None]


class ContinuousPositionBias(nnx.Module):
    """Per-head attention bias from an MLP of signed-log 2D offsets (SwinV2), over the spatial patch grid."""

    def __init__(self, cfg: CTViTConfig, rngs: nnx.Rngs):
        dims = [2] + [cfg.dim] * cfg.position_bias_layers
        self.hidden = nnx.List([_linear(a, b, ("position", "vis_embed") if i == 0 else ("vis_embed", "vis_mlp"),
                                        cfg, rngs, bias=True) for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        self.out = _linear(cfg.dim, cfg.heads, ("vis_embed", "vis_heads"), cfg, rngs, bias=True)

    def __call__(self, h: int, w: int) -> Array:
        dy, dx = np.meshgrid(np.arange(-(h - 1), h), np.arange(-(w - 1), w), indexing="ij")
        offsets = np.stack([dy, dx], -1).astype(np.float32)  # (2h-1, 2w-1, 2)
        x = jnp.asarray(np.sign(offsets) * np.log1p(np.abs(offsets)))
        for layer in self.hidden:
            x = jax.nn.leaky_relu(layer(x).astype(jnp.float32), 0.1)
        table = self.out(x).astype(jnp.float32)  # (2h-1, 2w-1, heads)
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        yy, xx = yy.reshape(-1), xx.reshape(-1)
        bias = table[yy[:, None] - yy[None, :] + h - 1, xx[:, None] - xx[None, :] + w - 1]  # (hw, hw, heads)
        return jnp.transpose(bias, (2, 0, 1))


class PEG(nnx.Module):
    """Position-generating depthwise 3x3x3 conv over the (T, h, w) token grid; causal pads slabs only before."""

    def __init__(self, cfg: CTViTConfig, rngs: nnx.Rngs):
        self.causal = cfg.peg_causal
        self.conv = nnx.Conv(cfg.dim, cfg.dim, kernel_size=(3, 3, 3), padding="VALID", feature_group_count=cfg.dim,
                             dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs,
                             kernel_metadata=param_axes("conv", "conv", "conv", "channels", "vis_embed"),
                             bias_metadata=param_axes("vis_embed"))

    def __call__(self, x: Array) -> Array:  # (B, T, h, w, d)
        """The conv as 27 shifted, per-channel-scaled copies of the padded grid, summed: the same weights and
        result as `self.conv` (tests/models/test_ctvit.py), but XLA's CPU backend runs a grouped 3-D conv ~50x
        slower than these element-wise ops (67 ms vs ~1 ms on the tiny default's 8 x 8^3 x 32 grid: most of the
        CT-ViT's step time), and GPUs and TPUs fuse them into one kernel."""
        t_pad = (2, 0) if self.causal else (1, 1)
        dtype = self.conv.dtype or x.dtype
        padded = jnp.pad(x, ((0, 0), t_pad, (1, 1), (1, 1), (0, 0))).astype(dtype)
        kernel = self.conv.kernel[...].astype(dtype)  # (3, 3, 3, 1, d): one 3x3x3 filter per channel
        _, t, h, w, _ = x.shape
        out = sum(padded[:, i:i + t, j:j + h, k:k + w, :] * kernel[i, j, k, 0]
                  for i in range(3) for j in range(3) for k in range(3))
        return out + self.conv.bias[...].astype(dtype)


class Attention(nnx.Module):
    """CT-CLIP's cosine-similarity attention: l2-normalised q, k with learned per-dim gains, fixed logit scale."""

    def __init__(self, cfg: CTViTConfig, rngs: nnx.Rngs):
        inner = cfg.heads * cfg.dim_head
        self.heads, self.dim_head, self.logit_scale = cfg.heads, cfg.dim_head, cfg.attn_logit_scale
        self.norm = ScaleNorm(cfg.dim, cfg)
        self.to_q = _linear(cfg.dim, inner, ("vis_embed", "vis_heads"), cfg, rngs, bias=False)
        self.to_kv = _linear(cfg.dim, 2 * inner, ("vis_embed", "vis_heads"), cfg, rngs, bias=False)
        self.q_scale = nnx.Param(jnp.ones((cfg.dim_head,), cfg.weight_dtype), **param_axes("head_dim"))
        self.k_scale = nnx.Param(jnp.ones((cfg.dim_head,), cfg.weight_dtype), **param_axes("head_dim"))
        self.to_out = _linear(inner, cfg.dim, ("vis_heads", "vis_embed"), cfg, rngs, bias=False)

    def __call__(self, x: Array, bias: Array | None, causal: bool) -> Array:  # x (N, S, d)
        n, s, _ = x.shape
        x = self.norm(x)
        q = self.to_q(x).reshape(n, s, self.heads, self.dim_head)
        k, v = jnp.split(self.to_kv(x), 2, axis=-1)
        k, v = (t.reshape(n, s, self.heads, self.dim_head) for t in (k, v))

        def l2norm(t):  # torch F.normalize: t / max(|t|, 1e-12), written so an all-zero token (air, a blank
            # volume) has a finite gradient: d|t| at t = 0 is NaN in JAX, d(sum t^2) is 0.
            t32 = t.astype(jnp.float32)
            return t32 * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(t32), axis=-1, keepdims=True), 1e-24))

        q = (l2norm(q) * self.q_scale[...]).astype(v.dtype)
        k = (l2norm(k) * self.k_scale[...]).astype(v.dtype)
        if bias is not None:
            bias = bias[None].astype(v.dtype)  # (1, H, S, S)
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, scale=self.logit_scale, is_causal=causal)
        return self.to_out(out.reshape(n, s, self.heads * self.dim_head))


class FeedForward(nnx.Module):
    """LayerNorm -> GEGLU (exact erf GELU on the gate half) -> Linear, no biases on the projections."""

    def __init__(self, cfg: CTViTConfig, rngs: nnx.Rngs):
        self.norm = _layernorm(cfg.dim, cfg, rngs)
        self.proj_in = _linear(cfg.dim, 2 * cfg.ff_inner, ("vis_embed", "vis_mlp"), cfg, rngs, bias=False)
        self.proj_out = _linear(cfg.ff_inner, cfg.dim, ("vis_mlp", "vis_embed"), cfg, rngs, bias=False)

    def __call__(self, x: Array) -> Array:
        value, gate = jnp.split(self.proj_in(self.norm(x)), 2, axis=-1)
        return self.proj_out(jax.nn.gelu(gate, approximate=False) * value)


class Block(nnx.Module):
    """PEG + attention + feed-forward, all residual; ``axis`` picks spatial (grid) or temporal (slab) mixing."""

    def __init__(self, cfg: CTViTConfig, axis: str, rngs: nnx.Rngs):
        self.axis = axis
        self.causal = axis == "temporal" and cfg.temporal_causal
        self.peg = PEG(cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.ff = FeedForward(cfg, rngs)

    def __call__(self, x: Array, bias: Array | None) -> Array:  # x (B, T, h, w, d)
        b, t, h, w, d = x.shape
        x = self.peg(x) + x
        if self.axis == "spatial":
            seq = x.reshape(b * t, h * w, d)
            seq = self.attn(seq, bias, False) + seq
            seq = self.ff(seq) + seq
            return seq.reshape(b, t, h, w, d)
        seq = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b * h * w, t, d)
        seq = self.attn(seq, bias, self.causal) + seq
        seq = self.ff(seq) + seq
        return jnp.transpose(seq.reshape(b, h, w, t, d), (0, 3, 1, 2, 4))


def _run_block(block: Block, x: Array, bias: Array | None) -> Array:
    return block(x, bias)


class CTViT(nnx.Module):
    """Volume (B, C, D, H, W) -> tokens (B, T, h, w, out_dim); see the module docstring for the architecture."""

    def __init__(self, cfg: CTViTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.patch_norm_in = _layernorm(cfg.patch_features, cfg, rngs) if cfg.patch_input_norm else None
        self.patch_proj = _linear(cfg.patch_features, cfg.dim, ("vis_patch", "vis_embed"), cfg, rngs, bias=True)
        self.patch_norm_out = _layernorm(cfg.dim, cfg, rngs)
        self.spatial_position_bias = ContinuousPositionBias(cfg, rngs)
        self.spatial_blocks = nnx.List([Block(cfg, "spatial", rngs) for _ in range(cfg.spatial_depth)])
        self.spatial_norm = ScaleNorm(cfg.dim, cfg)
        self.temporal_blocks = nnx.List([Block(cfg, "temporal", rngs) for _ in range(cfg.temporal_depth)])
        self.temporal_norm = ScaleNorm(cfg.dim, cfg)
        self.lesion_head = _linear(cfg.dim, 1, ("vis_embed", None), cfg, rngs, bias=True) if cfg.lesion_channel else None

    def patchify(self, volume: Array) -> Array:
        """(B, C, D, H, W) -> (B, T, h, w, C*tp*p*p), features in CT-CLIP's (c, tp, p1, p2) order."""
        cfg = self.cfg
        if volume.ndim != 5 or tuple(volume.shape[1:]) != cfg.input_shape:
            raise ValueError(
                f"CT-ViT expects volumes of shape (B, {', '.join(map(str, cfg.input_shape))}) = (B, C, D, H, W); "
                f"got {tuple(volume.shape)}. Resize volumes to the encoder's input shape in the data stage.")
        b = volume.shape[0]
        (t, h, w), pt, p = cfg.grid, cfg.temporal_patch_size, cfg.patch_size
        x = volume.reshape(b, cfg.channels, t, pt, h, p, w, p)
        x = jnp.transpose(x, (0, 2, 4, 6, 1, 3, 5, 7))
        return x.reshape(b, t, h, w, cfg.patch_features)

    def __call__(self, volume: Array) -> Array:
        cfg = self.cfg
        x = self.patchify(volume.astype(cfg.compute_dtype))
        if self.patch_norm_in is not None:
            x = self.patch_norm_in(x)
        x = shard(self.patch_norm_out(self.patch_proj(x)), GRID_ACT)
        _, h, w = cfg.grid
        run = nnx.remat(_run_block) if cfg.remat else _run_block
        spatial_bias = self.spatial_position_bias(h, w)
        for block in self.spatial_blocks:
            x = shard(run(block, x, spatial_bias), GRID_ACT)
        x = self.spatial_norm(x)
        # ALiBi gives the causal stack a recency prior, as in Phenaki's (and CT-CLIP's) causal attention
        temporal_bias = jnp.asarray(alibi_bias(cfg.grid[0], cfg.heads)) if cfg.temporal_causal else None
        for block in self.temporal_blocks:
            x = shard(run(block, x, temporal_bias), GRID_ACT)
        x = self.temporal_norm(x)
        if self.lesion_head is not None:
            x = jnp.concatenate([x, self.lesion_head(x).astype(x.dtype)], axis=-1)
        return x
