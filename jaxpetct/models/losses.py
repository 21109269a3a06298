"""Next-token cross entropy without materialising the (tokens x vocab) logits, and without recomputing them.

For a 32k-token vocabulary the logits of one training batch dwarf everything else in it: 8 x 2048 positions x
32,000 x 4 bytes = 2 GiB in float32, written and re-read several times by softmax and its gradient. Here the
*tokens* are processed in blocks inside a `lax.scan`: a block's logits are made, reduced to its loss, and -- when
a gradient is wanted -- turned at once into that block's share of the gradients (softmax minus one-hot, times the
head), the approach of Liger's fused linear cross entropy. Peak memory is one block's logits, O(block x V), and
the head is multiplied three times per step (logits, d hidden, d head), as with materialised logits; streaming
the vocabulary instead (a running logsumexp) must recompute every chunk's logits in the backward pass, a fourth
head matmul (25 % more head FLOPs; on the demo's 2-core CPU that was ~30 % of a step). A frozen head (align and
LoRA stages) costs two: `symbolic_zeros` tells the forward pass which inputs are being differentiated, and the
head's gradient is not formed when nobody asks for it. Blocks with no loss-bearing token are skipped, and the
tokens with loss are packed into the first blocks, so an instruction-tuning batch pays the head only for its answer
tokens. The gradient is exact (not an approximation): results match the full-logits loss to float rounding.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_HD = (((1,), (1,)), ((), ()))  # (n, V) x (d, V) -> (n, d): contract the vocabulary axes, no transposed copy
_DV = (((0,), (0,)), ((), ()))  # (n, d) x (n, V) -> (d, V): contract the token axes


def _blocks(x: jax.Array, size: int) -> jax.Array:
    """(N, ...) -> (N/size, size, ...), zero-padded: a padding row has weight 0 and adds nothing."""
    n = x.shape[0]
    count = -(-n // size)
    pad = count * size - n
    if pad:
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(count, size, *x.shape[1:])


def _block_loss(h, weight, targets, weights):
    logits = jnp.dot(h, weight, preferred_element_type=jnp.float32)  # (n, V)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return logits, lse, jnp.sum(weights * (lse - target))


def _loss_and_grads(h, weight, targets, weights, block: int, need_h: bool, need_w: bool):
    """(loss, d loss / d h or None, d loss / d weight or None): one pass over the token blocks.

    Tokens with loss go first (a stable sort on weight == 0), so the blocks holding only loss-free tokens -- an
    instruction batch's prompts, image tokens and padding, ~60 % of its positions -- come last and are skipped
    (`lax.cond`): the head is multiplied for the answer tokens only, rounded up to a block."""
    n, d = h.shape
    vocab = weight.shape[1]
    order = jnp.argsort(weights == 0, stable=True).astype(jnp.int32)
    xs = (_blocks(order, block), _blocks(targets[order], block), _blocks(weights[order], block))

    def live(dw, ib, tb, wb):
        hb = h[ib]
        logits, lse, loss = _block_loss(hb, weight, tb, wb)
        if not (need_h or need_w):
            return dw, loss, None
        # d loss / d logits = weight * (softmax - one_hot(target)), one fused elementwise pass over the block.
        p = jnp.exp(logits - lse[:, None]) * wb[:, None]
        p = jnp.where(jnp.arange(vocab)[None, :] == tb[:, None], p - wb[:, None], p).astype(h.dtype)
        dh = jax.lax.dot_general(p, weight, _HD, preferred_element_type=jnp.float32) if need_h else None
        if need_w:
            dw = dw + jax.lax.dot_general(hb, p, _DV, preferred_element_type=jnp.float32)
        return dw, loss, dh

    def dead(dw, ib, tb, wb):
        return dw, jnp.zeros((), jnp.float32), (jnp.zeros((block, d), jnp.float32) if need_h else None)

    def body(dw, x):
        dw, loss, dh = jax.lax.cond(jnp.any(x[2] > 0), live, dead, dw, *x)
        return dw, (loss, dh)

    dw0 = jnp.zeros(weight.shape, jnp.float32) if need_w else None
    dw, (losses, dh) = jax.lax.scan(body, dw0, xs)
    if dh is not None:  # back to token order; a padding row (index 0, weight 0) adds zeros
        dh = jnp.zeros((n, d), jnp.float32).at[xs[0].reshape(-1)].add(dh.reshape(-1, d))
    return jnp.sum(losses), dh, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ce_sum(h, weight, targets, weights, block):
    return _loss_and_grads(h, weight, targets, weights, block, False, False)[0]


def _ce_fwd(h, weight, targets, weights, block):
    # symbolic_zeros: each argument arrives as CustomVJPPrimal(value, perturbed).
    need_h, need_w = h.perturbed, weight.perturbed
    h, weight, targets, weights = h.value, weight.value, targets.value, weights.value
    loss, dh, dw = _loss_and_grads(h, weight, targets, weights, block, need_h, need_w)
    return loss, (None if dh is None else dh.astype(h.dtype), None if dw is None else dw.astype(weight.dtype))


def _ce_bwd(block, res, g):
    dh, dw = res
    return (None if dh is None else dh * g.astype(dh.dtype), None if dw is None else dw * g.astype(dw.dtype),
            None, None)


_ce_sum.defvjp(_ce_fwd, _ce_bwd, symbolic_zeros=True)


def chunked_cross_entropy(hidden: jax.Array, weight: jax.Array, targets: jax.Array, weights: jax.Array,
                          *, chunk: int = 1024) -> jax.Array:
    """sum_i weights_i * CE(hidden_i @ weight, targets_i), with hidden (..., d), weight (d, V), targets (...);
    `chunk` tokens per block (the loss's largest temporary is chunk x V float32)."""
    d = hidden.shape[-1]
    h = hidden.reshape(-1, d)
    t = targets.reshape(-1).astype(jnp.int32)
    w8 = weights.reshape(-1).astype(jnp.float32)
    block = int(max(1, min(chunk, h.shape[0])))
    return _ce_sum(h, weight.astype(h.dtype), t, w8, block)
