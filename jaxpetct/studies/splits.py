"""The paper's temporal splits (by acquisition month) and its expert-validated test set.

Temporal rule (paper_notes.md): in 2017 and 2019 month 11 validates and month 12 tests; in 2018 and 2023
month 10 validates and months 11-12 test; every other study trains. Splitting by time, not at random, keeps a
later period unseen, as a deployed model would meet it.

The expert test set is whatever studies have a file in an `expert_lesions/` folder, named
`PETCT_<year>_THANG <m>_<day>_patient_<n>_REPORT_patient_<n>.json`; the list is read from that folder at run
time, never embedded here.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Mapping, Optional, Sequence

TRAIN, VALIDATION, TEST = "train", "validation", "test"
UNASSIGNED = "unassigned"  # no usable year/month


@dataclasses.dataclass(frozen=True)
class SplitRule:
    validation_months: Mapping[int, tuple[int, ...]]
    test_months: Mapping[int, tuple[int, ...]]

    def split_of(self, year: Optional[int], month: Optional[int]) -> str:
        if year is None or month is None:
            return UNASSIGNED
        if month in self.test_months.get(year, ()):
            return TEST
        if month in self.validation_months.get(year, ()):
            return VALIDATION
        return TRAIN


PAPER_RULE = SplitRule(
    validation_months={2017: (11,), 2019: (11,), 2018: (10,), 2023: (10,)},
    test_months={2017: (12,), 2019: (12,), 2018: (11, 12), 2023: (11, 12)},
)


def split_of(year: Optional[int], month: Optional[int], rule: SplitRule = PAPER_RULE) -> str:
    return rule.split_of(year, month)


def split_refs(refs: Iterable, rule: SplitRule = PAPER_RULE) -> dict[str, list]:
    """Group anything with `.year`/`.month` (StudyRef, ReleaseRef, Metadata) by split, without loading volumes.
    Refs whose manifest row is unusable (`problem` set) or lack a date go to "unassigned"."""
    out: dict[str, list] = {TRAIN: [], VALIDATION: [], TEST: [], UNASSIGNED: []}
    for ref in refs:
        if getattr(ref, "problem", None):
            out[UNASSIGNED].append(ref)
        else:
            out[rule.split_of(ref.year, ref.month)].append(ref)
    return out


# --- expert test set -----------------------------------------------------------------------------------------

_EXPERT_RE = re.compile(r"PETCT_(\d{4})_THANG (\d{1,2})_(\d{1,2})_patient_(\d+)_REPORT_patient_(\d+)\.json")


@dataclasses.dataclass(frozen=True, order=True)
class ReleaseKey:
    """(year, month, day, patient number): how the release names a study across its folders."""

    year: int
    month: int
    day: int
    patient: int


def release_key(ref) -> Optional[ReleaseKey]:
    """The ReleaseKey of a ReleaseRef/StudyRef (None when it has no release identity, e.g. a DICOM study)."""
    inner = getattr(ref, "release", ref)
    fields = [getattr(inner, k, None) for k in ("year", "month", "day", "patient")]
    return None if None in fields else ReleaseKey(*fields)  # type: ignore[arg-type]


def parse_expert_name(name: str) -> ReleaseKey:
    m = _EXPERT_RE.fullmatch(name)
    if m is None:
        raise ValueError("not named PETCT_<year>_THANG <m>_<day>_patient_<n>_REPORT_patient_<n>.json")
    year, month, day, patient, patient2 = (int(g) for g in m.groups())
    if patient != patient2:
        raise ValueError("the two patient numbers in the name differ")
    if not 1 <= month <= 12:
        raise ValueError("month out of range")
    return ReleaseKey(year, month, day, patient)


def expert_name(key: ReleaseKey, day_text: Optional[str] = None) -> str:
    day = day_text if day_text is not None else str(key.day)
    return f"PETCT_{key.year}_THANG {key.month}_{day}_patient_{key.patient}_REPORT_patient_{key.patient}.json"


def read_expert_set(folder: str) -> tuple[set[ReleaseKey], list[tuple[str, str]]]:
    """Keys of the expert-annotated studies in `folder`, plus (file, reason) for files that are not such."""
    keys: set[ReleaseKey] = set()
    bad: list[tuple[str, str]] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise FileNotFoundError(f"expert folder {os.path.basename(folder)!r} cannot be listed ({e.strerror})") from None
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            keys.add(parse_expert_name(name))
        except ValueError as e:
            bad.append((name, str(e)))
    return keys, bad


def expert_refs(refs: Sequence, keys: set[ReleaseKey]) -> tuple[list, set[ReleaseKey]]:
    """The refs in the expert set, and the expert keys that match no ref (reported, never silently dropped)."""
    by_key = {}
    for ref in refs:
        k = release_key(ref)
        if k is not None and not getattr(ref, "problem", None):
            by_key[k] = ref
    found = [by_key[k] for k in sorted(keys) if k in by_key]
    return found, {k for k in keys if k not in by_key}
