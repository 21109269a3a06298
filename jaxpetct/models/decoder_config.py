"""Decoder LLM configuration as code: one frozen dataclass for the Llama / Mistral / Qwen2 family.

The three families differ only in a few switches (sliding window, qkv bias, tied embeddings, RoPE scaling), so
one config and one module cover them; `from_hf` / `to_hf` translate to and from a transformers `config.json`
so pretrained checkpoints load without hand-written shapes, and exported directories load back in transformers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

import jax.numpy as jnp

# ConfigError: a model configuration this port cannot reproduce exactly; the message names the key and the reason.
from jaxpetct.errors import ConfigError

Family = Literal["llama", "mistral", "qwen2"]
FAMILIES = ("llama", "mistral", "qwen2")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_ROPE_TYPES = ("llama3", "linear")




class Precision:
    """Mixin of the model configs: `dtype` (activations, matmuls) and `param_dtype` (stored weights) as JAX dtypes."""

    dtype: Any
    param_dtype: Any

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)


# "nothing": recompute the whole layer in the backward (least memory); "dots": keep the outputs of the weight
# matmuls (q/k/v/o, gate/up/down) and recompute only element-wise work and attention's batched products (more
# memory, ~no extra matmul FLOPs: the faster choice when activations fit).
REMAT_POLICIES = ("nothing", "dots")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(Precision):
    """Shapes and switches of one decoder.

    `dtype` is the compute dtype (activations, matmuls); `param_dtype` is the storage dtype of the weights.
    `rope_scaling` is None or a transformers-style dict with `rope_type` in ('llama3', 'linear').
    `sliding_window` follows transformers' meaning: a query at position p sees keys at positions > p - window.
    `attention_impl` picks the kernel of `jax.nn.dot_product_attention`: 'auto' takes cuDNN flash attention on a
    GPU when dtype and head_dim allow it and XLA elsewhere.
    """

    family: Family = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    sliding_window: Optional[int] = None
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "nothing"  # with remat: what the backward keeps ("nothing", or "dots": matmul outputs)
    scan_layers: bool = False
    attention_impl: str = "auto"
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[int] = 2
    pad_token_id: Optional[int] = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"family {self.family!r}: expected one of {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window={self.sliding_window} must be a positive int or None")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"remat_policy={self.remat_policy!r}: expected one of {REMAT_POLICIES}")
        if self.attention_impl not in ("auto", "xla", "cudnn"):
            raise ConfigError(f"attention_impl={self.attention_impl!r}: expected 'auto', 'xla' or 'cudnn'")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in _ROPE_TYPES:
                raise ConfigError(f"rope_scaling type {kind!r} is not supported (supported: {_ROPE_TYPES})")
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError as e:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not a dtype") from e
        # A dict field would make the dataclass unhashable; jit needs configs as static, hashable values.
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", _FrozenDict(self.rope_scaling))

    def replace(self, **changes: Any) -> "DecoderConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count, for reports and memory estimates."""
        e, h, kv, d = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = e * d * (h + 2 * kv) + h * d * e + (d * (h + 2 * kv) if self.attention_bias else 0)
        layer = attn + 3 * e * self.intermediate_size + 2 * e
        head = 0 if self.tie_word_embeddings else e * self.vocab_size
        return self.num_layers * layer + self.vocab_size * e + e + head

    # -- transformers config.json ------------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, hf: dict, **overrides: Any) -> "DecoderConfig":
        """Reads a transformers `config.json` dict (v4 or v5 layout); `overrides` set dtype, remat, scan_layers..."""
        family = hf.get("model_type")
        if family not in FAMILIES:
            raise ConfigError(f"model_type {family!r}: expected one of {FAMILIES}")
        act = hf.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ConfigError(f"hidden_act {act!r}: only SwiGLU (silu) decoders are supported")
        if hf.get("mlp_bias"):
            raise ConfigError("mlp_bias=true is not supported (no Llama/Mistral/Qwen2 checkpoint uses it)")
        if family == "llama" and hf.get("attention_bias"):
            raise ConfigError("llama attention_bias=true (biased o_proj) is not supported")
        heads = int(hf["num_attention_heads"])
        theta, scaling = _rope_from_hf(hf)
        fields = dict(
            family=family,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            sliding_window=_window_from_hf(hf, family),
            attention_bias=family == "qwen2",
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=_first_id(hf.get("bos_token_id")),
            eos_token_id=_first_id(hf.get("eos_token_id")),
            pad_token_id=_first_id(hf.get("pad_token_id")),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf(self) -> dict:
        """A transformers `config.json` dict that loads as the matching *ForCausalLM class."""
        rope = {"rope_theta": float(self.rope_theta), "rope_type": "default"}
        if self.rope_scaling is not None:
            rope = {**dict(self.rope_scaling), "rope_theta": float(self.rope_theta)}
            rope.setdefault("rope_type", rope.pop("type", None))
        out = {
            "architectures": [_ARCHITECTURES[self.family]],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": float(self.rope_theta),
            "rope_scaling": None if self.rope_scaling is None else dict(rope),
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
            "dtype": self.param_dtype,
            "use_cache": True,
        }
        if self.family == "llama":
            out.update(attention_bias=False, mlp_bias=False)
        elif self.family == "mistral":
            out.update(sliding_window=self.sliding_window)
        else:
            out.update(
                use_sliding_window=self.sliding_window is not None,
                sliding_window=self.sliding_window,
                max_window_layers=0 if self.sliding_window is not None else self.num_layers,
                layer_types=[("sliding_attention" if self.sliding_window else "full_attention")] * self.num_layers,
            )
        return out


class _FrozenDict(dict):
    """A read-only, hashable dict so that configs holding RoPE scaling stay valid static jit arguments."""

    def __hash__(self):  # type: ignore[override]
        return hash(tuple(sorted((k, repr(v)) for k, v in self.items())))

    def _readonly(self, *args, **kwargs):
        raise TypeError("DecoderConfig.rope_scaling is read-only; use cfg.replace(rope_scaling=...)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _readonly  # type: ignore[assignment]

    def __reduce__(self):
        return (_FrozenDict, (dict(self),))


def _first_id(value: Any) -> Optional[int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def _rope_from_hf(hf: dict) -> tuple[float, Optional[dict]]:
    """Both layouts: v5 `rope_parameters` (with rope_theta inside) and v4 `rope_theta` + `rope_scaling`."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(hf.get("rope_theta", 10000.0))
        scaling = dict(hf.get("rope_scaling") or {})
    kind = scaling.pop("type", None) or scaling.get("rope_type", "default")
    scaling["rope_type"] = kind
    if kind == "default":
        return theta, None
    if kind not in _ROPE_TYPES:
        raise ConfigError(f"rope type {kind!r} is not supported (supported: default, {', '.join(_ROPE_TYPES)})")
    if kind == "llama3" and "original_max_position_embeddings" not in scaling:
        scaling["original_max_position_embeddings"] = int(hf.get("max_position_embeddings", 8192))
    return theta, scaling


def _window_from_hf(hf: dict, family: str) -> Optional[int]:
    if family == "llama":
        return None
    if family == "mistral":
        window = hf.get("sliding_window")
        return None if window is None else int(window)
    layer_types = hf.get("layer_types")
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    if layer_types is None and window is not None:
        first = int(hf.get("max_window_layers", hf["num_hidden_layers"]))
        layer_types = ["full_attention" if i < first else "sliding_attention" for i in range(hf["num_hidden_layers"])]
    if not layer_types or window is None:
        return None
    kinds = set(layer_types)
    if kinds == {"full_attention"}:
        return None
    if kinds == {"sliding_attention"}:
        return int(window)
    raise ConfigError("qwen2 with a mix of sliding and full attention layers (max_window_layers) is not supported")


# -- presets -----------------------------------------------------------------------------------------------------

def tiny(**overrides: Any) -> DecoderConfig:
    """A Mistral-tokenizer-sized model small enough to train on a laptop CPU (~2.3 M parameters)."""
    base = dict(family="mistral", vocab_size=32000, hidden_size=64, intermediate_size=192, num_layers=2,
                num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
                max_position_embeddings=2048, sliding_window=None)
    return DecoderConfig(**{**base, **overrides})


def qwen2_0_5b(**overrides: Any) -> DecoderConfig:
    """Qwen2 / Qwen2.5-0.5B shapes (qkv bias, tied embeddings, 14 heads over 2 KV heads)."""
    base = dict(family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1000000.0, rms_norm_eps=1e-6,
                max_position_embeddings=32768, attention_bias=True, tie_word_embeddings=True,
                bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
    return DecoderConfig(**{**base, **overrides})


def mistral_7b(**overrides: Any) -> DecoderConfig:
    """Mistral-7B-Instruct-v0.2 shapes, the base of LLaVA-Med v1.5 that the paper fine-tunes (no sliding window)."""
    base = dict(family="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32,
                num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-5,
                max_position_embeddings=32768, sliding_window=None)
    return DecoderConfig(**{**base, **overrides})


def mistral_7b_v01(**overrides: Any) -> DecoderConfig:
    """Mistral-7B-v0.1 shapes: as v0.2 but with the 4096-token sliding window and rope_theta 1e4."""
    return mistral_7b(**{"rope_theta": 10000.0, "sliding_window": 4096, **overrides})


def llama2_7b(**overrides: Any) -> DecoderConfig:
    """LLaMA-2-7B shapes (multi-head attention, 4k context), the paper's second LLM."""
    base = dict(family="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                num_heads=32, num_kv_heads=32, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-5,
                max_position_embeddings=4096)
    return DecoderConfig(**{**base, **overrides})


def llama3_8b(**overrides: Any) -> DecoderConfig:
    """Llama-3.1-8B shapes, with its Llama-3 RoPE frequency scaling."""
    base = dict(family="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5,
                max_position_embeddings=131072,
                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                bos_token_id=128000, eos_token_id=128001)
    return DecoderConfig(**{**base, **overrides})


PRESETS = {"tiny": tiny, "qwen2_0_5b": qwen2_0_5b, "mistral_7b": mistral_7b, "mistral_7b_v01": mistral_7b_v01,
           "llama2_7b": llama2_7b, "llama3_8b": llama3_8b}


def preset(name: str, **overrides: Any) -> DecoderConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown decoder preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
