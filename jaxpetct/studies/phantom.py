"""Analytic whole-body PET/CT phantoms: a body, physiological FDG uptake, and lesions of known size and SUVmax.

Everything is defined in body coordinates (mm): `t` depth below the vertex (slice axis, head first), `y`
anterior(−)/posterior(+), `x` patient right(−)/left(+) as in DICOM LPS. Shapes are evaluated at the voxel centres
of any grid, so CT (fine) and PET (2x coarser in-plane) are rendered from the same anatomy. Organ depths are
fractions of height H chosen to agree with regions.py's anthropometric cuts (head–neck above ≈0.18 H, chest to
≈0.31 H), so a lesion's site fixes its region and report section.

Lesion centres sit on PET voxel centres and the PET profile peaks there, so the stored SUVmax is exactly the
maximum of the PET image over the lesion: the truth a model (or test) can read back.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Grid:
    """Voxel centres: t_k = (k + 1/2)·dz (slice 0 starts at the vertex), y_j = y0 + j·dy, x_i = x0 + i·dx."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    y0: float
    x0: float

    @classmethod
    def centred(cls, shape, spacing) -> "Grid":
        d, h, w = shape
        return cls(tuple(shape), tuple(float(s) for s in spacing), -(h - 1) / 2 * spacing[1], -(w - 1) / 2 * spacing[2])

    def axes(self):
        d, h, w = self.shape
        dz, dy, dx = self.spacing
        return (np.arange(d) + 0.5) * dz, self.y0 + np.arange(h) * dy, self.x0 + np.arange(w) * dx

    def index_of(self, t: float, y: float, x: float) -> tuple[int, int, int]:
        dz, dy, dx = self.spacing
        return int(round(t / dz - 0.5)), int(round((y - self.y0) / dy)), int(round((x - self.x0) / dx))

    def centre_of(self, k: int, j: int, i: int) -> tuple[float, float, float]:
        dz, dy, dx = self.spacing
        return (k + 0.5) * dz, self.y0 + j * dy, self.x0 + i * dx


@dataclasses.dataclass(frozen=True)
class Ellipsoid:
    centre: tuple[float, float, float]  # (t, y, x) mm
    semi: tuple[float, float, float]  # semi-axes (t, y, x) mm

    def norm2(self, t, y, x):
        """Squared normalised radius on the broadcast grid (t[:,None,None], y[None,:,None], x[None,None,:])."""
        ct, cy, cx = self.centre
        at, ay, ax = self.semi
        return ((t - ct) / at) ** 2 + ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2

    def bounds(self):
        return tuple((c - a, c + a) for c, a in zip(self.centre, self.semi))

    def shrunk(self, by: float) -> "Ellipsoid":
        return Ellipsoid(self.centre, tuple(max(a - by, 1e-3) for a in self.semi))


@dataclasses.dataclass(frozen=True)
class Cylinder:
    """Elliptic cylinder along t from t0 to t1."""

    t0: float
    t1: float
    centre: tuple[float, float]  # (y, x)
    semi: tuple[float, float]

    def norm2(self, t, y, x):
        inside_t = np.where((t >= self.t0) & (t <= self.t1), 0.0, np.inf)
        return inside_t + ((y - self.centre[0]) / self.semi[0]) ** 2 + ((x - self.centre[1]) / self.semi[1]) ** 2

    def bounds(self):
        (cy, cx), (ay, ax) = self.centre, self.semi
        return (self.t0, self.t1), (cy - ay, cy + ay), (cx - ax, cx + ax)

    def shrunk(self, by: float) -> "Cylinder":
        return Cylinder(self.t0, self.t1, self.centre, tuple(max(a - by, 1e-3) for a in self.semi))


def _box(grid: Grid, shape):
    """Index ranges of the grid whose voxel centres can fall inside `shape`, and the coordinates there."""
    axes = grid.axes()
    sl = []
    for (lo, hi), ax in zip(shape.bounds(), axes):
        a = int(np.searchsorted(ax, lo, side="left"))
        b = int(np.searchsorted(ax, hi, side="right"))
        sl.append(slice(a, b))
    t, y, x = (ax[s] for ax, s in zip(axes, sl))
    return tuple(sl), t[:, None, None], y[None, :, None], x[None, None, :]


def paint(vol: np.ndarray, grid: Grid, shape, value: float) -> None:
    sl, t, y, x = _box(grid, shape)
    if min(s.stop - s.start for s in sl) <= 0:
        return
    sub = vol[sl]
    sub[shape.norm2(t, y, x) <= 1.0] = value


def paint_peak(vol: np.ndarray, grid: Grid, shape: Ellipsoid, peak: float, rim: float = 0.55) -> None:
    """Lesion uptake: peak at the centre falling to `rim`·peak at the edge, replacing what was there."""
    sl, t, y, x = _box(grid, shape)
    if min(s.stop - s.start for s in sl) <= 0:
        return
    r2 = shape.norm2(t, y, x)
    sub = vol[sl]
    inside = r2 <= 1.0
    sub[inside] = (peak * (1.0 - (1.0 - rim) * r2))[inside]


def mask_of(grid: Grid, shape) -> np.ndarray:
    t, y, x = grid.axes()
    return shape.norm2(t[:, None, None], y[None, :, None], x[None, None, :]) <= 1.0


# --- anatomy -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Organ:
    name: str
    shape: object
    hu: float
    suv: float


@dataclasses.dataclass(frozen=True)
class Anatomy:
    height_mm: float
    scale: float  # body girth factor from BMI
    organs: tuple[Organ, ...]  # painted in order

    def organ(self, name: str) -> Organ:
        return next(o for o in self.organs if o.name == name)


def body_scale(height_m: float, weight_kg: float) -> float:
    bmi = weight_kg / (height_m * height_m)
    return float(np.clip(math.sqrt(bmi / 22.0), 0.85, 1.25))


def make_anatomy(height_m: float, weight_kg: float, scan_mm: float, uptake: dict[str, float]) -> Anatomy:
    """Body outline (fat over muscle), skull and brain, spine, lungs, heart, liver, kidneys, bladder, pelvis,
    femurs. `uptake` holds the physiological SUVs that vary per study (brain, heart, liver, bladder)."""
    H, f = 1000.0 * height_m, body_scale(height_m, weight_kg)
    fat = 12.0 * f
    trunk_ay, trunk_ax = 115.0 * f, 165.0 * f
    head = Ellipsoid((0.068 * H, 0.0, 0.0), (0.066 * H, 95.0, 78.0))
    neck = Cylinder(0.11 * H, 0.20 * H, (10.0, 0.0), (60.0 * f, 58.0 * f))
    trunk = Cylinder(0.175 * H, 0.53 * H, (0.0, 0.0), (trunk_ay, trunk_ax))
    legs = [Cylinder(0.50 * H, scan_mm + 1.0, (0.0, s * 95.0 * f), (75.0 * f, 72.0 * f)) for s in (-1, 1)]
    organs = []
    for name, part in (("head", head), ("neck", neck), ("trunk", trunk), ("leg_r", legs[0]), ("leg_l", legs[1])):
        organs.append(Organ(name + "_fat", part, -95.0, 0.35))
        organs.append(Organ(name, part.shrunk(fat if name != "head" else 4.0), 42.0, 0.9))
    organs += [
        Organ("skull", head.shrunk(6.0), 850.0, 1.2),
        Organ("brain", head.shrunk(14.0), 34.0, uptake["brain"]),
        Organ("lung_r", Ellipsoid((0.255 * H, -6.0, -0.43 * trunk_ax), (0.055 * H, 0.62 * trunk_ay, 0.30 * trunk_ax)),
              -820.0, 0.45),
        Organ("lung_l", Ellipsoid((0.255 * H, -6.0, 0.43 * trunk_ax), (0.055 * H, 0.62 * trunk_ay, 0.30 * trunk_ax)),
              -820.0, 0.45),
        Organ("heart", Ellipsoid((0.275 * H, -25.0, 25.0), (0.03 * H, 48.0, 55.0)), 40.0, uptake["heart"]),
        Organ("liver", Ellipsoid((0.345 * H, -8.0, -50.0 * f), (0.04 * H, 0.70 * trunk_ay, 0.46 * trunk_ax)),
              58.0, uptake["liver"]),
        Organ("kidney_r", Ellipsoid((0.40 * H, 45.0, -70.0 * f), (0.03 * H, 30.0, 28.0)), 32.0, 2.4),
        Organ("kidney_l", Ellipsoid((0.40 * H, 45.0, 70.0 * f), (0.03 * H, 30.0, 28.0)), 32.0, 2.4),
        Organ("bladder", Ellipsoid((0.495 * H, -30.0, 0.0), (0.022 * H, 40.0, 45.0)), 8.0, uptake["bladder"]),
        Organ("cervical_spine", Cylinder(0.12 * H, 0.19 * H, (28.0, 0.0), (12.0, 12.0)), 450.0, 1.7),
        Organ("spine", Cylinder(0.185 * H, 0.45 * H, (0.55 * trunk_ay, 0.0), (18.0, 18.0)), 450.0, 1.7),
        Organ("ilium_r", Ellipsoid((0.455 * H, 20.0, -95.0 * f), (0.03 * H, 45.0, 22.0)), 420.0, 1.5),
        Organ("ilium_l", Ellipsoid((0.455 * H, 20.0, 95.0 * f), (0.03 * H, 45.0, 22.0)), 420.0, 1.5),
        Organ("femur_r", Cylinder(0.50 * H, scan_mm + 1.0, (0.0, -95.0 * f), (16.0, 16.0)), 700.0, 0.8),
        Organ("femur_l", Cylinder(0.50 * H, scan_mm + 1.0, (0.0, 95.0 * f), (16.0, 16.0)), 700.0, 0.8),
    ]
    return Anatomy(H, f, tuple(organs))


def render_anatomy(anatomy: Anatomy, grid: Grid, field: str) -> np.ndarray:
    """CT (field "hu", air −1000) or PET (field "suv", air 0) of the lesion-free body on `grid`, float32."""
    vol = np.full(grid.shape, -1000.0 if field == "hu" else 0.0, dtype=np.float32)
    for organ in anatomy.organs:
        paint(vol, grid, organ.shape, getattr(organ, field))
    return vol


@dataclasses.dataclass(frozen=True)
class PlacedLesion:
    """A lesion in body coordinates with what both images and the report need."""

    site: str  # key into synthetic_reports.SITES
    shape: Ellipsoid
    hu: float
    suvmax: Optional[float]  # None: not FDG-avid (e.g. a cyst); PET then shows `cold_suv`
    cold_suv: float = 0.3
    halo_hu: Optional[float] = None  # fat around lymph nodes, so they stand out on CT

    @property
    def diameters_mm(self) -> tuple[int, int]:
        """In-plane size as reported: (left-right, antero-posterior) diameters in whole mm."""
        return int(round(2 * self.shape.semi[2])), int(round(2 * self.shape.semi[1]))


def render_lesions(vol: np.ndarray, grid: Grid, lesions, field: str) -> None:
    for les in lesions:
        if field == "hu":
            if les.halo_hu is not None:
                paint(vol, grid, Ellipsoid(les.shape.centre, tuple(a + 4.0 for a in les.shape.semi)), les.halo_hu)
            paint(vol, grid, les.shape, les.hu)
        elif les.suvmax is None:
            paint(vol, grid, les.shape, les.cold_suv)
        else:
            paint_peak(vol, grid, les.shape, les.suvmax)
