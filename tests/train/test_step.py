"""The pure train step on a two-weight model: accumulating micro-batches equals one large batch (token-weighted), a
non-finite step is rejected; the stage state: moments sharded like their weights, group labels."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxpetct.parallel.mesh import make_mesh
from jaxpetct.train.step import init_state, make_accumulate_step, make_apply_step, make_train_step


class Line(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.asarray([0.5, -0.25]))

    def __call__(self, x):
        return x @ self.w[...]


def squared_error(model, batch, *, train):  # noqa: ARG001 - the Task protocol
    err = (model(batch["x"]) - batch["y"]) * batch["weight"]
    return jnp.sum(err**2), jnp.sum(batch["weight"]), {}


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    weight = np.ones(n, np.float32)
    weight[1] = 0.0  # a masked row: must count for nothing, however the batch is split
    return {"x": rng.normal(size=(n, 2)).astype(np.float32), "y": rng.normal(size=n).astype(np.float32),
            "weight": weight}


def fresh(tx):
    graphdef, params, rest = nnx.split(Line(), nnx.Param, ...)
    return graphdef, init_state(params, rest, tx, seed=0)


def one_step(accum, data, tx=None):
    """One optimizer step over `data` in `accum` micro-batches of consecutive rows (as the loader delivers them)."""
    tx = tx or optax.sgd(0.1)
    graphdef, state = fresh(tx)
    if accum == 1:
        new, metrics = jax.jit(make_train_step(graphdef, squared_error, tx))(state, data)
    else:
        accumulate, apply = jax.jit(make_accumulate_step(graphdef, squared_error)), jax.jit(make_apply_step(tx))
        acc = None
        for part in np.split(np.arange(len(data["y"])), accum):
            acc = accumulate(state, acc, {k: v[part] for k, v in data.items()})
        assert int(acc.micro) == accum
        new, metrics = apply(state, acc)
    return np.asarray(new.params["w"][...]), jax.device_get(metrics)


def test_accumulating_micro_batches_is_one_large_batch():
    data = batch()
    w1, m1 = one_step(1, data)
    for accum in (2, 4, 8):
        w, m = one_step(accum, data)
        np.testing.assert_allclose(w, w1, rtol=1e-6, atol=1e-7)
        assert abs(float(m["loss"]) - float(m1["loss"])) < 1e-6 and float(m["tokens"]) == 7.0
    # token weighting, not a mean of micro-batch means: the masked row makes one half count 3 rows, the other 4
    w_adam, _ = one_step(1, data, optax.adam(0.1))
    w_adam2, _ = one_step(2, data, optax.adam(0.1))
    np.testing.assert_allclose(w_adam2, w_adam, rtol=1e-6, atol=1e-7)


def test_a_non_finite_step_is_rejected_and_leaves_the_state():
    data = batch()
    data["y"][3] = np.nan
    tx = optax.adamw(1e-2)
    graphdef, state = fresh(tx)
    params = state.params
    new, metrics = jax.jit(make_train_step(graphdef, squared_error, tx))(state, data)
    assert int(metrics["finite"]) == 0 and int(new.step) == 0
    np.testing.assert_array_equal(np.asarray(new.params["w"][...]), np.asarray(params["w"][...]))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(state.opt_state)))


def test_adam_moments_are_sharded_like_their_parameters():
    """FSDP shards the optimizer state too: left to the compiler, the jitted init replicated Adam's moments."""
    from jaxpetct.models.factory import build_vlm
    from jaxpetct.train.loop import StageSpec, prepare_state

    mesh = make_mesh({"data": 2, "fsdp": 4}, jax.devices()[:8])
    model = build_vlm({"encoder": {"preset": "tiny", "channels": 2}, "decoder": {"preset": "tiny", "scan_layers": True}},
                      seed=0, mesh=mesh, with_lora=False)
    _, state, _, _, _ = prepare_state(model, StageSpec("full", steps=4, peak_lr=1e-3), mesh)
    params = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    moments = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
        key = jax.tree_util.keystr(path)
        owner = [p for p in params if key.endswith(p)]
        if not owner:
            assert leaf.ndim == 0 or leaf.sharding.is_fully_replicated  # step counts
            continue
        moments += 1
        assert leaf.sharding.spec == params[owner[0]].sharding.spec, key
    assert moments == 2 * len(params)
    sharded = [x for x in params.values() if not x.sharding.is_fully_replicated]
    assert sharded and sum(x.addressable_shards[0].data.size for x in jax.tree.leaves(state.opt_state)) < 0.5 * sum(
        x.size for x in jax.tree.leaves(state.opt_state))


def test_a_group_pattern_anchored_at_the_end_labels_what_it_trains():
    """The optimizer's group labels come from the same paths as the trainable filter (a `$`-anchored pattern once
    made a weight trainable with no label: optax then applied the raw gradient as the update)."""
    from jaxpetct.train.loop import split_trainable
    from jaxpetct.train.optimizer import ParamGroup

    class Two(nnx.Module):
        def __init__(self):
            self.head = nnx.Linear(2, 1, rngs=nnx.Rngs(0))

    _, params, frozen, group_of = split_trainable(Two(), (ParamGroup("k", r"^head/kernel$"),))
    assert jax.tree.leaves(group_of) == ["k"] and len(jax.tree.leaves(params)) == 1
    assert len(jax.tree.leaves(frozen)) == 1  # the bias
