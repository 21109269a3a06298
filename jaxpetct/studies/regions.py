"""The paper's anatomical split of a whole-body volume into head–neck, chest and abdomen–pelvis.

The paper cuts each study along z into three overlapping regions "with ratios that adapt to patient height" and
pairs each with its findings section, but publishes no formula. Ours is anthropometric:

* The scan starts at the vertex (`scan_top_mm` below it; whole-body FDG scans here include the brain) and slices
  are `slice_mm` apart, so slice i covers body depths [top + i·dz, top + (i+1)·dz) below the vertex.
* Head–neck runs from the vertex to the thoracic inlet (shoulder line), chest from there to the lung bases /
  diaphragm; abdomen–pelvis is everything below. Their lengths are fractions of standing height H. Adult values
  follow classic segment proportions (shoulder line ≈ 0.818 H above the floor, i.e. ≈ 0.18 H below the vertex;
  lung bases ≈ 0.31 H below the vertex). Children carry a relatively larger head, so the fractions are
  piecewise-linear in H through the `*_knots` (height m, fraction) tables, flat beyond their ends.
* A cut at depth L falls at slice round((L − top)/dz). Each boundary then widens into `overlap_slices` shared
  slices (half above, half below the cut), and cuts are clamped so every region keeps ≥ `min_core_slices` of its
  own. A volume too short for that (fewer than 3·core + 2·overlap slices, e.g. a tiny synthetic one) gets a
  smaller overlap, with a note; only one under 3·core slices cannot be split.

Ratios therefore adapt to height twice: through H itself (a taller patient's head–neck spans more millimetres
and thus more slices of a fixed-spacing scan) and through the proportions. A height missing or outside
`plausible_height_m` (the release has a 0.41 m entry) falls back to `default_height_m` (the release median).
Musculoskeletal findings (Hệ cơ - xương) describe the whole skeleton, so that section pairs with the whole volume.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from jaxpetct.text.report import ABDOMEN_PELVIS, CHEST, HEAD_NECK, MUSCULOSKELETAL

REGION_SECTIONS = {"head_neck": HEAD_NECK, "chest": CHEST, "abdomen_pelvis": ABDOMEN_PELVIS}
WHOLE_BODY_SECTION = MUSCULOSKELETAL


@dataclasses.dataclass(frozen=True)
class RegionConfig:
    head_neck_knots: tuple[tuple[float, float], ...] = ((0.85, 0.235), (1.15, 0.205), (1.50, 0.185), (1.75, 0.18))
    chest_knots: tuple[tuple[float, float], ...] = ((0.85, 0.15), (1.50, 0.13))  # inlet -> lung bases
    overlap_slices: int = 20
    min_core_slices: int = 4
    scan_top_mm: float = 0.0
    default_height_m: float = 1.62
    plausible_height_m: tuple[float, float] = (0.6, 2.3)


@dataclasses.dataclass(frozen=True)
class Region:
    name: str  # head_neck / chest / abdomen_pelvis / whole_body
    section: str  # the findings section paired with it
    start: int  # slice range [start, stop) in array index order
    stop: int

    @property
    def slices(self) -> slice:
        return slice(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class RegionSplit:
    regions: tuple[Region, Region, Region]
    height_used_m: float
    notes: tuple[str, ...] = ()  # why a default or a clamp was used (for `inspect` problems)

    def pairs(self, include_whole_body: bool = True) -> list[Region]:
        """Each region with its findings section, plus the whole volume for the musculoskeletal section."""
        out = list(self.regions)
        if include_whole_body:
            depth = max(r.stop for r in self.regions)
            out.append(Region("whole_body", WHOLE_BODY_SECTION, 0, depth))
        return out

    def to_json(self) -> dict:
        return {r.name: {"slices": [r.start, r.stop], "section": r.section} for r in self.pairs()}


def interp_knots(knots: tuple[tuple[float, float], ...], x: float) -> float:
    """Piecewise-linear through (x, y) knots, constant beyond the ends."""
    pts = sorted(knots)
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


def anatomical_cuts_mm(height_m: float, config: RegionConfig = RegionConfig()) -> tuple[float, float]:
    """Depths below the vertex (mm) of the head–neck/chest and chest/abdomen–pelvis boundaries."""
    h_mm = 1000.0 * height_m
    hn = interp_knots(config.head_neck_knots, height_m) * h_mm
    return hn, hn + interp_knots(config.chest_knots, height_m) * h_mm


def resolve_height(height_m: Optional[float], config: RegionConfig = RegionConfig()) -> tuple[float, tuple[str, ...]]:
    lo, hi = config.plausible_height_m
    if height_m is None:
        return config.default_height_m, (f"height unknown: region split assumes {config.default_height_m} m",)
    if not lo <= height_m <= hi:
        return config.default_height_m, (
            f"height {height_m} m outside {lo}-{hi} m: region split assumes {config.default_height_m} m",)
    return float(height_m), ()


def split_regions(depth: int, slice_mm: float, height_m: Optional[float], config: RegionConfig = RegionConfig(),
                  *, head_first: bool = True) -> RegionSplit:
    """Slice ranges of the three regions of a `depth`-slice volume; ValueError when it is too short to split."""
    if slice_mm <= 0:
        raise ValueError(f"slice spacing must be positive, got {slice_mm}")
    if config.overlap_slices < 0 or config.min_core_slices < 1:
        raise ValueError("overlap_slices must be >= 0 and min_core_slices >= 1")
    height, notes = resolve_height(height_m, config)
    core = config.min_core_slices
    if depth < 3 * core:
        raise ValueError(f"a volume of {depth} slices is too short for three regions of >= {core} slices")
    overlap = min(config.overlap_slices, (depth - 3 * core) // 2)
    if overlap < config.overlap_slices:
        notes += (f"overlap reduced from {config.overlap_slices} to {overlap} slices to fit {depth} slices",)
    half = overlap // 2
    rest = overlap - half
    # Each region keeps >= `core` slices of its own: head [0, c1-rest), chest [c1+half, c2-rest), abdomen [c2+half, D).
    cut1_mm, cut2_mm = anatomical_cuts_mm(height, config)
    c1 = round((cut1_mm - config.scan_top_mm) / slice_mm)
    c2 = round((cut2_mm - config.scan_top_mm) / slice_mm)
    c1_clamped = min(max(c1, core + rest), depth - half - core - overlap - core)
    c2_clamped = min(max(c2, c1_clamped + overlap + core), depth - half - core)
    if (c1_clamped, c2_clamped) != (c1, c2):
        notes += (f"anatomical cuts at slices {c1}/{c2} clamped to {c1_clamped}/{c2_clamped} for a {depth}-slice volume",)
    bounds = ((0, c1_clamped + half), (c1_clamped - rest, c2_clamped + half), (c2_clamped - rest, depth))
    if not head_first:  # the head sits at the last index: mirror the ranges
        bounds = tuple((depth - b, depth - a) for a, b in bounds)
    regions = tuple(Region(name, REGION_SECTIONS[name], a, b) for name, (a, b) in zip(REGION_SECTIONS, bounds))
    return RegionSplit(regions, height, notes)  # type: ignore[arg-type]


def head_first_of(direction) -> bool:
    """True when slice index grows toward the feet: the slice axis points to −z in LPS patient coordinates."""
    return float(direction[2][2]) <= 0.0


def split_study(study, config: RegionConfig = RegionConfig()) -> RegionSplit:
    """`split_regions` for a loaded Study: depth, slice spacing and slice direction from its CT volume."""
    ct = study.ct
    return split_regions(ct.shape[0], float(ct.spacing_mm[0]), study.metadata.height_m, config,
                         head_first=head_first_of(ct.direction))
