"""Records parsed once per process, kept in memory while they fit a byte budget (`data.cache_mb`).

Why: reading a region record from its ArrayRecord shard (a compressed chunk per record) and parsing the TFDS
example costs ~1.1 ms, and the loader pays it on every epoch, on the same cores XLA computes on. The tiny default
reads each training record ~9 times in its encoder stage and again in every VLM stage (sampled: read + parse were
half of the loader's CPU time in the encoder stage). A record is the same bytes every time, so the parsed example
is kept: augmentation, tokenisation and collation run after it, per element, exactly as before.

The cache is per process and shared by every source opened on the same (dataset, split), so one stage's epochs and
the next stage's reuse it. It only grows: once the budget is spent, further records are read from disk each time
(for paper-size records, ~130 MB each, a small budget holds a few and costs nothing else). Cached arrays are made
read-only, so a transform that wrote into a record in place would fail loudly instead of corrupting later epochs.
Grain worker processes (data.worker_count > 0) each hold their own cache.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

_LOCK = threading.Lock()
_CACHES: dict[tuple[str, str], dict[int, Any]] = {}
_USED = [0]  # bytes held by every cache of this process


def _frozen(value: Any) -> tuple[Any, int]:
    """(value with its arrays read-only, their bytes)."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
        return value, value.nbytes
    if isinstance(value, dict):
        out, total = {}, 0
        for k, v in value.items():
            out[k], n = _frozen(v)
            total += n
        return out, total
    if isinstance(value, (bytes, str)):
        return value, len(value)
    return value, 8


class CachedSource:
    """A random-access source (len, [i]) whose parsed records stay in memory within `budget_bytes` for the
    process (shared by all CachedSources)."""

    def __init__(self, source: Any, key: tuple[str, str], budget_bytes: int):
        self.source, self.key, self.budget_bytes = source, key, int(budget_bytes)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        cache = _CACHES.setdefault(self.key, {})
        hit = cache.get(index)
        if hit is not None:
            return hit
        record, size = _frozen(self.source[index])
        with _LOCK:
            if index not in cache and _USED[0] + size <= self.budget_bytes:
                cache[index] = record
                _USED[0] += size
        return record

    def __repr__(self) -> str:
        return f"CachedSource({self.key[0]}, {self.key[1]}, {len(self)} records)"


def cached_bytes() -> int:
    """Bytes this process's record caches hold."""
    return _USED[0]


def clear() -> None:
    """Drop every cached record of this process (tests; a job that rebuilt a dataset in place)."""
    with _LOCK:
        _CACHES.clear()
        _USED[0] = 0
