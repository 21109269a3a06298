"""Key/value cache for prefill and decode: fixed-size buffers that jit and `lax.while_loop` can carry.

All rows write the same slot range per call (prompts are left-padded), so one scalar `index` says where the next
tokens go; each slot also records the absolute position of the token stored there (-1 = empty or padding), which
is all attention needs for causality, padding and sliding windows. Buffers are stacked over layers,
(layers, batch, max_len, kv_heads, head_dim), so scan-over-layers and a python loop read the same cache.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from jaxpetct.models.decoder_config import DecoderConfig
from jaxpetct.parallel.rules import shard

CACHE_AXES = ("layers", "batch", "cache_length", "act_kv_heads", "kv")


@struct.dataclass
class KVCache:
    k: jax.Array  # (layers, B, S, kv_heads, head_dim)
    v: jax.Array  # (layers, B, S, kv_heads, head_dim)
    positions: jax.Array  # (B, S) int32, absolute position of the token in each slot, -1 if none
    index: jax.Array  # () int32, first free slot

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def lengths(self) -> jax.Array:
        """Real (non-padding) tokens held per row, (B,)."""
        return jnp.sum(self.positions >= 0, axis=1).astype(jnp.int32)

    @property
    def next_positions(self) -> jax.Array:
        """Position the next token of each row takes, (B,)."""
        return (jnp.max(self.positions, axis=1) + 1).astype(jnp.int32)

    def layer(self, i: int) -> tuple[jax.Array, jax.Array]:
        """The per-layer buffers (B, max_len, kv_heads, head_dim)."""
        return self.k[i], self.v[i]

    def append(self, k_new: jax.Array, v_new: jax.Array, positions: jax.Array) -> "KVCache":
        """Write stacked new keys/values (layers, B, L, ...) and their positions (B, L; -1 for padding)."""
        length = k_new.shape[2]
        start = (0, 0, self.index, 0, 0)
        k = jax.lax.dynamic_update_slice(self.k, k_new.astype(self.k.dtype), start)
        v = jax.lax.dynamic_update_slice(self.v, v_new.astype(self.v.dtype), start)
        pos = jax.lax.dynamic_update_slice(self.positions, positions.astype(jnp.int32), (0, self.index))
        return KVCache(k=shard(k, CACHE_AXES), v=shard(v, CACHE_AXES), positions=pos, index=self.index + length)


def slot_positions(cache: KVCache, positions: jax.Array, valid: Optional[jax.Array]) -> jax.Array:
    """Positions of every cache slot once the current tokens are written (what attention masks against)."""
    new = positions if valid is None else jnp.where(valid, positions, -1)
    return jax.lax.dynamic_update_slice(cache.positions, new.astype(jnp.int32), (0, cache.index))


def init_cache(cfg: DecoderConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache; `dtype` defaults to the compute dtype (bf16 halves decode memory on accelerators)."""
    dtype = cfg.compute_dtype if dtype is None else jnp.dtype(dtype)
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(
        k=shard(jnp.zeros(shape, dtype), CACHE_AXES),
        v=shard(jnp.zeros(shape, dtype), CACHE_AXES),
        positions=jnp.full((batch, max_len), -1, jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )
