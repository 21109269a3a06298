"""Per-host numpy batches -> one global batch that every process agrees on, laid out on the mesh.

In a multi-host job each process loads its own rows, but the jitted step is one program over all devices: every
process must call it the same number of times, with the same shapes. Length buckets are chosen per host batch
(a host whose rows happen to be short picks a shorter bucket) and a finite split (validation) can leave one host
a batch short. `agree` pads the token axis to the longest bucket any host chose and `aligned` pads a finite
stream with filler batches (all masks off) so every host yields the same count. In a single process both are
the identity, at no cost.

The batch axis is the rules table's 'batch' (data x fsdp): `to_global` makes the global array from each
process's rows (`jax.make_array_from_process_local_data`); `replicated_to_global` takes a host batch that every
process holds whole (generation, where every host reads the same prompts) and gives each device its slice.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np

from jaxpetct.parallel.multihost import agree_max, allgather_json
from jaxpetct.parallel.rules import named_sharding


def batch_sharding(mesh, batch: Mapping[str, np.ndarray], processes: Optional[int] = None) -> dict:
    """Batch dimension over (data, fsdp), everything else replicated, for the global batch that `processes` hosts
    (default: every process of the job) each give these rows to. The global row count decides which mesh axes
    divide it: 16 rows a host on 8 hosts split over all 32 batch shards, not only the 4 that divide 16."""
    processes = jax.process_count() if processes is None else processes

    def one(v):
        shape = (np.shape(v)[0] * processes, *np.shape(v)[1:])
        return named_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh)

    return {k: one(v) for k, v in batch.items()}


def to_global(batch: Mapping[str, np.ndarray], shardings: Mapping) -> dict:
    """Each process's rows -> global jax.Arrays laid out by `shardings` (rows of process p follow p - 1's)."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in batch.items()}


def replicated_to_global(batch: Mapping[str, np.ndarray], mesh) -> dict:
    """A host batch that every process holds whole -> global arrays, each device taking only its rows."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        sharding = named_sharding(("batch",) + (None,) * (v.ndim - 1), v.shape, mesh)
        out[k] = jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
    return out


def pad_axis(x: np.ndarray, length: int, axis: int = 1, value=0) -> np.ndarray:
    """Right-pad `axis` of `x` to `length` with `value` (masks False, ids and positions 0: no token)."""
    if x.shape[axis] == length:
        return x
    if x.shape[axis] > length:
        raise ValueError(f"cannot pad an axis of {x.shape[axis]} down to {length}")
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, length - x.shape[axis])
    return np.pad(x, widths, constant_values=value)


def agree(batch: dict, length_fields: Sequence[str]) -> dict:
    """Pad `length_fields` (right-padded token fields, axis 1) to the longest length any process has."""
    fields = [k for k in length_fields if k in batch]
    if jax.process_count() == 1 or not fields:
        return batch
    (length,) = agree_max([max(np.shape(batch[k])[1] for k in fields)])
    return {k: pad_axis(np.asarray(v), length) if k in fields else v for k, v in batch.items()}


def filler(schema: Mapping[str, tuple], fill_values: Optional[Mapping[str, float]] = None) -> dict:
    """A batch of the given {field: (shape, dtype)} whose rows carry nothing: zeros (masks off, so no loss and no
    count), or `fill_values[field]` (e.g. -1 = "no target" for lesion maps)."""
    fill_values = fill_values or {}
    return {k: np.full(tuple(shape), fill_values.get(k, 0), np.dtype(dtype)) for k, (shape, dtype) in schema.items()}


def aligned(batches: Iterable[dict], length_fields: Sequence[str] = (),
            fill_values: Optional[Mapping[str, float]] = None) -> Iterator[dict]:
    """A finite stream of host batches, made the same length and shape on every process.

    Each round, every process says whether it still has a batch and of what shapes; the round's shapes are the
    maxima; a process that has run out yields a filler batch; the stream ends when all have run out. One small
    all-gather per batch: meant for validation and evaluation, not the training hot path (use `agree` there).
    """
    it = iter(batches)
    if jax.process_count() == 1:
        yield from it
        return
    while True:
        batch = next(it, None)
        schema = None if batch is None else {k: [list(np.shape(v)), np.asarray(v).dtype.str] for k, v in batch.items()}
        schemas = [s for s in allgather_json(schema) if s is not None]
        if not schemas:
            return
        shapes = {k: tuple(max(s[k][0][d] for s in schemas) for d in range(len(shape)))
                  for k, (shape, _) in schemas[0].items()}
        if batch is None:
            batch = filler({k: (shapes[k], schemas[0][k][1]) for k in shapes}, fill_values)
        yield {k: pad_axis(np.asarray(v), shapes[k][1]) if k in length_fields else v for k, v in batch.items()}
