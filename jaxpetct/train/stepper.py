"""One optimizer step from the loader: the compiled programs a stage runs, built once per batch shape.

With `grad_accum_steps = 1` a step is one fused program (`make_train_step`). With k > 1 it is k calls of the
accumulate program, each on the next loader batch, then one call of the apply program: the devices (and the
host) hold one micro-batch of volumes at a time, never the optimizer step's whole batch. Every program is jitted
with explicit shardings (weights by the rules table, the accumulated gradient like the weights, the batch over
data x fsdp) and donates what it replaces. The same lowering serves `launch.py --mode plan`, which compiles these
programs on abstract arguments without running them.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxpetct.data.batching import TOKEN_FIELDS
from jaxpetct.parallel.batches import agree, batch_sharding, to_global
from jaxpetct.train import perf
from jaxpetct.train.flops import FlopCount
from jaxpetct.train.step import Accumulator, make_accumulate_step, make_apply_step, make_train_step


def model_arrays(batch: dict) -> dict:
    """The numeric arrays of a loader batch; host-side metadata (ids, references) never enters the step."""
    return {k: v for k, v in batch.items() if k != "meta" and np.asarray(v).dtype.kind in "biuf"}


class _Position:
    """A data iterator's position frozen at a step boundary, in the form Grain's Orbax handler saves."""

    def __init__(self, state: Any):
        self._state = state

    def get_state(self) -> bytes:
        return json.dumps(self._state, indent=1).encode()


class Positioned:
    """A checkpointable data iterator whose saved position is the one `position()` froze, not where the loader
    has read ahead to: the loop pulls step t+1's batch while step t runs, and a checkpoint of step t must resume
    at batch t+1. Restores (Grain's handler: set_state, start_prefetch) also read checkpoints of the bare
    iterator, whose state is the same JSON."""

    def __init__(self, iterator: Any):
        self._it = iterator

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._it)

    def position(self) -> _Position:
        return _Position(self._it.get_state())

    def set_state(self, state: bytes) -> None:
        self._it.set_state(json.loads(state))

    def start_prefetch(self) -> None:
        getattr(self._it, "start_prefetch", lambda: None)()


class Stepper:
    """`stepper(state, batches) -> (state, metrics, FlopCount of the step)`; `batches` yields host batches.

    `prefetch(batches)` prepares the next step's first batch (read, made global, sent to the devices) while the
    step just dispatched runs; `input_s` is the host time spent waiting for batches and sending them.
    """

    def __init__(self, graphdef, task, tx, mesh, state_shardings: Any, accum_steps: int = 1):
        if accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {accum_steps}")
        self.mesh, self.state_sh, self.accum = mesh, state_shardings, int(accum_steps)
        self.fused = make_train_step(graphdef, task, tx)
        self.accumulate = make_accumulate_step(graphdef, task)
        self.apply = make_apply_step(tx)
        self._programs: dict = {}
        self._flops: dict = {}
        self._ready: Optional[tuple] = None
        self.input_s = 0.0

    # ---- lowering (shared with plan mode: arguments may be abstract) ---------------------------------------------
    def accumulator_shardings(self, state: Any, batch: dict) -> Accumulator:
        """The accumulated gradient laid out like the weights; the scalar sums replicated."""
        shape = jax.eval_shape(self.accumulate, state, None, batch)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree.map(lambda _: replicated, shape).replace(grads=self.state_sh.params)

    def lower(self, kind: str, state: Any, batch: Optional[dict] = None, acc: Any = None):
        """(jax Lowered, FlopCount) of one program: "fused" (state, batch), "first" (state, batch),
        "accumulate" (state, acc, batch) or "apply" (state, acc)."""
        b_sh = None if batch is None else {k: v.sharding for k, v in batch.items()}  # as laid out by the caller
        if kind == "fused":
            fn, args = self.fused, (state, batch)
            jitted = jax.jit(fn, in_shardings=(self.state_sh, b_sh), out_shardings=(self.state_sh, None),
                             donate_argnums=(0,))
        elif kind == "first":
            fn, args = (lambda s, b: self.accumulate(s, None, b)), (state, batch)
            jitted = jax.jit(fn, in_shardings=(self.state_sh, b_sh),
                             out_shardings=self.accumulator_shardings(state, batch))
        elif kind == "accumulate":
            acc_sh = jax.tree.map(lambda x: x.sharding, acc)
            fn, args = self.accumulate, (state, acc, batch)
            jitted = jax.jit(fn, in_shardings=(self.state_sh, acc_sh, b_sh), out_shardings=acc_sh,
                             donate_argnums=(1,))
        elif kind == "apply":
            acc_sh = jax.tree.map(lambda x: x.sharding, acc)
            fn, args = self.apply, (state, acc)
            jitted = jax.jit(fn, in_shardings=(self.state_sh, acc_sh), out_shardings=(self.state_sh, None),
                             donate_argnums=(0,))  # the sums have no output to alias: they are freed after
        else:
            raise ValueError(f"unknown program {kind!r}")
        with jax.set_mesh(self.mesh):
            return jitted.lower(*args), perf.count_flops(fn, *args)

    def _run(self, kind: str, signature: tuple, *args):
        key = (kind, signature)
        if key not in self._programs:  # one executable per program and length bucket
            state = args[0]
            named = dict(zip({"fused": ("batch",), "first": ("batch",), "accumulate": ("acc", "batch"),
                              "apply": ("acc",)}[kind], args[1:]))
            lowered, flops = self.lower(kind, state, **named)
            self._programs[key], self._flops[key] = lowered.compile(), flops
        return self._programs[key](*args), self._flops[key]

    # ---- running -------------------------------------------------------------------------------------------------
    def _next(self, batches: Iterator[dict]) -> tuple[dict, tuple]:
        if self._ready is not None:
            ready, self._ready = self._ready, None
            return ready
        t0 = time.perf_counter()
        host = agree(model_arrays(next(batches)), TOKEN_FIELDS)  # one length on every host
        batch = to_global(host, batch_sharding(self.mesh, host))
        self.input_s += time.perf_counter() - t0
        return batch, tuple(sorted((k, v.shape) for k, v in host.items()))

    def prefetch(self, batches: Iterator[dict]) -> None:
        """Prepare the next step's first batch now (an exhausted iterator raises at the next step instead)."""
        if self._ready is None:
            try:
                self._ready = self._next(batches)
            except StopIteration:
                pass

    def __call__(self, state: Any, batches: Iterator[dict]) -> tuple[Any, dict, FlopCount]:
        if self.accum == 1:
            batch, sig = self._next(batches)
            (state, metrics), flops = self._run("fused", sig, state, batch)
            return state, metrics, flops
        acc, model, executed = None, 0.0, 0.0
        for _ in range(self.accum):
            batch, sig = self._next(batches)
            if acc is None:
                acc, flops = self._run("first", sig, state, batch)
            else:
                acc, flops = self._run("accumulate", sig, state, acc, batch)
            model, executed = model + flops.model, executed + flops.executed
        (state, metrics), flops = self._run("apply", (), state, acc)
        return state, metrics, FlopCount(executed=executed + flops.executed, model=model + flops.model)

