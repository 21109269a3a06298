"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never half of one."""
from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Union


def write_text(path: Union[str, os.PathLike], text: str, *, mode: int = 0o644) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
