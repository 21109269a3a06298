"""Projector: CT-ViT grid tokens (B, T, h, w, dim) -> visual tokens (B, T, d_model) for the decoder.

The paper feeds each slab's whole grid, flattened (24 * 24 * 512 = 294,912 features), through one Linear into the
LLM: for Mistral-7B that single matrix is 294,912 x 4,096 = 1.2 B parameters, more than a sixth of the LLM, and it
is what stages 2-3 train. ``pool`` trades that for a k x k spatial average first (k = 4 on 24 x 24 gives 6 x 6 x 512 =
18,432 features, a 64 x smaller matrix; k = h gives the slab's mean token only). pool=1 is the paper's projector.
``pool_op='max'`` takes the k x k maximum instead: a focal finding (a lesion fills one token of 64) survives a max
but is diluted k^2-fold by a mean, so small encoders whose features mark lesions per token keep them visible.

``features='lesion'`` reads only the encoder's lesion channel (CTViTConfig.lesion_channel): the tiny default's
visual tokens are its detector's lesion map. Measured on 1,086 synthetic train regions, a small decoder given all
33 features per token memorises studies by their anatomy and ignores the lesion logit among them (decision-token
AUROC 0.53 for chest); given the lesion channel alone it reads it (0.84). The paper reads all features.

``kind='linear'`` is the paper's; ``kind='mlp'`` is LLaVA-1.5's ``mlp2x_gelu`` (Linear -> exact GELU -> Linear,
hidden size = output size).

Memory of the paper's 1.2 B-parameter ``fc1`` (kept to about the weight itself, so a paper-shape step fits a 24 GB
host, tests/train/test_paper_shapes.py):
  * its kernel is drawn in row blocks of <= 16 M elements (``kernel_init``): one lecun_normal draw of the whole
    matrix holds ~16 bytes of random-number temporaries per element (19 GB for 294,912 x 4,096 in bf16);
  * the matmul accumulates in float32 into a float32 output (``wide_matmul``): a bf16-output matmul makes XLA:CPU
    upcast the whole kernel to a float32 copy (4.8 GB); the float32 output is 14 rows, and is rounded once;
  * the weight gradient is computed in row blocks of <= 16 M float32 elements when the kernel is larger than that
    (``wide_matmul``'s VJP): one x^T @ dy of that size is a 4.8 GB float32 temporary on XLA:CPU before its cast to
    bf16. On a mesh that splits the kernel's rows the blocks run one after another on every device (the gradient
    is then sliced to its shards): correct, and small next to the decoder's work.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxpetct.parallel.rules import param_axes

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    grid: tuple[int, int]  # (h, w) of the encoder's per-slab grid
    vision_dim: int
    d_model: int  # decoder hidden size
    kind: str = "linear"  # 'linear' (paper) | 'mlp' (LLaVA-1.5 mlp2x_gelu)
    pool: int = 1  # k x k spatial pooling before flattening; 1 = paper (no pooling)
    pool_op: str = "mean"  # 'mean' | 'max' over each k x k block
    features: str = "all"  # 'all' encoder features | 'lesion': only the last one, the encoder's lesion logit
    dtype: Any = "float32"  # compute dtype; a name or a JAX dtype
    param_dtype: Any = "float32"

    def __post_init__(self):
        if self.kind not in ("linear", "mlp"):
            raise ValueError(f"projector kind must be 'linear' or 'mlp', got {self.kind!r}")
        if self.features not in ("all", "lesion"):
            raise ValueError(f"projector features must be 'all' or 'lesion', got {self.features!r}")
        if self.pool_op not in ("mean", "max"):
            raise ValueError(f"projector pool_op must be 'mean' or 'max', got {self.pool_op!r}")
        h, w = self.grid
        if self.pool < 1 or h % self.pool or w % self.pool:
            raise ValueError(f"projector pool={self.pool} must divide the encoder grid {self.grid}")

    @property
    def in_features(self) -> int:
        h, w = self.grid
        return (h // self.pool) * (w // self.pool) * self.read_dim

    @property
    def read_dim(self) -> int:
        return 1 if self.features == "lesion" else self.vision_dim

    @classmethod
    def for_encoder(cls, encoder_cfg, d_model: int, **kwargs) -> "ProjectorConfig":
        """Projector matching a CTViTConfig (takes its grid and dim)."""
        _, h, w = encoder_cfg.grid
        if kwargs.get("features") == "lesion" and not getattr(encoder_cfg, "lesion_channel", False):
            raise ValueError("projector features='lesion' needs an encoder with lesion_channel=True (CT-ViT's; "
                             "Cosmos latents have none: use features='all')")
        return cls(grid=(h, w), vision_dim=encoder_cfg.out_dim, d_model=d_model, **kwargs)


# Elements per row block when drawing a large kernel, and float32 elements per row block of a large kernel's
# gradient (64 MB each). Kernels at or below the size keep nnx.Linear's single draw and a single gradient matmul.
INIT_BLOCK = 1 << 24
GRAD_BLOCK = 1 << 24


def rows_per_block(rows: int, row_size: int, block: int) -> int:
    """The largest divisor of `rows` whose rows hold at most `block` elements (1 when one row is already larger)."""
    target = max(1, min(rows, block // max(1, row_size)))
    return next(d for d in range(target, 0, -1) if rows % d == 0)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _blocked_lecun_normal(key: Array, shape: tuple, dtype) -> Array:
    rows = shape[0]
    per = rows_per_block(rows, math.prod(shape[1:]), INIT_BLOCK)
    std = math.sqrt(1.0 / rows) / 0.87962566103423978  # jax.nn.initializers.lecun_normal, fan_in = rows

    def draw(k):
        return (jax.random.truncated_normal(k, -2.0, 2.0, (per, *shape[1:]), jnp.float32) * std).astype(dtype)

    return jax.lax.map(draw, jax.random.split(key, rows // per)).reshape(shape)


def kernel_init(key: Array, shape, dtype=jnp.float32) -> Array:
    """nnx.Linear's default (lecun_normal: truncated normal, variance 1 / fan_in) with bounded temporaries: a kernel
    of more than INIT_BLOCK elements is drawn in row blocks from split keys (same distribution, other values)."""
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) <= INIT_BLOCK or len(shape) != 2:
        return nnx.initializers.lecun_normal()(key, shape, dtype)
    return _blocked_lecun_normal(key, shape, jnp.dtype(dtype))


def _dot(a: Array, b: Array, contract: tuple[int, int]) -> Array:
    return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                               preferred_element_type=jnp.float32)


@jax.custom_vjp
def wide_matmul(x: Array, kernel: Array) -> Array:
    """x (..., K) @ kernel (K, N) -> (..., N) float32, with the float32 accumulation asked for explicitly (so no
    backend upcasts the kernel); x and kernel in one dtype. The VJP returns the gradients in the inputs' dtypes and
    forms the kernel's in row blocks when it is large (module docstring)."""
    return _dot(x, kernel, (x.ndim - 1, 0))


def _wide_matmul_fwd(x, kernel):
    return wide_matmul(x, kernel), (x, kernel)


def _wide_matmul_bwd(res, g):
    x, kernel = res
    g = g.astype(kernel.dtype)  # the cotangent an output in the compute dtype would have carried
    dx = _dot(g, kernel, (g.ndim - 1, 1)).astype(x.dtype)
    k, n = kernel.shape
    x2, g2 = x.reshape(-1, k), g.reshape(-1, n)
    if k * n <= GRAD_BLOCK:
        return dx, _dot(x2, g2, (0, 0)).astype(kernel.dtype)
    per = rows_per_block(k, n, GRAD_BLOCK)
    blocks = x2.reshape(x2.shape[0], k // per, per).transpose(1, 0, 2)  # (blocks, M, per)
    dk = jax.lax.map(lambda xb: _dot(xb, g2, (0, 0)).astype(kernel.dtype), blocks)
    return dx, dk.reshape(k, n)


wide_matmul.defvjp(_wide_matmul_fwd, _wide_matmul_bwd)


def pool_grid(tokens: Array, pool: int, op: str = "mean") -> Array:
    """(B, T, h, w, d) -> (B, T, h/k, w/k, d) by non-overlapping k x k means or maxima (float32 accumulation)."""
    if pool == 1:
        return tokens
    b, t, h, w, d = tokens.shape
    x = tokens.astype(jnp.float32).reshape(b, t, h // pool, pool, w // pool, pool, d)
    x = x.max(axis=(3, 5)) if op == "max" else x.mean(axis=(3, 5))
    return x.astype(tokens.dtype)


class Projector(nnx.Module):
    def __init__(self, cfg: ProjectorConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        common = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.fc1 = nnx.Linear(cfg.in_features, cfg.d_model, kernel_init=kernel_init,
                              kernel_metadata=param_axes("vis_proj", "embed"), bias_metadata=param_axes("embed"), **common)
        self.fc2 = (nnx.Linear(cfg.d_model, cfg.d_model, kernel_metadata=param_axes("mlp", "embed"),
                               bias_metadata=param_axes("embed"), **common) if cfg.kind == "mlp" else None)

    def __call__(self, tokens: Array) -> Array:
        cfg = self.cfg
        if tokens.ndim != 5 or tuple(tokens.shape[2:]) != (*cfg.grid, cfg.vision_dim):
            h, w = cfg.grid
            raise ValueError(f"projector expects encoder tokens (B, T, {h}, {w}, {cfg.vision_dim}), "
                             f"got {tuple(tokens.shape)}")
        if cfg.features == "lesion":
            tokens = tokens[..., -1:]
        x = pool_grid(tokens, cfg.pool, cfg.pool_op)
        b, t = x.shape[:2]
        dtype = jnp.dtype(cfg.dtype)
        x = wide_matmul(x.reshape(b, t, cfg.in_features).astype(dtype), self.fc1.kernel[...].astype(dtype))
        x = (x + self.fc1.bias[...].astype(jnp.float32)).astype(dtype)  # nnx.Linear's result, rounded once
        if self.fc2 is not None:
            x = self.fc2(jax.nn.gelu(x, approximate=False))
        return x
