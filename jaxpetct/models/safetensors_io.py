"""Generic safetensors plumbing: read a (sharded) checkpoint tensor by tensor, place it in its shards, write back.

Model-specific code (decoder, RoBERTa) only supplies a name mapping and per-tensor transforms; this module
guarantees the memory discipline: one tensor on the host at a time, each created directly with its final
`NamedSharding` (`jax.make_array_from_callback`, which also works when each host owns only part of the mesh),
and stacked layer parameters filled layer by layer into a preallocated sharded buffer.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Callable, Iterable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxpetct.parallel.mesh import single_device_mesh
from jaxpetct.parallel.rules import LOGICAL_RULES, named_sharding, logical_axes_of
from jaxpetct.atomic import atomic_directory  # noqa: F401 (public here: hf_io and export use it)
from jaxpetct.errors import UserError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

Source = Union[np.ndarray, Sequence[np.ndarray], Callable[[int], np.ndarray]]


class CheckpointError(UserError):
    """A checkpoint directory or tensor that cannot be used; names the file (and tensor) and the reason."""

    def __init__(self, file: Union[str, os.PathLike], reason: str):
        self.file, self.reason = str(file), reason
        super().__init__(f"{file}: {reason}")


class SafetensorsCheckpoint:
    """The tensors of an HF checkpoint directory: `model.safetensors`, a sharded index, or loose *.safetensors."""

    def __init__(self, directory: Union[str, os.PathLike]):
        self.directory = pathlib.Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(self.directory, "not a directory")
        self._file_of = self._index()

    def _weight_map(self, index: pathlib.Path) -> dict[str, pathlib.Path]:
        """{tensor name: shard file} of a sharded checkpoint's index file (every listed shard must exist)."""
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(index, f"not a safetensors index ({e})") from e
        files = {name: self.directory / rel for name, rel in weight_map.items()}
        for path in set(files.values()):
            if not path.is_file():
                raise CheckpointError(index, f"shard {path.name} listed in the index is missing")
        return files

    def _index(self) -> dict[str, pathlib.Path]:
        if (self.directory / INDEX_NAME).is_file():
            return self._weight_map(self.directory / INDEX_NAME)
        candidates = [self.directory / SINGLE_NAME] if (self.directory / SINGLE_NAME).is_file() else sorted(
            self.directory.glob("*.safetensors"))
        if not candidates:
            raise CheckpointError(self.directory, f"no {SINGLE_NAME}, {INDEX_NAME} or *.safetensors file")
        files: dict[str, pathlib.Path] = {}
        for path in candidates:
            try:
                with safe_open(path, framework="numpy") as f:
                    names = list(f.keys())
            except Exception as e:
                raise CheckpointError(path, f"unreadable safetensors file ({e})") from e
            for name in names:
                if name in files:
                    raise CheckpointError(path, f"tensor {name!r} also appears in {files[name].name}")
                files[name] = path
        return files

    def names(self) -> list[str]:
        return sorted(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def file_of(self, name: str) -> pathlib.Path:
        if name not in self._file_of:
            raise CheckpointError(self.directory, f"tensor {name!r} is missing from the checkpoint")
        return self._file_of[name]

    def read(self, name: str) -> np.ndarray:
        """One tensor as a host numpy array (bf16 via ml_dtypes); read through safe_open on the CPU backend."""
        path = self.file_of(name)
        try:
            with jax.default_device(_host_device()):
                with safe_open(path, framework="flax") as f:  # the numpy framework cannot hold bf16
                    return np.asarray(f.get_tensor(name))
        except Exception as e:
            raise CheckpointError(path, f"cannot read tensor {name!r} ({e})") from e


def _host_device() -> jax.Device:
    """The CPU device when the CPU backend is enabled (JAX_PLATFORMS may leave only the accelerator)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return jax.local_devices()[0]


def place(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array built from a host array, each device receiving only its slice."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _set_layer(buffer: jax.Array, piece: jax.Array, i: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_index_in_dim(buffer, piece.astype(buffer.dtype), i, axis=0)


def place_stacked(layer_arrays: Callable[[int], np.ndarray], shape: Sequence[int], dtype,
                  sharding: NamedSharding, layer_sharding: NamedSharding) -> jax.Array:
    """A (layers, ...) parameter assembled one layer at a time into a preallocated sharded buffer."""
    shape = tuple(shape)
    buffer = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
    setter = jax.jit(_set_layer, out_shardings=sharding, donate_argnums=(0,))
    for i in range(shape[0]):
        piece = place(np.asarray(layer_arrays(i)), layer_sharding)
        buffer = setter(buffer, piece, jnp.int32(i))
    return buffer


def load_state(abstract_model: nnx.Module, source: Callable[[tuple, nnx.Variable], Optional[Source]],
               mesh: Optional[Mesh] = None, rules=LOGICAL_RULES, where: str = "checkpoint") -> nnx.Module:
    """Fill an `nnx.eval_shape` model from host tensors, each placed directly with its sharding.

    `source(path, variable)` returns, for a state path, a host array of the variable's shape, or a callable
    `i -> array` giving layer i of a stacked ('layers', ...) variable, or None to keep a fresh value (RNG state).
    """
    mesh = mesh or single_device_mesh()
    graphdef, abstract_state = nnx.split(abstract_model)
    values = {}
    for path, var in nnx.to_flat_state(abstract_state):
        value = var.get_value()
        axes = logical_axes_of(var)
        sharding = named_sharding(axes, value.shape, mesh, rules)
        data = source(path, var)
        if data is None:
            raise CheckpointError(where, f"no value for {'.'.join(map(str, path))}")
        if callable(data):
            layer_sharding = named_sharding(axes[1:] if axes else None, value.shape[1:], mesh, rules)
            values[path] = var.replace(place_stacked(data, value.shape, value.dtype, sharding, layer_sharding))
            continue
        data = np.asarray(data)
        if data.shape != tuple(value.shape):
            raise CheckpointError(where, f"{'.'.join(map(str, path))}: shape {data.shape}, model expects "
                                         f"{tuple(value.shape)}")
        values[path] = var.replace(place(data.astype(value.dtype), sharding))
    state = nnx.from_flat_state([(p, values[p]) for p, _ in nnx.to_flat_state(abstract_state)])
    return nnx.merge(graphdef, state)


def host_array(x: jax.Array) -> np.ndarray:
    """Gather a (possibly sharded, possibly multi-host) array to a host numpy array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def write_safetensors(directory: Union[str, os.PathLike], tensors: Iterable[tuple[str, np.ndarray]],
                      max_shard_bytes: int = 2 * 1024 ** 3) -> list[str]:
    """Stream tensors into `model.safetensors` or numbered shards plus an index; one shard in memory at a time."""
    directory = pathlib.Path(directory)
    weight_map: dict[str, int] = {}
    written: list[pathlib.Path] = []
    current: dict[str, np.ndarray] = {}
    current_bytes = total_bytes = 0

    def flush() -> None:
        tmp = directory / f"shard-{len(written):05d}.tmp"
        save_file(current, str(tmp), metadata={"format": "pt"})
        written.append(tmp)

    for name, array in tensors:
        array = np.ascontiguousarray(array)
        if current and current_bytes + array.nbytes > max_shard_bytes:
            flush()
            current, current_bytes = {}, 0
        current[name] = array
        current_bytes += array.nbytes
        total_bytes += array.nbytes
        weight_map[name] = len(written)
    if current or not written:
        flush()
    current = {}
    if len(written) == 1:
        os.replace(written[0], directory / SINGLE_NAME)
        return [SINGLE_NAME]
    names = [f"model-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))]
    for tmp, final_name in zip(written, names):
        os.replace(tmp, directory / final_name)
    index = {"metadata": {"total_size": int(total_bytes)},
             "weight_map": {n: names[i] for n, i in sorted(weight_map.items())}}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return names + [INDEX_NAME]
