"""CT-ViT: shapes (tiny and the paper's, abstractly), patch layout, temporal causality, position bias, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpetct.models.ctvit import CTViT, CTViTConfig, alibi_slopes


def _volume(cfg, batch=2, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, *cfg.input_shape), jnp.float32)


def test_paper_config_shapes_without_allocating():
    cfg = CTViTConfig.paper(channels=2, dtype="bfloat16")
    assert cfg.grid == (14, 24, 24) and cfg.patch_features == 2 * 10 * 20 * 20

    def build_and_run(volume):
        return CTViT(cfg, rngs=nnx.Rngs(0))(volume)

    out = jax.eval_shape(build_and_run, jax.ShapeDtypeStruct((2, 2, 140, 480, 480), jnp.float32))
    assert out.shape == (2, 14, 24, 24, 512)  # 14 visual tokens, each a 24 x 24 x 512 grid
    assert out.dtype == jnp.bfloat16
    model = nnx.eval_shape(lambda: CTViT(cfg, rngs=nnx.Rngs(0)))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert 24e6 < n_params < 27e6, n_params
    # every parameter carries logical axes, one name per dimension
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.shape), (path, names, var.shape)
        assert var.dtype == jnp.float32  # weights stay float32 under bf16 compute


def test_patchify_layout_matches_direct_indexing():
    cfg = CTViTConfig.tiny(channels=2)
    model = CTViT(cfg, rngs=nnx.Rngs(0))
    vol = np.arange(np.prod(cfg.input_shape), dtype=np.float32).reshape(1, *cfg.input_shape)
    patches = np.asarray(model.patchify(jnp.asarray(vol)))
    pt, p = cfg.temporal_patch_size, cfg.patch_size
    for (t, y, x) in [(0, 0, 0), (1, 2, 3), (3, 3, 1)]:
        expect = vol[0, :, t * pt:(t + 1) * pt, y * p:(y + 1) * p, x * p:(x + 1) * p].reshape(-1)  # (c, pt, p1, p2)
        np.testing.assert_array_equal(patches[0, t, y, x], expect)


def test_wrong_input_shape_is_a_clear_error():
    cfg = CTViTConfig.tiny()
    model = CTViT(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(B, 1, 16, 32, 32\).*Resize"):
        model(jnp.zeros((1, 1, 16, 32, 24)))
    with pytest.raises(ValueError, match="1 \\(PET or CT\\) or 2"):
        CTViTConfig.tiny(channels=3)
    with pytest.raises(ValueError, match="multiple of its patch size"):
        CTViTConfig.tiny(depth=18)


@pytest.mark.parametrize("causal", [True, False])
def test_temporal_causality_flag(causal):
    cfg = CTViTConfig.tiny(temporal_causal=causal, spatial_depth=2, temporal_depth=2)
    model = CTViT(cfg, rngs=nnx.Rngs(0))
    run = nnx.jit(lambda m, v: m(v))
    vol = _volume(cfg, batch=1)
    cut = 2 * cfg.temporal_patch_size  # change slabs 2 and 3 only
    changed = vol.at[:, :, cut:].add(jax.random.normal(jax.random.key(9), vol[:, :, cut:].shape))
    a, b = np.asarray(run(model, vol)), np.asarray(run(model, changed))
    assert a.shape == (1, 4, 4, 4, 32) and np.isfinite(a).all()
    early = np.abs(a[:, :2] - b[:, :2]).max()
    late = np.abs(a[:, 2:] - b[:, 2:]).max()
    assert late > 1e-2
    if causal:
        assert early == 0.0, early  # later slabs never reach earlier tokens
    else:
        assert early > 1e-3, early  # bidirectional temporal attention (CT-CLIP) lets them


def test_position_bias_table_gather_equals_every_pair_evaluation():
    cfg = CTViTConfig.tiny()
    model = CTViT(cfg, rngs=nnx.Rngs(0))
    cpb = model.spatial_position_bias
    h, w = 3, 5
    bias = np.asarray(cpb(h, w))
    # CT-CLIP's way: MLP on every (i, j) pair of the h x w grid, signed-log distances
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    rel = grid[:, None] - grid[None, :]
    x = np.sign(rel) * np.log1p(np.abs(rel))
    for lin in cpb.hidden:
        x = x @ np.asarray(lin.kernel[...]) + np.asarray(lin.bias[...])
        x = np.where(x > 0, x, 0.1 * x)
    x = x @ np.asarray(cpb.out.kernel[...]) + np.asarray(cpb.out.bias[...])
    np.testing.assert_allclose(bias, np.transpose(x, (2, 0, 1)), atol=1e-5)


def test_alibi_slopes_follow_press_et_al():
    np.testing.assert_allclose(alibi_slopes(8), [2 ** -(i + 1) for i in range(8)])
    assert len(alibi_slopes(6)) == 6 and np.all(np.diff(alibi_slopes(4)) < 0)


def test_gradient_reaches_every_parameter_and_remat_is_exact():
    cfg = CTViTConfig.tiny(channels=2, temporal_causal=True)
    vol = _volume(cfg)
    plain = CTViT(cfg, rngs=nnx.Rngs(3))
    remat = CTViT(CTViTConfig.tiny(channels=2, temporal_causal=True, remat=True), rngs=nnx.Rngs(3))

    @nnx.jit
    def loss_and_grad(model, v):
        return nnx.value_and_grad(lambda m: jnp.mean(jnp.square(m(v))))(model)

    l1, g1 = loss_and_grad(plain, vol)
    l2, g2 = loss_and_grad(remat, vol)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
    for (path, a), (_, b) in zip(nnx.to_flat_state(g1), nnx.to_flat_state(g2)):
        a, b = np.asarray(a[...]), np.asarray(b[...])
        assert np.isfinite(a).all(), path
        assert np.abs(a).max() > 0, f"no gradient reaches {path}"
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7, err_msg=str(path))
