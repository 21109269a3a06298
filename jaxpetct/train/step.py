"""The pure training and evaluation steps.

Everything a step needs is in `TrainState` (a pytree) plus a batch; the NNX graph definition, the loss and the
optimizer are closed over as static structure. That makes the step one `jax.jit` with explicit shardings and
a donated state, and makes a resumed run bitwise identical to an uninterrupted one: there is no hidden state.

Gradient accumulation splits the batch's leading axis into micro-batches and sums *token-weighted* losses and
gradients over a `lax.scan`, so accumulating k micro-batches gives the same update as one k-times-larger batch.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxpetct.train.optimizer import global_norm


class Task(Protocol):
    """A loss over a merged model: returns (sum of per-token losses, token count, extra scalar metrics)."""

    def __call__(self, model: nnx.Module, batch: dict, *, train: bool) -> tuple[jax.Array, jax.Array, dict]: ...


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # trainable nnx.State (float32 master weights)
    frozen: Any  # every other variable of the model (frozen params, RNG streams, buffers)
    opt_state: Any
    rng: jax.Array  # raw uint32 key data: serialisable by Orbax and restorable bit for bit


def split_batch(batch: dict, accum_steps: int) -> dict:
    """(B, ...) -> (accum, B/accum, ...): micro-batch i holds rows i, i + accum, i + 2 accum, ...

    Strided, not contiguous: the batch axis is split over the devices in contiguous blocks, so a contiguous
    micro-batch would live on a few devices and the compiler would move every micro-batch across the mesh (for a
    batch of 140x480x480 volumes, a resharded copy of the whole batch). Taking every accum-th row leaves each
    device holding B / (accum x devices) rows of every micro-batch: no data moves. Fails loudly when B does not
    divide.
    """

    def f(x):
        if x.shape[0] % accum_steps:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={accum_steps}")
        return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)

    return jax.tree.map(f, batch)


def make_train_step(graphdef: nnx.GraphDef, task: Task, tx: optax.GradientTransformation, *, accum_steps: int = 1):
    """Returns train_step(state, batch) -> (state, metrics). A non-finite loss or gradient leaves the state
    untouched (the step is rejected) and reports `finite = 0`, so the loop can stop with the last good state."""

    def loss_and_grad(params, frozen, micro, key):
        def f(p):
            # Fresh copies: NNX refuses to mutate (reseed) variables created at an outer trace level.
            model = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, frozen))
            if key is not None:
                # Scanned layers hold one dropout key per layer (shape (L,)): each gets its own split of `key`.
                nnx.reseed(model, dropout=key, policy="match_shape")
            loss_sum, count, aux = task(model, micro, train=True)
            return loss_sum, (count, aux)

        (loss_sum, (count, aux)), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss_sum, count, aux, grads

    def train_step(state: TrainState, batch: dict):
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        micro_batches = split_batch(batch, accum_steps)

        def body(carry, xs):
            loss_acc, count_acc, grad_acc = carry
            micro, i = xs
            key = jax.random.key_data(jax.random.fold_in(step_key, i))
            loss_sum, count, aux, grads = loss_and_grad(state.params, state.frozen, micro, jax.random.wrap_key_data(key))
            grad_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grad_acc, grads)
            return (loss_acc + loss_sum, count_acc + count, grad_acc), aux

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros)
        (loss_sum, count, grads), aux = jax.lax.scan(body, init, (micro_batches, jnp.arange(accum_steps)))
        denom = jnp.maximum(count, 1.0)
        loss = loss_sum / denom
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = state.replace(
            step=state.step + jnp.where(finite, 1, 0).astype(state.step.dtype),
            params=keep(new_params, state.params),
            opt_state=keep(new_opt, state.opt_state),
        )
        metrics = {"loss": loss, "tokens": count, "grad_norm": grad_norm, "finite": finite.astype(jnp.int32)}
        if "attention_mask" in batch:  # every real token the step processed, over all hosts (for tokens/s)
            metrics["batch_tokens"] = jnp.sum(batch["attention_mask"].astype(jnp.int32))
        metrics.update({k: jnp.mean(v) for k, v in aux.items()})
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, task: Task):
    """Returns eval_step(state, batch) -> (loss_sum, count): sums, so the caller averages over a whole split."""

    def eval_step(state: TrainState, batch: dict):
        model = nnx.merge(graphdef, state.params, state.frozen)
        loss_sum, count, _ = task(model, batch, train=False)
        return loss_sum, count

    return eval_step


def init_state(params: Any, frozen: Any, tx: optax.GradientTransformation, *, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def with_shardings(fn: Callable, state_sharding: Any, batch_sharding: Any, *, donate: bool = True):
    """jit a train step with explicit in/out shardings and the state donated (updated in place on device)."""
    return jax.jit(
        fn,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, None),
        donate_argnums=(0,) if donate else (),
    )
