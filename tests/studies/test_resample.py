"""PET -> CT resampling in patient coordinates is exact on an analytic phantom.

A field linear in position, f(p) = a.p + c, is reproduced exactly by trilinear interpolation, so sampling it
on a PET grid and resampling onto a CT grid must give f at every CT voxel centre inside the PET field of view
(and 0 outside), whatever the spacings, origins, orientations and slice orders of the two grids.
"""
import dataclasses

import numpy as np
import pytest

from jaxpetct.studies.resample import index_to_world, overlap_fraction, resample_to_grid, world_to_index
from jaxpetct.studies.study import Volume


def _orthonormal(rng, proper: bool) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 2] = -q[:, 2]  # a stack stored in the other slice order
    return q


def _centres(vol: Volume) -> np.ndarray:
    """Voxel centres (D, H, W, 3) written out axis by axis, independently of resample.index_to_world."""
    m = np.asarray(vol.direction)
    ss, sr, sc = vol.spacing_mm
    k, j, i = np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij")
    return (np.asarray(vol.origin_mm) + i[..., None] * sc * m[:, 0] + j[..., None] * sr * m[:, 1]
            + k[..., None] * ss * m[:, 2])


def _case(seed: int):
    rng = np.random.default_rng(seed)
    ct_dir = np.eye(3) if seed % 3 == 0 else _orthonormal(rng, proper=seed % 2 == 0)
    ct = Volume(np.zeros((6, 9, 8)), tuple(rng.uniform(0.7, 3.0, 3)), "HU", tuple(rng.uniform(-50, 50, 3)),
                tuple(map(tuple, ct_dir)))
    pet_dir = ct_dir if seed % 4 == 1 else _orthonormal(rng, proper=seed % 5 != 0)
    pet_spacing = rng.uniform(2.0, 5.0, 3)  # (slice, row, column)
    pts = _centres(ct).reshape(-1, 3)
    u = (pts - 0.0) @ pet_dir  # coordinates along the PET column, row and slice axes
    step = pet_spacing[[2, 1, 0]]
    low = u.min(axis=0) + rng.uniform(-0.6, 0.6, 3) * step  # sometimes CT pokes out of the PET grid
    count = np.ceil((u.max(axis=0) - low) / step).astype(int) + 1 - rng.integers(0, 2, 3)
    origin = pet_dir @ low
    pet = Volume(np.zeros(tuple(count[[2, 1, 0]])), tuple(pet_spacing), "SUVbw", tuple(origin),
                 tuple(map(tuple, pet_dir)))
    return ct, pet, rng.normal(size=3), float(rng.normal())


@pytest.mark.parametrize("seed", range(12))
def test_linear_field_is_reproduced_exactly(seed):
    ct, pet, a, c = _case(seed)
    pet = dataclasses.replace(pet, data=_centres(pet) @ a + c)
    out = resample_to_grid(pet, ct, dtype=np.float64)
    assert out.shape == ct.shape and out.units == "SUVbw" and out.origin_mm == ct.origin_mm

    p = _centres(ct)
    m = np.asarray(pet.direction)
    idx = ((p - np.asarray(pet.origin_mm)) @ m) / np.asarray(pet.spacing_mm)[[2, 1, 0]]  # (i, j, k)
    hi = np.asarray(pet.shape)[[2, 1, 0]] - 1
    inside = np.all((idx >= 0) & (idx <= hi), axis=-1)
    near_edge = np.any((np.abs(idx) < 1e-6) | (np.abs(idx - hi) < 1e-6), axis=-1)
    expected = np.where(inside, p @ a + c, 0.0)
    check = ~near_edge
    np.testing.assert_allclose(out.data[check], expected[check], atol=1e-9 * (1 + np.abs(p @ a).max()))
    assert inside.sum() > 0.2 * inside.size
    print(f"seed {seed}: {int(inside.sum())}/{inside.size} CT voxels inside PET, max error "
          f"{float(np.abs(out.data[check] - expected[check]).max()):.2e}")


def test_any_case_has_voxels_outside_the_pet_field_of_view():
    outside = 0
    for seed in range(12):
        ct, pet, a, c = _case(seed)
        out = resample_to_grid(dataclasses.replace(pet, data=np.ones(pet.shape)), ct, dtype=np.float64)
        outside += int((out.data == 0).sum())
    assert outside > 0  # the zero fill outside PET is exercised, not only the interior


def test_identical_grids_are_copied_exactly():
    rng = np.random.default_rng(3)
    grid = Volume(rng.random((4, 5, 6)), (2.0, 1.5, 1.25), "SUVbw", (3.0, -2.0, 7.0), tuple(
        map(tuple, _orthonormal(rng, proper=True))))
    np.testing.assert_array_equal(resample_to_grid(grid, grid, dtype=np.float64).data, grid.data)


def test_world_index_round_trip_and_overlap():
    ct, pet, _, _ = _case(5)
    idx = np.array([[0.0, 0.0, 0.0], [1.5, 2.25, 3.0]])
    a, b = index_to_world(ct)
    np.testing.assert_allclose(world_to_index(ct, idx @ a.T + b), idx, atol=1e-12)
    assert 0.0 < overlap_fraction(pet, ct) <= 1.0
    far = dataclasses.replace(pet, origin_mm=tuple(np.asarray(pet.origin_mm) + 1e4))
    assert overlap_fraction(far, ct) == 0.0
