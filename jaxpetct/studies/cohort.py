"""Walk a cohort without loading it: the one API later stages use to find, split and read studies.

`list_studies(root)` works on a release root (a folder with metadata.csv) or on any folder of DICOM files and
returns picklable `StudyRef`s that carry what splitting needs (year, month) but no volume and no identifying
value, so they can be shipped to worker processes. `load_study` reads one; `iter_studies` reads many and keeps
going past bad ones, collecting a `Skipped` record (pseudonymous id, file, reason) for each.

DICOM carries no report text, so a DICOM study may bring its report as sidecar files in the folder that holds
all of its files (and no other study's): `report.json` and `report_en.json`, in the release's report schema.
The DICOM reader scrubs them with the study's own identifying header values.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import posixpath
from typing import Any, Iterable, Iterator, Optional

from jaxpetct.studies import deid, release
from jaxpetct.studies.study import Study, StudyError
from jaxpetct.text.report import Report, report_from_json

REPORT_SIDECAR, REPORT_EN_SIDECAR = "report.json", "report_en.json"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StudyRef:
    source: str  # "release" or "dicom"
    key: str  # stable, non-identifying handle within its root (release path stem, or the DICOM ref's own key)
    year: Optional[int]
    month: Optional[int]
    release: Optional[release.ReleaseRef] = None
    dicom: Any = None  # jaxpetct.studies.dicom.DicomStudyRef
    # DICOM only: sidecar report files relative to the DICOM root ("" = none); hidden from repr because
    # hospital folder names may carry a patient's name
    report_path: str = dataclasses.field(default="", repr=False)
    report_en_path: str = dataclasses.field(default="", repr=False)
    # DICOM only: for files without a CT+PET pair of their own inside another study's folder, that study (whose
    # identifiers may name the folder, so they scrub this study's error paths too)
    stray_in: Any = dataclasses.field(default=None, repr=False)

    @property
    def problem(self) -> Optional[str]:
        return self.release.problem if self.release is not None else None

    # release-key fields, so splits.release_key / expert matching work on StudyRefs directly
    @property
    def day(self) -> Optional[int]:
        return self.release.day if self.release is not None else None

    @property
    def patient(self) -> Optional[int]:
        return self.release.patient if self.release is not None else None


@dataclasses.dataclass(frozen=True)
class Skipped:
    study: str  # pseudonymous study id ("-" when not even that could be formed)
    file: str  # relative to the cohort root
    reason: str

    @classmethod
    def from_error(cls, err: StudyError) -> "Skipped":
        return cls(err.study, err.file, err.reason)


def is_release_root(root: str) -> bool:
    return os.path.isfile(os.path.join(root, release.MANIFEST))


def _dicom():
    from jaxpetct.studies import dicom  # the DICOM half; imported late so a release-only user never needs it

    return dicom


class StudyList(list):
    """The studies found, plus `skipped`: files that joined no study (DICOM scans), each with its reason."""

    def __init__(self, refs: Iterable[StudyRef] = (), skipped: Iterable[Skipped] = ()):
        super().__init__(refs)
        self.skipped: list[Skipped] = list(skipped)


def _study_folder(files: tuple[str, ...]) -> str:
    common = posixpath.commonpath(files) if files else ""
    return posixpath.dirname(common) if common in files else common


def _first_header(d):
    import pathlib

    from jaxpetct.studies import dicom_scan

    return dicom_scan.read_dataset(pathlib.Path(d.root) / d.files[0], headers_only=True)


def _year_month(d) -> tuple[Optional[int], Optional[int]]:
    """StudyDate (or SeriesDate) of the study's first file: one header read per study, pixels skipped."""
    from jaxpetct.studies import dicom_scan
    from jaxpetct.studies.suv import parse_da

    try:
        ds = _first_header(d)
        with dicom_scan.quiet():
            for key in ("StudyDate", "SeriesDate", "AcquisitionDate"):
                date = parse_da(ds.get(key))
                if date is not None:
                    return date.year, date.month
    except Exception:  # noqa: BLE001 - any header problem shows up again, as a StudyError, at load time
        pass
    return None, None


def _sidecars(root: str, folder: str, others: list[str]) -> tuple[str, str]:
    """Report sidecars in the nearest folder, from the study's own up to the root, that holds no other study."""
    while True:
        exclusive = not any(o == folder or folder == "" or o.startswith(folder + "/") for o in others)
        if not exclusive:
            return "", ""
        found = [posixpath.join(folder, n) if folder else n for n in (REPORT_SIDECAR, REPORT_EN_SIDECAR)]
        found = [p if os.path.isfile(os.path.join(root, p)) else "" for p in found]
        if any(found) or not folder:
            return found[0], found[1]
        folder = posixpath.dirname(folder)


def _inside(folder: str, other: str) -> bool:
    return other == "" or folder == other or folder.startswith(other + "/")


def _study_folders(found) -> list[str]:
    """Each study's folder, from the directories where it has more files than any other study: a file copied into
    another study's folder must not widen its own study's folder to the common parent of both."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for n, d in enumerate(found):
        for f in d.files:
            counts[posixpath.dirname(f)][n] += 1
    owner = {}
    for folder, per_study in counts.items():
        (first, c1), *rest = per_study.most_common(2)
        if not rest or c1 > rest[0][1]:
            owner[folder] = first
    return [_study_folder(tuple(f for f in d.files if owner.get(posixpath.dirname(f)) == n) or d.files)
            for n, d in enumerate(found)]


def _dicom_refs(root: str) -> StudyList:
    found = _dicom().find_dicom_studies(root)
    folders = _study_folders(found)
    # Only a study with both a CT and a PET series claims its folder: a file of another study dropped in by
    # mistake must not cost the study around it its report (it is refused as a stray instead).
    paired = [{"CT", "PT"} <= {s.modality for s in d.series} for d in found]
    refs = []
    for n, (d, folder) in enumerate(zip(found, folders)):
        claims = [f for m, (f, p) in enumerate(zip(folders, paired)) if p and m != n]
        report, report_en = _sidecars(root, folder, claims)
        year, month = _year_month(d)
        hosts = [] if paired[n] else [found[m] for m, (f, p) in enumerate(zip(folders, paired))
                                      if p and m != n and (_inside(folder, f) or _inside(f, folder))]
        refs.append(StudyRef("dicom", f"dicom#{d.index}", year, month, dicom=d, report_path=report,
                             report_en_path=report_en, stray_in=hosts[0] if hosts else None))
    sidecars = {p for r in refs for p in (r.report_path, r.report_en_path) if p}
    return StudyList(refs, [Skipped("-", s.file, s.reason) for s in getattr(found, "skipped", [])
                            if s.file not in sidecars])


def list_studies(root: str) -> StudyList:
    """Every study under `root`; StudyError only when the root itself is unusable (missing, unreadable manifest)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise StudyError("-", os.path.basename(os.path.normpath(root)) or root, "no such folder")
    if is_release_root(root):
        return StudyList(StudyRef("release", r.key, r.year, r.month, release=r) for r in release.read_manifest(root))
    return _dicom_refs(root)


def study_id(ref: StudyRef, salt: str) -> str:
    if ref.release is not None:
        return release.study_id(ref.release, salt)
    if ref.dicom is not None:
        return ref.dicom.study_id(salt)
    return deid.pseudonymize(ref.key, salt)


def _host_phi(d) -> set:
    try:
        from jaxpetct.studies.dicom_scan import phi_values

        return phi_values(_first_header(d))
    except Exception:  # noqa: BLE001 - without a header, fall back to pattern scrubbing only
        return set()


def _sidecar(ref: StudyRef, rel: str, salt: str) -> Optional[Report]:
    if not rel:
        return None
    try:
        with open(os.path.join(ref.dicom.root, rel), "rb") as f:
            return report_from_json(json.loads(f.read().decode("utf-8-sig")))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        # JSON/schema messages give positions and key numbers only, never file content; the path is scrubbed
        # with the study's own identifying values (folders are often named after the patient)
        raise StudyError(study_id(ref, salt), deid.scrub_text(rel, _host_phi(ref.dicom)),
                         f"not a valid report ({type(e).__name__}: {e})") from None


def load_study_with_notes(ref: StudyRef, *, salt: str) -> tuple[Study, list[str]]:
    """`load_study` plus the reader's notes on what it worked around (series not used, values ignored)."""
    if ref.release is not None:
        return release.read_release_study(ref.release, salt=salt), []
    if ref.dicom is not None:
        report, report_en = _sidecar(ref, ref.report_path, salt), _sidecar(ref, ref.report_en_path, salt)
        try:
            return _dicom().load_dicom_study(ref.dicom, salt=salt, report=report, report_en=report_en)
        except StudyError as e:
            if ref.stray_in is None:
                raise
            files = ref.dicom.files  # named afresh: scrubbed with both studies' identifiers in one pass
            rel = files[0] if len(files) == 1 else posixpath.commonpath(files)
            raise StudyError(e.study, deid.scrub_text(rel, _host_phi(ref.dicom) | _host_phi(ref.stray_in)),
                             f"stray DICOM file(s) of another study (a StudyInstanceUID of their own inside a CT+PET "
                             f"study's folder): {e.reason}") from None
    raise StudyError(study_id(ref, salt), "-", "reference has neither a release row nor a DICOM study")


def load_study(ref: StudyRef, *, salt: str) -> Study:
    """Read one study in physical units; raises StudyError (pseudonymous id, file, reason) on bad input."""
    return load_study_with_notes(ref, salt=salt)[0]


class CohortWalk(Iterator[Study]):
    """Iterator over the readable studies of `refs`; `skipped` fills with a record per unreadable one.

    Only StudyError (bad input) is absorbed; anything else is a bug and propagates.
    """

    def __init__(self, refs: Iterable[StudyRef], *, salt: str):
        self._refs = iter(refs)
        self._salt = salt
        self.skipped: list[Skipped] = []
        self.read = 0

    def __iter__(self) -> "CohortWalk":
        return self

    def __next__(self) -> Study:
        for ref in self._refs:
            try:
                study = load_study(ref, salt=self._salt)
            except StudyError as e:
                self.skipped.append(Skipped.from_error(e))
                log.warning("skipped %s", e)  # StudyError messages hold only pseudonyms and relative paths
                continue
            self.read += 1
            return study
        raise StopIteration


def iter_studies(refs: Iterable[StudyRef], *, salt: str) -> CohortWalk:
    return CohortWalk(refs, salt=salt)
