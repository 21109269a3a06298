"""The paper projector (294,912 x 4,096 = 1.21 B weights) within the memory of one CPU host.

Regression tests for what tests/train/test_paper_shapes.py found when it first ran the paper's shapes:
  * `model.projector.param_dtype` was ignored by the factory (the projector was float32 whatever the config said);
  * drawing the kernel with one lecun_normal call held ~8 bytes of random-number temporaries per output byte (19 GB
    for the bf16 kernel; the eager build was killed by the OOM killer on a 24 GB machine);
  * the projector's bf16 matmul made XLA:CPU upcast the whole kernel to float32 in the forward pass (4.8 GB), and
    its weight gradient (x^T @ dy, one matmul) was a 4.8 GB float32 temporary.
The paper-size checks compile without running (memory_analysis of the compiled program), so they allocate nothing.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpetct.models import projector as projector_lib
from jaxpetct.models.ctvit import CTViTConfig
from jaxpetct.models.factory import build_vlm
from jaxpetct.models.projector import Projector, ProjectorConfig, kernel_init, rows_per_block, wide_matmul

PAPER_KERNEL = (24 * 24 * 512, 4096)
KERNEL_BYTES_BF16 = PAPER_KERNEL[0] * PAPER_KERNEL[1] * 2


def temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_factory_passes_the_projector_param_dtype():
    cfg = {"encoder": {"preset": "tiny", "channels": 2}, "decoder": {"preset": "tiny"},
           "projector": {"kind": "linear", "pool": 4, "dtype": "bfloat16", "param_dtype": "bfloat16"}, "lora": {}}
    model = build_vlm(cfg, seed=0, with_lora=False)
    assert model.projector.fc1.kernel[...].dtype == jnp.bfloat16
    assert model.projector.fc1.bias[...].dtype == jnp.bfloat16
    del cfg["projector"]["param_dtype"]
    assert build_vlm(cfg, seed=0, with_lora=False).projector.fc1.kernel[...].dtype == jnp.float32  # the default


def test_rows_per_block_divides_and_bounds():
    assert rows_per_block(294_912, 4096, 1 << 24) == 4096
    assert rows_per_block(32_000, 4096, 1 << 24) == 4000  # the largest divisor under the bound
    assert rows_per_block(7, 4096, 1 << 24) == 7
    assert rows_per_block(10, 1 << 25, 1 << 24) == 1  # one row already over the bound


def test_small_kernels_keep_nnx_linear_default_init():
    key = jax.random.key(3)
    np.testing.assert_array_equal(np.asarray(kernel_init(key, (64, 32), jnp.float32)),
                                  np.asarray(nnx.initializers.lecun_normal()(key, (64, 32), jnp.float32)))


def test_blocked_init_has_lecun_normal_statistics(monkeypatch):
    monkeypatch.setattr(projector_lib, "INIT_BLOCK", 4096)  # force blocks on a small kernel
    rows, cols = 8192, 64
    w = np.asarray(kernel_init(jax.random.key(0), (rows, cols), jnp.float32))
    assert w.shape == (rows, cols) and rows_per_block(rows, cols, 4096) == 64
    std = np.sqrt(1.0 / rows) / 0.87962566103423978  # truncated at +-2 std of the underlying normal
    assert np.abs(w).max() <= 2 * std * (1 + 1e-6)
    np.testing.assert_allclose(w.std(), np.sqrt(1.0 / rows), rtol=0.02)  # variance 1 / fan_in, as lecun_normal
    blocks = w.reshape(rows // 64, 64, cols)
    assert not np.array_equal(blocks[0], blocks[1])  # every block has its own key


def test_paper_kernel_init_temporaries_are_bounded():
    """A single lecun_normal draw of the bf16 paper kernel needs ~19 GB of temporaries; blocks need ~0.4 GB."""
    temp = temp_bytes(lambda k: kernel_init(k, PAPER_KERNEL, jnp.bfloat16), jax.random.key(0))
    assert temp < 0.25 * KERNEL_BYTES_BF16, temp


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_wide_matmul_matches_autodiff_with_and_without_blocks(dtype, monkeypatch):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, 256)), dtype)
    k = jnp.asarray(rng.normal(size=(256, 16)) / 16, dtype)
    c = jnp.asarray(rng.normal(size=(2, 3, 16)), jnp.float32)

    def ref(x, k):
        y = jax.lax.dot_general(x.astype(jnp.float32), k.astype(jnp.float32), (((2,), (0,)), ((), ())))
        return jnp.sum(y * c)

    want = jax.grad(ref, argnums=(0, 1))(x, k)
    np.testing.assert_allclose(np.asarray(wide_matmul(x, k)), np.asarray(
        jnp.einsum("btk,kn->btn", x.astype(jnp.float32), k.astype(jnp.float32))), rtol=1e-5, atol=1e-5)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
    for block in (1 << 24, 256):  # one matmul; 16 row blocks of 16 (256 / 16 rows)
        monkeypatch.setattr(projector_lib, "GRAD_BLOCK", block)
        got = jax.jit(jax.grad(lambda x, k: jnp.sum(wide_matmul(x, k) * c), argnums=(0, 1)))(x, k)
        assert got[0].dtype == dtype and got[1].dtype == dtype
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), **tol)


def test_paper_projector_forward_and_kernel_gradient_keep_no_float32_kernel():
    """Before: forward 4.8 GB (the kernel upcast to float32), gradient 7.2 GB (x^T @ dy in float32 at once)."""
    enc = CTViTConfig.paper()
    cfg = ProjectorConfig.for_encoder(enc, 4096, dtype="bfloat16", param_dtype="bfloat16")
    model = nnx.eval_shape(lambda: Projector(cfg, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert params["fc1"]["kernel"].get_value().shape == PAPER_KERNEL
    tokens = jax.ShapeDtypeStruct((1, *enc.grid, enc.dim), jnp.bfloat16)

    def forward(p, t):
        return nnx.merge(graphdef, p, rest)(t)

    def kernel_grad(p, t):  # the align stage: the encoder is frozen, so only the projector's own gradient
        return jax.grad(lambda p: jnp.sum(forward(p, t).astype(jnp.float32)))(p)

    assert temp_bytes(forward, params, tokens) < 0.1 * KERNEL_BYTES_BF16
    assert temp_bytes(kernel_grad, params, tokens) < 0.1 * KERNEL_BYTES_BF16


def test_blocked_kernel_gradient_on_a_sharded_mesh_equals_one_device(monkeypatch):
    """The kernel's rows are split over fsdp x tensor ('vis_proj'); the row-block loop must give the same gradient."""
    from jaxpetct.parallel.mesh import make_mesh
    from jaxpetct.parallel.rules import init_sharded

    assert len(jax.devices()) >= 8, "tests/conftest.py asks for 8 virtual CPU devices"
    monkeypatch.setattr(projector_lib, "GRAD_BLOCK", 8 * 24)  # 16 row blocks of 8 rows (kernel 128 x 24)
    cfg = ProjectorConfig(grid=(4, 4), vision_dim=8, d_model=24)
    tokens = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3, 4, 4, 8)), jnp.float32)

    def grads(model):
        graphdef, params = nnx.split(model, nnx.Param)
        loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(tokens)))  # noqa: E731
        return jax.jit(jax.grad(loss))(params)

    single = grads(Projector(cfg, rngs=nnx.Rngs(0)))
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded_model = init_sharded(lambda: Projector(cfg, rngs=nnx.Rngs(0)), mesh)
    assert sharded_model.fc1.kernel[...].addressable_shards[0].data.shape == (128 // 4, 24)
    with jax.set_mesh(mesh):
        sharded = grads(sharded_model)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
