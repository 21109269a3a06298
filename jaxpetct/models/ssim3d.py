"""SSIM over 3-D volumes and PSNR, channels-last (B, T, H, W, C), jittable and differentiable.

For the tokenizer's reconstruction loss L1 + 0.1 * (1 - SSIM3D). SSIM is Wang et al. (2004) with its usual
constants, extended to volumes the way 3-D SSIM is usually defined: an 11-tap Gaussian window of sigma 1.5 applied
separably along T, H and W (so the window is the 11^3 outer product), C1 = (0.01 L)^2, C2 = (0.03 L)^2 for the
data range L, population (not sample) variances, per channel, then averaged.

Borders follow scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`: it filters with reflected borders and then averages only the positions at least
5 voxels from every border, where the window never reaches the padding. `border="valid"` (default) computes exactly
that region (no padding at all) and so equals scikit-image; it needs T, H, W >= 11. `border="reflect"` keeps every
voxel (scipy's 'reflect' padding, numpy's 'symmetric') -- the mean of scikit-image's `full=True` map -- for volumes
thinner than the window, e.g. the 9 slices of a short Cosmos clip.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
BORDERS = ("valid", "reflect")


def gaussian_taps(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps: scipy.ndimage.gaussian_filter's kernel when size = `window_size(sigma)`."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _blur(x: Array, taps: np.ndarray, border: str) -> Array:
    """Separable Gaussian filter along axes 1, 2, 3 of (N, T, H, W, F), as sums of shifted slices (the element-wise
    work XLA fuses; no convolution kernels, so it differentiates and shards like any map)."""
    size = len(taps)
    for axis in (1, 2, 3):
        if border == "reflect":
            pad = [(0, 0)] * x.ndim
            pad[axis] = (size // 2, size // 2)
            x = jnp.pad(x, pad, mode="symmetric")
        n = x.shape[axis] - size + 1
        x = sum(float(taps[k]) * jax.lax.slice_in_dim(x, k, k + n, axis=axis) for k in range(size))
    return x


@functools.partial(jax.jit, static_argnames=("data_range", "border", "window", "sigma"))
def ssim3d_map(x: Array, y: Array, *, data_range: float, border: str = "valid", window: int = WINDOW,
               sigma: float = SIGMA) -> Array:
    """Local SSIM (B, T', H', W', C) of two (B, T, H, W, C) volumes (T' = T - window + 1 for 'valid'); jitted
    here because the 33 shifted slices of the blur are slow to dispatch one by one outside a jit."""
    if x.shape != y.shape or x.ndim != 5:
        raise ValueError(f"ssim3d expects two (B, T, H, W, C) volumes of one shape, got {x.shape} and {y.shape}")
    if border not in BORDERS:
        raise ValueError(f"border={border!r}: expected one of {BORDERS}")
    if border == "valid" and min(x.shape[1:4]) < window:
        raise ValueError(f"volume {x.shape[1:4]} is thinner than the {window}-voxel window; use border='reflect'")
    # (co)variances are E[xy] - E[x]E[y]: computed on data centred by one constant per volume and channel (they do
    # not change) to cut float32 cancellation where a smooth region sits far from 0; the means are shifted back
    shift = 0.5 * (x.astype(jnp.float32) + y.astype(jnp.float32)).mean(axis=(1, 2, 3), keepdims=True)
    x, y = x.astype(jnp.float32) - shift, y.astype(jnp.float32) - shift
    stats = _blur(jnp.stack([x, y, x * x, y * y, x * y], axis=-1), gaussian_taps(window, sigma), border)
    mx, my, mxx, myy, mxy = (stats[..., i] for i in range(5))
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    mx, my = mx + shift, my + shift
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim3d(x: Array, y: Array, *, data_range: float, border: str = "valid", window: int = WINDOW,
           sigma: float = SIGMA) -> Array:
    """Mean SSIM per volume, (B,): 1 for identical volumes. See the module docstring for borders."""
    return ssim3d_map(x, y, data_range=data_range, border=border, window=window, sigma=sigma).mean(axis=(1, 2, 3, 4))


def psnr(x: Array, y: Array, *, data_range: float) -> Array:
    """Peak signal-to-noise ratio per volume in dB, (B,): 10 log10(L^2 / MSE) (inf for identical volumes)."""
    mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=tuple(range(1, x.ndim)))
    return 10.0 * jnp.log10(data_range ** 2 / mse)


def reconstruction_loss(reconstruction: Array, target: Array, *, data_range: float = 2.0,
                        ssim_weight: float = 0.1, border: str = "valid") -> Array:
    """The tokenizer fine-tuning loss, a scalar: mean |x - y| + ssim_weight * (1 - mean SSIM3D); data_range 2 for
    volumes in [-1, 1]."""
    l1 = jnp.mean(jnp.abs(reconstruction.astype(jnp.float32) - target.astype(jnp.float32)))
    ssim = ssim3d(reconstruction, target, data_range=data_range, border=border).mean()
    return l1 + ssim_weight * (1.0 - ssim)


def window_size(sigma: float = SIGMA, truncate: float = 3.5) -> int:
    """scikit-image's Gaussian window for `sigma` (its truncate=3.5): 11 for sigma 1.5."""
    return 2 * int(math.floor(truncate * sigma + 0.5)) + 1
