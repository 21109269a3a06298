"""Tiny random transformers decoders saved locally, the references our decoder tests compare against.

Nothing is downloaded: each model is built from a config with a fixed torch seed and written with
`save_pretrained` into a temporary directory, which our loader then reads like any hub checkpoint.
"""
from __future__ import annotations

import numpy as np

SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# initializer_range well above the default 0.02 gives peaked next-token distributions: greedy decoding is then far
# from argmax ties, so token-for-token comparisons test the model rather than float rounding.
VARIANTS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(initializer_range=0.2)),
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM", dict(
        initializer_range=0.2, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(initializer_range=0.2, sliding_window=6)),
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(initializer_range=0.2, tie_word_embeddings=True)),
}


def make_hf(variant: str, seed: int = 0, **extra):
    """(torch model in eval mode, its config) for one of VARIANTS, float32, random weights."""
    import torch
    import transformers

    config_cls, model_cls, kw = VARIANTS[variant]
    config = getattr(transformers, config_cls)(**{**SMALL, **kw, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    if variant.startswith("qwen2"):  # transformers initialises biases to zero; make the qkv bias matter
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.5)
    return model, config


def save_hf(variant: str, directory, seed: int = 0, **save_kwargs):
    model, _ = make_hf(variant, seed)
    model.save_pretrained(directory, **save_kwargs)
    return model


def hf_logits(model, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                    position_ids=torch.tensor(positions))
    return out.logits.float().numpy()


def padded_batch(batch: int = 3, length: int = 20, seed: int = 0):
    """Token ids, left-padding mask (row i has 4*i pads) and the matching positions (count of real tokens)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, SMALL["vocab_size"], (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), bool)
    for i in range(batch):
        mask[i, : 4 * i] = False
    ids[~mask] = SMALL["pad_token_id"]
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return ids, mask, positions


def _forward(model, ids, positions, mask):
    return model(ids, positions=positions, attention_mask=mask)[0]


_jitted_forward = None


def forward(model, ids, mask, positions) -> np.ndarray:
    """Our logits, through one jitted function shared by all tests (models of one config compile once)."""
    global _jitted_forward
    if _jitted_forward is None:
        from flax import nnx

        _jitted_forward = nnx.jit(_forward)
    import jax.numpy as jnp

    return np.asarray(_jitted_forward(model, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask)))
