"""The one table that maps logical axis names to mesh axes, and the helpers that apply it.

Models name their dimensions ('embed', 'mlp', 'q_heads', 'batch', ...) and never mesh axes; this module alone
decides that 'embed' weights are split over `fsdp`, heads and the MLP over `tensor`, and the batch over
`data` x `fsdp`. Changing the parallelism strategy is changing this table, not the models.

Parameter names and activation names are distinct on purpose: FSDP splits a weight's `embed` dimension over
`fsdp` while activations use `fsdp` for the batch, so an activation's feature axis is `act_embed` (replicated).
A mesh axis is dropped from a dimension it does not divide (and never used twice in one spec), so tiny test
models and odd head counts (Qwen2's 14 heads) still place; the dimension is then replicated instead.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = Union[None, str, tuple[str, ...]]

LOGICAL_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("lora_rank", None),
    ("position", None),
    ("conv", None),
    ("channels", None),
    # vision encoder and projector: CT-ViT split like the decoder; the very wide projector input (the flattened
    # 24x24x512 grid of a temporal patch, ~295k features) over fsdp x tensor
    ("vis_embed", "fsdp"),
    ("vis_heads", "tensor"),
    ("vis_mlp", "tensor"),
    ("vis_patch", None),
    ("vis_proj", ("fsdp", "tensor")),
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_length", None),
)


class ShardingRuleError(KeyError):
    """A logical axis name that the rules table does not know (a typo would otherwise silently replicate)."""


def param_axes(*names: Optional[str]) -> dict[str, Any]:
    """A parameter's variable metadata: its logical axis names, mapped to mesh axes by LOGICAL_RULES when the
    state is placed (`state_shardings`, `place_state`), never eagerly at init (init stays on one device)."""
    return {"out_sharding": tuple(names), "eager_sharding": False}


def _rule_table(rules: Sequence[tuple[str, MeshAxes]]) -> dict[str, MeshAxes]:
    return {name: axes for name, axes in rules}


def _axes_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(
    logical_axes: Sequence[Optional[str]],
    shape: Optional[Sequence[int]] = None,
    mesh_shape: Optional[dict[str, int]] = None,
    rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_RULES,
) -> PartitionSpec:
    """PartitionSpec for dimensions named `logical_axes`; with `shape` and `mesh_shape`, drops non-dividing axes."""
    table = _rule_table(rules)
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for dim, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ShardingRuleError(f"logical axis {name!r} is not in the sharding rules table {sorted(table)}")
        kept = []
        for axis in _axes_tuple(table[name]):
            if axis in used:
                continue
            if mesh_shape is not None:
                if axis not in mesh_shape:
                    continue
                if shape is not None:
                    size = math.prod(mesh_shape[a] for a in kept) * mesh_shape[axis]
                    if shape[dim] % size:
                        continue
            kept.append(axis)
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*spec)


def _mesh_shape(mesh: Any) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes)) if hasattr(mesh, "axis_sizes") else dict(mesh.shape)


def named_sharding(logical_axes: Optional[Sequence[Optional[str]]], shape: Sequence[int], mesh: Mesh,
                   rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_RULES) -> NamedSharding:
    """Where one array of this shape and these logical axes lives on `mesh` (replicated when unannotated)."""
    if not logical_axes:
        return NamedSharding(mesh, PartitionSpec())
    if len(logical_axes) != len(shape):
        raise ShardingRuleError(f"logical axes {tuple(logical_axes)} do not match an array of shape {tuple(shape)}")
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, _mesh_shape(mesh), rules))


def logical_axes_of(variable: nnx.Variable) -> Optional[tuple[Optional[str], ...]]:
    """The logical axis names a model attached to a variable (flax's `out_sharding` metadata)."""
    axes = variable.get_metadata().get("out_sharding")
    return tuple(axes) if axes else None


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_RULES) -> Any:
    """A NamedSharding for every array of an NNX state (concrete or abstract), from its annotations."""

    def one(x):
        if isinstance(x, nnx.Variable):
            value = x.get_value()
            return x.replace(named_sharding(logical_axes_of(x), value.shape, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard(x: jax.Array, logical_axes: Sequence[Optional[str]],
          rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_RULES) -> jax.Array:
    """Constrain an activation to its logical layout under the current mesh (`jax.set_mesh`); a no-op without one.

    Dimensions a mesh axis does not divide stay replicated rather than padded, which keeps decode steps of one
    token and odd head counts free of resharding surprises.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.axis_sizes) == 1:
        return x
    spec = logical_to_spec(logical_axes, x.shape, _mesh_shape(mesh), rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def init_options() -> Optional[dict]:
    """XLA options for a model's init program: on CPU, backend optimisation level 1 compiles it in about half the
    time (the tiny default's VLM: 7.4 -> 4.1 s) and draws the very same weights (level 0 would not); run once,
    such a program has nothing to gain from level 3. Other backends keep their defaults."""
    if jax.default_backend() != "cpu" or not _top_level():
        return None
    return {"xla_backend_optimization_level": 1}


def _top_level() -> bool:
    """Whether no trace is active: JAX takes compiler options only on a top-level jit, and models are also built
    inside traces (`--mode plan` builds them under eval_shape). Unknown JAX internals: assume a trace."""
    try:
        from jax._src import core
        return bool(core.trace_state_clean())
    except (ImportError, AttributeError):
        return False


def init_sharded(make_model: Callable[[], nnx.Module], mesh: Mesh,
                 rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_RULES) -> nnx.Module:
    """Build a model with every parameter created directly in its shard (never whole on one device).

    `make_model` must create its own `nnx.Rngs` (it is traced under jit), e.g. `lambda: Decoder(cfg,
    rngs=nnx.Rngs(0))`.
    """
    abstract = nnx.eval_shape(make_model)
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(abs_state, mesh, rules)

    def init():
        return nnx.state(make_model())

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings, compiler_options=init_options())()
    return nnx.merge(graphdef, state)


def _place_leaf(x: Any, sharding: NamedSharding) -> Any:
    """One host-local value -> a global array on `sharding`, each device taking its slice of the host copy.

    `jax.device_put` onto devices of other processes first checks that every process holds the same value (an
    all-gather of the whole array) and refuses PRNG key arrays outright (LoRA dropout keys). Every process built
    the same value from the same seed, so each can cut its own devices' slices locally.
    """
    if not isinstance(x, (jax.Array, np.ndarray)):
        return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = jax.random.key_data(x)
        key_spec = PartitionSpec(*sharding.spec, *([None] * (data.ndim - x.ndim)))
        placed = _place_leaf(data, NamedSharding(sharding.mesh, key_spec))
        return jax.random.wrap_key_data(placed, impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already global: a reshard, done by the compiler
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_state(state: Any, mesh: Mesh, rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_RULES) -> Any:
    """Move an existing (e.g. single-device) state to its shards, on any number of processes."""
    shardings = state_shardings(state, mesh, rules)
    if jax.process_count() == 1:
        return jax.device_put(state, shardings)
    return jax.tree.map(_place_leaf, state, shardings)
