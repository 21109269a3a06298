"""TFDS's plain-path writer without TensorFlow, at any dataset size.

TFDS's writer shuffles examples in memory and, past 1 GiB per split (`shuffle.MAX_MEM_BUFFER_SIZE`), spills them
to temporary bucket files opened with `tf.io.gfile` — the one place a plain build touches TensorFlow. Without TF a
build of the public release (≈205 GB) would die there after the first gigabyte. `install()` points that module's
`tf` at an `etils.epath` stand-in offering exactly what the shuffler calls (GFile, exists, remove, and the
ResourceExhaustedError it catches); records, order and sharding are unchanged (tested against the in-memory
path). Where TensorFlow is importable nothing is replaced.
"""
from __future__ import annotations

import importlib.util
import types

from etils import epath


class _ResourceExhaustedError(OSError):
    """Never raised by epath (a full disk raises OSError): the shuffler's except clause just needs a class."""


def _gfile(path, mode: str = "r"):
    return epath.Path(path).open(mode)


_TF = types.SimpleNamespace(
    io=types.SimpleNamespace(gfile=types.SimpleNamespace(
        GFile=_gfile, exists=lambda path: epath.Path(path).exists(), remove=lambda path: epath.Path(path).unlink())),
    errors=types.SimpleNamespace(ResourceExhaustedError=_ResourceExhaustedError),
)


def install() -> bool:
    """Give TFDS's shuffler its file operations without TensorFlow; True when the stand-in was installed."""
    if importlib.util.find_spec("tensorflow") is not None:
        return False
    from tensorflow_datasets.core import shuffle

    shuffle.tf = _TF
    return True
