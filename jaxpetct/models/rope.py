"""Rotary position embeddings in the transformers convention (rotate-half, not interleaved pairs).

Frequencies are computed in float32 exactly as transformers computes them (including Llama-3's smooth
long-context rescaling), so a position means the same rotation here and in the PyTorch checkpoint; angles are
taken from absolute positions, which is what lets left-padded rows and KV-cache decode share one code path.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float, scaling: Optional[Mapping] = None) -> np.ndarray:
    """Per-pair inverse frequencies, shape (head_dim // 2,), float32."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    if scaling is None:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return (inv / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        return _llama3(inv, scaling)
    raise ValueError(f"unsupported rope scaling {kind!r}")


def _llama3(inv: np.ndarray, s: Mapping) -> np.ndarray:
    """Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth blend in between."""
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    f32 = np.float32
    wavelen = (f32(2 * math.pi) / inv).astype(f32)
    scaled = np.where(wavelen > f32(low_wavelen), inv / f32(factor), inv).astype(f32)
    smooth = ((f32(old_len) / wavelen - f32(low)) / f32(high - low)).astype(f32)
    smoothed = ((f32(1) - smooth) * scaled / f32(factor) + smooth * scaled).astype(f32)
    medium = ~(wavelen < f32(high_wavelen)) & ~(wavelen > f32(low_wavelen))
    return np.where(medium, smoothed, scaled).astype(f32)


def rope_tables(positions: jax.Array, inv_freq: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
    """cos/sin of shape (B, L, head_dim) for integer positions (B, L), cast to the compute dtype."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate (B, L, heads, head_dim) by per-token angles (B, L, head_dim)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
