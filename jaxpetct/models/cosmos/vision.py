"""Cosmos as the VLM's vision encoder: PET/CT volumes in, the latent grid out, with the interface CT-ViT gives.

The VLM, the projector and the data pipeline ask an encoder for `cfg.input_shape` (C, D, H, W), `cfg.grid`
(T, h, w: T visual tokens, each carrying an h x w grid), `cfg.out_dim` (features per grid cell) and
`encoder(images)` with images (B, C, D, H, W) float32 in [0, 1] (data.image.out_range 'unit'), returning
(B, T, h, w, out_dim). `CosmosVisionEncoder` answers them for the tokenizer:

  * channels become the tokenizer's 3: (pet, ct) -> (pet, ct, pet) in [-1, 1] (`petct_to_rgb`, whose docstring
    says why), a single channel is repeated; so 2 channels must be data.image.channels ('pet', 'ct') in that
    order;
  * slices become frames, padded at the end to `causal_frames(D)` (1 + 8k) by repeating the last slice. The causal
    tokenizer maps exactly 1 + 8k frames to 1 + k latent frames and back; a count in between leaves a partial last
    group whose reconstruction is not defined frame for frame. The repeated slice is what a slightly longer scan
    would show: zeros would be a black frame, -1 in every channel, a hard edge the last latent frame would spend
    its capacity on;
  * the latent (B, T', H/8, W/8, 16) is the grid: one visual token per latent frame, as CT-ViT gives one per slab.

Token count of the paper's Cosmos rows (120 x 256 x 256): 120 slices -> 121 frames -> T' = 16 latent frames of
32 x 32 x 16 = 16,384 values. With the projector's paper layout (one Linear over each frame's flattened grid, pool 1)
that is 16 visual tokens of the decoder's 2,048 (CT-ViT: 14), from a 16,384 x 4,096 matrix (67 M parameters,
CT-ViT's is 294,912 x 4,096 = 1.2 B). Pooling (projector.pool k) would shrink only that matrix, not the token count,
and would average away focal uptake, so the configs keep every latent value. (Reading each of the 16,384 latent
positions as its own token would not fit 2,048; pooled 4 x 4 it would be 1,024 tokens, half the context.)

The encoder holds the whole tokenizer (`tokenizer/encoder`, `quant_conv`, `post_quant_conv`, `tokenizer/decoder`):
the VLM runs only the encode half (the decode half is ~half the weights, frozen and idle), but keeping both lets
the `tokenizer_finetune` stage hand its weights over path for path and the export write a complete diffusers
folder. `CosmosAutoencoder` is that stage's model: reconstruction with L1 + 0.1 (1 - SSIM3D).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpetct.errors import ConfigError
from jaxpetct.models.cosmos.config import RUNTIME_FIELDS, CosmosConfig
from jaxpetct.models.cosmos.layers import CausalConv3d, FrameNorm
from jaxpetct.models.cosmos.model import CosmosTokenizer
from jaxpetct.models.cosmos.petct import causal_frames, petct_to_rgb, rgb_to_petct
from jaxpetct.models.ssim3d import WINDOW, psnr, ssim3d

Array = jax.Array
SSIM_WEIGHT = 0.1  # the paper's L1 + 0.1 (1 - SSIM3D)


@dataclasses.dataclass(frozen=True)
class CosmosVisionConfig:
    """The tokenizer's config plus the volume it reads: (channels, depth, height, width) after the loader's resize."""

    tokenizer: CosmosConfig = CosmosConfig()
    channels: int = 2  # 2 = data.image.channels ('pet', 'ct'), 1 = one modality (repeated to 3)
    depth: int = 120
    height: int = 256
    width: int = 256
    # A per-cell lesion logit appended to the latent (a Linear over its channels), as CTViTConfig.lesion_channel:
    # trained by encoder_pretrain's lesion_map objective, read alone by projector features='lesion'. The tiny
    # config's stand-in for a pretrained tokenizer's features; the paper's rows read the latent as it is.
    lesion_channel: bool = False

    def __post_init__(self):
        t = self.tokenizer
        if self.channels not in (1, 2):
            raise ConfigError(f"Cosmos encoder takes 1 or 2 channels (PET, CT), got channels={self.channels}")
        if t.in_channels != 3 or t.out_channels != 3:
            raise ConfigError("the Cosmos encoder feeds PET/CT as 3 video channels: in_channels and out_channels "
                              f"must be 3, got {t.in_channels} and {t.out_channels}")
        try:
            t.latent_shape(self.frames, self.height, self.width)
        except ValueError as e:
            raise ConfigError(f"Cosmos encoder input {self.depth}x{self.height}x{self.width}: {e}") from None

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(C, D, H, W) the encoder accepts; the data stage resizes volumes to this."""
        return (self.channels, self.depth, self.height, self.width)

    @property
    def frames(self) -> int:
        """Frames the tokenizer sees: D padded to 1 + k * temporal compression."""
        return causal_frames(self.depth, self.tokenizer)

    @property
    def grid(self) -> tuple[int, int, int]:
        """(T', h, w): visual tokens per volume (latent frames) and the latent grid each one carries."""
        return self.tokenizer.latent_shape(self.frames, self.height, self.width)[:3]

    @property
    def out_dim(self) -> int:
        """Features per grid cell: the latent channels, plus the lesion logit when lesion_channel."""
        return self.tokenizer.latent_channels + int(self.lesion_channel)

    @property
    def slice_tokens(self) -> tuple[int, ...]:
        """The latent frame (visual token) of each input slice: slice 0 is the causal first frame alone, then each
        group of `temporal_compression` slices shares one (lesion_map targets place a centre by this)."""
        k = self.tokenizer.temporal_compression_ratio
        return tuple((z + k - 1) // k for z in range(self.depth))


# preset -> (tokenizer config factory, the volume it reads by default)
PRESETS = {
    "cosmos_cv8x8x8": (CosmosConfig.cv8x8x8, dict(depth=120, height=256, width=256)),
    "cosmos_tiny": (CosmosConfig.tiny, dict(depth=16, height=32, width=32)),
}
_VISION_FIELDS = ("channels", "depth", "height", "width", "lesion_channel")


def config_keys() -> set[str]:
    """The keys a Cosmos `model.encoder` section may set: preset, hf_dir, the volume and CosmosConfig fields."""
    return {"preset", "hf_dir", *_VISION_FIELDS} | {f.name for f in dataclasses.fields(CosmosConfig)}


def vision_config(preset: str, **overrides) -> CosmosVisionConfig:
    """`vision_config("cosmos_cv8x8x8", depth=120, dtype="bfloat16")`: volume fields and tokenizer fields apart."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown Cosmos preset {preset!r}; use one of {sorted(PRESETS)}")
    make, volume = PRESETS[preset]
    volume = {**volume, **{k: overrides.pop(k) for k in _VISION_FIELDS if k in overrides}}
    try:
        return CosmosVisionConfig(tokenizer=make(**overrides), **volume)
    except TypeError as e:
        raise ConfigError(f"model.encoder ({preset}): {e}") from None


def architecture_difference(a: CosmosConfig, b: CosmosConfig) -> list[str]:
    """Fields (other than runtime and latent statistics) in which two tokenizer configs differ."""
    skip = {*RUNTIME_FIELDS, "latents_mean", "latents_std"}
    return [f.name for f in dataclasses.fields(CosmosConfig)
            if f.name not in skip and getattr(a, f.name) != getattr(b, f.name)]


def zero_tokenizer(cfg: CosmosConfig) -> CosmosTokenizer:
    """A tokenizer whose weights are all zero (norm scales too), to be filled by `random_weights` or a checkpoint.
    Shapes come from `jax.eval_shape` (nnx.eval_shape would lay the weights out on the ambient mesh, which inside
    `init_sharded`'s program knows only the mesh axes, not the logical names)."""
    graphdefs = []

    def split():
        graphdef, state = nnx.split(CosmosTokenizer(cfg, rngs=nnx.Rngs(0)))
        graphdefs.append(graphdef)
        return state

    shapes = jax.eval_shape(split)
    return nnx.merge(graphdefs[0], jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes))


def random_weights(tokenizer: CosmosTokenizer, seed: int) -> None:
    """Fill a tokenizer in place with the init `CosmosTokenizer(cfg, rngs)` draws (torch's default Conv3d init:
    every conv's kernel and bias uniform in +-1/sqrt(fan in); norms 1 and 0), drawn on the host with numpy and
    placed with each weight's sharding. Why: XLA:CPU takes ~25 s to compile the 234 separate draws of the module's
    own init (even at toy widths), for every model that holds Cosmos; the factory builds those with
    `zero_tokenizer` in its one init program and calls this. A no-op on abstract weights (`--mode plan`)."""
    convs = [m for _, m in nnx.iter_modules(tokenizer) if isinstance(m, CausalConv3d)]
    norms = [m for _, m in nnx.iter_modules(tokenizer) if isinstance(m, FrameNorm)]
    filled = 2 * (len(convs) + len(norms))
    if filled != len(jax.tree.leaves(nnx.state(tokenizer, nnx.Param))):
        raise ValueError("the tokenizer has weights outside CausalConv3d and FrameNorm: random_weights is stale")
    if isinstance(convs[0].kernel.get_value(), jax.core.Tracer):
        return
    rng = np.random.default_rng(seed)

    def put(var: nnx.Variable, value: np.ndarray) -> None:
        old = var.get_value()
        var.set_value(jax.device_put(value.astype(old.dtype), old.sharding))

    for conv in convs:
        shape = conv.kernel.get_value().shape
        bound = 1.0 / math.sqrt(math.prod(shape[:4]))  # (kt, kh, kw, in, out): fan in = kt kh kw in
        put(conv.kernel, rng.uniform(-bound, bound, shape))
        put(conv.bias, rng.uniform(-bound, bound, shape[-1:]))
    for norm in norms:
        put(norm.scale, np.ones(norm.scale.get_value().shape))
        put(norm.bias, np.zeros(norm.bias.get_value().shape))


class CosmosVisionEncoder(nnx.Module):
    """PET/CT (B, C, D, H, W) in [0, 1] -> latent grid (B, T', h, w, latent_channels); see the module docstring."""

    def __init__(self, cfg: CosmosVisionConfig, *, rngs: Optional[nnx.Rngs] = None,
                 tokenizer: Optional[CosmosTokenizer] = None):
        """`tokenizer` (e.g. `load_diffusers`'; its config must be cfg's), else one drawn from `rngs`, else a
        `zero_tokenizer` for `random_weights` or a checkpoint to fill (what the factory builds). The lesion head
        (lesion_channel) is drawn from `rngs` (or seed 0)."""
        if tokenizer is not None and tokenizer.cfg != cfg.tokenizer:
            raise ValueError("the tokenizer's config is not the one CosmosVisionConfig names")
        if tokenizer is None:
            tokenizer = CosmosTokenizer(cfg.tokenizer, rngs=rngs) if rngs is not None else zero_tokenizer(cfg.tokenizer)
        self.cfg = cfg
        self.tokenizer = tokenizer
        c = cfg.tokenizer.latent_channels
        self.lesion_head = (nnx.Linear(c, 1, param_dtype=cfg.tokenizer.param_dtype, rngs=rngs or nnx.Rngs(0))
                            if cfg.lesion_channel else None)

    def video(self, images: Array) -> Array:
        """(B, C, D, H, W) in [0, 1] -> (B, frames, H, W, 3) in [-1, 1], the last slice repeated to `frames`."""
        cfg = self.cfg
        if images.ndim != 5 or tuple(images.shape[1:]) != cfg.input_shape:
            raise ValueError(f"Cosmos encoder expects images (B, {', '.join(map(str, cfg.input_shape))}), "
                             f"got {tuple(images.shape)}")
        x = jnp.moveaxis(images, 1, -1)
        x = petct_to_rgb(x) if cfg.channels == 2 else jnp.repeat(x, 3, axis=-1) * 2.0 - 1.0
        pad = cfg.frames - cfg.depth
        return jnp.concatenate([x, jnp.repeat(x[:, -1:], pad, axis=1)], axis=1) if pad else x

    def volume(self, rgb: Array) -> Array:
        """(..., 3) video channels in [-1, 1] -> (..., C) volume channels in [0, 1] (the inverse of `video`)."""
        return rgb_to_petct(rgb) if self.cfg.channels == 2 else (rgb.mean(axis=-1, keepdims=True) + 1.0) * 0.5

    def __call__(self, images: Array) -> Array:
        z = self.tokenizer.encode(self.video(images))
        if self.lesion_head is None:
            return z
        logit = self.lesion_head(z.astype(jnp.float32)).astype(z.dtype)
        return jnp.concatenate([z, logit], axis=-1)

    def reconstruct(self, images: Array) -> tuple[Array, Array]:
        """(reconstruction, target), both (B, D, H, W, 3) in the tokenizer's [-1, 1]: the first D decoded frames
        (the padding frames are not part of the volume) against the input video."""
        video = self.video(images)
        out = self.tokenizer.decode(self.tokenizer.encode(video))
        d = self.cfg.depth
        return out[:, :d], video[:, :d]


def _weighted_mean(x: Array, mask: Array) -> Array:
    return (x.astype(jnp.float32) * mask).sum() / jnp.maximum(mask.sum(), 1.0)


class CosmosAutoencoder(nnx.Module):
    """The `tokenizer_finetune` stage's model: the VLM's Cosmos encoder (`encoder/`, whole tokenizer) trained to
    reconstruct volumes. SSIM3D uses the Gaussian 11-tap window over the volume ('valid' borders, scikit-image's
    definition), or reflected borders for volumes thinner than the window."""

    def __init__(self, encoder: CosmosVisionEncoder):
        self.encoder = encoder  # named as in the VLM, so the VLM stages load it path for path

    def loss(self, images: Array, mask: Array) -> tuple[Array, Array, dict[str, Array]]:
        """(summed per-volume loss, volume count, extras): the form train/tasks.py accumulates. `mask` (B,) is 1 on
        real volumes, 0 on filler rows. Extras are means over the real volumes: the loss's L1 and SSIM (video
        channels, range 2), and PSNR and SSIM of the PET/CT volumes in [0, 1] (what validation reports)."""
        recon, target = self.encoder.reconstruct(images)
        border = "valid" if min(recon.shape[1:4]) >= WINDOW else "reflect"
        mask = mask.astype(jnp.float32)
        l1 = jnp.mean(jnp.abs(recon.astype(jnp.float32) - target.astype(jnp.float32)), axis=(1, 2, 3, 4))
        ssim = ssim3d(recon, target, data_range=2.0, border=border)
        per_volume = l1 + SSIM_WEIGHT * (1.0 - ssim)
        vol_r, vol_t = self.encoder.volume(recon.astype(jnp.float32)), self.encoder.volume(target.astype(jnp.float32))
        extras = {"l1": _weighted_mean(l1, mask), "ssim_rgb": _weighted_mean(ssim, mask),
                  "psnr": _weighted_mean(psnr(vol_r, vol_t, data_range=1.0), mask),
                  "ssim": _weighted_mean(ssim3d(vol_r, vol_t, data_range=1.0, border=border), mask)}
        return (per_volume * mask).sum(), mask.sum(), extras
