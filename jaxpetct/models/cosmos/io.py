"""diffusers folders in and out for `CosmosTokenizer`.

A diffusers `AutoencoderKLCosmos` folder is `config.json` + `diffusion_pytorch_model.safetensors` (or numbered
shards and `diffusion_pytorch_model.safetensors.index.json`); pipelines keep it in a `vae/` subfolder. Loading
builds the module abstractly and fills each parameter from its tensor, transposed from torch's
(out, in, kt, kh, kw) to our (kt, kh, kw, in, out) and placed straight into its shards (safetensors_io); saving
walks the same names backwards, so `AutoencoderKLCosmos.from_pretrained` reads what `save_diffusers` writes.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Callable, Iterator, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open

from jaxpetct.errors import ConfigError
from jaxpetct.models.cosmos.config import CosmosConfig
from jaxpetct.models.cosmos.model import CosmosTokenizer
from jaxpetct.models.safetensors_io import (INDEX_NAME, SINGLE_NAME, CheckpointError, SafetensorsCheckpoint,
                                            atomic_directory, host_array, load_state, write_safetensors)
from jaxpetct.parallel.rules import LOGICAL_RULES

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# our module names that diffusers wraps in a one-element ModuleList
_LISTED = {"downsample": "downsamplers.0", "upsample": "upsamplers.0", "to_out": "to_out.0"}


def diffusers_name(path: tuple) -> tuple[str, str]:
    """Our state path -> (diffusers tensor name, layout): 'conv' tensors are transposed, 'same' ones are not.

    Norms are `norm*.scale/bias` here and `norm*.norm.weight/bias` there (diffusers wraps torch's GroupNorm)."""
    *modules, leaf = (str(p) for p in path)
    modules = [_LISTED.get(m, m) for m in modules]
    if leaf == "kernel":
        return ".".join(modules + ["weight"]), "conv"
    if modules[-1].startswith("norm"):
        return ".".join(modules + ["norm", "weight" if leaf == "scale" else "bias"]), "same"
    return ".".join(modules + [leaf]), "same"


def _to_ours(tensor: np.ndarray, kind: str) -> np.ndarray:
    return np.transpose(tensor, (2, 3, 4, 1, 0)) if kind == "conv" else tensor


def _to_torch(ours: np.ndarray, kind: str) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(ours, (4, 3, 0, 1, 2))) if kind == "conv" else ours


class DiffusersCheckpoint(SafetensorsCheckpoint):
    """The tensors of a diffusers model folder: `diffusion_pytorch_model.safetensors`, its sharded index, or
    (as any HF folder) model.safetensors / an index / loose *.safetensors."""

    def _index(self) -> dict[str, pathlib.Path]:
        if (self.directory / WEIGHTS_INDEX_NAME).is_file():
            return self._weight_map(self.directory / WEIGHTS_INDEX_NAME)
        single = self.directory / WEIGHTS_NAME
        if single.is_file():
            with safe_open(single, framework="numpy") as f:
                return {name: single for name in f.keys()}
        return super()._index()


def model_directory(directory: Union[str, os.PathLike]) -> pathlib.Path:
    """The folder holding the tokenizer's config.json: `directory` itself or a pipeline's `vae/` subfolder."""
    directory = pathlib.Path(directory)
    for candidate in (directory, directory / "vae"):
        if (candidate / "config.json").is_file():
            return candidate
    raise CheckpointError(directory, "no config.json here or in vae/ (not a diffusers AutoencoderKLCosmos folder)")


def _build(cfg: CosmosConfig, read: Callable[[str], np.ndarray], names: set[str], where: str,
           mesh: Optional[Mesh], rules) -> CosmosTokenizer:
    """An abstract module filled tensor by tensor from `read(diffusers_name)`; every name must be used."""
    used: set[str] = set()

    def source(path: tuple, var: nnx.Variable) -> np.ndarray:
        name, kind = diffusers_name(path)
        if name not in names:
            raise CheckpointError(where, f"tensor {name!r} is missing (config and weights disagree?)")
        used.add(name)
        return _to_ours(np.asarray(read(name)), kind)

    abstract = nnx.eval_shape(lambda: CosmosTokenizer(cfg, rngs=nnx.Rngs(0)))
    model = load_state(abstract, source, mesh, rules, where=where)
    extra = sorted(names - used)
    if extra:
        raise CheckpointError(where, f"{len(extra)} tensors this config has no place for, e.g. {extra[:3]} "
                                     "(config and weights disagree?)")
    return model


def load_diffusers(directory: Union[str, os.PathLike], *, mesh: Optional[Mesh] = None, rules=LOGICAL_RULES,
                   **runtime) -> CosmosTokenizer:
    """A `CosmosTokenizer` from a diffusers folder (or a pipeline folder with `vae/`), each tensor placed with
    its sharding on `mesh` (one device by default). `runtime` sets dtype, param_dtype and remat."""
    folder = model_directory(directory)
    config_path = folder / "config.json"
    try:
        cfg = CosmosConfig.from_diffusers(json.loads(config_path.read_text()), **runtime)
    except (json.JSONDecodeError, ConfigError, TypeError) as e:
        raise CheckpointError(config_path, str(e)) from e
    ckpt = DiffusersCheckpoint(folder)
    return _build(cfg, ckpt.read, set(ckpt.names()), str(folder), mesh, rules)


def _host(tensor) -> np.ndarray:
    """numpy from a numpy array or a torch tensor (bf16 widened: numpy has no bfloat16 for torch to hand over)."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(tensor)


def from_state_dict(state_dict: Mapping[str, object], cfg: CosmosConfig, *, mesh: Optional[Mesh] = None,
                    rules=LOGICAL_RULES) -> CosmosTokenizer:
    """A `CosmosTokenizer` from a diffusers-named state dict (torch tensors or numpy arrays), e.g. the output of
    `convert_torchscript_state_dict`. Strict: missing and unused tensors are errors."""
    return _build(cfg, lambda name: _host(state_dict[name]), set(state_dict), "state dict", mesh, rules)


def diffusers_state(model: CosmosTokenizer, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """(diffusers name, torch-layout host array) for every parameter, gathered one tensor at a time."""
    out_dtype = jnp.dtype(dtype or model.cfg.param_dtype)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, kind = diffusers_name(tuple(path))
        yield name, _to_torch(host_array(var.get_value().astype(out_dtype)), kind)


def _rename_to_diffusers(directory: pathlib.Path, written: list[str]) -> None:
    """write_safetensors' transformers file names -> diffusers' (diffusion_pytorch_model*)."""
    if written == [SINGLE_NAME]:
        os.replace(directory / SINGLE_NAME, directory / WEIGHTS_NAME)
        return
    index = json.loads((directory / INDEX_NAME).read_text())
    renamed = {old: old.replace("model-", "diffusion_pytorch_model-", 1) for old in written if old != INDEX_NAME}
    for old, new in renamed.items():
        os.replace(directory / old, directory / new)
    index["weight_map"] = {name: renamed[file] for name, file in index["weight_map"].items()}
    (directory / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2))
    (directory / INDEX_NAME).unlink()


def save_diffusers(model: CosmosTokenizer, directory: Union[str, os.PathLike], *, dtype=None,
                   max_shard_bytes: int = 2 * 1024 ** 3) -> pathlib.Path:
    """Write a diffusers `AutoencoderKLCosmos` folder (atomically): config.json + safetensors in `dtype`
    (default: the parameter dtype), sharded with an index above `max_shard_bytes`."""
    directory = pathlib.Path(directory)
    if jax.process_index() != 0:  # gathers are collective: take part, but only process 0 writes
        for _ in diffusers_state(model, dtype):
            pass
        return directory
    with atomic_directory(directory) as tmp:
        written = write_safetensors(tmp, diffusers_state(model, dtype), max_shard_bytes)
        _rename_to_diffusers(tmp, written)
        (tmp / "config.json").write_text(json.dumps(model.cfg.to_diffusers(), indent=2))
    return directory
