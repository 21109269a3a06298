"""A stage's train state and batches as shapes and shardings only: what `launch.py --mode plan` compiles.

Planning a 7B run on a laptop needs the real program without the real weights. Everything here mirrors what
`train/loop.prepare_state` and the data loader build, through `nnx.eval_shape` / `jax.eval_shape`, so no parameter
is ever allocated: the model is an `nnx.eval_shape` of the stages' own builders (jobs/plan.py), the trainable /
frozen split, the optimizer and the state's shardings are `loop.split_trainable`, `optimizer.make_optimizer` and
`loop.train_state_shardings` (the out_shardings of the init that `prepare_state` jits), so a plan's state is laid
out exactly as training lays it out (tests/train/test_plan.py compares the two shard by shard).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import numpy as np
from flax import nnx

from jaxpetct.train.loop import StageSpec, batch_sharding, split_trainable, train_state_shardings
from jaxpetct.train.optimizer import Schedule, make_optimizer
from jaxpetct.train.step import init_state


def with_sharding(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves placed by `shardings` (a matching tree): jit's abstract arguments."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def leaf_shard_bytes(x: Any) -> int:
    """Bytes of the shard of one abstract array that a device holds (typed PRNG keys count their raw words)."""
    shape = x.sharding.shard_shape(tuple(x.shape)) if getattr(x, "sharding", None) is not None else tuple(x.shape)
    dtype = x.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raw = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
        return int(math.prod(raw.shape)) * raw.dtype.itemsize
    return int(math.prod(shape)) * np.dtype(dtype).itemsize


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of an abstract pytree (every leaf carries its sharding)."""
    return sum(leaf_shard_bytes(x) for x in jax.tree.leaves(tree))


@dataclasses.dataclass
class AbstractState:
    graphdef: nnx.GraphDef
    state: Any  # TrainState of ShapeDtypeStructs, each with its sharding
    shardings: Any  # the same TrainState of NamedShardings (the step's in/out shardings)
    tx: Any


def abstract_train_state(model: nnx.Module, spec: StageSpec, mesh, *, seed: int = 0) -> AbstractState:
    """`loop.prepare_state` without allocating: the same split, optimizer and state shardings."""
    groups = spec.param_groups()
    graphdef, params, frozen, group_of = split_trainable(model, groups)
    schedule = Schedule(spec.peak_lr, spec.steps, spec.warmup_fraction, spec.final_lr_fraction)
    tx = make_optimizer(params, group_of, groups, schedule, weight_decay=spec.weight_decay, clip_norm=spec.clip_norm,
                          optimizer=spec.optimizer)
    shardings = train_state_shardings(params, frozen, tx, mesh)
    shapes = jax.eval_shape(lambda p, f: init_state(p, f, tx, seed=seed), params, frozen)
    return AbstractState(graphdef, with_sharding(shapes, shardings), shardings, tx)


def host_batch_schema(encoder_cfg, task: Optional[str], rows: int, length: int) -> dict[str, tuple]:
    """{field: (shape, dtype)} of one host batch of a task (the contract of data/batching.py): "lesion_map" and
    "clip" are encoder pre-training's, "volume" the tokenizer's, anything else the VLM batch; `length` is the token
    axis."""
    images = ((rows, *encoder_cfg.input_shape), np.float32)
    if task == "lesion_map":
        return {"images": images, "lesion_map": ((rows, *encoder_cfg.grid), np.float32)}
    if task == "volume":
        return {"images": images, "volume_mask": ((rows,), np.float32)}
    if task == "clip":
        return {"images": images, "text_ids": ((rows, length), np.int32), "text_mask": ((rows, length), np.bool_)}
    tokens = {"input_ids": np.int32, "positions": np.int32, "attention_mask": np.bool_, "image_mask": np.bool_,
              "loss_mask": np.float32}
    return {"images": images, **{k: ((rows, length), dt) for k, dt in tokens.items()}}


def abstract_global_batch(schema: dict[str, tuple], mesh, processes: int) -> tuple[dict, dict]:
    """(global batch of ShapeDtypeStructs, its shardings): each host's rows laid out as `loop.batch_sharding`
    lays out the host batch it is given, the global array holding every process's rows."""
    host = {k: np.broadcast_to(np.zeros((), dtype), shape) for k, (shape, dtype) in schema.items()}  # no memory
    shardings = batch_sharding(mesh, host, processes)
    batch = {k: jax.ShapeDtypeStruct((shape[0] * processes, *shape[1:]), dtype, sharding=shardings[k])
             for k, (shape, dtype) in schema.items()}
    return batch, shardings
