"""`ordered_map`: a function over items on two threads, results in input order, a bounded number ahead.

Synthesis and the plain build spend their time in numpy and zlib, which release the GIL: two threads use the two
cores of a laptop without the start-up, pickling and fork hazards of processes (JAX may already be initialised).
"""
from __future__ import annotations

import concurrent.futures
import os
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Sequence[T], *, ahead: int = 8) -> Iterator[R]:
    """fn(item) for each item in order; at most `ahead` results wait for the consumer."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        for start in range(0, len(items), ahead):
            yield from pool.map(fn, items[start:start + ahead])
