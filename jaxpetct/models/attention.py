"""Grouped-query self-attention with rotary embeddings, padding/sliding-window masks and a KV cache.

Masks are built from absolute token positions rather than array indices: left-padded prompts, cached decode
steps and sliding windows then need no special cases (a key is visible when it is real, not in the future and
inside the window). The kernel is `jax.nn.dot_product_attention`: XLA on CPU/TPU, cuDNN flash attention on GPU
when the dtype and head size allow it; unpadded causal training batches take cuDNN's built-in causal mask
instead of a materialised one.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpetct.models.decoder_config import DecoderConfig
from jaxpetct.models.layers import Dense
from jaxpetct.models.rope import apply_rope
from jaxpetct.parallel.rules import shard


def resolve_implementation(cfg: DecoderConfig, cached: bool = False) -> str:
    """'cudnn' only where it is supported (GPU, 16-bit compute, head_dim a multiple of 8 up to 128).

    'auto' keeps cached calls (prefill into / decode from a KV cache) on XLA: a one-query decode step gains
    nothing from flash attention, and cuDNN's constraints on such shapes vary between versions.
    """
    if cfg.attention_impl != "auto":
        return cfg.attention_impl
    if (not cached and jax.default_backend() == "gpu" and cfg.compute_dtype in (jnp.bfloat16, jnp.float16)
            and cfg.head_dim % 8 == 0 and cfg.head_dim <= 128):
        return "cudnn"
    return "xla"


def visibility_mask(q_pos: jax.Array, kv_pos: jax.Array, sliding_window: Optional[int] = None,
                   q_bidir: Optional[jax.Array] = None, kv_bidir: Optional[jax.Array] = None) -> jax.Array:
    """(B, 1, T, S) bool: key s is visible to query t.

    q_pos (B, T) and kv_pos (B, S) are absolute positions; kv_pos = -1 marks padding / empty cache slots.
    A query sees keys at positions <= its own and, with a window W, > its position - W (transformers' rule).
    Tokens flagged in both q_bidir (B, T) and kv_bidir (B, S) also see each other both ways (prefix-LM).
    """
    q = q_pos[:, :, None]
    k = kv_pos[:, None, :]
    visible = k <= q
    if sliding_window is not None:
        visible &= (q - k) < sliding_window
    if q_bidir is not None:
        visible |= q_bidir[:, :, None] & kv_bidir[:, None, :]
    visible &= k >= 0
    return visible[:, None, :, :]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array], *, implementation: str,
           sliding_window: Optional[int] = None) -> jax.Array:
    """q (B, T, H, D), k/v (B, S, K, D) -> (B, T, H, D). mask=None means plain causal (cuDNN fast path)."""
    if mask is None:
        window = None if sliding_window is None else (sliding_window - 1, 0)
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window,
                                            implementation=implementation)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
        bias = cfg.attention_bias
        self.q_proj = Dense((e,), (h, d), in_axes=("embed",), out_axes=("q_heads", "kv"), use_bias=bias, **kw)
        self.k_proj = Dense((e,), (kv, d), in_axes=("embed",), out_axes=("kv_heads", "kv"), use_bias=bias, **kw)
        self.v_proj = Dense((e,), (kv, d), in_axes=("embed",), out_axes=("kv_heads", "kv"), use_bias=bias, **kw)
        self.o_proj = Dense((h, d), (e,), in_axes=("q_heads", "kv"), out_axes=("embed",), **kw)
        self.sliding_window = cfg.sliding_window
        self.implementation = resolve_implementation(cfg)
        self.cached_implementation = resolve_implementation(cfg, cached=True)
        self.dtype = cfg.compute_dtype

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: Optional[jax.Array],
                 cache_kv: Optional[tuple[jax.Array, jax.Array]], index: Optional[jax.Array]
                 ) -> tuple[jax.Array, Optional[tuple[jax.Array, jax.Array]]]:
        """The attention output and, when a cache is in use, this call's new keys/values (B, L, K, D)."""
        q = shard(apply_rope(self.q_proj(x), cos, sin), ("batch", "length", "act_heads", "kv"))
        k = shard(apply_rope(self.k_proj(x), cos, sin), ("batch", "length", "act_kv_heads", "kv"))
        v = shard(self.v_proj(x), ("batch", "length", "act_kv_heads", "kv"))
        if cache_kv is not None:
            k_buf, v_buf = cache_kv
            k = k.astype(k_buf.dtype)
            v = v.astype(v_buf.dtype)
            k_all = jax.lax.dynamic_update_slice(k_buf, k, (0, index, 0, 0)).astype(self.dtype)
            v_all = jax.lax.dynamic_update_slice(v_buf, v, (0, index, 0, 0)).astype(self.dtype)
        else:
            k_all, v_all = k, v
        impl = self.implementation if cache_kv is None else self.cached_implementation
        out = attend(q, k_all, v_all, mask, implementation=impl, sliding_window=self.sliding_window)
        out = shard(out, ("batch", "length", "act_heads", "kv"))
        return self.o_proj(out), (None if cache_kv is None else (k, v))
