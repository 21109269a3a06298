"""Autoregressive generation with a KV cache: pure jitted prefill / decode steps and a decode loop inside jit.

The whole generation (prefill, then `lax.while_loop` over decode steps) is one compiled program: no host round
trip per token, and it runs unchanged on a sharded model under `jax.set_mesh`. Prompts of different lengths
come padded (left padding is conventional, right padding also works because attention follows positions,
not slots); the prompt may be token ids or embeddings (the VLM passes text embeddings with visual tokens
spliced in). Each row stops at its own EOS; the loop ends when all rows are done or `max_new_tokens` is reached.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpetct.models.kvcache import KVCache, init_cache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy (argmax); top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"invalid sampling settings {self}")


@dataclasses.dataclass(frozen=True)
class GenerationOutput:
    tokens: jax.Array  # (B, max_new_tokens) int32, pad after each row's EOS
    lengths: jax.Array  # (B,) int32, generated tokens per row including the EOS


jax.tree_util.register_dataclass(GenerationOutput, data_fields=["tokens", "lengths"], meta_fields=[])


def sample_logits(rng: jax.Array, logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """One token per row from (B, V) float32 logits."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    neg = jnp.finfo(logits.dtype).min
    if sampling.top_k > 0:
        k = min(sampling.top_k, logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if sampling.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(mass_before < sampling.top_p, ordered, jnp.inf)  # the first token is always kept
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, neg, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _eval_model(graphdef, state):
    model = nnx.merge(graphdef, state)
    model.eval()  # LoRA dropout off
    return model


def _last_real(mask: jax.Array) -> jax.Array:
    """Index of each row's last real token (works for left and right padding)."""
    return (mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)).astype(jnp.int32)


def _prefill(graphdef, state, input_ids, inputs_embeds, attention_mask, bidirectional_mask, max_len):
    model = _eval_model(graphdef, state)
    x = input_ids if input_ids is not None else inputs_embeds
    batch, length = x.shape[:2]
    mask = jnp.ones((batch, length), bool) if attention_mask is None else attention_mask.astype(bool)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    cache = init_cache(model.cfg, batch, max_len)
    logits, cache = model(input_ids, inputs_embeds=inputs_embeds, positions=positions, attention_mask=mask,
                          cache=cache, bidirectional_mask=bidirectional_mask)
    last = jnp.take_along_axis(logits, _last_real(mask)[:, None, None], axis=1)[:, 0]
    return last, cache, jnp.sum(mask, axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def prefill(graphdef, state, input_ids=None, inputs_embeds=None, attention_mask=None, bidirectional_mask=None, *,
            max_len: int) -> tuple[jax.Array, KVCache, jax.Array]:
    """Run the prompt through the model into a fresh cache of `max_len` slots.

    Returns the logits after each row's last real token (B, V), the cache, and each row's next position (B,).
    """
    return _prefill(graphdef, state, input_ids, inputs_embeds, attention_mask, bidirectional_mask, max_len)


def _decode(model, tokens, positions, cache):
    logits, cache = model(tokens[:, None], positions=positions[:, None], cache=cache)
    return logits[:, 0], cache


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def decode_step(graphdef, state, tokens: jax.Array, positions: jax.Array, cache: KVCache
                ) -> tuple[jax.Array, KVCache]:
    """Feed one token per row (B,) at `positions` (B,); returns next-token logits (B, V) and the cache."""
    return _decode(_eval_model(graphdef, state), tokens, positions, cache)


def _in_vocab(logits: jax.Array, vocab_size: int) -> jax.Array:
    """Logits of ids the tokenizer does not have set to -inf: a model's embedding table may be larger than its
    tokenizer (padded vocabularies; the corpus tokenizer's model.decoder.vocab_size is an upper bound), and an id
    without a piece cannot be decoded."""
    if not vocab_size or vocab_size >= logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "sampling", "eos_ids", "pad_id",
                                             "vocab_size"))
def _generate(graphdef, state, input_ids, inputs_embeds, attention_mask, bidirectional_mask, rng, *,
              max_new_tokens: int, sampling: SamplingConfig, eos_ids: tuple[int, ...], pad_id: int,
              vocab_size: int = 0):
    x = input_ids if input_ids is not None else inputs_embeds
    batch, length = x.shape[:2]
    logits, cache, next_pos = _prefill(graphdef, state, input_ids, inputs_embeds, attention_mask,
                                       bidirectional_mask, length + max_new_tokens)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
    rng, sub = jax.random.split(rng)
    first = sample_logits(sub, _in_vocab(logits, vocab_size), sampling)
    tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, eos)

    def cond(carry):
        i, _, _, _, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, tokens, last, pos, done, cache, rng = carry
        # NNX variables may not cross into an inner trace level: rebuild them (same arrays) inside the body.
        local = jax.tree.map(lambda x: x, state)
        logits, cache = _decode(_eval_model(graphdef, local), last, pos, cache)
        rng, sub = jax.random.split(rng)
        tok = jnp.where(done, pad_id, sample_logits(sub, _in_vocab(logits, vocab_size), sampling))
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
        return i + 1, tokens, tok, pos + 1, done | jnp.isin(tok, eos), cache, rng

    carry = (jnp.int32(1), tokens, first, next_pos, done, cache, rng)
    _, tokens, _, _, _, _, _ = jax.lax.while_loop(cond, body, carry)
    is_eos = jnp.isin(tokens, eos)
    lengths = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, max_new_tokens)
    return GenerationOutput(tokens=tokens, lengths=lengths.astype(jnp.int32))


def generate(model: Union[nnx.Module, tuple], *, input_ids: Optional[jax.Array] = None,
             inputs_embeds: Optional[jax.Array] = None, attention_mask: Optional[jax.Array] = None,
             max_new_tokens: int = 32, sampling: SamplingConfig = SamplingConfig(),
             eos_token_id: Union[None, int, Sequence[int]] = None, pad_token_id: int = 0, seed: int = 0,
             bidirectional_mask: Optional[jax.Array] = None, vocab_size: int = 0) -> GenerationOutput:
    """Generate up to `max_new_tokens` per row; `model` is a Decoder-like module or a (graphdef, state) pair.

    The same seed gives the same tokens; greedy decoding ignores it. `vocab_size` > 0: only ids below it are drawn.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    eos = () if eos_token_id is None else (
        (int(eos_token_id),) if isinstance(eos_token_id, int) else tuple(int(e) for e in eos_token_id))
    return _generate(graphdef, state, input_ids, inputs_embeds, attention_mask, bidirectional_mask,
                     jax.random.key(seed), max_new_tokens=max_new_tokens, sampling=sampling, eos_ids=eos,
                     pad_id=int(pad_token_id), vocab_size=int(vocab_size))
