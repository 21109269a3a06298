"""Building blocks shared by the decoder: annotated dense layers, RMSNorm, token embeddings, SwiGLU MLP.

Every parameter carries its logical axis names (flax `out_sharding` metadata with eager sharding off), so
placement is decided later by `jaxpetct.parallel.rules` and the same module runs on one CPU or a pod. Weights
are stored in `param_dtype` and cast to the compute `dtype` at use; reductions that decide numerics (RMS,
logits) run in float32 as transformers does.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxpetct.parallel.rules import shard

Axes = tuple[Optional[str], ...]


def annotated_param(value: jax.Array, axes: Sequence[Optional[str]], kind=nnx.Param) -> nnx.Variable:
    """A variable that names its dimensions; eager sharding is off so creation needs no mesh."""
    if len(axes) != value.ndim:
        raise ValueError(f"{len(axes)} logical axes {tuple(axes)} for a parameter of shape {value.shape}")
    return kind(value, out_sharding=tuple(axes), eager_sharding=False)


def normal_init(rngs: nnx.Rngs, shape: Sequence[int], dtype, std: float = 0.02) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)).astype(dtype)


def contract(x: jax.Array, kernel: jax.Array, n_in: int, dtype) -> jax.Array:
    """x[..., *in] @ kernel[*in, *out] over the last `n_in` dims of x."""
    return _contract(x.astype(dtype), kernel.astype(dtype), n_in)


def dot(a, b, a_dims, b_dims):
    """a . b contracting a's `a_dims` with b's `b_dims` (no batch dims): the products of the hand-written VJPs."""
    return jax.lax.dot_general(a, b, ((tuple(a_dims), tuple(b_dims)), ((), ())))


DENSE_OUTPUT = "dense_output"  # checkpoint name of every Dense product: what remat_policy="dots" keeps


def _contract(x, kernel, n_in):
    return checkpoint_name(_contract_vjp(x, kernel, n_in), DENSE_OUTPUT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _contract_vjp(x, kernel, n_in):
    return dot(x, kernel, range(x.ndim - n_in, x.ndim), range(n_in))


def _contract_fwd(x, kernel, n_in):
    return _contract_vjp(x, kernel, n_in), (x, kernel)


def _contract_bwd(n_in, res, dy):
    """Both gradients as single dot_generals already in their final layout. JAX's own transpose rule emits the
    kernel gradient as dot_general + transpose, and XLA:CPU then fuses the elementwise producer of `dy` (the SwiGLU
    backward) into a transposing copy: 2x slower MLP backward, 1.8x slower than torch (tests/models: same values)."""
    x, kernel = res
    n_out = kernel.ndim - n_in
    lead = x.ndim - n_in
    dx = dot(dy, kernel, range(dy.ndim - n_out, dy.ndim), range(n_in, kernel.ndim))
    dk = dot(x, dy, range(lead), range(lead))
    return dx, dk


_contract_vjp.defvjp(_contract_fwd, _contract_bwd)


class Dense(nnx.Module):
    """A linear map between multi-axis feature shapes (e.g. embed -> (heads, head_dim)) with an optional LoRA.

    Keeping heads as their own kernel axis lets the sharding rules split heads over `tensor` without reshapes.
    `lora` is filled by `jaxpetct.models.lora.apply_lora`; it adds its low-rank update to the output.
    """

    def __init__(self, in_features: Sequence[int], out_features: Sequence[int], *, in_axes: Axes, out_axes: Axes,
                 use_bias: bool = False, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.in_features, self.out_features = tuple(in_features), tuple(out_features)
        self.in_axes, self.out_axes = tuple(in_axes), tuple(out_axes)
        self.dtype = dtype
        self.kernel = annotated_param(normal_init(rngs, self.in_features + self.out_features, param_dtype),
                                      self.in_axes + self.out_axes)
        self.bias = (annotated_param(jnp.zeros(self.out_features, param_dtype), self.out_axes)
                     if use_bias else nnx.data(None))
        self.lora = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = contract(x, self.kernel[...], len(self.in_features), self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora is not None:
            y = y + self.lora(x).astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """x / rms(x) * scale with the statistics in float32, cast back before the scale (transformers' order)."""

    def __init__(self, dim: int, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32):
        self.eps, self.dtype = eps, dtype
        self.scale = annotated_param(jnp.ones((dim,), param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
        y = (xf * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
        return self.scale[...].astype(self.dtype) * y


class Embed(nnx.Module):
    """Token embedding table (vocab, embed); `attend` reuses it as the output head for tied models."""

    def __init__(self, vocab: int, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.embedding = annotated_param(normal_init(rngs, (vocab, dim), param_dtype), ("vocab", "embed"))

    def __call__(self, ids: jax.Array) -> jax.Array:
        # Gather from a table whose embed dim is whole (FSDP's all-gather before use): a gather from an
        # fsdp-split table into a batch-split-over-fsdp output would make XLA replicate the result instead.
        table = shard(self.embedding[...], ("vocab", None))
        return jnp.take(table, ids, axis=0).astype(self.dtype)

    def attend(self, h: jax.Array) -> jax.Array:
        return jax.lax.dot_general(h.astype(self.dtype), self.embedding[...].astype(self.dtype),
                                   (((h.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Dense((dim,), (hidden,), in_axes=("embed",), out_axes=("mlp",), **kw)
        self.up_proj = Dense((dim,), (hidden,), in_axes=("embed",), out_axes=("mlp",), **kw)
        self.down_proj = Dense((hidden,), (dim,), in_axes=("mlp",), out_axes=("embed",), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        h = shard(h, ("batch", "length", "act_mlp"))
        return self.down_proj(h)
