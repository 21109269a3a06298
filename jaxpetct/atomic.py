"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never half of one.

Every file this project writes for others to read (records' side files, NPZ and DICOM of the synthetic cohort,
predictions, summaries, benchmark results) goes through `open_atomic` or `write_text`: a temporary file beside the
target, renamed over it only once it is complete, removed if writing fails.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import IO, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def open_atomic(path: PathLike, mode: str = "w", *, file_mode: int = 0o644, **open_kw) -> Iterator[IO]:
    """`with open_atomic(path, "wb") as f: ...` writes `path` all at once; the parent folder is created."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "w":
        open_kw.setdefault("encoding", "utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
        os.chmod(tmp, file_mode)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: PathLike, text: str, *, mode: int = 0o644) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with open_atomic(path, "w", file_mode=mode) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_directory(target: PathLike) -> Iterator[pathlib.Path]:
    """Yield a temporary sibling directory that replaces `target` only if the block succeeds."""
    target = pathlib.Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
