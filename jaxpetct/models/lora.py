"""LoRA adapters on the decoder's linear layers (the paper's stage 3: r 64, alpha 16, dropout 0.05).

Adapter weights are `LoRAParam` variables (a `nnx.Param` subclass), so a trainer differentiates and optimises
exactly `nnx.state(model, LoRAParam)` while the base weights stay frozen. y = W x + (alpha / r) * B A dropout(x),
with A Kaiming-uniform and B zero as in PEFT, so a fresh adapter leaves the model unchanged. Dropout draws from
the model's `nnx.Rngs` ('dropout' stream) and is off after `model.eval()`. `merge` folds the update into W for
export and fast inference; `unmerge` takes it back out.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxpetct.models.layers import DENSE_OUTPUT, Dense, annotated_param, contract, dot

LoRAParam = nnx.LoRAParam

TARGETS = {
    "q": ("self_attn", "q_proj"), "k": ("self_attn", "k_proj"), "v": ("self_attn", "v_proj"),
    "o": ("self_attn", "o_proj"), "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 64
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    def __post_init__(self):
        names = tuple(t[:-5] if t.endswith("_proj") else t for t in self.targets)
        unknown = sorted(set(names) - set(TARGETS))
        if unknown:
            raise ValueError(f"unknown LoRA targets {unknown}; choose among {sorted(TARGETS)}")
        if self.rank < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA rank must be >= 1 and dropout in [0, 1) (got rank={self.rank}, "
                             f"dropout={self.dropout})")
        object.__setattr__(self, "targets", names)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRAAdapter(nnx.Module):
    """The low-rank update of one Dense (or of a stack of them: `layers` > 0 adds a leading layer axis)."""

    def __init__(self, dense_in: Sequence[int], dense_out: Sequence[int], in_axes, out_axes, cfg: LoRAConfig, *,
                 dtype, param_dtype, rngs: nnx.Rngs):
        self.n_in, self.scale, self.dtype, self.merged = len(dense_in), cfg.scale, dtype, False
        bound = 1.0 / math.sqrt(math.prod(dense_in))
        a = jax.random.uniform(rngs.params(), (*dense_in, cfg.rank), jnp.float32, -bound, bound)
        self.lora_a = annotated_param(a.astype(param_dtype), (*in_axes, "lora_rank"), kind=LoRAParam)
        self.lora_b = annotated_param(jnp.zeros((cfg.rank, *dense_out), param_dtype), ("lora_rank", *out_axes),
                                      kind=LoRAParam)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs) if cfg.dropout > 0 else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.merged:
            return jnp.zeros((), self.dtype)
        if self.dropout is not None:
            x = self.dropout(x)
        y = _low_rank(x.astype(self.dtype), self.lora_a[...].astype(self.dtype),
                      self.lora_b[...].astype(self.dtype), self.n_in, self.scale)
        return checkpoint_name(y, DENSE_OUTPUT)

    def delta(self) -> jax.Array:
        """scale * A @ B in the kernel's shape (with the layer axis first for stacked adapters)."""
        a, b = self.lora_a[...].astype(jnp.float32), self.lora_b[...].astype(jnp.float32)
        stacked = a.ndim - self.n_in - 1
        f = lambda a, b: contract(a, b, 1, jnp.float32) * self.scale  # noqa: E731
        for _ in range(stacked):
            f = jax.vmap(f)
        return f(a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _low_rank(x, a, b, n_in, scale):
    """scale * (x @ A) @ B over the last `n_in` dims of x."""
    return _low_rank_fwd(x, a, b, n_in, scale)[0]


def _low_rank_fwd(x, a, b, n_in, scale):
    h = dot(x, a, range(x.ndim - n_in, x.ndim), range(n_in)) * scale  # (..., rank): small, kept
    return dot(h, b, (h.ndim - 1,), (0,)), (x, a, b, h)


def _low_rank_bwd(n_in, scale, res, dy):
    """A's gradient as (dh^T x)^T: contracting the tokens with the (tokens, rank) factor on the left leaves x in
    its own layout. Autodiff's x^T dh puts x on the left, and XLA:CPU's dot wants that operand's contracted axis
    minor, so it wrote a transposed copy of every adapted layer's input (the MLP's 2048 x 1536 activation: 30-70
    ms each, ~13 % of a LoRA step of the CPU benchmark). Transposing the (rank, in) result instead costs nothing."""
    x, a, b, h = res
    lead = x.ndim - n_in
    n_out = b.ndim - 1
    db = dot(h, dy, range(lead), range(lead))  # (rank, *out)
    dh = dot(dy, b, range(dy.ndim - n_out, dy.ndim), range(1, b.ndim)) * scale  # (..., rank)
    da = jnp.moveaxis(dot(dh, x, range(lead), range(lead)), 0, -1)  # (rank, *in) -> (*in, rank)
    dx = dot(dh, a, (dh.ndim - 1,), (n_in,))
    return dx, da, db


_low_rank.defvjp(_low_rank_fwd, _low_rank_bwd)


def _layer_modules(model) -> Iterator[tuple[object, bool]]:
    """(layer module, stacked?) for each decoder layer object."""
    if model.cfg.scan_layers:
        yield model.layers, True
    else:
        for layer in model.layers:
            yield layer, False


def _target_dense(layer, target: str) -> Dense:
    module = layer
    for name in TARGETS[target]:
        module = getattr(module, name)
    return module


def apply_lora(model, cfg: LoRAConfig, rngs: nnx.Rngs):
    """Attach adapters in place to the targeted Dense layers of a `Decoder`; returns the model."""
    for layer, stacked in _layer_modules(model):
        for target in cfg.targets:
            dense = _target_dense(layer, target)
            if dense.lora is not None:
                raise ValueError(f"LoRA already applied to {target}")
            in_f, out_f = dense.in_features, dense.out_features
            kw = dict(dtype=dense.dtype, param_dtype=dense.kernel[...].dtype)
            if stacked:
                dense.lora = _stacked_adapter(model.cfg.num_layers, in_f, out_f, dense.in_axes, dense.out_axes,
                                              cfg, rngs, kw)
            else:
                dense.lora = LoRAAdapter(in_f, out_f, dense.in_axes, dense.out_axes, cfg, rngs=rngs, **kw)
    return model


def _stacked_adapter(n: int, in_f, out_f, in_axes, out_axes, cfg, rngs, kw) -> LoRAAdapter:
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(r: nnx.Rngs) -> LoRAAdapter:
        return LoRAAdapter(in_f, out_f, in_axes, out_axes, cfg, rngs=r, **kw)

    return make(rngs)


def adapted_denses(model) -> Iterator[tuple[tuple, Dense]]:
    """(path, Dense) for every Dense that carries an adapter."""
    for path, module in nnx.iter_graph(model):
        if isinstance(module, Dense) and module.lora is not None:
            yield tuple(path), module


def merged_kernels(model) -> dict[tuple, Callable[[], jax.Array]]:
    """Kernel path -> lazily computed W + delta for unmerged adapters (exports use it without touching W)."""
    out = {}
    for path, dense in adapted_denses(model):
        if not dense.lora.merged:
            out[(*path, "kernel")] = (lambda d: lambda: (d.kernel[...].astype(jnp.float32) + d.lora.delta()
                                                         ).astype(d.kernel[...].dtype))(dense)
    return out


def merge(model):
    """Fold every adapter into its base kernel (in place); the adapters then contribute nothing."""
    for _, dense in adapted_denses(model):
        if not dense.lora.merged:
            w = dense.kernel[...]
            dense.kernel[...] = (w.astype(jnp.float32) + dense.lora.delta()).astype(w.dtype)
            dense.lora.merged = True
    return model


def unmerge(model):
    """Undo `merge` (in place), so training can continue on the adapters."""
    for _, dense in adapted_denses(model):
        if dense.lora.merged:
            w = dense.kernel[...]
            dense.kernel[...] = (w.astype(jnp.float32) - dense.lora.delta()).astype(w.dtype)
            dense.lora.merged = False
    return model


def lora_state(model) -> nnx.State:
    """The trainable adapter weights only."""
    return nnx.state(model, LoRAParam)


def base_params_filter():
    """Filter for frozen base weights (every Param that is not a LoRAParam)."""
    return nnx.All(nnx.Param, nnx.Not(LoRAParam))
