"""Encoder pre-training by lesion-centre maps: CT-ViT (or Cosmos) + a per-token linear head, weighted binary cross
entropy.

The alternative to the paper's CLIP stage where lesion centres are known (jaxpetct/data/lesion_targets.py says why):
each of the T x h x w tokens predicts whether a lesion centre lies in it. Positives are rare (a few tokens of
512), so they weigh `pos_weight` times a negative. The CT-ViT is ``encoder/`` here as in the CLIP model and the
VLM, so the VLM stages load it path for path, with its lesion head when the encoder has a lesion channel
(CTViTConfig.lesion_channel).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


Array = jax.Array


def weighted_bce(logits: Array, targets: Array, pos_weight: float) -> tuple[Array, Array]:
    """(summed loss, counted tokens); targets < 0 mark tokens without a target (padding rows), which add nothing."""
    valid = (targets >= 0).astype(jnp.float32)
    y = jnp.clip(targets, 0.0, 1.0).astype(jnp.float32)
    per = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), y) * (1.0 + (pos_weight - 1.0) * y)
    return (per * valid).sum(), valid.sum()


class LesionMapper(nnx.Module):
    """With ``lesion_channel`` the logit is CT-ViT's own last output feature (its head goes to the VLM with it);
    otherwise a separate head here, dropped after this stage."""

    def __init__(self, encoder: nnx.Module, *, pos_weight: float, rngs: nnx.Rngs):
        self.encoder = encoder  # named as in the VLM, so the next stage loads it path for path
        self.head = None if encoder.cfg.lesion_channel else nnx.Linear(encoder.cfg.out_dim, 1, rngs=rngs)
        self.pos_weight = float(pos_weight)

    def __call__(self, images: Array) -> Array:
        """Lesion-centre logits (B, T, h, w) of volumes (B, C, D, H, W)."""
        tokens = self.encoder(images)
        logits = tokens[..., -1] if self.head is None else self.head(tokens)[..., 0]
        return logits.astype(jnp.float32)

    def loss(self, images: Array, targets: Array) -> tuple[Array, Array, dict[str, Array]]:
        """(summed weighted BCE, token count, extras): the form train/tasks.py accumulates."""
        logits = self(images)
        total, count = weighted_bce(logits, targets, self.pos_weight)
        # region-level view (max over tokens vs "a centre is in view"): what a report can use
        has = (targets.max(axis=(1, 2, 3)) > 0).astype(jnp.float32)
        region_hit = ((logits.max(axis=(1, 2, 3)) > 0).astype(jnp.float32) == has).mean()
        return total, count, {"region_accuracy": region_hit}
