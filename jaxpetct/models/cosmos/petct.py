"""PET/CT volumes in and out of the 3-channel Cosmos tokenizer, and what its latent grid costs a VLM in tokens."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpetct.models.cosmos.config import CosmosConfig

Array = jax.Array


def petct_to_rgb(volume: Array) -> Array:
    """(..., 2) channels (pet, ct) in [0, 1] -> (..., 3) = (pet, ct, pet) in [-1, 1], the tokenizer's input.

    The pretrained weights take 3 channels (conv_in's kernel reads 3 * p^3 Haar bands), and both modalities must
    survive: PET fills R and B, CT fills G. Repeating PET rather than CT gives the focal uptake that the reports
    are about two of the three channels; CT anatomy sits in G, which carries most of the luminance in the natural
    video CV8x8x8 was trained on. `rgb_to_petct` inverts it.
    """
    if volume.shape[-1] != 2:
        raise ValueError(f"petct_to_rgb expects (pet, ct) in the last axis, got shape {volume.shape}")
    pet, ct = volume[..., :1], volume[..., 1:]
    return jnp.concatenate([pet, ct, pet], axis=-1) * 2.0 - 1.0


def rgb_to_petct(rgb: Array) -> Array:
    """(..., 3) in [-1, 1] (e.g. a reconstruction) -> (..., 2) (pet, ct) in [0, 1]; PET is the mean of R and B."""
    pet = (rgb[..., :1] + rgb[..., 2:3]) * 0.5
    return (jnp.concatenate([pet, rgb[..., 1:2]], axis=-1) + 1.0) * 0.5


def causal_frames(frames: int, cfg: CosmosConfig | None = None) -> int:
    """The smallest frame count >= `frames` of the form 1 + k * temporal_compression (121 for 120 slices): the
    counts the causal tokenizer maps to latents and back without a partial last group (pad by repeating the last
    slice)."""
    step = (cfg or CosmosConfig()).temporal_compression_ratio
    return 1 + -(-(max(frames, 1) - 1) // step) * step


def latent_tokens(frames: int, height: int, width: int, cfg: CosmosConfig | None = None) -> dict:
    """Latent grid and token count of one volume: {'grid': (T', H', W'), 'channels', 'tokens' = T' H' W'}.

    CV8x8x8 on 120 x 256 x 256 slices: (120 + 3) frames after the first-frame repeat, halved twice by the Haar
    patching (with a reflect pad: 123 -> 62 -> 31) and once by the temporal downsample (31 -> 16) gives T' = 16,
    not 1 + 119 // 8 = 15; H' = W' = 256 / 8 = 32: 16 * 32 * 32 = 16,384 tokens of 16 channels (decode returns
    8 * 16 - 7 = 121 frames). A VLM pools these, e.g. 4 x 4 spatially -> 16 * 8 * 8 = 1,024 tokens.
    """
    t, h, w, c = (cfg or CosmosConfig()).latent_shape(frames, height, width)
    return {"grid": (t, h, w), "channels": c, "tokens": t * h * w}
