"""Volume geometry for records and model inputs: trilinear resizing, region crops, CT windows, PET scaling.

Everything here is pure numpy on one example, so it runs inside Grain workers and Beam workers alike. Resizing
uses half-pixel centres with edge clamping, i.e. exactly `torch.nn.functional.interpolate(mode="trilinear",
align_corners=False)`, the call the reference CT-CLIP code makes to reach 140x480x480; the tests compare against
torch. PET and CT of a study cover the same field of view (the release's PET is CT's grid at half in-plane
resolution; the DICOM reader resamples PET onto the CT grid), so resizing both to one shape keeps them aligned.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Named CT windows (centre, width) in HU. "ctclip" is the reference encoder's [-1000, 1000] HU range.
CT_WINDOWS = {
    "soft": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "ctclip": (0.0, 2000.0),
}


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w1) of torch's linear upsampling with align_corners=False along one axis (float32 arithmetic,
    as torch's CPU kernel does it, so the two agree to rounding)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def resize(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Multilinear resize of the trailing len(shape) axes to `shape` (float32 out); separable, axis by axis.

    Axes that shrink most go first, so the intermediate arrays stay small at paper size (300x512x512 -> 140x480x480).
    """
    x = np.asarray(x, dtype=np.float32)
    shape = tuple(int(s) for s in shape)
    lead = x.ndim - len(shape)
    if lead < 0 or min(shape) < 1:
        raise ValueError(f"cannot resize an array of shape {x.shape} to {shape}")
    axes = sorted(range(len(shape)), key=lambda a: shape[a] / x.shape[lead + a])
    for a in axes:
        n_in, n_out = x.shape[lead + a], shape[a]
        if n_in == n_out:
            continue
        i0, i1, w1 = _axis_weights(n_in, n_out)
        bshape = [1] * x.ndim
        bshape[lead + a] = n_out
        lo = np.take(x, i0, axis=lead + a)
        hi = np.take(x, i1, axis=lead + a)
        hi -= lo  # in place: at paper size each temporary is half a gigabyte
        hi *= w1.reshape(bshape)
        lo += hi
        x = lo
    return np.ascontiguousarray(x, dtype=np.float32)


def resize_jax(x, shape: Sequence[int]):
    """The same resize as a pure, jittable JAX function (for resizing on device, inside a model's input path).

    `jax.image.resize` with antialias=False is half-pixel-centred linear interpolation with edge renormalisation,
    which equals torch's clamped align_corners=False sampling; antialias (JAX's default) would blur downsizing.
    """
    import jax

    shape = tuple(int(s) for s in shape)
    lead = tuple(x.shape[: x.ndim - len(shape)])
    return jax.image.resize(x, lead + shape, method="linear", antialias=False)


def crop_and_resize(data: np.ndarray, start: int, stop: int, shape: Sequence[int]) -> np.ndarray:
    """Slices [start, stop) of a (D, H, W) volume resized to `shape` (float32, physical units kept)."""
    if not 0 <= start < stop <= data.shape[0]:
        raise ValueError(f"slice range [{start}, {stop}) outside a volume of {data.shape[0]} slices")
    return resize(np.asarray(data[start:stop]), shape)


def resized_spacing(spacing_mm: Sequence[float], src_shape: Sequence[int], dst_shape: Sequence[int]) -> tuple:
    """Voxel spacing after resizing: the field of view is kept, so spacing scales by src/dst."""
    return tuple(float(s) * n / m for s, n, m in zip(spacing_mm, src_shape, dst_shape))


# --- model inputs ----------------------------------------------------------------------------------------------

def ct_window(hu: np.ndarray, window: str | tuple[float, float] = "ctclip", out_range: str = "unit", *,
              out: np.ndarray | None = None) -> np.ndarray:
    """HU clipped to a (centre, width) window and mapped to [0, 1] ("unit") or [-1, 1] ("symmetric").

    Works in place in `out` when given: at paper size every fresh array is 128 MB of page faults.
    """
    centre, width = CT_WINDOWS[window] if isinstance(window, str) else window
    if width <= 0:
        raise ValueError(f"CT window width must be positive, got {width}")
    x = _into(hu, out)
    x -= np.float32(centre - width / 2.0)
    x *= np.float32(1.0 / width)
    np.clip(x, 0.0, 1.0, out=x)
    return _range(x, out_range)


def pet_scaled(suv: np.ndarray, mode: str = "linear", max_value: float = 10.0, out_range: str = "unit", *,
               out: np.ndarray | None = None) -> np.ndarray:
    """PET to [0, 1]: "linear" = SUV / max clipped at 1; "log" = log1p(SUV) / log1p(max) clipped at 1.

    log keeps contrast among hot lesions (SUV 5 vs 15) that a linear clip at 10 flattens.
    """
    if max_value <= 0:
        raise ValueError(f"PET max value must be positive, got {max_value}")
    if mode not in ("linear", "log"):
        raise ValueError(f"PET scaling must be 'linear' or 'log', got {mode!r}")
    x = _into(suv, out)
    np.maximum(x, 0.0, out=x)
    if mode == "log":
        np.log1p(x, out=x)
    x *= np.float32(1.0 / (max_value if mode == "linear" else np.log1p(max_value)))
    np.minimum(x, 1.0, out=x)
    return _range(x, out_range)


def _into(values: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return np.array(values, dtype=np.float32, copy=True)
    out[...] = values
    return out


def _range(x: np.ndarray, out_range: str) -> np.ndarray:
    """[0, 1] as is, or mapped to [-1, 1] in place."""
    if out_range == "unit":
        return x
    if out_range == "symmetric":
        x *= 2.0
        x -= 1.0
        return x
    raise ValueError(f"out_range must be 'unit' or 'symmetric', got {out_range!r}")


def parse_channel(spec: str) -> tuple[str, str | tuple[float, float] | None]:
    """"pet" -> ("pet", None); "ct" -> ("ct", "ctclip"); "ct:lung" -> named window; "ct:40,400" -> (40, 400)."""
    if spec == "pet":
        return "pet", None
    if spec == "ct":
        return "ct", "ctclip"
    if spec.startswith("ct:"):
        w = spec[3:]
        if w in CT_WINDOWS:
            return "ct", w
        try:
            c, width = (float(v) for v in w.split(","))
        except ValueError:
            raise ValueError(f"channel {spec!r}: use ct:<{'|'.join(CT_WINDOWS)}> or ct:<centre>,<width>") from None
        return "ct", (c, width)
    raise ValueError(f"unknown channel {spec!r}: use 'pet', 'ct' or 'ct:<window>'")


def to_channels(ct_hu: np.ndarray, pet: np.ndarray, channels: Sequence[str], *, pet_mode: str = "linear",
                pet_max: float = 10.0, out_range: str = "unit") -> np.ndarray:
    """(C, ...) float32 model input, one channel per spec in `channels` (see parse_channel), written in place."""
    specs = [parse_channel(c) for c in channels]
    if not specs:
        raise ValueError("at least one channel is needed")
    out = np.empty((len(specs), *np.shape(ct_hu)), dtype=np.float32)
    for c, (kind, window) in enumerate(specs):
        if kind == "pet":
            pet_scaled(pet, pet_mode, pet_max, out_range, out=out[c])
        else:
            ct_window(ct_hu, window, out_range, out=out[c])
    return out
