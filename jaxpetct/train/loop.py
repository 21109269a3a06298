"""One training stage, end to end: split the model, place it on the mesh, restore, step, log, checkpoint.

The stage's parameter groups decide what trains; everything else is split off as frozen and passed through
the step untouched. The loop is the only place with I/O (checkpoints, metrics, progress bar); the step it
drives is pure. Resume is exact: the train state, the RNG key and the Grain iterator position all come back
from the checkpoint, so the loss sequence after a SIGKILL and restart is bitwise the uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Iterator, Optional

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxpetct.config import Stage
from jaxpetct.parallel.batches import batch_sharding, to_global  # noqa: F401 (public here too)
from jaxpetct.parallel.multihost import any_process
from jaxpetct.parallel.rules import state_shardings
from jaxpetct.train import perf
from jaxpetct.train.checkpoint import Checkpointer, abstract_like
from jaxpetct.train.optimizer import ParamGroup, Schedule, assign_groups, make_optimizer, path_str
from jaxpetct.train.stages import STAGES
from jaxpetct.train.step import Task, TrainState, init_state
from jaxpetct.train.stepper import Positioned, Stepper, model_arrays  # noqa: F401 (model_arrays: public here too)
from jaxpetct.train.writers import MetricWriter

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A step produced a non-finite loss or gradient; the update was rejected and the run stopped."""


@dataclasses.dataclass(frozen=True)
class StageSpec(Stage):
    """A stage's settings (jaxpetct/config.Stage: the home of their defaults) resolved for one run: its name, its
    step count (from `epochs` when given) and the parameter groups that train."""
    name: str  # a registered kind's name, or any name with explicit `groups`
    groups: Optional[tuple[ParamGroup, ...]] = None
    async_checkpoints: bool = True

    def param_groups(self) -> tuple[ParamGroup, ...]:
        if self.groups:
            return tuple(self.groups)
        if self.name not in STAGES:
            raise ValueError(f"stage {self.name!r} has no registered kind, so give its `groups`; known: {sorted(STAGES)}")
        return STAGES[self.name].groups


def split_trainable(model: nnx.Module, groups: tuple[ParamGroup, ...]):
    """(graphdef, trainable params, frozen rest, group name per trainable leaf)."""

    def trainable(path, value) -> bool:
        return isinstance(value, nnx.Param) and assign_groups([path_str(path)], groups)[0] is not None

    graphdef, params, frozen = nnx.split(model, trainable, ...)
    if not jax.tree.leaves(params):
        raise ValueError(f"no parameter matches the stage's groups {[g.pattern for g in groups]}: nothing would train")

    def label(path, _):
        # A leaf's path inside the State ends with the Variable's `.value`; the filter above saw the variable's
        # path. Label the same path, or a pattern anchored with `$` trains a weight the optimizer never sees.
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
            path = path[:-1]
        return assign_groups([path_str(path)], groups)[0]

    group_of = jax.tree_util.tree_map_with_path(label, params)
    unlabeled = [path_str(p) for p, g in jax.tree_util.tree_flatten_with_path(group_of)[0] if g is None]
    if unlabeled:
        raise ValueError(f"trainable weights without an optimizer group: {unlabeled[:3]}")
    return graphdef, params, frozen, group_of


def prepare_state(model: nnx.Module, spec: StageSpec, mesh, *, seed: int = 0):
    """(graphdef, initial TrainState laid out on `mesh`, optimizer, group names, schedule) of a stage.

    The state's structure depends only on the model and the stage, never on the mesh, which is what lets a
    checkpoint written on one mesh be restored onto another (`abstract_like(state)` is the restore target). The
    state takes over the model's own arrays (no second copy of a 7B model): the first step, which donates the
    state, consumes them, so use the stage's result, not `model`, afterwards.
    """
    groups = spec.param_groups()
    graphdef, params, frozen, group_of = split_trainable(model, groups)
    schedule = Schedule(spec.peak_lr, spec.steps, spec.warmup_fraction, spec.final_lr_fraction)
    tx = make_optimizer(params, group_of, groups, schedule, weight_decay=spec.weight_decay, clip_norm=spec.clip_norm,
                          optimizer=spec.optimizer)
    shardings = train_state_shardings(params, frozen, tx, mesh)
    with jax.set_mesh(mesh):
        params = jax.device_put(params, shardings.params)
        frozen = jax.device_put(frozen, shardings.frozen)
        # Only the new leaves are made under jit: a jitted init_state would return copies of params and frozen
        # (jit does not pass inputs through), briefly holding the whole model twice.
        fresh = jax.jit(lambda p: init_state(p, None, tx, seed=seed).replace(params=None),
                        out_shardings=shardings.replace(params=None, frozen=None))(params)
    state = fresh.replace(params=params, frozen=frozen)
    return graphdef, state, tx, group_of, schedule


def _path_keys(path) -> tuple[str, ...]:
    return tuple(str(k) for k in path)


def optimizer_shardings(tx, params: Any, mesh) -> Any:
    """Shardings of `tx.init(params)`: every moment laid out like its parameter, the rest (counts) replicated.

    Left to the compiler, `zeros_like(params)` inside the jitted init is a constant with no sharding, and Adam's
    two moments came out replicated on every device: FSDP sharded the weights but not the optimizer state (for the
    paper's align stage, 2 x 4.8 GB of projector moments on every GPU). A moment's path in the optimizer state
    ends with its parameter's path, which is how it finds the parameter's sharding.
    """
    is_sharding = lambda x: isinstance(x, NamedSharding)  # noqa: E731
    by_path = {_path_keys(p): (s, leaf.shape) for (p, s), leaf in zip(
        jax.tree_util.tree_flatten_with_path(state_shardings(params, mesh), is_leaf=is_sharding)[0],
        jax.tree.leaves(params))}
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        keys = _path_keys(path)
        for start in range(len(keys)):
            found = by_path.get(keys[start:])
            if found is not None and tuple(found[1]) == tuple(leaf.shape):
                return found[0]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, jax.eval_shape(tx.init, params))


def train_state_shardings(params: Any, frozen: Any, tx, mesh) -> TrainState:
    """Where every leaf of a stage's TrainState lives: the rules table for weights, their moments alike."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(step=replicated, params=state_shardings(params, mesh), frozen=state_shardings(frozen, mesh),
                      opt_state=optimizer_shardings(tx, params, mesh), rng=replicated)


@dataclasses.dataclass
class StageResult:
    model: nnx.Module
    state: TrainState
    last_step: int
    metrics: dict


class _Throughput:
    """Tokens/s, step time, MFU and HFU over the steps since the last log line, and where the host's time went:
    `input_s` waiting for and sending batches, `sync_s` blocked on device results (per step)."""

    def __init__(self, input_s: float = 0.0):
        self.t0, self.tokens, self.steps, self.sync_s, self.input0 = time.perf_counter(), 0, 0, 0.0, input_s

    def add(self, tokens: int, sync_s: float) -> None:
        self.tokens, self.steps, self.sync_s = self.tokens + tokens, self.steps + 1, self.sync_s + sync_s

    def flush(self, flops, input_s: float) -> dict:
        dt, n = time.perf_counter() - self.t0, max(self.steps, 1)
        out = {"step_time_s": dt / n, "tokens_per_s": self.tokens / max(dt, 1e-9),
               "input_s": (input_s - self.input0) / n, "sync_s": self.sync_s / n,
               "model_tflops_per_step": flops.model / 1e12}  # all devices together
        for key, count in (("mfu", flops.model), ("hfu", flops.executed)):  # accelerators only
            value = perf.mfu(count, dt / n, jax.device_count())
            if value is not None:
                out[key] = value
        self.__init__(input_s)
        return out


def _open_checkpoints(spec: StageSpec, workdir: str, state, train_iter):
    """(Checkpointer, positioned data iterator or None, state restored from the latest checkpoint if any)."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=spec.save_every, keep=spec.keep,
                        best_metric=spec.best_metric or None, async_save=spec.async_checkpoints)
    ckpt.watch_sigterm()
    data_iter = Positioned(train_iter) if hasattr(train_iter, "get_state") else None
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(abstract_like(state), data_iter=data_iter)
        log.info("resumed stage %s at step %d from %s", spec.name, int(state.step), ckpt.directory)
    return ckpt, data_iter, state


def _stop(ckpt: Checkpointer, state, position, spec: StageSpec, why: str) -> None:
    """Saves `state` now, whatever save_every says, as the step it has reached (rejected updates do not count),
    and waits for it to be committed."""
    step = int(state.step)
    if ckpt.latest_step() != step:
        ckpt.save(step, state, data_iter=position, meta={"stage": spec.name, "stopped": why}, force=True)
    ckpt.wait()


@dataclasses.dataclass
class _Step:
    """A dispatched step whose metrics stay on the devices until the host reads them, one step later."""
    number: int
    metrics: dict
    flops: Any
    val: dict


class _Reader:
    """Reads dispatched steps' metrics one step behind (the device has finished them by then: no wait), writes a
    record per step, and stops the run at a non-finite step. The step itself already rejected that update on the
    device, so the state saved is never poisoned."""

    def __init__(self, spec: StageSpec, stepper: Stepper, schedule, lr_scale: float, writer, bar, end: int):
        self.spec, self.stepper, self.lr_scale = spec, stepper, lr_scale
        # one compiled program for the logged LR: eager, optax's schedule is a dozen op dispatches a step
        self.lr = jax.jit(schedule())
        self.writer, self.bar, self.end, self.meter, self.last = writer, bar, end, _Throughput(), {}

    def read(self, done: _Step, stop) -> None:
        t0 = time.perf_counter()
        metrics = jax.device_get(done.metrics)
        sync_s = time.perf_counter() - t0
        self.meter.add(int(metrics.pop("batch_tokens", 0)), sync_s)
        if not int(metrics.pop("finite")):
            stop("non-finite")
            raise TrainingDiverged(
                f"stage {self.spec.name}: non-finite loss or gradient at step {done.number - 1} (loss="
                f"{metrics['loss']}, grad_norm={metrics['grad_norm']}); the update was rejected and the last good "
                "state is saved. Lower the learning rate or check the data.")
        record = {k: float(v) for k, v in metrics.items()}
        record["lr"] = float(self.lr(done.number - 1)) * self.lr_scale
        if done.number % self.spec.log_every == 0 or done.number == self.end:
            record.update(self.meter.flush(done.flops, self.stepper.input_s))
        record.update(done.val)
        self.writer.write(done.number, record)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}")
        self.bar.update(1)
        self.last = record


def run_stage(model: nnx.Module, task: Task, spec: StageSpec, *, train_iter: Iterator[dict], mesh,
              workdir: str | os.PathLike, seed: int = 0, evaluate: Optional[Callable[[nnx.Module], dict]] = None,
              progress: bool = True, stop_after: Optional[int] = None) -> StageResult:
    """Train `model` for `spec.steps` steps of `spec`; resumes from `workdir/checkpoints` if present.

    `train_iter` yields per-host numpy micro-batches of the VLM batch contract (`spec.grad_accum_steps` of them
    make one optimizer step) and, when it is a Grain iterator, its position is checkpointed with the state.
    `evaluate(model) -> {"val_loss": ...}` runs every `eval_every` steps and at the end; its metrics feed
    best-checkpoint selection. `stop_after` ends the run early (tests). Each step: dispatch it -> prepare the
    next batch while it runs -> maybe evaluate -> maybe save -> read the previous step's metrics (log, NaN
    guard) -> stop on every host if any host was preempted. The host never waits for a step it has no use for.
    """
    workdir = os.fspath(workdir)
    groups = spec.param_groups()
    graphdef, state, tx, group_of, schedule = prepare_state(model, spec, mesh, seed=seed)
    stepper = Stepper(graphdef, task, tx, mesh, jax.tree.map(lambda x: x.sharding, state), spec.grad_accum_steps)
    log.info("stage %s: %d trainable parameters in groups %s", spec.name,
             sum(x.size for x in jax.tree.leaves(state.params)), sorted(set(jax.tree.leaves(group_of))))
    ckpt, data_iter, state = _open_checkpoints(spec, workdir, state, train_iter)
    batches = data_iter if data_iter is not None else train_iter
    step = int(state.step)
    end = spec.steps if stop_after is None else min(spec.steps, stop_after)
    writer = MetricWriter(workdir, stage=spec.name)
    bar = tqdm(total=spec.steps, initial=step, desc=spec.name, disable=not progress or jax.process_index() != 0,
               dynamic_ncols=True)
    reader = _Reader(spec, stepper, schedule, groups[0].lr_scale if groups else 1.0, writer, bar, end)
    pending: Optional[_Step] = None
    try:
        while step < end:
            state, metrics, flops = stepper(state, batches)  # dispatched: grad_accum_steps batches, one update
            step += 1
            position = data_iter.position() if data_iter is not None else None  # before reading ahead
            if step < end:
                stepper.prefetch(batches)
            current = _Step(step, metrics, flops, {})
            stop = functools.partial(_stop, ckpt, state, position, spec)  # noqa: B023
            if pending is not None:  # the previous step: finished while this one was dispatched
                reader.read(pending, stop)
            if evaluate is not None and (step == end or (spec.eval_every and step % spec.eval_every == 0)):
                current.val = evaluate(nnx.merge(graphdef, state.params, state.frozen))
            preempted = any_process(ckpt.preempted(step))  # a SIGTERM on one host stops every host at this step
            saving = ckpt.due(step) or step == spec.steps
            pending = None if (saving or preempted or current.val or step == end) else current
            if pending is None:  # a checkpoint is written only after its step is read and known finite
                reader.read(current, stop)
            ckpt.save(step, state, data_iter=position, meta={"stage": spec.name}, force=(step == spec.steps),
                      metrics=current.val or None)
            if preempted:
                stop("preempted")
                log.warning("stage %s: preempted; checkpointed step %d, exiting", spec.name, step)
                raise SystemExit(143)
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    return StageResult(model=nnx.merge(graphdef, state.params, state.frozen), state=state, last_step=step,
                       metrics=reader.last)
