"""What `--study` may be: a DICOM folder (any nesting), a release root, one file, or a `.zip` of any of them.

A `.zip` is an upload from outside: it is unpacked into a private temporary folder with every member checked
before a byte is written (no absolute path, no `..`, no link), a cap on the number of files and on the bytes
actually written (counted while copying, never trusted from the zip's headers: a zip bomb stops at the cap), and
the folder is deleted afterwards. A single file is looked at as a one-file folder, so a random-bytes `.dcm` gets the
scanner's own one-line reason. Errors name the input by its base name only (a hospital path may carry a name).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import zipfile
from typing import Iterator

from jaxpetct.errors import UserError

MAX_UNZIPPED_BYTES = 8 * 2**30  # a paper-size study is ~1 GB of DICOM
MAX_FILES = 200_000
_CHUNK = 1 << 20


class InputError(UserError):
    """An input that cannot be opened; one line naming its base name and the reason."""


def _member_path(info: zipfile.ZipInfo, name: str) -> str:
    parts = [p for p in info.filename.replace("\\", "/").split("/") if p not in ("", ".")]
    if info.filename.startswith(("/", "\\")) or ":" in (parts[0] if parts else "") or ".." in parts:
        raise InputError(f"{name}: a member's path leaves the archive (absolute, drive letter or '..'): refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InputError(f"{name}: the archive holds a symbolic link: refused")
    return "/".join(parts)


def unzip(path: str, dest: str, *, max_bytes: int = MAX_UNZIPPED_BYTES, max_files: int = MAX_FILES) -> None:
    """Unpack `path` into `dest` under the caps above; InputError (one line) on anything unsafe or over a cap."""
    name = os.path.basename(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{name}: not a readable zip archive ({type(e).__name__})") from None
    written = 0
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > max_files:
            raise InputError(f"{name}: {len(members)} files, more than the limit of {max_files}")
        for info in members:
            rel = _member_path(info, name)
            if not rel:
                continue
            target = os.path.join(dest, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                with archive.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise InputError(f"{name}: unpacks to more than {_size(max_bytes)} (the limit; a zip "
                                             "bomb or an oversized upload)")
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
                raise InputError(f"{name}: a member cannot be unpacked ({type(e).__name__}: damaged or encrypted "
                                 "archive)") from None


def _size(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


@contextlib.contextmanager
def opened(path: str, *, max_bytes: int = MAX_UNZIPPED_BYTES) -> Iterator[str]:
    """A folder holding the input: the folder itself, or a temporary one (deleted on exit) for a zip or a file."""
    path = os.path.abspath(os.fspath(path))
    name = os.path.basename(path) or path
    if os.path.isdir(path):
        yield path
        return
    if not os.path.isfile(path):
        raise InputError(f"--study {name}: no such file or folder")
    tmp = tempfile.mkdtemp(prefix="jaxpetct-study-")
    try:
        if zipfile.is_zipfile(path):
            unzip(path, tmp, max_bytes=max_bytes)
        else:
            shutil.copyfile(path, os.path.join(tmp, os.path.basename(path)))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
