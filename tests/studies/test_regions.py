"""Anatomical region split: real heights, configured overlap, ordering, adaptation to height, orientation."""
import csv

import pytest

from jaxpetct.studies import regions
from jaxpetct.text.report import ABDOMEN_PELVIS, CHEST, HEAD_NECK, MUSCULOSKELETAL

DEPTHS = (230, 275, 320)  # the release's typical slice counts
NOMINAL_MM = 3.0


def _check(split: regions.RegionSplit, depth: int, overlap: int):
    hn, ch, ab = split.regions
    assert (hn.section, ch.section, ab.section) == (HEAD_NECK, CHEST, ABDOMEN_PELVIS)
    assert hn.start == 0 and ab.stop == depth  # together they cover the whole volume
    assert hn.start < ch.start < ab.start and hn.stop < ch.stop < ab.stop  # ordered head to feet
    assert all(0 <= r.start < r.stop <= depth for r in split.regions)
    assert hn.stop - ch.start == overlap and ch.stop - ab.start == overlap  # shared slices, as configured
    cores = [(hn.start, ch.start), (hn.stop, ab.start), (ch.stop, ab.stop)]  # slices no neighbour shares
    assert all(b - a >= 4 for a, b in cores)
    assert split.pairs()[-1] == regions.Region("whole_body", MUSCULOSKELETAL, 0, depth)


def test_real_heights(realdata):
    with open(realdata / "metadata.csv", encoding="utf-8") as f:
        heights = [float(r["height"]) if r["height"] else None for r in csv.DictReader(f)]
    fallbacks, clamped, fractions = 0, 0, []
    for h in heights:
        for depth in DEPTHS:
            split = regions.split_regions(depth, NOMINAL_MM, h)
            _check(split, depth, 20)
            fallbacks += any("assumes" in n for n in split.notes)
            clamped += any("clamped" in n for n in split.notes)
            if depth == 275:
                fractions.append(split.regions[0].stop / depth)
    print(f"\nregion split on {len(heights)} real heights x depths {DEPTHS}: {fallbacks} height fallbacks, "
          f"{clamped} clamps; head-neck share at D=275: {min(fractions):.2f}..{max(fractions):.2f}")
    assert fallbacks == sum(1 for h in heights if h is None or not 0.6 <= h <= 2.3) * len(DEPTHS)


def test_ratios_adapt_to_height():
    stops = [regions.split_regions(300, NOMINAL_MM, h / 100).regions for h in range(140, 200, 2)]
    hn = [r[0].stop for r in stops]
    chest = [r[1].stop for r in stops]
    assert hn == sorted(hn) and chest == sorted(chest) and hn[-1] > hn[0] + 10
    # a child's head is a larger share of its height than an adult's
    assert regions.anatomical_cuts_mm(1.0)[0] / 1000 > regions.anatomical_cuts_mm(1.7)[0] / 1700


@pytest.mark.parametrize("overlap", [0, 1, 6, 20, 31])
def test_overlap_is_configurable(overlap):
    cfg = regions.RegionConfig(overlap_slices=overlap)
    for depth in (120, 260):
        _check(regions.split_regions(depth, NOMINAL_MM, 1.65, cfg), depth, overlap)


def test_feet_first_mirrors_and_fallbacks():
    head = regions.split_regions(250, 3.0, 1.7)
    feet = regions.split_regions(250, 3.0, 1.7, head_first=False)
    for a, b in zip(head.regions, feet.regions):
        assert (b.start, b.stop) == (250 - a.stop, 250 - a.start) and a.name == b.name
    assert regions.split_regions(250, 3.0, None).notes and regions.split_regions(250, 3.0, 0.41).height_used_m == 1.62
    _check(regions.split_regions(52, 3.0, 1.7), 52, 20)  # the shortest volume that keeps 20 shared slices
    short = regions.split_regions(40, 3.0, 1.7)
    _check(short, 40, 14)
    assert any("clamped" in n for n in short.notes) and any("overlap reduced" in n for n in short.notes)
    _check(regions.split_regions(12, 3.0, 1.7), 12, 0)
    with pytest.raises(ValueError, match="too short"):
        regions.split_regions(11, 3.0, 1.7)
    assert regions.head_first_of(((1, 0, 0), (0, 1, 0), (0, 0, -1))) and not regions.head_first_of(
        ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
