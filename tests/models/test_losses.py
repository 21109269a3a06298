"""The blocked next-token cross entropy equals the full-logits one (value and gradients, each alone or both)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxpetct.models.losses import chunked_cross_entropy


@pytest.mark.parametrize("vocab,chunk", [(1000, 7), (257, 41), (64, 4096)])  # chunk: tokens per block
def test_chunked_ce_matches_torch_cross_entropy(vocab, chunk):
    rng = np.random.default_rng(vocab)
    n, d = 41, 16
    h = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, vocab)).astype(np.float32)
    t = rng.integers(0, vocab, n)
    t[:5] = t[0]  # repeated targets exercise the scatter-add of the one-hot gradient
    m = (rng.random(n) > 0.3).astype(np.float32)

    th, tw = torch.tensor(h, requires_grad=True), torch.tensor(w, requires_grad=True)
    ref = (torch.nn.functional.cross_entropy(th @ tw, torch.tensor(t), reduction="none") * torch.tensor(m)).sum()
    ref.backward()

    f = lambda h, w: chunked_cross_entropy(h, w, jnp.asarray(t), jnp.asarray(m), chunk=chunk)  # noqa: E731
    value, (gh, gw) = jax.value_and_grad(f, (0, 1))(jnp.asarray(h), jnp.asarray(w))
    assert abs(float(value) - ref.item()) <= 1e-4 * max(1.0, abs(ref.item()))
    np.testing.assert_allclose(np.asarray(gh), th.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), tw.grad.numpy(), atol=1e-5)
    # A frozen head (align, LoRA) or frozen hidden states: the one gradient asked for is the same.
    only_h = jax.grad(f, 0)(jnp.asarray(h), jnp.asarray(w))
    only_w = jax.grad(lambda w, h: 2.0 * f(h, w))(jnp.asarray(w), jnp.asarray(h))  # a cotangent other than 1
    np.testing.assert_allclose(np.asarray(only_h), th.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(only_w), 2.0 * tw.grad.numpy(), atol=2e-5)


def test_frozen_head_skips_the_head_gradient():
    """symbolic_zeros: with the head frozen the loss multiplies the head twice (logits, hidden gradient), not 3x."""
    h, w = jnp.ones((41, 16)), jnp.ones((16, 300))
    t, m = jnp.zeros(41, jnp.int32), jnp.ones(41)
    f = lambda h, w: chunked_cross_entropy(h, w, t, m, chunk=8)  # noqa: E731
    dots = {a: str(jax.make_jaxpr(jax.grad(f, a))(h, w)).count("dot_general") for a in (0, 1, (0, 1))}
    assert dots == {0: 2, 1: 2, (0, 1): 3}


def test_vlm_loss_chunked_equals_full_logits():
    from jaxpetct.models.factory import build_vlm
    from flax import nnx

    model = build_vlm({"encoder": {"preset": "tiny", "channels": 2}, "decoder": {"preset": "tiny", "vocab_size": 1000},
                       "lora": {"rank": 4}}, seed=0)
    t = model.num_visual_tokens
    rng = np.random.default_rng(0)
    b, length = 2, 40
    im = np.zeros((b, length), bool)
    im[:, 1:1 + t] = True
    lm = np.zeros((b, length), np.float32)
    lm[0, 20:35] = 1
    lm[1, 25:] = 1
    batch = {"images": rng.normal(size=(b, 2, 16, 32, 32)).astype(np.float32),
             "input_ids": rng.integers(3, 1000, (b, length)).astype(np.int32),
             "positions": np.tile(np.arange(length, dtype=np.int32), (b, 1)),
             "attention_mask": np.ones((b, length), bool), "image_mask": im, "loss_mask": lm}
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)

    def loss(state, chunk):
        m = nnx.merge(graphdef, state, rest)
        m.loss_chunk = chunk
        m.eval()  # no LoRA dropout: the two losses must see the same network
        mean, count = m.loss(batch)
        return mean, count

    (full, n_full), g_full = jax.value_and_grad(loss, has_aux=True)(state, 0)
    (chunked, n_chunk), g_chunk = jax.value_and_grad(loss, has_aux=True)(state, 300)
    assert float(n_full) == float(n_chunk) == lm[:, 1:].sum()
    assert abs(float(full) - float(chunked)) < 1e-5
    diffs = jax.tree.leaves(jax.tree.map(lambda a, c: float(jnp.max(jnp.abs(a - c))), g_full, g_chunk))
    assert max(diffs) < 1e-5
