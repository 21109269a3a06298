"""CT-ViT: shapes (tiny and the paper's, abstractly), patch layout, temporal causality, position bias, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpetct.models.ctvit import CTViT, CTViTConfig, alibi_bias, alibi_slopes


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


def test_forward_matches_a_torch_restatement_of_ct_clip():
    """Whole tiny encoder in torch primitives (Conv3d groups, LayerNorm, SDPA, exact GELU) from our weights: checks
    layouts (conv taps, (in, out) kernels, patch feature order) against torch's own layer implementations."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cfg = CTViTConfig.tiny(channels=2, temporal_causal=True)
    model = CTViT(cfg, rngs=nnx.Rngs(5))
    vol = np.array(_volume(cfg, batch=1, seed=4))
    t_ = lambda a: torch.from_numpy(np.array(a[...], np.float32))  # noqa: E731
    lin = lambda x, m: F.linear(x, t_(m.kernel).T, None if m.bias is None else t_(m.bias))  # noqa: E731
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], t_(n.scale), t_(n.bias), 1e-5)  # noqa: E731
    scale_norm = lambda x, n: F.layer_norm(x, x.shape[-1:], t_(n.scale), None, 1e-5)  # noqa: E731

    def block(x, blk, bias, axis):  # x (b, t, h, w, d)
        b, t, h, w, d = x.shape
        conv_w = t_(blk.peg.conv.kernel).permute(4, 3, 0, 1, 2)  # (d, 1, 3, 3, 3)
        xc = F.pad(x.permute(0, 4, 1, 2, 3), (1, 1, 1, 1, 2, 0))
        x = F.conv3d(xc, conv_w, t_(blk.peg.conv.bias), groups=d).permute(0, 2, 3, 4, 1) + x
        seq = x.reshape(b * t, h * w, d) if axis == "spatial" else x.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        a = blk.attn
        y = scale_norm(seq, a.norm)
        heads = lambda z: z.reshape(z.shape[0], z.shape[1], cfg.heads, cfg.dim_head).transpose(1, 2)  # noqa: E731
        q, (k, v) = heads(lin(y, a.to_q)), map(heads, lin(y, a.to_kv).chunk(2, dim=-1))
        q, k = F.normalize(q, dim=-1) * t_(a.q_scale), F.normalize(k, dim=-1) * t_(a.k_scale)
        sim = q @ k.transpose(-1, -2) * cfg.attn_logit_scale + bias
        if axis == "temporal":
            sim = sim.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -torch.finfo(sim.dtype).max)
        out = (sim.softmax(-1) @ v).transpose(1, 2).reshape(seq.shape[0], seq.shape[1], -1)
        seq = lin(out, a.to_out) + seq
        val, gate = lin(ln(seq, blk.ff.norm), blk.ff.proj_in).chunk(2, dim=-1)
        seq = lin(F.gelu(gate) * val, blk.ff.proj_out) + seq
        if axis == "spatial":
            return seq.reshape(b, t, h, w, d)
        return seq.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4)

    pt, p = cfg.temporal_patch_size, cfg.patch_size
    (t, h, w) = cfg.grid
    x = torch.from_numpy(vol).reshape(1, 2, t, pt, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(1, t, h, w, -1)
    x = ln(lin(ln(x, model.patch_norm_in), model.patch_proj), model.patch_norm_out)
    spatial_bias = torch.from_numpy(np.array(model.spatial_position_bias(h, w)))
    temporal_bias = torch.from_numpy(np.asarray(alibi_bias(t, cfg.heads), np.float32))
    with torch.no_grad():
        for blk in model.spatial_blocks:
            x = block(x, blk, spatial_bias, "spatial")
        x = scale_norm(x, model.spatial_norm)
        for blk in model.temporal_blocks:
            x = block(x, blk, temporal_bias, "temporal")
        ref = scale_norm(x, model.temporal_norm).numpy()
    ours = np.asarray(nnx.jit(lambda m, v: m(v))(model, jnp.asarray(vol)))
    np.testing.assert_allclose(ours, ref, atol=2e-5)


@pytest.mark.parametrize("channels", [1, 2])
def test_gradients_are_finite_where_tokens_are_all_zero(channels):
    """Air outside the body and blank volumes give all-zero tokens; the cosine-sim attention's l2 norm must not
    turn them into NaN gradients (d|t| at t = 0 is NaN in JAX), or training CT-ViT stops on real data."""
    cfg = CTViTConfig.tiny(channels=channels)
    model = CTViT(cfg, rngs=nnx.Rngs(0))
    x = jnp.zeros((2, *cfg.input_shape)).at[0, :, :, :16].set(0.5)  # one blank volume, one half air
    target = jax.random.normal(jax.random.key(1), (2, *cfg.grid, cfg.dim))
    grads = nnx.grad(lambda m: jnp.sum(m(x) * target))(model)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_clip_l2_normalize_has_a_finite_gradient_at_zero():
    from jaxpetct.models.contrastive import l2_normalize

    g = jax.grad(lambda v: jnp.sum(l2_normalize(v) * jnp.arange(4.0)))(jnp.zeros((1, 4)))
    assert bool(jnp.all(jnp.isfinite(g)))
    v = jnp.array([[3.0, 4.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(l2_normalize(v)), [[0.6, 0.8, 0.0, 0.0]], rtol=1e-6)


def test_patch_input_norm_erases_a_hot_voxels_amplitude_and_can_be_turned_off():
    """CT-CLIP's patch LayerNorm maps one hot voxel in a cool patch to the same input whatever its SUV (why the
    tiny default turns it off); without it the encoder output depends on the amplitude."""
    def tokens(cfg, amplitude):
        model = CTViT(cfg, rngs=nnx.Rngs(0))
        vol = np.full((1, *cfg.input_shape), 0.2, np.float32)  # uniform background, one hot voxel
        vol[0, 0, 5, 9, 9] = amplitude
        return np.asarray(model(jnp.asarray(vol))), model

    with_ln = CTViTConfig.tiny(channels=1)
    a, model = tokens(with_ln, 1.0)
    b, _ = tokens(with_ln, 10.0)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert model.patch_norm_in is not None
    without = CTViTConfig.tiny(channels=1, patch_input_norm=False)
    a, model = tokens(without, 1.0)
    b, _ = tokens(without, 10.0)
    assert np.abs(a - b).max() > 1e-2
    assert model.patch_norm_in is None
    assert not any("patch_norm_in" in str(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def test_lesion_channel_appends_the_heads_logit_to_every_token():
    cfg = CTViTConfig.tiny(channels=2, lesion_channel=True)
    assert cfg.out_dim == cfg.dim + 1
    model = CTViT(cfg, rngs=nnx.Rngs(0))
    vol = jnp.asarray(np.random.default_rng(0).random((2, *cfg.input_shape), np.float32))
    out = np.asarray(model(vol))
    assert out.shape == (2, *cfg.grid, cfg.dim + 1)
    kernel = np.asarray(model.lesion_head.kernel[...])
    bias = np.asarray(model.lesion_head.bias[...])
    np.testing.assert_allclose(out[..., -1], out[..., :-1] @ kernel[:, 0] + bias[0], atol=1e-5)
    plain = CTViT(CTViTConfig.tiny(channels=2), rngs=nnx.Rngs(0))
    assert plain.lesion_head is None and np.asarray(plain(vol)).shape[-1] == cfg.dim


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_peg_shifted_sum_is_the_depthwise_conv_it_replaces(causal, dtype):
    """PEG runs its depthwise 3x3x3 conv as 27 shifted products (XLA's CPU grouped conv is ~50x slower); the
    weights are nnx.Conv's and the output is what nnx.Conv computes from them."""
    from jaxpetct.models.ctvit import PEG

    cfg = CTViTConfig.tiny(channels=2, peg_causal=causal, dtype=dtype)
    peg = PEG(cfg, nnx.Rngs(3))
    peg.conv.bias[...] = jax.random.normal(jax.random.key(1), peg.conv.bias[...].shape)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4, cfg.dim)).astype(cfg.compute_dtype)
    t_pad = (2, 0) if causal else (1, 1)
    want = peg.conv(jnp.pad(x, ((0, 0), t_pad, (1, 1), (1, 1), (0, 0))))
    got = peg(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = 1e-5 if dtype == "float32" else 5e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol, rtol=tol)
