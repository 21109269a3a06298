"""Projector: linear and LLaVA mlp2x_gelu against torch, spatial pooling, paper sizes (abstractly)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpetct.models.ctvit import CTViTConfig
from jaxpetct.models.projector import Projector, ProjectorConfig, pool_grid

torch = pytest.importorskip("torch")


def _linear_to_torch(lin):
    t = torch.nn.Linear(lin.kernel.shape[0], lin.kernel.shape[1])
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(np.asarray(lin.kernel[...]).T.copy()))
        t.bias.copy_(torch.from_numpy(np.array(lin.bias[...])))
    return t


@pytest.mark.parametrize("kind,pool", [("linear", 1), ("mlp", 2)])
def test_projector_matches_torch(kind, pool):
    cfg = ProjectorConfig(grid=(4, 4), vision_dim=8, d_model=24, kind=kind, pool=pool)
    proj = Projector(cfg, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4, 8)).astype(np.float32)
    out = np.asarray(proj(jnp.asarray(x)))
    assert out.shape == (2, 3, 24)
    tx = torch.from_numpy(x).permute(0, 1, 4, 2, 3).reshape(6, 8, 4, 4)  # channels-first for torch pooling
    tx = torch.nn.functional.avg_pool2d(tx, pool).permute(0, 2, 3, 1).reshape(2, 3, -1)  # (h', w', d) flatten order
    layers = [_linear_to_torch(proj.fc1)]
    if kind == "mlp":
        layers += [torch.nn.GELU(), _linear_to_torch(proj.fc2)]
    with torch.no_grad():
        ref = torch.nn.Sequential(*layers)(tx).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_pool_grid_means_blocks():
    x = jnp.arange(16.0).reshape(1, 1, 4, 4, 1)
    np.testing.assert_allclose(np.asarray(pool_grid(x, 2))[0, 0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_allclose(np.asarray(pool_grid(x, 2, "max"))[0, 0, :, :, 0], [[5, 7], [13, 15]])


def test_max_pool_keeps_a_focal_token_a_mean_dilutes():
    x = jnp.zeros((1, 1, 8, 8, 1)).at[0, 0, 3, 5, 0].set(1.0)
    assert float(pool_grid(x, 8, "max").max()) == 1.0
    assert float(pool_grid(x, 8, "mean").max()) == 1.0 / 64
    with pytest.raises(ValueError, match="pool_op"):
        ProjectorConfig(grid=(8, 8), vision_dim=1, d_model=4, pool=8, pool_op="median")


def test_paper_projector_sizes_without_allocating():
    enc = CTViTConfig.paper()
    paper = ProjectorConfig.for_encoder(enc, d_model=4096)  # Mistral-7B hidden size
    assert paper.in_features == 24 * 24 * 512 == 294_912
    model = nnx.eval_shape(lambda: Projector(paper, rngs=nnx.Rngs(0)))
    assert model.fc1.kernel.shape == (294_912, 4096)  # 1.2 B parameters: why pool exists
    pooled = ProjectorConfig.for_encoder(enc, d_model=4096, pool=4)
    assert pooled.in_features == 6 * 6 * 512
    out = jax.eval_shape(lambda x: Projector(pooled, rngs=nnx.Rngs(0))(x),
                         jax.ShapeDtypeStruct((2, 14, 24, 24, 512), jnp.float32))
    assert out.shape == (2, 14, 4096)


def test_projector_errors():
    with pytest.raises(ValueError, match="must divide"):
        ProjectorConfig(grid=(24, 24), vision_dim=8, d_model=8, pool=5)
    with pytest.raises(ValueError, match="'linear' or 'mlp'"):
        ProjectorConfig(grid=(4, 4), vision_dim=8, d_model=8, kind="conv")
    proj = Projector(ProjectorConfig(grid=(4, 4), vision_dim=8, d_model=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(B, T, 4, 4, 8\)"):
        proj(jnp.zeros((1, 2, 4, 4, 16)))


def test_lesion_features_read_only_the_encoders_lesion_channel():
    enc = CTViTConfig.tiny(channels=2, lesion_channel=True)
    cfg = ProjectorConfig.for_encoder(enc, 16, pool=4, pool_op="max", features="lesion")
    assert cfg.vision_dim == enc.dim + 1 and cfg.in_features == 1
    proj = Projector(cfg, rngs=nnx.Rngs(0))
    t, h, w = enc.grid
    x = np.random.default_rng(0).normal(size=(2, t, h, w, enc.dim + 1)).astype(np.float32)
    y = x.copy()
    y[..., :-1] += 5.0  # the other features do not matter
    np.testing.assert_array_equal(np.asarray(proj(jnp.asarray(x))), np.asarray(proj(jnp.asarray(y))))
    want = x[..., -1].max(axis=(2, 3))[..., None] @ np.asarray(proj.fc1.kernel[...]) + np.asarray(proj.fc1.bias[...])
    np.testing.assert_allclose(np.asarray(proj(jnp.asarray(x))), want, atol=1e-5)
    with pytest.raises(ValueError, match="lesion_channel"):
        ProjectorConfig.for_encoder(CTViTConfig.tiny(channels=2), 16, features="lesion")
