"""Losses of the paper's stages, in the form the step accumulates: (sum over units, unit count, extras).

Returning sums rather than means is what makes gradient accumulation exact: the step divides the summed loss
(and gradient) by the summed count once, so every answer token weighs the same however the batch is split.
Dropout is switched by the merged module's mode (LoRA dropout on in training, off in evaluation).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def _mode(model: nnx.Module, train: bool) -> None:
    model.train() if train else model.eval()


def vlm_answer_loss(model: nnx.Module, batch: dict, *, train: bool):
    """Next-token cross entropy on answer tokens only (the VLM stages: align, lora, full)."""
    _mode(model, train)
    mean, count = model.loss(batch)
    return mean * count, count, {}


def text_only_loss(model: nnx.Module, batch: dict, *, train: bool):
    """Answer loss with every volume blanked: the decoder learns report language with no image information
    (the visual tokens are one constant prefix), standing in for text pre-training of the LLM."""
    return vlm_answer_loss(model, {**batch, "images": jnp.zeros_like(batch["images"])}, train=train)


def clip_loss(model: nnx.Module, batch: dict, *, train: bool):
    """CLIP/SigLIP between volumes and report text (encoder pre-training).

    A contrastive loss is a property of the whole batch (every other pair is a negative), so micro-batches under
    gradient accumulation see fewer negatives than one large batch: accumulation here is an approximation, and
    the configs for this stage use grad_accum_steps = 1.
    """
    _mode(model, train)
    loss, metrics = model(batch["images"], batch["text_ids"], batch["text_mask"])
    n = jnp.asarray(batch["images"].shape[0], jnp.float32)
    extras = {k: v for k, v in metrics.items() if k in ("retrieval_accuracy", "logit_scale")}
    return loss * n, n, jax.tree.map(jnp.asarray, extras)


def lesion_map_loss(model: nnx.Module, batch: dict, *, train: bool):
    """Per-token lesion-centre BCE (encoder pre-training from lesion centres, models/lesion_map.py)."""
    _mode(model, train)
    return model.loss(batch["images"], batch["lesion_map"])


def tokenizer_reconstruction_loss(model: nnx.Module, batch: dict, *, train: bool):
    """L1 + 0.1 (1 - SSIM3D) of the Cosmos tokenizer's reconstruction, summed over real volumes (tokenizer_finetune;
    models/cosmos/vision.py: CosmosAutoencoder). Extras: L1, SSIM, and PET/CT PSNR and SSIM."""
    _mode(model, train)
    return model.loss(batch["images"], batch["volume_mask"])
