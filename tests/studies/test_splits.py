"""Temporal splits (paper rule) on the real manifest, and the expert test set read from its folder."""
import csv
import json
import re

import pytest

from jaxpetct.studies import cohort, release, splits
from jaxpetct.text.lesion import Lesion

# The paper's split, restated from paper_notes.md independently of splits.PAPER_RULE.
RULE_TEXT = {2017: ({11}, {12}), 2019: ({11}, {12}), 2018: ({10}, {11, 12}), 2023: ({10}, {11, 12})}
PAPER_COUNTS = {"train": 1857, "validation": 325, "test": 575}


def _expected(year: int, month: int) -> str:
    val, test = RULE_TEXT.get(year, (set(), set()))
    return "test" if month in test else "validation" if month in val else "train"


@pytest.mark.parametrize("year,month,split", [(2017, 11, "validation"), (2017, 12, "test"), (2017, 10, "train"),
                                              (2018, 10, "validation"), (2018, 11, "test"), (2018, 12, "test"),
                                              (2018, 9, "train"), (2019, 11, "validation"), (2019, 12, "test"),
                                              (2023, 10, "validation"), (2023, 11, "test"), (2023, 1, "train"),
                                              (2020, 12, "train"), (None, 5, "unassigned")])
def test_rule(year, month, split):
    assert splits.split_of(year, month) == split


def test_real_split_counts(realdata):
    refs = cohort.list_studies(str(realdata))
    groups = splits.split_refs(refs)
    with open(realdata / "metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = {"train": 0, "validation": 0, "test": 0}
    for row in rows:  # split recomputed from the raw path text, independently of the reader
        m = re.match(r"PETCT(\d{4})/THANG (\d+)/", row["ct_path"])
        expected[_expected(int(m.group(1)), int(m.group(2)))] += 1
    counts = {k: len(v) for k, v in groups.items()}
    print(f"\nreal temporal split: {counts} (paper: ≈{PAPER_COUNTS})")
    assert counts == {**expected, "unassigned": 0}
    for ref in groups["validation"] + groups["test"]:
        assert ref.year in RULE_TEXT
    assert not any(r.month in (11, 12) and r.year in (2018, 2023) for r in groups["train"] + groups["validation"])
    for name, n in PAPER_COUNTS.items():  # the paper states approximate counts
        assert abs(counts[name] - n) <= 0.02 * n


def test_real_expert_set(realdata):
    keys, bad = splits.read_expert_set(str(realdata / "expert_lesions"))
    refs = cohort.list_studies(str(realdata))
    found, missing = splits.expert_refs(refs, keys)
    n_lesions = 0
    for key in keys:
        [path] = [p for p in (realdata / "expert_lesions").iterdir()
                  if splits.parse_expert_name(p.name) == key]
        n_lesions += len([Lesion.from_json(obj) for obj in json.loads(path.read_text("utf-8"))])
    print(f"\nexpert set: {len(keys)} files, {len(found)} matched in metadata.csv, {n_lesions} lesions, "
          f"splits {sorted({splits.split_of(r.year, r.month) for r in found})}")
    assert bad == [] and missing == set() and len(found) == len(keys) >= 30
    assert all(splits.split_of(r.year, r.month) == splits.TEST for r in found)


def test_expert_names_are_validated(tmp_path):
    good = "PETCT_2019_THANG 12_04_patient_276_REPORT_patient_276.json"
    for name in (good, "PETCT_2019_THANG 12_4_patient_7_REPORT_patient_8.json", "notes.json",
                 "PETCT_2019_THANG 13_4_patient_7_REPORT_patient_7.json", "README.md"):
        (tmp_path / name).write_text("[]", "utf-8")
    keys, bad = splits.read_expert_set(str(tmp_path))
    assert keys == {splits.ReleaseKey(2019, 12, 4, 276)}
    assert sorted(name for name, _ in bad) == sorted([
        "PETCT_2019_THANG 12_4_patient_7_REPORT_patient_8.json", "notes.json",
        "PETCT_2019_THANG 13_4_patient_7_REPORT_patient_7.json"])
    with pytest.raises(FileNotFoundError):
        splits.read_expert_set(str(tmp_path / "absent"))


def test_synthetic_cohort_splits_and_expert_set(tiny_cohort):
    refs = cohort.list_studies(str(tiny_cohort))
    groups = splits.split_refs(refs)
    assert all(groups[s] for s in (splits.TRAIN, splits.VALIDATION, splits.TEST)) and not groups["unassigned"]
    keys, bad = splits.read_expert_set(str(tiny_cohort / "expert_lesions"))
    found, missing = splits.expert_refs(refs, keys)
    assert bad == [] and missing == set() and found
    assert {r.key for r in found} <= {r.key for r in groups[splits.TEST]}
    assert all(release.parse_release_path(r.release.ct_path)[0] == r.year for r in found)
