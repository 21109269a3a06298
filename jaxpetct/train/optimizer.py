"""What each training stage may change, and how fast: parameter groups, schedules, AdamW.

The paper's recipe trains different parts at different stages (CT-ViT against a text encoder; the projector
alone at lr 2e-3; LoRA adapters plus the projector at lr 2e-5). A stage is therefore data, not code: a list of
parameter groups, each a regex over parameter paths ("decoder/layers/3/attn/q_proj/lora_a") with its own
learning-rate scale. Whatever no group claims is frozen: it is split off before the step and never reaches
the optimizer, so frozen weights cannot drift (bit for bit) and cost no optimizer memory.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    name: str
    pattern: str  # regex searched in the '/'-joined parameter path
    lr_scale: float = 1.0
    weight_decay: bool = True  # decay is still skipped for vectors (norm scales, biases)


def path_str(path: Sequence[Any]) -> str:
    parts = []
    for p in path:
        p = getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))
        parts.append(str(p))
    return "/".join(parts)


def assign_groups(paths: Sequence[str], groups: Sequence[ParamGroup]) -> list[str | None]:
    """First matching group per path (None = frozen)."""
    compiled = [(g.name, re.compile(g.pattern)) for g in groups]
    out: list[str | None] = []
    for p in paths:
        out.append(next((name for name, rx in compiled if rx.search(p)), None))
    return out


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Linear warm-up then cosine decay to `final_fraction` of the peak, as in the paper (warm-up 3 %)."""

    peak_lr: float
    total_steps: int
    warmup_fraction: float = 0.03
    final_fraction: float = 0.0

    def __call__(self, scale: float = 1.0) -> optax.Schedule:
        peak = self.peak_lr * scale
        warmup = max(1, int(round(self.warmup_fraction * self.total_steps))) if self.warmup_fraction > 0 else 0
        decay_steps = max(self.total_steps, warmup + 1)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else peak,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=decay_steps,
            end_value=peak * self.final_fraction,
        )


def make_optimizer(
    params: Any,
    group_of: Any,
    groups: Sequence[ParamGroup],
    schedule: Schedule,
    *,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip_norm: float | None = 1.0,
    optimizer: str = "adamw",
) -> optax.GradientTransformation:
    """AdamW per group (own LR scale, decay only on matrices of decaying groups) after global-norm clipping.
    `optimizer="adam"` is torch.optim.Adam with weight_decay instead: the decay enters the gradient (L2), so Adam's
    moments rescale it, which is what a recipe written for torch's Adam trained with.

    `group_of` is a pytree matching `params` whose leaves are group names; every leaf of `params` must be
    trainable (freeze by not passing a leaf at all).
    """
    by_name = {g.name: g for g in groups}
    transforms = {}
    for name, g in by_name.items():
        decay_mask = (lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)) if g.weight_decay else False
        if optimizer == "adamw":
            transforms[name] = optax.adamw(
                schedule(g.lr_scale), b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask
            )
        elif optimizer == "adam":
            matrices = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
            transforms[name] = optax.chain(
                optax.add_decayed_weights(weight_decay if g.weight_decay else 0.0, matrices),
                optax.adam(schedule(g.lr_scale), b1=b1, b2=b2, eps=eps))
        else:
            raise ValueError(f"optimizer must be 'adamw' or 'adam', got {optimizer!r}")
    used = set(jax.tree.leaves(group_of))
    transforms = {k: v for k, v in transforms.items() if k in used}
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    chain.append(optax.multi_transform(transforms, group_of))
    return optax.chain(*chain)


def global_norm(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
