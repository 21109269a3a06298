"""One optimizer step from the loader: the compiled programs a stage runs, built once per batch shape.

With `grad_accum_steps = 1` a step is one fused program (`make_train_step`). With k > 1 it is k calls of the
accumulate program, each on the next loader batch, then one call of the apply program: the devices (and the
host) hold one micro-batch of volumes at a time, never the optimizer step's whole batch. Every program is jitted
with explicit shardings (weights by the rules table, the accumulated gradient like the weights, the batch over
data x fsdp) and donates what it replaces. The same lowering serves `launch.py --mode plan`, which compiles these
programs on abstract arguments without running them.
"""
from __future__ import annotations

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


class Stepper:
    """`stepper(state, batches) -> (state, metrics, FlopCount of the step)`; `batches` yields host batches."""

    def __init__(self, graphdef, task, tx, mesh, state_shardings: Any, accum_steps: int = 1):
        if accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {accum_steps}")
        self.mesh, self.state_sh, self.accum = mesh, state_shardings, int(accum_steps)
        self.fused = make_train_step(graphdef, task, tx)
        self.accumulate = make_accumulate_step(graphdef, task)
        self.apply = make_apply_step(tx)
        self._programs: dict = {}
        self._flops: dict = {}

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
        host = agree(model_arrays(next(batches)), TOKEN_FIELDS)  # one length on every host
        batch = to_global(host, batch_sharding(self.mesh, host))
        return batch, tuple(sorted((k, v.shape) for k, v in host.items()))

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

