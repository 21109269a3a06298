"""Seeded choices that give the same answer on every machine and every Python version.

Augmentations, instruction variants and VQA grouping must be reproducible from (seed, item) alone, so that a
rebuilt dataset is byte-identical and a resumed run sees the same text. `random.Random` seeded with a string
(SHA-512 of it) and its `random()` stream are guaranteed stable across Python versions; `choice`/`shuffle` are
not, so they are re-implemented here on top of `random()` only.
"""
from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")


def rng(seed: int, *salt: object) -> random.Random:
    """A generator keyed by the seed and what it is used for (e.g. the study key), independent of call order."""
    return random.Random("\x1f".join(str(s) for s in (seed, *salt)))


def below(r: random.Random, n: int) -> int:
    if n <= 0:
        raise ValueError(f"cannot pick from {n} options")
    return min(int(r.random() * n), n - 1)


def pick(r: random.Random, options: Sequence[T]) -> T:
    return options[below(r, len(options))]


def shuffled(r: random.Random, items: Sequence[T]) -> list[T]:
    """Fisher-Yates on `random()` alone."""
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = below(r, i + 1)
        out[i], out[j] = out[j], out[i]
    return out
