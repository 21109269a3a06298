"""Resampling PET onto the CT grid in patient (LPS, mm) coordinates.

PET and CT of one PET/CT study share a frame of reference but not a grid: PET voxels are ~4 mm, CT ~1 mm,
origins and slice ranges differ, and either stack may be stored top-down. Pairing slice i with slice i (as the
release does after its own export) is only right when the grids coincide, so each CT voxel centre is mapped
to its physical position, then into PET's continuous voxel index, and PET is interpolated trilinearly there
(outside PET's field of view: 0).
Trilinear interpolation reproduces any function linear in position exactly, which is what the tests check.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from jaxpetct.studies.study import Volume

EDGE_SNAP = 1e-6  # voxels: indices this close outside the grid are rounding, not outside the field of view
MATRIX_SNAP = 1e-12  # transform entries this close to an integer are that integer (identical grids copy exactly)


def index_to_world(vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with position = A @ [k, j, i] + b for data index (slice, row, column)."""
    m = np.asarray(vol.direction, dtype=np.float64)
    ss, sr, sc = (float(s) for s in vol.spacing_mm)
    a = np.stack([m[:, 2] * ss, m[:, 1] * sr, m[:, 0] * sc], axis=1)
    return a, np.asarray(vol.origin_mm, dtype=np.float64)


def world_to_index(vol: Volume, points: np.ndarray) -> np.ndarray:
    """Continuous (k, j, i) indices of LPS points (..., 3)."""
    a, b = index_to_world(vol)
    return np.linalg.solve(a, (np.asarray(points, np.float64) - b).reshape(-1, 3).T).T.reshape(points.shape)


def grid_to_grid(src: Volume, dst: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(T, t): the continuous index into `src` of the centre of voxel idx of `dst` is T @ idx + t."""
    a_src, b_src = index_to_world(src)
    a_dst, b_dst = index_to_world(dst)
    inv = np.linalg.inv(a_src)
    t_mat, t_off = inv @ a_dst, inv @ (b_dst - b_src)
    snap = lambda x: np.where(np.abs(x - np.rint(x)) < MATRIX_SNAP, np.rint(x), x)  # noqa: E731
    return snap(t_mat), snap(t_off)


def _inside_columns(t_mat, t_off, src_shape, ks, rows) -> tuple[np.ndarray, np.ndarray]:
    """Per output row (k, j): the column range [lo, hi] whose centres fall inside the source grid.

    Index along each source axis is affine in the output column i, so "inside" is one interval per row;
    the mask costs O(rows), not O(voxels).
    """
    k = np.asarray(ks, np.float64)[:, None]
    j = np.arange(rows, dtype=np.float64)[None, :]
    lo = np.full((len(ks), rows), -np.inf)
    hi = np.full((len(ks), rows), np.inf)
    for axis in range(3):
        base = t_mat[axis, 0] * k + t_mat[axis, 1] * j + t_off[axis]
        step = t_mat[axis, 2]
        low_edge, high_edge = -EDGE_SNAP - base, src_shape[axis] - 1 + EDGE_SNAP - base
        if abs(step) < 1e-15:
            outside = (low_edge > 0) | (high_edge < 0)
            lo = np.where(outside, np.inf, lo)
            continue
        a, b = low_edge / step, high_edge / step
        lo = np.maximum(lo, np.minimum(a, b))
        hi = np.minimum(hi, np.maximum(a, b))
    return np.ceil(lo), np.floor(hi)


def resample_to_grid(moving: Volume, grid: Volume, *, order: int = 1, cval: float = 0.0, dtype=np.float32,
                     chunk_slices: int = 32) -> Volume:
    """`moving` sampled at every voxel centre of `grid` (outside the moving field of view: `cval`).

    scipy.ndimage.affine_transform evaluates the same spline kernel as map_coordinates (trilinear for
    order 1) without materialising coordinate arrays; edge voxels are clamped ("nearest") so centres a
    rounding error outside the source still hit it, and everything truly outside is then set to `cval`.
    """
    t_mat, t_off = grid_to_grid(moving, grid)
    depth, rows, cols = grid.shape
    src = np.asarray(moving.data)
    if not np.issubdtype(src.dtype, np.floating):
        src = src.astype(np.float64)
    out = np.empty((depth, rows, cols), dtype=dtype)
    col = np.arange(cols)[None, None, :]
    for k0 in range(0, depth, chunk_slices):
        ks = np.arange(k0, min(depth, k0 + chunk_slices))
        slab = ndimage.affine_transform(src, t_mat, offset=t_off + t_mat[:, 0] * k0,
                                        output_shape=(len(ks), rows, cols), output=np.float64, order=order,
                                        mode="nearest", prefilter=order > 1)
        lo, hi = _inside_columns(t_mat, t_off, src.shape, ks, rows)
        slab[(col < lo[..., None]) | (col > hi[..., None])] = cval
        out[k0:k0 + len(ks)] = slab
    return dataclasses.replace(grid, data=out, units=moving.units)


def overlap_fraction(moving: Volume, grid: Volume) -> float:
    """Share of `grid`'s corner-to-corner extent whose centres fall inside `moving` (0: disjoint fields of view)."""
    t_mat, t_off = grid_to_grid(moving, grid)
    # Sample a coarse lattice of the grid: enough to tell "no overlap" from "partial" without a full pass.
    axes = [np.linspace(0, n - 1, num=min(n, 9)) for n in grid.shape]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0).reshape(3, -1)
    coords = t_mat @ idx + t_off[:, None]
    inside = np.all((coords >= -EDGE_SNAP) & (coords <= np.asarray(moving.shape)[:, None] - 1 + EDGE_SNAP), axis=0)
    return float(inside.mean())
