"""transformers checkpoints in and out for the decoder family (Llama, Mistral, Qwen2).

Loading reads `config.json` into a `DecoderConfig`, builds the model abstractly (`nnx.eval_shape`, no memory),
and fills each parameter from its safetensors tensor, transposed to our (in, out) / per-head layout and placed
straight into its shards. Exporting walks the same table backwards (LoRA folded into the kernels on the fly)
and writes a directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
from typing import Callable, Iterator, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxpetct.models import lora as lora_lib
from jaxpetct.models.decoder_config import ConfigError, DecoderConfig
from jaxpetct.models.decoder import Decoder
from jaxpetct.models.safetensors_io import (CheckpointError, SafetensorsCheckpoint, atomic_directory, host_array,
                                            load_state, write_safetensors)
from jaxpetct.parallel.rules import LOGICAL_RULES

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "tekken.json")

# our path inside a layer -> (transformers name inside `model.layers.{i}.`, layout kind)
_LAYER_TABLE = {
    ("input_layernorm", "scale"): ("input_layernorm.weight", "same"),
    ("post_attention_layernorm", "scale"): ("post_attention_layernorm.weight", "same"),
    ("self_attn", "q_proj", "kernel"): ("self_attn.q_proj.weight", "to_heads"),
    ("self_attn", "k_proj", "kernel"): ("self_attn.k_proj.weight", "to_heads"),
    ("self_attn", "v_proj", "kernel"): ("self_attn.v_proj.weight", "to_heads"),
    ("self_attn", "q_proj", "bias"): ("self_attn.q_proj.bias", "head_bias"),
    ("self_attn", "k_proj", "bias"): ("self_attn.k_proj.bias", "head_bias"),
    ("self_attn", "v_proj", "bias"): ("self_attn.v_proj.bias", "head_bias"),
    ("self_attn", "o_proj", "kernel"): ("self_attn.o_proj.weight", "from_heads"),
    ("mlp", "gate_proj", "kernel"): ("mlp.gate_proj.weight", "transpose"),
    ("mlp", "up_proj", "kernel"): ("mlp.up_proj.weight", "transpose"),
    ("mlp", "down_proj", "kernel"): ("mlp.down_proj.weight", "transpose"),
}
_TOP_TABLE = {
    ("embed_tokens", "embedding"): ("model.embed_tokens.weight", "same"),
    ("norm", "scale"): ("model.norm.weight", "same"),
    ("lm_head",): ("lm_head.weight", "transpose"),
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def to_ours(hf: np.ndarray, kind: str, shape: tuple) -> np.ndarray:
    """transformers' torch.nn.Linear (out, in) layout -> our (in, out) / per-head layout."""
    if kind == "same":
        return hf.reshape(shape)
    if kind == "transpose":
        return hf.T
    if kind == "to_heads":  # (heads*head_dim, embed) -> (embed, heads, head_dim)
        return hf.T.reshape(shape)
    if kind == "head_bias":  # (heads*head_dim,) -> (heads, head_dim)
        return hf.reshape(shape)
    if kind == "from_heads":  # (embed, heads*head_dim) -> (heads, head_dim, embed)
        return hf.T.reshape(shape)
    raise ValueError(kind)


def to_hf(ours: np.ndarray, kind: str) -> np.ndarray:
    """Inverse of `to_ours`."""
    if kind == "same":
        return ours
    if kind == "transpose":
        return ours.T
    if kind == "to_heads":
        return ours.reshape(ours.shape[0], -1).T
    if kind == "head_bias":
        return ours.reshape(-1)
    if kind == "from_heads":
        return ours.reshape(-1, ours.shape[-1]).T
    raise ValueError(kind)


def _split_path(path: tuple, stacked: bool) -> tuple[Optional[int], tuple]:
    """('layers', 3, 'mlp', ...) -> (3, ('mlp', ...)); stacked ('layers', 'mlp', ...) -> (None, ('mlp', ...))."""
    if path and path[0] == "layers":
        return (None, path[1:]) if stacked else (int(path[1]), path[2:])
    return None, path


def read_config(directory: Union[str, os.PathLike]) -> dict:
    path = pathlib.Path(directory) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(path, "missing config.json") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"invalid JSON ({e})") from e


def load_decoder(directory: Union[str, os.PathLike], *, mesh: Optional[Mesh] = None, rules=LOGICAL_RULES,
                 **config_overrides) -> Decoder:
    """A `Decoder` with the weights of an HF safetensors directory, each tensor placed with its sharding.

    `config_overrides` set runtime fields (dtype, param_dtype, remat, remat_policy, scan_layers, attention_impl).
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise CheckpointError(directory, "not a directory")
    try:
        cfg = DecoderConfig.from_hf(read_config(directory), **config_overrides)
    except ConfigError as e:
        raise CheckpointError(directory / "config.json", str(e)) from e
    ckpt = SafetensorsCheckpoint(directory)
    used: set[str] = set()

    def source(path: tuple, var: nnx.Variable):
        layer, inner = _split_path(path, cfg.scan_layers)
        table = _LAYER_TABLE if path[0] == "layers" else _TOP_TABLE
        if inner not in table:
            raise CheckpointError(directory, f"no checkpoint mapping for parameter {'.'.join(map(str, path))}")
        name, kind = table[inner]
        shape = tuple(var.get_value().shape)
        if path[0] != "layers":
            used.add(name)
            return to_ours(ckpt.read(name), kind, shape)
        full = lambda i: f"model.layers.{i}.{name}"  # noqa: E731
        if layer is not None:
            used.add(full(layer))
            return to_ours(ckpt.read(full(layer)), kind, shape)
        used.update(full(i) for i in range(cfg.num_layers))
        return lambda i: to_ours(ckpt.read(full(i)), kind, shape[1:])

    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    model = load_state(abstract, source, mesh, rules, where=str(directory))
    extra = [n for n in ckpt.names() if n not in used and not n.endswith(_IGNORED_SUFFIXES)
             and not (cfg.tie_word_embeddings and n == "lm_head.weight")]
    if extra:
        log.warning("%s: %d checkpoint tensors not used by the %s decoder, e.g. %s", directory, len(extra),
                    cfg.family, extra[:3])
    return model


def _export_tensors(model: Decoder, dtype) -> Iterator[tuple[str, np.ndarray]]:
    cfg = model.cfg
    overrides = lora_lib.merged_kernels(model)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if isinstance(var, lora_lib.LoRAParam):
            continue
        getter: Callable = overrides.get(tuple(path), lambda v=var: v.get_value())
        layer, inner = _split_path(tuple(path), cfg.scan_layers)
        table = _LAYER_TABLE if path[0] == "layers" else _TOP_TABLE
        name, kind = table[inner]
        value = getter()
        if path[0] != "layers":
            yield name, to_hf(host_array(value.astype(dtype)), kind)
        elif layer is not None:
            yield f"model.layers.{layer}.{name}", to_hf(host_array(value.astype(dtype)), kind)
        else:  # gather one layer at a time: a stacked 7B MLP weight is several GB
            for i in range(cfg.num_layers):
                yield f"model.layers.{i}.{name}", to_hf(host_array(value[i].astype(dtype)), kind)


def export_decoder(model: Decoder, directory: Union[str, os.PathLike], *,
                   tokenizer_dir: Optional[Union[str, os.PathLike]] = None, dtype: Optional[str] = None,
                   max_shard_bytes: int = 2 * 1024 ** 3) -> pathlib.Path:
    """Write an HF directory (atomically): safetensors weights with LoRA merged, config.json,
    generation_config.json, and the tokenizer files found in `tokenizer_dir`."""
    cfg = model.cfg
    out_dtype = jnp.dtype(dtype or cfg.param_dtype)
    directory = pathlib.Path(directory)
    if jax.process_index() != 0:  # gathers are collective: take part, but only process 0 writes
        for _ in _export_tensors(model, out_dtype):
            pass
        return directory
    with atomic_directory(directory) as tmp:
        write_safetensors(tmp, _export_tensors(model, out_dtype), max_shard_bytes)
        hf_config = cfg.replace(param_dtype=str(out_dtype)).to_hf()
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        copied = []
        if tokenizer_dir is not None:
            tokenizer_dir = pathlib.Path(tokenizer_dir)
            if not tokenizer_dir.is_dir():
                raise CheckpointError(tokenizer_dir, "tokenizer directory not found")
            for name in TOKENIZER_FILES + ("generation_config.json",):
                if (tokenizer_dir / name).is_file():
                    shutil.copyfile(tokenizer_dir / name, tmp / name)
                    copied.append(name)
        if "generation_config.json" not in copied:
            gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
                   "pad_token_id": cfg.pad_token_id, "do_sample": False}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return directory
