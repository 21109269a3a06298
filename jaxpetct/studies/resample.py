"""Resampling PET onto the CT grid in patient (LPS, mm) coordinates.

PET and CT of one PET/CT study share a frame of reference but not a grid: PET voxels are ~4 mm, CT ~1 mm,
origins and slice ranges differ, and either stack may be stored top-down. Pairing slice i with slice i (as the
release does after its own export) is only right when the grids coincide, so each CT voxel centre is mapped
to its physical position, then into PET's continuous voxel index, and PET is interpolated trilinearly there.
Trilinear interpolation reproduces any function linear in position exactly, which is what the tests check.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from jaxpetct.studies.study import Volume

EDGE_SNAP = 1e-6  # voxels: indices this close outside the grid are rounding, not outside the field of view
GRID_SNAP = 1e-9  # voxels: indices this close to a voxel centre hit it (identical grids copy exactly)


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
    return inv @ a_dst, inv @ (b_dst - b_src)


def _snap(coords: np.ndarray, size: int) -> np.ndarray:
    nearest = np.rint(coords)
    coords = np.where(np.abs(coords - nearest) < GRID_SNAP, nearest, coords)
    coords = np.where((coords < 0) & (coords > -EDGE_SNAP), 0.0, coords)
    return np.where((coords > size - 1) & (coords < size - 1 + EDGE_SNAP), size - 1.0, coords)


def resample_to_grid(moving: Volume, grid: Volume, *, order: int = 1, cval: float = 0.0, dtype=np.float32,
                     chunk_slices: int = 16) -> Volume:
    """`moving` sampled at every voxel centre of `grid` (outside the moving field of view: `cval`).

    Works slab by slab so a 512x512 CT needs a few MB of coordinates at a time, not gigabytes.
    """
    t_mat, t_off = grid_to_grid(moving, grid)
    depth, rows, cols = grid.shape
    src = np.asarray(moving.data, dtype=np.float64)
    out = np.empty((depth, rows, cols), dtype=dtype)
    jj, ii = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    for k0 in range(0, depth, chunk_slices):
        ks = np.arange(k0, min(depth, k0 + chunk_slices), dtype=np.float64)
        idx = np.stack(np.broadcast_arrays(ks[:, None, None], jj[None], ii[None]), axis=0).reshape(3, -1)
        coords = t_mat @ idx + t_off[:, None]
        for axis in range(3):
            coords[axis] = _snap(coords[axis], src.shape[axis])
        vals = ndimage.map_coordinates(src, coords, order=order, mode="constant", cval=cval, prefilter=order > 1)
        out[k0:k0 + len(ks)] = vals.reshape(len(ks), rows, cols)
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
