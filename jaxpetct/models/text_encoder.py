"""RoBERTa-family text encoder (PhoBERT is a RoBERTa) in Flax NNX, and a loader for HF ``RobertaModel`` safetensors.

The paper fine-tunes CT-ViT CLIP-style against PhoBERT-base; this is that text tower. It computes exactly what
``transformers.RobertaModel`` computes (parity-tested to 1e-4 in float32):
  * position ids count non-pad tokens from ``pad_token_id + 1`` (fairseq's ``make_positions``), pads sit at
    ``pad_token_id`` - so left- and right-padded rows give the same real-token states;
  * word + token-type + position embeddings -> LayerNorm;
  * post-LN blocks: LN(x + Attn(x)), LN(h + W2 act(W1 h)), biased projections, ``hidden_act`` (exact GELU for RoBERTa);
  * optional pooler: tanh(Linear(state of the first token)).
Dropout is not applied (the contrastive stage freezes or fine-tunes this tower at a tiny learning rate; add it here if
a recipe ever needs it).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpetct.models.decoder_config import Precision
from jaxpetct.models.hf_io import read_config
from jaxpetct.models.safetensors_io import CheckpointError, SafetensorsCheckpoint, load_state
from jaxpetct.parallel.rules import LOGICAL_RULES, param_axes

Array = jax.Array

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class RobertaConfig(Precision):
    vocab_size: int = 64001
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 258
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    hidden_act: str = "gelu"
    add_pooling_layer: bool = True
    dtype: Any = "float32"  # compute dtype; a name or a JAX dtype
    param_dtype: Any = "float32"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; known: {sorted(_ACTIVATIONS)}")

    @classmethod
    def phobert_base(cls, **overrides) -> "RobertaConfig":
        """vinai/phobert-base (the paper's text encoder): 12 x 768, 64k BPE vocabulary, 256 tokens + 2 offset."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> "RobertaConfig":
        base = dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                    max_position_embeddings=40, type_vocab_size=1)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> "RobertaConfig":
        """From a transformers RobertaConfig dict (config.json)."""
        pos_type = hf.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"position_embedding_type={pos_type!r} is not supported (only 'absolute', as in RoBERTa)")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError("decoder/cross-attention RoBERTa configs are not supported (this is an encoder)")
        return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                   num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
                   max_position_embeddings=hf["max_position_embeddings"], type_vocab_size=hf.get("type_vocab_size", 2),
                   layer_norm_eps=hf.get("layer_norm_eps", 1e-12), pad_token_id=hf.get("pad_token_id", 1),
                   hidden_act=hf.get("hidden_act", "gelu"), **overrides)


def roberta_position_ids(input_ids: Array, pad_token_id: int) -> Array:
    """fairseq/HF positions: real tokens count up from pad_token_id + 1, pads get pad_token_id."""
    real = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + pad_token_id


def _linear(din: int, dout: int, axes: tuple[str, str], cfg: RobertaConfig, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs,
                      kernel_init=nnx.initializers.normal(0.02), kernel_metadata=param_axes(*axes),
                      bias_metadata=param_axes(axes[1]))


def _layernorm(cfg: RobertaConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                         param_dtype=cfg.weight_dtype,
                         rngs=rngs, scale_metadata=param_axes("norm"), bias_metadata=param_axes("norm"))


def _embed(n: int, axes: tuple[str | None, str], cfg: RobertaConfig, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(n, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs,
                     embedding_init=nnx.initializers.normal(0.02), embedding_metadata=param_axes(*axes))


class RobertaLayer(nnx.Module):
    def __init__(self, cfg: RobertaConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_heads, d // cfg.num_heads
        self.act = _ACTIVATIONS[cfg.hidden_act]
        self.query = _linear(d, d, ("embed", "heads"), cfg, rngs)
        self.key = _linear(d, d, ("embed", "heads"), cfg, rngs)
        self.value = _linear(d, d, ("embed", "heads"), cfg, rngs)
        self.attn_out = _linear(d, d, ("heads", "embed"), cfg, rngs)
        self.attn_norm = _layernorm(cfg, rngs)
        self.ffn_in = _linear(d, cfg.intermediate_size, ("embed", "mlp"), cfg, rngs)
        self.ffn_out = _linear(cfg.intermediate_size, d, ("mlp", "embed"), cfg, rngs)
        self.ffn_norm = _layernorm(cfg, rngs)

    def __call__(self, x: Array, key_mask: Array) -> Array:
        b, t, d = x.shape
        q, k, v = (proj(x).reshape(b, t, self.num_heads, self.head_dim) for proj in (self.query, self.key, self.value))
        attn = jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None, None, :])
        h = self.attn_norm(x + self.attn_out(attn.reshape(b, t, d)))
        return self.ffn_norm(h + self.ffn_out(self.act(self.ffn_in(h))))


class RobertaEncoder(nnx.Module):
    """``__call__(input_ids, attention_mask) -> (last_hidden_state (B, L, d), pooled (B, d) or None)``."""

    def __init__(self, cfg: RobertaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.word_embeddings = _embed(cfg.vocab_size, ("vocab", "embed"), cfg, rngs)
        self.position_embeddings = _embed(cfg.max_position_embeddings, ("position", "embed"), cfg, rngs)
        self.token_type_embeddings = _embed(cfg.type_vocab_size, (None, "embed"), cfg, rngs)
        self.embed_norm = _layernorm(cfg, rngs)
        self.layers = nnx.List([RobertaLayer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.pooler = _linear(cfg.hidden_size, cfg.hidden_size, ("embed", "mlp"), cfg, rngs) \
            if cfg.add_pooling_layer else None

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids: Array | None = None,
                 position_ids: Array | None = None) -> tuple[Array, Array | None]:
        cfg = self.cfg
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = input_ids != cfg.pad_token_id
        if position_ids is None:
            position_ids = roberta_position_ids(input_ids, cfg.pad_token_id)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(position_ids))
        x = self.embed_norm(x)
        key_mask = attention_mask.astype(bool)
        for layer in self.layers:
            x = layer(x, key_mask)
        pooled = jnp.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return x, pooled


# ---------------------------------------------------------------------------------------------------------------------
# HF safetensors -> NNX (tensor by tensor, each placed with its sharding)

# our path -> (transformers name after "embeddings." / "encoder.layer.{i}." / "", transposed?)
_TOP_TABLE = {
    ("word_embeddings", "embedding"): ("embeddings.word_embeddings.weight", False),
    ("position_embeddings", "embedding"): ("embeddings.position_embeddings.weight", False),
    ("token_type_embeddings", "embedding"): ("embeddings.token_type_embeddings.weight", False),
    ("embed_norm", "scale"): ("embeddings.LayerNorm.weight", False),
    ("embed_norm", "bias"): ("embeddings.LayerNorm.bias", False),
    ("pooler", "kernel"): ("pooler.dense.weight", True),  # torch Linear stores (out, in)
    ("pooler", "bias"): ("pooler.dense.bias", False),
}
_LAYER_MODULES = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm",
}
_LAYER_PARAMS = {"kernel": ("weight", True), "bias": ("bias", False), "scale": ("weight", False)}
_PREFIXES = ("", "roberta.")  # RobertaModel / RobertaFor* (PhoBERT ships as RobertaForMaskedLM)


def hf_name(path: tuple) -> tuple[str, bool]:
    """(transformers tensor name without model prefix, transpose?) of one of our parameter paths."""
    if path[0] == "layers":
        module, param = _LAYER_MODULES[path[2]], _LAYER_PARAMS[path[3]]
        return f"encoder.layer.{path[1]}.{module}.{param[0]}", param[1]
    return _TOP_TABLE[tuple(path)]


def load_roberta(directory: str | os.PathLike, *, add_pooling_layer: bool = True, mesh=None, rules=LOGICAL_RULES,
                 dtype: Any = "float32", param_dtype: Any = "float32") -> RobertaEncoder:
    """A RobertaEncoder with the weights of an HF directory (config.json + safetensors, single or sharded index).

    One tensor is on the host at a time and lands directly in its shards on ``mesh`` (default: one device) under the
    logical-axis ``rules``. Names may carry the ``roberta.`` prefix of RobertaFor* checkpoints; heads (``lm_head``)
    are ignored. Raises CheckpointError naming the file and the reason.
    """
    directory = os.fspath(directory)
    hf_cfg = read_config(directory)
    try:
        cfg = RobertaConfig.from_hf(hf_cfg, add_pooling_layer=add_pooling_layer, dtype=dtype, param_dtype=param_dtype)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(os.path.join(directory, "config.json"), f"not a usable RoBERTa config ({e!r})") from e
    ckpt = SafetensorsCheckpoint(directory)

    def source(path: tuple, var: nnx.Variable) -> np.ndarray:
        name, transpose = hf_name(path)
        for prefix in _PREFIXES:
            if prefix + name in ckpt:
                array = ckpt.read(prefix + name)
                return array.T if transpose else array
        hint = " (load with add_pooling_layer=False: it has no pooler)" if name.startswith("pooler.") else ""
        raise CheckpointError(directory, f"RoBERTa tensor {name!r} is missing from the checkpoint{hint}")

    abstract = nnx.eval_shape(lambda: RobertaEncoder(cfg, rngs=nnx.Rngs(0)))
    return load_state(abstract, source, mesh, rules, where=directory)
