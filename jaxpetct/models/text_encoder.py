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
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


class TextEncoderLoadError(ValueError):
    """A checkpoint directory that cannot be read as a RobertaModel (names the directory/tensor and the reason)."""


def _axes(*names: str | None) -> dict[str, Any]:
    """Logical-axis metadata, placed later from jaxpetct.parallel.rules (never eagerly)."""
    return {"out_sharding": tuple(names), "eager_sharding": False}


@dataclasses.dataclass(frozen=True)
class RobertaConfig:
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
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

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
            raise ValueError("decoder/cross-attention RoBERTa configs are not supported: this is a bidirectional encoder")
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
    return nnx.Linear(din, dout, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
                      kernel_init=nnx.initializers.normal(0.02), kernel_metadata=_axes(*axes),
                      bias_metadata=_axes(axes[1]))


def _layernorm(cfg: RobertaConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         rngs=rngs, scale_metadata=_axes("norm"), bias_metadata=_axes("norm"))


def _embed(n: int, axes: tuple[str | None, str], cfg: RobertaConfig, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(n, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
                     embedding_init=nnx.initializers.normal(0.02), embedding_metadata=_axes(*axes))


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
        b, l, d = x.shape
        q, k, v = (proj(x).reshape(b, l, self.num_heads, self.head_dim) for proj in (self.query, self.key, self.value))
        attn = jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None, None, :])
        h = self.attn_norm(x + self.attn_out(attn.reshape(b, l, d)))
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
# HF safetensors -> NNX (tensor by tensor)


def _hf_names(model: RobertaEncoder) -> dict[str, tuple[nnx.Variable, bool]]:
    """HF tensor name -> (our Variable, transpose?) for every parameter of ``model``."""
    out: dict[str, tuple[nnx.Variable, bool]] = {}

    def linear(prefix: str, lin: nnx.Linear):
        out[f"{prefix}.weight"] = (lin.kernel, True)  # torch Linear stores (out, in)
        out[f"{prefix}.bias"] = (lin.bias, False)

    def norm(prefix: str, ln: nnx.LayerNorm):
        out[f"{prefix}.weight"] = (ln.scale, False)
        out[f"{prefix}.bias"] = (ln.bias, False)

    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        out[f"embeddings.{name}.weight"] = (getattr(model, name).embedding, False)
    norm("embeddings.LayerNorm", model.embed_norm)
    for i, layer in enumerate(model.layers):
        p = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            linear(f"{p}.attention.self.{name}", getattr(layer, name))
        linear(f"{p}.attention.output.dense", layer.attn_out)
        norm(f"{p}.attention.output.LayerNorm", layer.attn_norm)
        linear(f"{p}.intermediate.dense", layer.ffn_in)
        linear(f"{p}.output.dense", layer.ffn_out)
        norm(f"{p}.output.LayerNorm", layer.ffn_norm)
    if model.pooler is not None:
        linear("pooler.dense", model.pooler)
    return out


def _tensor_index(directory: str) -> dict[str, str]:
    """HF tensor name -> safetensors file, for a single-file or an index-sharded checkpoint."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return {k: os.path.join(directory, v) for k, v in weight_map.items()}
    single = os.path.join(directory, "model.safetensors")
    if not os.path.isfile(single):
        raise TextEncoderLoadError(f"{directory}: no model.safetensors or model.safetensors.index.json")
    from safetensors import safe_open

    with safe_open(single, framework="numpy") as f:
        return {k: single for k in f.keys()}


def load_roberta(directory: str | os.PathLike, *, add_pooling_layer: bool = True, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, sharding_for=None) -> RobertaEncoder:
    """Build a RobertaEncoder from an HF directory (config.json + safetensors), one tensor in host memory at a time.

    Accepts ``RobertaModel`` names and prefixed ones (``roberta.`` from RobertaForMaskedLM, as PhoBERT ships);
    heads (``lm_head.*``) and buffers are ignored. ``sharding_for(variable) -> jax.sharding.Sharding | None`` lets the
    caller place each tensor straight onto its devices (e.g. from the logical-axis rules); default: device 0.
    """
    from safetensors import safe_open

    directory = os.fspath(directory)
    config_path = os.path.join(directory, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            hf_cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TextEncoderLoadError(f"{config_path}: cannot read the model config ({e})") from e
    try:
        cfg = RobertaConfig.from_hf(hf_cfg, add_pooling_layer=add_pooling_layer, dtype=dtype, param_dtype=param_dtype)
    except (KeyError, ValueError) as e:
        raise TextEncoderLoadError(f"{config_path}: not a usable RoBERTa config ({e!r})") from e

    model = nnx.eval_shape(lambda: RobertaEncoder(cfg, rngs=nnx.Rngs(0)))
    wanted = _hf_names(model)
    files = _tensor_index(directory)
    prefixes = ("", "roberta.")
    source: dict[str, tuple[str, str]] = {}  # our HF-style name -> (file, stored name)
    for name in wanted:
        for prefix in prefixes:
            if prefix + name in files:
                source[name] = (files[prefix + name], prefix + name)
                break
    missing = sorted(set(wanted) - set(source))
    if missing:
        raise TextEncoderLoadError(f"{directory}: checkpoint lacks {len(missing)} RoBERTa tensors, e.g. {missing[:3]}"
                                   + (" (load with add_pooling_layer=False if it has no pooler)"
                                      if any(m.startswith("pooler.") for m in missing) else ""))

    by_file: dict[str, list[str]] = {}
    for name, (path, _) in source.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with safe_open(path, framework="numpy") as f:
            for name in names:
                variable, transpose = wanted[name]
                array = f.get_tensor(source[name][1])
                if transpose:
                    array = array.T
                if tuple(array.shape) != tuple(variable.shape):
                    raise TextEncoderLoadError(f"{path}: tensor {source[name][1]} has shape {tuple(array.shape)}, "
                                               f"config expects {tuple(variable.shape)}")
                array = np.asarray(array, dtype=variable.dtype)
                sharding = sharding_for(variable) if sharding_for is not None else None
                variable.set_value(jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array))
                del array
    return model
