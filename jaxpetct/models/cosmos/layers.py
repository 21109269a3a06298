"""The Cosmos tokenizer's layers, channels-last (B, T, H, W, C): causal 3-D convolution, per-frame norm, Haar patching.

Causality along T is what lets the tokenizer encode a first frame alone (an image) and later frames without
changing earlier latents: every convolution pads time only in front, with copies of the first frame, and every
norm sees one frame at a time.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpetct.models.cosmos.config import CosmosConfig
from jaxpetct.parallel.rules import param_axes

Array = jax.Array
KERNEL_AXES = ("conv", "conv", "conv", "channels", "vis_embed")  # (kt, kh, kw, in, out)
_HAAR = 1.0 / math.sqrt(2.0)  # both taps of the Haar wavelet


def _triple(v: Union[int, Sequence[int]]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


class CausalConv3d(nnx.Module):
    """A Conv3d whose time axis is padded in front with (kt - 1) + (1 - st) copies of the first frame, and H, W
    with `padding` zeros on both sides (diffusers' CosmosCausalConv3d). Weights (kt, kh, kw, in, out).

    Kernels without spatial extent (the temporal half of each factorised conv, and the 1x1x1 projections) run as
    kt matmuls of shifted frames: a few per cent (3-6 %) faster than XLA's CPU 3-D convolution for the CV8x8x8
    encoder on 32x64x64 and 16x128x128 volumes. Spatial kernels stay a 3-D convolution: a 2-D convolution over
    the B*T frames was up to 1.4x slower there.
    """

    def __init__(self, cin: int, cout: int, kernel: Union[int, Sequence[int]], cfg: CosmosConfig, rngs: nnx.Rngs,
                 *, stride: Union[int, Sequence[int]] = 1, padding: int = 0):
        self.kernel_size, self.stride, self.padding = _triple(kernel), _triple(stride), padding
        kt, kh, kw = self.kernel_size
        self.time_pad = (kt - 1) + (1 - self.stride[0])
        if self.time_pad < 0 or kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"causal conv needs kt >= stride and odd spatial kernels, got {kernel}, {stride}")
        self.dtype = cfg.compute_dtype
        bound = 1.0 / math.sqrt(cin * kt * kh * kw)  # torch's default Conv3d init, so fresh models match in scale
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (kt, kh, kw, cin, cout), cfg.weight_dtype,
                                                   -bound, bound), **param_axes(*KERNEL_AXES))
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (cout,), cfg.weight_dtype, -bound, bound),
                              **param_axes("vis_embed"))

    def __call__(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        if self.time_pad:
            x = jnp.concatenate([jnp.repeat(x[:, :1], self.time_pad, axis=1), x], axis=1)
        if self.padding:
            p = self.padding
            x = jnp.pad(x, ((0, 0), (0, 0), (p, p), (p, p), (0, 0)))
        w = self.kernel[...].astype(self.dtype)
        (_, kh, kw), (st, sh, sw) = self.kernel_size, self.stride
        if kh == kw == 1 and sh == sw == 1:
            out = _temporal_conv(x, w[:, 0, 0], st)
        else:
            out = jax.lax.conv_general_dilated(x, w, self.stride, "VALID",
                                               dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        return out + self.bias[...].astype(self.dtype)


def _temporal_conv(x: Array, w: Array, stride: int) -> Array:
    """(kt, in, out) kernel along T: sum over taps of (frames shifted by the tap) @ w[tap]."""
    kt = w.shape[0]
    frames = (x.shape[1] - kt) // stride + 1
    out = None
    for k in range(kt):
        term = x[:, k:k + stride * (frames - 1) + 1:stride] @ w[k]
        out = term if out is None else out + term
    return out


class FrameNorm(nnx.Module):
    """GroupNorm with one group over each frame alone (statistics over H, W, C; eps 1e-6), in float32: diffusers'
    CosmosCausalGroupNorm(num_groups=1), which folds T into the batch so no frame's scale depends on a later one."""

    def __init__(self, channels: int, cfg: CosmosConfig):
        self.scale = nnx.Param(jnp.ones((channels,), cfg.weight_dtype), **param_axes("norm"))
        self.bias = nnx.Param(jnp.zeros((channels,), cfg.weight_dtype), **param_axes("norm"))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=(2, 3, 4), keepdims=True)
        var = jnp.square(x32 - mean).mean(axis=(2, 3, 4), keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + 1e-6)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class ConvProjection(nnx.Module):
    """(1, 3, 3) spatial conv then (3, 1, 1) causal temporal conv: the factorised 3x3x3 of every Cosmos conv."""

    def __init__(self, cin: int, cout: int, cfg: CosmosConfig, rngs: nnx.Rngs):
        self.conv_s = CausalConv3d(cin, cout, (1, 3, 3), cfg, rngs, padding=1)
        self.conv_t = CausalConv3d(cout, cout, (3, 1, 1), cfg, rngs)

    def __call__(self, x: Array) -> Array:
        return self.conv_t(self.conv_s(x))


def _haar_split(x: Array, axis: int) -> tuple[Array, Array]:
    """Low and high Haar bands along one axis (stride 2); an odd length is reflect-padded by one at the end."""
    if x.shape[axis] % 2:
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, 1)
        x = jnp.pad(x, pad, mode="reflect")
    even = jax.lax.slice_in_dim(x, 0, None, 2, axis)
    odd = jax.lax.slice_in_dim(x, 1, None, 2, axis)
    return _HAAR * even + _HAAR * odd, _HAAR * even - _HAAR * odd


def _haar_merge(low: Array, high: Array, axis: int) -> Array:
    """Inverse of `_haar_split` (without the padding): interleave the two reconstructed phases along `axis`."""
    even, odd = _HAAR * low + _HAAR * high, _HAAR * low - _HAAR * high
    shape = list(low.shape)
    shape[axis] *= 2
    return jnp.stack([even, odd], axis=axis + 1).reshape(shape)


def haar_dwt(x: Array) -> Array:
    """One 3-D Haar level: (B, T, H, W, C) -> (B, T/2, H/2, W/2, 8C), bands ordered (t, h, w) low/high with t
    most significant and channels inner, scaled by 1/sqrt(8): diffusers' channel order, which conv_in's weights
    index."""
    bands = [x]
    for axis in (1, 2, 3):
        bands = [half for band in bands for half in _haar_split(band, axis)]
    return jnp.concatenate(bands, axis=-1) / math.sqrt(8.0)


def haar_idwt(x: Array) -> Array:
    """Inverse of `haar_dwt`: W, then H, then T are merged, as diffusers' transposed convolutions do."""
    bands = jnp.split(x, 8, axis=-1)
    for axis in (3, 2, 1):
        bands = [_haar_merge(bands[i], bands[i + 1], axis) for i in range(0, len(bands), 2)]
    return bands[0] * math.sqrt(8.0)


def patchify(x: Array, patch_size: int, patch_type: str) -> Array:
    """(B, T, H, W, C) -> (B, T', H/p, W/p, C p^3): the first frame is repeated p - 1 times first, so frame 0
    fills a whole temporal patch by itself (the causal image-as-first-frame convention)."""
    p = patch_size
    if p > 1:
        x = jnp.concatenate([jnp.repeat(x[:, :1], p - 1, axis=1), x], axis=1)
    if patch_type == "haar":
        for _ in range(int(math.log2(p))):
            x = haar_dwt(x)
        return x
    b, t, h, w, c = x.shape  # rearrange: channels ordered (c, pt, ph, pw)
    x = x.reshape(b, t // p, p, h // p, p, w // p, p, c)
    return jnp.transpose(x, (0, 1, 3, 5, 7, 2, 4, 6)).reshape(b, t // p, h // p, w // p, c * p ** 3)


def unpatchify(x: Array, patch_size: int, patch_type: str) -> Array:
    """Inverse of `patchify`, dropping the p - 1 leading copies of the first frame."""
    p = patch_size
    if patch_type == "haar":
        for _ in range(int(math.log2(p))):
            x = haar_idwt(x)
    else:
        b, t, h, w, c = x.shape
        x = x.reshape(b, t, h, w, c // p ** 3, p, p, p)
        x = jnp.transpose(x, (0, 1, 5, 2, 6, 3, 7, 4)).reshape(b, t * p, h * p, w * p, c // p ** 3)
    return x[:, p - 1:]
