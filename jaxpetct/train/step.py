"""The pure training and evaluation steps.

Everything a step needs is in `TrainState` (a pytree) plus a batch; the NNX graph definition, the loss and the
optimizer are closed over as static structure. That makes the step one `jax.jit` with explicit shardings and
a donated state, and makes a resumed run bitwise identical to an uninterrupted one: there is no hidden state.

Gradient accumulation runs over loader batches: `make_accumulate_step` adds one micro-batch's *token-weighted*
loss and gradient sums to an `Accumulator`, `make_apply_step` turns the sums into one update, so accumulating k
micro-batches gives the same update as one k-times-larger batch while only one micro-batch of 140x480x480 volumes
is ever in memory (the whole paper batch of 256 is 66 GB in float32). `make_train_step` fuses both for k = 1.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol

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


@flax.struct.dataclass
class Accumulator:
    """Sums over the micro-batches of one optimizer step. Transient: checkpoints fall between optimizer steps,
    where no accumulation is in flight, so it is never saved."""

    loss_sum: jax.Array
    count: jax.Array  # loss units (answer tokens, rows): the denominator of the token-weighted mean
    grads: Any  # float32 sums, laid out like the trainable params
    micro: jax.Array  # micro-batches accumulated (int32): each draws its own dropout key
    tokens: jax.Array  # real tokens processed (attention mask), for tokens/s
    aux: dict  # sums of the task's extra scalar metrics (averaged per micro-batch at the update)


def make_accumulate_step(graphdef: nnx.GraphDef, task: Task):
    """Returns accumulate(state, acc, batch) -> acc: one micro-batch's loss and gradient sums added to `acc`
    (None for the first micro-batch of a step). The parameters do not move until `make_apply_step`'s update."""

    def loss_and_grad(params, frozen, micro, key):
        def f(p):
            # Fresh copies: NNX refuses to mutate (reseed) variables created at an outer trace level.
            model = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, frozen))
            # Scanned layers hold one dropout key per layer (shape (L,)): each gets its own split of `key`.
            nnx.reseed(model, dropout=key, policy="match_shape")
            loss_sum, count, aux = task(model, micro, train=True)
            return loss_sum, (count, aux)

        (loss_sum, (count, aux)), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss_sum, count, aux, grads

    def accumulate(state: TrainState, acc: Optional[Accumulator], batch: dict) -> Accumulator:
        index = jnp.zeros((), jnp.int32) if acc is None else acc.micro
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step), index)
        loss_sum, count, aux, grads = loss_and_grad(state.params, state.frozen, batch, key)
        tokens = jnp.sum(batch["attention_mask"].astype(jnp.int32)) if "attention_mask" in batch else jnp.int32(0)
        new = Accumulator(loss_sum=loss_sum.astype(jnp.float32), count=count.astype(jnp.float32),
                          grads=jax.tree.map(lambda g: g.astype(jnp.float32), grads), micro=index + 1,
                          tokens=tokens, aux={k: jnp.mean(v).astype(jnp.float32) for k, v in aux.items()})
        if acc is None:
            return new
        return jax.tree.map(lambda a, b: a + b, acc, new).replace(micro=index + 1)

    return accumulate


def make_apply_step(tx: optax.GradientTransformation):
    """Returns apply(state, acc) -> (state, metrics): the optimizer update from accumulated sums.

    The gradient is the token-weighted mean over every micro-batch (sum of gradients / sum of counts), so k
    micro-batches give the update of one k-times-larger batch. A non-finite loss or gradient leaves the state
    untouched (the step is rejected) and reports `finite = 0`, so the loop can stop with the last good state.
    """

    def apply(state: TrainState, acc: Accumulator):
        denom = jnp.maximum(acc.count, 1.0)
        loss = acc.loss_sum / denom
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), acc.grads, state.params)
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
        metrics = {"loss": loss, "tokens": acc.count, "grad_norm": grad_norm, "finite": finite.astype(jnp.int32),
                   "batch_tokens": acc.tokens}  # batch_tokens: every real token of the step, over all hosts
        metrics.update({k: v / acc.micro.astype(jnp.float32) for k, v in acc.aux.items()})
        return new_state, metrics

    return apply


def make_train_step(graphdef: nnx.GraphDef, task: Task, tx: optax.GradientTransformation):
    """Returns train_step(state, batch) -> (state, metrics): one batch, one update, one program.

    With gradient accumulation the loop instead feeds `make_accumulate_step` one loader batch at a time and
    then calls `make_apply_step`: only one micro-batch of volumes is ever on the devices (and in host memory).
    """
    accumulate, apply = make_accumulate_step(graphdef, task), make_apply_step(tx)

    def train_step(state: TrainState, batch: dict):
        return apply(state, accumulate(state, None, batch))

    return train_step


def init_state(params: Any, frozen: Any, tx: optax.GradientTransformation, *, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )
