"""A small synthetic cohort and its built datasets, shared by tests/tfds_builder and tests/data.

Eight studies (seed 3: train 4, validation 2, test 2, one expert-annotated) on grids small enough that every config
builds in seconds: volumes 16x32x32 (8x32x32 per comparison side), slices at the cohort's native 64x64 in-plane CT
grid, so CT slices are stored without resampling and must come back exactly.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from jaxpetct.studies import synthetic

N, SEED, SALT = 8, 3, "tests-salt"
VOLUME, SIDE, SLICE = (16, 32, 32), (8, 32, 32), (64, 64)
KINDS = ("regions", "study", "slices", "vqa", "comparison")


def write_cohort(root: str, n: int = N, seed: int = SEED):
    return synthetic.write_cohort(root, n, seed)


def shape_kwargs(kind: str) -> dict:
    if kind == "slices":
        return {"slice_shape": SLICE}
    return {"volume_shape": SIDE if kind == "comparison" else VOLUME}


def build(manual: str, data_dir: str, kind: str, **kw):
    from jaxpetct.data.build import build_dataset

    return build_dataset(manual, data_dir, kind, salt=SALT, progress=False, **shape_kwargs(kind), **kw)


def corrupt_copy(src: str, dst: str) -> dict:
    """A copy of the cohort with one truncated CT volume, one manifest row naming a missing PET file, and two reports
    holding a lone UTF-16 surrogate escape ("\\ud800": valid JSON, not text), one Vietnamese, one English.

    Returns {"truncated", "missing", "surrogate_vi", "surrogate_en"}: the release keys of the damaged studies.
    """
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "metadata.csv"), encoding="utf-8") as f:
        header, *rows = [line for line in f.read().splitlines() if line]
    first, second = rows[0].split(","), rows[1].split(",")
    ct_path = os.path.join(dst, first[6])
    with open(ct_path, "r+b") as f:
        f.truncate(os.path.getsize(ct_path) // 2)
    os.remove(os.path.join(dst, second[5]))
    third, fourth = rows[2].split(","), rows[3].split(",")
    for row, column in ((third, 7), (fourth, 8)):  # reports/, reports_en/
        path = os.path.join(dst, row[column])
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        impression = next(iter(report))
        report[impression] = report[impression][:5] + "\ud800" + report[impression][5:]
        with open(path, "w", encoding="ascii") as f:
            json.dump(report, f)  # ensure_ascii: the surrogate is written as the escape \ud800
    key = lambda r: r[6].replace("/CT/", "/").removesuffix(".npz")  # noqa: E731
    return {"truncated": key(first), "missing": key(second), "surrogate_vi": key(third), "surrogate_en": key(fourth)}


# Session fixtures; each tests folder's conftest imports them (one definition, built once per folder's session).
@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    return write_cohort(str(tmp_path_factory.mktemp("cohort") / "manual"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def built(cohort, data_dir):
    """config kind -> BuildSummary of the plain build of the clean cohort."""
    return {kind: build(cohort.root, data_dir, kind) for kind in KINDS}
