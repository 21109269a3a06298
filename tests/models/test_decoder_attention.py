"""Attention masks and kernels: the position-based mask against a naive softmax, and the unmasked causal fast
path (what cuDNN runs on GPU) against the masked one, sliding window included."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpetct.models.attention import attend, visibility_mask
from jaxpetct.models.decoder_config import ConfigError, tiny


def _naive(q, k, v, mask):
    """softmax(q k^T / sqrt(d)) v with GQA by repeating kv heads; masked keys get -1e30."""
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    s = np.where(mask, s, -1e30)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v)


@pytest.mark.parametrize("window", [None, 3])
def test_masked_and_fast_causal_paths_agree_with_naive_attention(window):
    rng = np.random.RandomState(0)
    b, t, h, kv, d = 2, 9, 4, 2, 8
    q = rng.randn(b, t, h, d).astype(np.float32)
    k = rng.randn(b, t, kv, d).astype(np.float32)
    v = rng.randn(b, t, kv, d).astype(np.float32)
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    kv_pos = pos.copy()
    kv_pos[1, :2] = -1  # row 1: two padding keys
    mask = np.asarray(visibility_mask(jnp.asarray(pos), jnp.asarray(kv_pos), window))
    expect = np.tril(np.ones((t, t), bool))
    if window:
        expect &= ~np.tril(np.ones((t, t), bool), -window)
    np.testing.assert_array_equal(mask[0, 0], expect)
    assert not mask[1, 0, :, :2].any()
    ref = _naive(q, k, v, mask)
    got = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), implementation="xla")
    real_rows = np.ones((b, t), bool)
    real_rows[1, :2] = False  # padding queries see nothing real: their output is irrelevant
    np.testing.assert_allclose(np.asarray(got)[real_rows], ref[real_rows], atol=1e-5)
    fast = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), None, implementation="xla", sliding_window=window)
    np.testing.assert_allclose(np.asarray(fast)[0], ref[0], atol=1e-5)


def test_bidirectional_prefix_sees_forward_but_answer_stays_causal():
    pos = jnp.arange(6, dtype=jnp.int32)[None]
    prefix = jnp.asarray([[True, True, True, False, False, False]])
    mask = np.asarray(visibility_mask(pos, pos, None, prefix, prefix))[0, 0]
    assert mask[0, 2] and mask[1, 2]  # prefix tokens see later prefix tokens
    assert not mask[2, 3] and not mask[3, 4]  # nobody sees the answer ahead of time
    assert mask[5, :6].all()


def test_config_validation():
    with pytest.raises(ConfigError, match="multiple"):
        tiny(num_heads=3, num_kv_heads=2)
    with pytest.raises(ConfigError, match="attention_impl"):
        tiny(attention_impl="flash")
    with pytest.raises(ConfigError, match="dtype"):
        tiny(dtype="float33")
    cfg = tiny(rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(TypeError, match="read-only"):
        cfg.rope_scaling["factor"] = 4.0
    assert {cfg: 1}[tiny(rope_scaling={"rope_type": "linear", "factor": 2.0})] == 1  # hashable, equal by value
