"""A minimal PNG encoder (zlib only) so study pages embed their images without Pillow or matplotlib.

8-bit grayscale (H, W) or RGB (H, W, 3), no interlace, filter 0 on every row: the smallest valid PNG (RFC 2083);
compression is left to zlib. Images here are a few hundred pixels on a side, so simplicity beats filter search.
"""
from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image, (H, W) grayscale or (H, W, 3) RGB."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"PNG encoder takes uint8 pixels, got {a.dtype}")
    if a.ndim == 2:
        color = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        color = 2
    else:
        raise ValueError(f"PNG encoder takes (H, W) or (H, W, 3) arrays, got shape {a.shape}")
    h, w = a.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"cannot encode an empty image of shape {a.shape}")
    rows = np.ascontiguousarray(a).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 before each row
    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
