"""Stage 1 of the paper: CT-ViT fine-tuned CLIP-style against a Vietnamese text encoder (PhoBERT).

Two losses over a batch of N (volume, report) pairs, both pure functions of L2-normalised embeddings:
  * CLIP (Radford et al. 2021): symmetric InfoNCE over the N x N similarity matrix scaled by exp(t), t learnable
    (CLIP clamps exp(t) at 100 so the softmax cannot collapse to one-hot early in training).
  * SigLIP (Zhai et al. 2023): an independent sigmoid per pair, logits exp(t) * cos + b, t and b learnable
    (init log 10 and -10); loss summed over the N partners of each item, averaged over items. It needs no
    all-gathered softmax normaliser, which is why it scales better on many devices at small per-device batches.
Under jit with a global batch sharded over the mesh the N x N matrix is formed by GSPMD, so both are exact global-batch
losses (no per-device approximation).

``VolumeTextCLIP`` holds both towers and the heads: the volume side pools CT-ViT tokens (CT-CLIP's "ctclip" pooling
averages the T slabs and flattens the h x w x dim grid, 294,912 features at paper size, into a bias-free Linear - as in
CT-CLIP; "mean" averages everything to one dim-vector), the text side takes PhoBERT's first token (<s>, "cls") or
the masked mean of real tokens; each goes through a bias-free Linear to the latent and is L2-normalised.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpetct.models.ctvit import CTViT
from jaxpetct.models.text_encoder import RobertaEncoder
from jaxpetct.parallel.rules import param_axes

Array = jax.Array

CLIP_MAX_LOGIT_SCALE = 100.0


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    x = x.astype(jnp.float32)
    # rsqrt of the clamped squared norm: same value, and a finite gradient at x = 0 (d|x| there is NaN in JAX)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))


def clip_loss(image_emb: Array, text_emb: Array, log_scale: Array,
              max_scale: float = CLIP_MAX_LOGIT_SCALE) -> tuple[Array, dict[str, Array]]:
    """Symmetric InfoNCE; row i of each (N, E) input is the positive of row i of the other. Inputs L2-normalised."""
    scale = jnp.minimum(jnp.exp(log_scale.astype(jnp.float32)), max_scale)
    logits = scale * image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T  # (N images, N texts)
    labels = jnp.arange(logits.shape[0])
    i2t = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1).mean()
    t2i = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0).mean()
    loss = 0.5 * (i2t + t2i)
    accuracy = 0.5 * ((logits.argmax(1) == labels).mean() + (logits.argmax(0) == labels).mean())
    return loss, {"loss": loss, "image_to_text": i2t, "text_to_image": t2i, "logit_scale": scale,
                  "retrieval_accuracy": accuracy}


def siglip_loss(image_emb: Array, text_emb: Array, log_scale: Array, bias: Array) -> tuple[Array, dict[str, Array]]:
    """Pairwise sigmoid loss: -mean_i sum_j log sigmoid(z_ij * (exp(t) <x_i, y_j> + b)), z = +1 on the diagonal."""
    scale = jnp.exp(log_scale.astype(jnp.float32))
    logits = scale * image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T + bias.astype(jnp.float32)
    signs = 2.0 * jnp.eye(logits.shape[0], dtype=jnp.float32) - 1.0
    loss = -jax.nn.log_sigmoid(signs * logits).sum(axis=1).mean()
    labels = jnp.arange(logits.shape[0])
    accuracy = 0.5 * ((logits.argmax(1) == labels).mean() + (logits.argmax(0) == labels).mean())
    return loss, {"loss": loss, "logit_scale": scale, "logit_bias": bias, "retrieval_accuracy": accuracy}


class VolumeTextCLIP(nnx.Module):
    """CT-ViT + RoBERTa towers with latent heads and the loss's learnable temperature (and SigLIP bias)."""

    def __init__(self, encoder: CTViT, text: RobertaEncoder, *, latent_dim: int = 512, vision_pool: str = "ctclip",
                 text_pool: str = "cls", loss: str = "clip", init_log_scale: float | None = None, rngs: nnx.Rngs):
        if vision_pool not in ("ctclip", "mean"):
            raise ValueError(f"vision_pool must be 'ctclip' or 'mean', got {vision_pool!r}")
        if text_pool not in ("cls", "mean"):
            raise ValueError(f"text_pool must be 'cls' or 'mean', got {text_pool!r}")
        if loss not in ("clip", "siglip"):
            raise ValueError(f"loss must be 'clip' or 'siglip', got {loss!r}")
        self.encoder, self.text = encoder, text  # CT-ViT named as in the VLM: the next stage loads it as is
        self.vision_pool, self.text_pool, self.loss_kind = vision_pool, text_pool, loss
        _, h, w = encoder.cfg.grid
        vision_features = h * w * encoder.cfg.out_dim if vision_pool == "ctclip" else encoder.cfg.out_dim
        linear = dict(use_bias=False, rngs=rngs)
        self.to_vision_latent = nnx.Linear(vision_features, latent_dim, kernel_metadata=param_axes("vis_proj", None),
                                           **linear)
        self.to_text_latent = nnx.Linear(text.cfg.hidden_size, latent_dim, kernel_metadata=param_axes("embed", None),
                                         **linear)
        if init_log_scale is None:
            init_log_scale = math.log(1 / 0.07) if loss == "clip" else math.log(10.0)
        self.log_scale = nnx.Param(jnp.asarray(init_log_scale, jnp.float32), **param_axes())
        self.logit_bias = nnx.Param(jnp.asarray(-10.0, jnp.float32), **param_axes()) if loss == "siglip" else None

    def encode_volume(self, images: Array) -> Array:
        tokens = self.encoder(images)  # (B, T, h, w, d)
        if self.vision_pool == "ctclip":
            pooled = tokens.astype(jnp.float32).mean(axis=1).reshape(tokens.shape[0], -1)
        else:
            pooled = tokens.astype(jnp.float32).mean(axis=(1, 2, 3))
        return l2_normalize(self.to_vision_latent(pooled.astype(tokens.dtype)))

    def encode_text(self, input_ids: Array, attention_mask: Array) -> Array:
        hidden, _ = self.text(input_ids, attention_mask)
        if self.text_pool == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.astype(jnp.float32)[..., None]
            pooled = ((hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)).astype(hidden.dtype)
        return l2_normalize(self.to_text_latent(pooled))

    def __call__(self, images: Array, input_ids: Array, attention_mask: Array) -> tuple[Array, dict[str, Array]]:
        """(loss, metrics) for a batch of paired volumes (B, C, D, H, W) and tokenised reports (B, L)."""
        image_emb = self.encode_volume(images)
        text_emb = self.encode_text(input_ids, attention_mask)
        if self.loss_kind == "clip":
            return clip_loss(image_emb, text_emb, self.log_scale[...])
        return siglip_loss(image_emb, text_emb, self.log_scale[...], self.logit_bias[...])
