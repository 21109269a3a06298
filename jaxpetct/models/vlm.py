"""The vision-language model: CT-ViT -> projector -> visual tokens spliced into the decoder's prompt embeddings.

Batch contract (what the data pipeline produces; all arrays host-stacked, one row per example)::

    images          (B, C, D, H, W) float32   the encoder's input shape (resized in the data stage), C = 1 or 2
    input_ids       (B, L) int32              prompt + answer tokens; each image placeholder run is T tokens long
    positions       (B, L) int32              RoPE positions (count of real tokens before, so left padding is free)
    attention_mask  (B, L) bool               True on real tokens, False on padding
    image_mask      (B, L) bool               True on exactly T positions per row, where the T visual tokens go,
                                              in order (T = encoder grid[0], 14 at paper size); all are real tokens
    loss_mask       (B, L) float32            1 on tokens the model must predict (answer tokens), 0 elsewhere;
                                              never on image positions; position 0 is never a target

``splice_visual_tokens`` places visual token k at the k-th True position of ``image_mask`` with a cumulative-sum
index, a gather and a select: no Python loop, no data-dependent shapes, so it jits once for a padded batch shape.
The ids under the mask are never looked up as text, so any placeholder id works.

Prefix-LM option (``prefix_lm=True``): the image and the prompt before the first answer token attend to each other
in both directions, as in PaliGemma; every later token stays causal. The prefix of a training row is "real tokens
before the first loss_mask token"; at generation time the whole prompt is the prefix (``prefix_mask =
attention_mask`` on the prefill call). Answers never become visible to the prefix, so teacher forcing stays honest.
Off (the default) is the paper's fully causal LLaVA layout.

The encoder is frozen in the VLM stages of the paper (stop-gradient on its tokens, so no backward pass is spent on
it); ``freeze_encoder=False`` lets a recipe tune it end to end.
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpetct.models.ctvit import CTViT
from jaxpetct.models.decoder import Decoder
from jaxpetct.models.losses import chunked_cross_entropy
from jaxpetct.models.projector import Projector
from jaxpetct.parallel.rules import shard

Array = jax.Array

BATCH_FIELDS = {
    "images": (5, np.floating),
    "input_ids": (2, np.integer),
    "positions": (2, np.integer),
    "attention_mask": (2, np.bool_),
    "image_mask": (2, np.bool_),
    "loss_mask": (2, np.floating),
}


class BatchContractError(ValueError):
    """A batch that breaks the VLM batch contract; the message names the field, the rows and the reason."""


def validate_batch(batch: Mapping[str, np.ndarray], num_visual_tokens: int) -> None:
    """Host-side check of the batch contract (data pipeline tests and debugging); raises BatchContractError."""
    for name, (ndim, kind) in BATCH_FIELDS.items():
        if name not in batch:
            raise BatchContractError(f"batch lacks field {name!r}")
        arr = np.asarray(batch[name])
        if arr.ndim != ndim or not np.issubdtype(arr.dtype, kind):
            raise BatchContractError(f"{name}: expected a {ndim}-d {kind.__name__} array, got {arr.dtype}{arr.shape}")
    b, length = np.asarray(batch["input_ids"]).shape
    for name in ("positions", "attention_mask", "image_mask", "loss_mask"):
        if np.asarray(batch[name]).shape != (b, length):
            raise BatchContractError(f"{name}: shape {np.asarray(batch[name]).shape} != input_ids shape {(b, length)}")
    if np.asarray(batch["images"]).shape[0] != b:
        raise BatchContractError(f"images: batch {np.asarray(batch['images']).shape[0]} != {b} rows of input_ids")
    image_mask = np.asarray(batch["image_mask"])
    attention = np.asarray(batch["attention_mask"])
    loss = np.asarray(batch["loss_mask"])
    counts = image_mask.sum(axis=1)
    bad = np.flatnonzero(counts != num_visual_tokens)
    if bad.size:
        raise BatchContractError(f"image_mask: rows {bad.tolist()} have {counts[bad].tolist()} image positions, "
                                 f"expected exactly {num_visual_tokens}")
    bad = np.flatnonzero((image_mask & ~attention).any(axis=1))
    if bad.size:
        raise BatchContractError(f"image_mask: rows {bad.tolist()} place image tokens on padding")
    bad = np.flatnonzero(((loss > 0) & (image_mask | ~attention)).any(axis=1) | (loss[:, 0] > 0))
    if bad.size:
        raise BatchContractError(f"loss_mask: rows {bad.tolist()} mark image, padding or first-position tokens")


def splice_visual_tokens(embeds: Array, visual: Array, image_mask: Array) -> Array:
    """embeds (B, L, d) with visual (B, T, d) written, in order, at the True positions of image_mask (B, L)."""
    t = visual.shape[1]
    slot = jnp.clip(jnp.cumsum(image_mask.astype(jnp.int32), axis=1) - 1, 0, t - 1)  # k-th True -> k
    gathered = jnp.take_along_axis(visual.astype(embeds.dtype), slot[..., None], axis=1)
    return jnp.where(image_mask[..., None], gathered, embeds)


def prefix_mask_from_loss_mask(attention_mask: Array, loss_mask: Array) -> Array:
    """Real tokens before each row's first target token: the bidirectional prefix of a training row."""
    before_first_target = jnp.cumsum(loss_mask > 0, axis=1) == 0
    return before_first_target & attention_mask.astype(bool)


def answer_loss(logits: Array, input_ids: Array, loss_mask: Array) -> tuple[Array, Array]:
    """(mean next-token cross entropy over target tokens, number of target tokens).

    Token i is predicted from position i - 1, so logits[:, :-1] score input_ids[:, 1:] weighted by loss_mask[:, 1:]
    (a target at position 0 cannot be predicted and is ignored). For gradient accumulation sum ``mean * count``
    over micro-batches and divide by the summed count: equal weight per answer token, not per micro-batch.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = input_ids[:, 1:]
    weights = loss_mask[:, 1:].astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    count = weights.sum()
    mean = ((log_z - target_logit) * weights).sum() / jnp.maximum(count, 1.0)
    return mean, count


class VLM(nnx.Module):
    """``VLM(encoder, projector, decoder)``; see the module docstring for the batch contract and the options."""

    def __init__(self, encoder: CTViT, projector: Projector, decoder: Decoder, *, prefix_lm: bool = False,
                 freeze_encoder: bool = True, loss_chunk: int = 256):
        t, h, w = encoder.cfg.grid
        if projector.cfg.grid != (h, w) or projector.cfg.vision_dim != encoder.cfg.out_dim:
            raise ValueError(f"projector expects a {projector.cfg.grid} x {projector.cfg.vision_dim} grid, the encoder "
                             f"gives {(h, w)} x {encoder.cfg.out_dim}")
        if projector.cfg.d_model != decoder.cfg.hidden_size:
            raise ValueError(f"projector outputs {projector.cfg.d_model} features, the decoder's hidden size is "
                             f"{decoder.cfg.hidden_size}")
        self.encoder, self.projector, self.decoder = encoder, projector, decoder
        self.num_visual_tokens = t
        self.prefix_lm = prefix_lm
        self.freeze_encoder = freeze_encoder
        self.loss_chunk = int(loss_chunk)  # tokens per block of the training loss; 0 = materialise full logits

    def visual_tokens(self, images: Array) -> Array:
        """(B, C, D, H, W) -> (B, T, d_model) in the decoder's compute dtype."""
        grid = self.encoder(images)
        if self.freeze_encoder:
            grid = jax.lax.stop_gradient(grid)
        visual = self.projector(grid).astype(self.decoder.cfg.compute_dtype)
        return shard(visual, ("batch", "length", "act_embed"))

    def prompt_embeds(self, images: Array, input_ids: Array, image_mask: Array) -> Array:
        """Decoder input embeddings (B, L, d_model) with the visual tokens in place: the prefill input."""
        return splice_visual_tokens(self.decoder.embed(input_ids), self.visual_tokens(images), image_mask)

    def __call__(self, images: Array, input_ids: Array, *, positions: Array, attention_mask: Array,
                 image_mask: Array, loss_mask: Optional[Array] = None, prefix_mask: Optional[Array] = None,
                 return_hidden: bool = False) -> Array:
        """Logits (B, L, vocab) float32 (or final hidden states with ``return_hidden``). With prefix_lm, the
        prefix comes from ``prefix_mask`` or ``loss_mask``."""
        bidirectional = None
        if self.prefix_lm:
            if prefix_mask is None:
                if loss_mask is None:
                    raise ValueError("prefix_lm needs prefix_mask (generation: the prompt's attention_mask) or "
                                     "loss_mask (training: the prefix ends at the first target token)")
                prefix_mask = prefix_mask_from_loss_mask(attention_mask, loss_mask)
            bidirectional = prefix_mask.astype(bool)
        embeds = self.prompt_embeds(images, input_ids, image_mask)
        out, _ = self.decoder(inputs_embeds=embeds, positions=positions, attention_mask=attention_mask,
                              bidirectional_mask=bidirectional, return_hidden=return_hidden)
        return out

    def loss(self, batch: Mapping[str, Array]) -> tuple[Array, Array]:
        """(mean answer cross entropy, target-token count) of a contract batch.

        With ``loss_chunk`` > 0 the logits are never materialised (models/losses.py); the value and gradient
        equal ``answer_loss`` on full logits up to float rounding.
        """
        args = dict(positions=batch["positions"], attention_mask=batch["attention_mask"],
                    image_mask=batch["image_mask"], loss_mask=batch["loss_mask"])
        if not self.loss_chunk:
            logits = self(batch["images"], batch["input_ids"], **args)
            return answer_loss(logits, batch["input_ids"], batch["loss_mask"])
        hidden = self(batch["images"], batch["input_ids"], return_hidden=True, **args)
        weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
        total = chunked_cross_entropy(hidden[:, :-1], self.decoder.head_weight(), batch["input_ids"][:, 1:], weights,
                                      chunk=self.loss_chunk)
        count = weights.sum()
        return total / jnp.maximum(count, 1.0), count
