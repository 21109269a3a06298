"""The Llama / Mistral / Qwen2 decoder in Flax NNX, numerically equal to transformers' *ForCausalLM.

Parameter names follow transformers' module names (embed_tokens, layers.i.self_attn.q_proj, ...) so the
checkpoint mapping in `hf_io` stays a table. Layers are either a python list or one stacked module applied with
`nnx.scan` (one compiled layer body instead of N: much faster compiles for 32-layer models); both paths call the
same `DecoderLayer` and give identical logits. `remat` recomputes each layer's activations in the backward pass.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpetct.models.attention import Attention, resolve_implementation, visibility_mask
from jaxpetct.models.decoder_config import DecoderConfig
from jaxpetct.models.kvcache import KVCache, slot_positions
from jaxpetct.models.layers import DENSE_OUTPUT, MLP, Embed, RMSNorm, annotated_param, normal_init
from jaxpetct.models.rope import inverse_frequencies, rope_tables
from jaxpetct.parallel.rules import shard

ACT = ("batch", "length", "act_embed")


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        norm = dict(eps=cfg.rms_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, dtype=cfg.compute_dtype,
                       param_dtype=cfg.weight_dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask, cache_kv, index):
        h, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_kv, index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return shard(x, ACT), new_kv


def _apply_layer(layer: DecoderLayer, x, cos, sin, mask, cache_kv, index):
    return layer(x, cos, sin, mask, cache_kv, index)


@functools.lru_cache(maxsize=32)
def _inv_freq(head_dim: int, theta: float, scaling_items: Optional[tuple]):
    return inverse_frequencies(head_dim, theta, None if scaling_items is None else dict(scaling_items))


def default_positions(attention_mask: Optional[jax.Array], cache: Optional[KVCache], batch: int,
                      length: int) -> jax.Array:
    """Positions when the caller gives none: count real tokens (left padding), continuing after the cache."""
    if attention_mask is not None:
        pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1
    else:
        pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if cache is not None:
        pos = pos + cache.next_positions[:, None]
    return jnp.maximum(pos, 0).astype(jnp.int32)


class Decoder(nnx.Module):
    """A causal decoder LM. `cfg` is kept as a static attribute (it is hashable and part of the graphdef)."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, **kw)
        if cfg.scan_layers:
            self.layers = _stacked_layers(cfg, rngs)
        else:
            self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, **kw)
        if cfg.tie_word_embeddings:
            self.lm_head = nnx.data(None)
        else:
            self.lm_head = annotated_param(normal_init(rngs, (cfg.hidden_size, cfg.vocab_size), cfg.weight_dtype),
                                           ("embed", "vocab"))

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings (B, L, hidden) in the compute dtype; the VLM splices visual tokens into these."""
        return self.embed_tokens(input_ids)

    def __call__(self, input_ids: Optional[jax.Array] = None, *, inputs_embeds: Optional[jax.Array] = None,
                 positions: Optional[jax.Array] = None, attention_mask: Optional[jax.Array] = None,
                 cache: Optional[KVCache] = None, bidirectional_mask: Optional[jax.Array] = None,
                 return_hidden: bool = False) -> tuple[jax.Array, Optional[KVCache]]:
        """Logits (B, L, vocab) in float32 and the updated cache (None when no cache was given).

        `return_hidden=True` returns the final-norm hidden states (B, L, hidden) instead of logits, for losses
        that apply `head_weight()` themselves without materialising the logits (models/losses.py).

        `attention_mask` (B, L) is True on real tokens; `positions` default to the count of real tokens so far.
        `bidirectional_mask` (B, L) marks tokens of this call that attend to each other in both directions (a
        prefix-LM over image + prompt); it needs the whole prefix in one call. The cache must have room for L
        more tokens: slots past `max_len` are not written.
        """
        cfg = self.cfg
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(cfg.compute_dtype)
        batch, length = x.shape[:2]
        if positions is None:
            positions = default_positions(attention_mask, cache, batch, length)
        positions = positions.astype(jnp.int32)
        valid = None if attention_mask is None else attention_mask.astype(bool)
        new_kv_positions = positions if valid is None else jnp.where(valid, positions, -1)
        q_bidir = kv_bidir = None
        if bidirectional_mask is not None:
            q_bidir = bidirectional_mask.astype(bool)
            kv_bidir = q_bidir
        if cache is None:
            kv_pos = new_kv_positions
        else:
            kv_pos = slot_positions(cache, positions, valid)
            if q_bidir is not None:
                kv_bidir = jax.lax.dynamic_update_slice(jnp.zeros(kv_pos.shape, bool), q_bidir, (0, cache.index))
        fast_causal = (resolve_implementation(cfg) == "cudnn" and cache is None and valid is None
                       and q_bidir is None)
        mask = None if fast_causal else visibility_mask(positions, kv_pos, cfg.sliding_window, q_bidir, kv_bidir)
        scaling = None if cfg.rope_scaling is None else tuple(sorted(cfg.rope_scaling.items()))
        cos, sin = rope_tables(positions, _inv_freq(cfg.head_dim, cfg.rope_theta, scaling), cfg.compute_dtype)

        x = shard(x, ACT)
        x, new_kv = self._run_layers(x, cos, sin, mask, cache)
        x = self.norm(x)
        new_cache = None if cache is None else cache.append(*new_kv, new_kv_positions)
        if return_hidden:
            return x, new_cache
        logits = shard(self._head(x), ("batch", "length", "act_vocab"))
        return logits, new_cache

    def head_weight(self) -> jax.Array:
        """The (hidden, vocab) output projection in the compute dtype (the embedding table when tied)."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...].astype(self.cfg.compute_dtype).T
        return self.lm_head[...].astype(self.cfg.compute_dtype)

    def _head(self, x: jax.Array) -> jax.Array:
        if self.lm_head is None:
            return self.embed_tokens.attend(x)
        w = self.lm_head[...].astype(self.cfg.compute_dtype)
        return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    def _run_layers(self, x, cos, sin, mask, cache: Optional[KVCache]):
        cfg = self.cfg
        index = None if cache is None else cache.index
        step = _apply_layer
        if cfg.remat:
            cp = jax.checkpoint_policies
            # Dense products are custom-VJP calls (layers.contract), not dot_general: saved by name.
            dots = cp.save_from_both_policies(cp.dots_with_no_batch_dims_saveable, cp.save_only_these_names(DENSE_OUTPUT))
            policy = {"nothing": cp.nothing_saveable, "dots": dots}[cfg.remat_policy]
            step = nnx.remat(_apply_layer, policy=policy)
        if cfg.scan_layers:
            kv = None if cache is None else (cache.k, cache.v)

            @nnx.scan(in_axes=(0, nnx.Carry, None, None, None, 0, None), out_axes=(nnx.Carry, 0))
            def body(layer, h, cos, sin, mask, cache_kv, index):
                return step(layer, h, cos, sin, mask, cache_kv, index)

            return body(self.layers, x, cos, sin, mask, kv, index)
        new_kv = []
        for i, layer in enumerate(self.layers):
            layer_kv = None if cache is None else (cache.k[i], cache.v[i])
            x, kv = step(layer, x, cos, sin, mask, layer_kv, index)
            new_kv.append(kv)
        if cache is None:
            return x, None
        return x, (jnp.stack([k for k, _ in new_kv]), jnp.stack([v for _, v in new_kv]))


def _stacked_layers(cfg: DecoderConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """One DecoderLayer whose every parameter has a leading 'layers' axis of size num_layers."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(r: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(cfg, rngs=r)

    return make(rngs)
