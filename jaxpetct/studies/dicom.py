"""Raw hospital PET/CT DICOM in, de-identified `Study` out: CT in HU, PET in SUVbw on the CT grid.

Flow: `find_dicom_studies` (headers only, see dicom_scan) -> `read_dicom_study` per study: read every file of
the study (pixels deferred) and collect its identifying values first, so any message about any file can be
scrubbed; pick one CT and one PET series; build each volume (dicom_series); convert PET to SUVbw (suv); check
that PET and CT share a frame of reference and overlap; resample PET onto the CT grid (resample).

Pick rule when a study holds several series of a modality: localizers (ImageType LOCALIZER) are never used;
for PET, attenuation-corrected series (CorrectedImage has ATTN, or says nothing) come first; then the series
with more files, then the lower SeriesNumber. Candidates are tried in that order and the first that yields a
valid volume (and, for PET, a valid SUVbw) wins; the others are named in the notes. When none works the error
is the first candidate's.

Privacy: the study id is a salted pseudonym of StudyInstanceUID; errors name the pseudonym, a path relative to
the input root and a reason, all scrubbed with the study's own identifying values (folder names often hold the
patient's name); reports handed in are scrubbed the same way; ages above 89 are reported as 90.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import pathlib
import posixpath
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np

from jaxpetct.studies import physics
from jaxpetct.studies.deid import Scrubber
from jaxpetct.studies.dicom_scan import (DicomSeriesRef, DicomStudyList, DicomStudyRef, Skipped, describe,
                                         find_dicom_studies, phi_values, quiet, read_dataset)
from jaxpetct.studies.dicom_series import SeriesError, build_volume
from jaxpetct.studies.resample import overlap_fraction, resample_to_grid
from jaxpetct.studies.study import Metadata, Study, StudyError, Volume
from jaxpetct.studies.suv import SuvError, parse_da, pet_dose_from_headers, suvbw_factor
from jaxpetct.text.report import Report

__all__ = ["DicomStudyRef", "DicomStudyList", "DicomFolderResult", "Skipped", "find_dicom_studies",
           "read_dicom_study", "load_dicom_study", "read_dicom_volume", "read_dicom_folder"]

log = logging.getLogger(__name__)
MAX_REPORTED_AGE = 90  # HIPAA Safe Harbor: ages above 89 are aggregated


@dataclasses.dataclass
class _Context:
    """A study being read: its pseudonym, parsed files, unreadable files and the scrubber built from its PHI."""

    ref: DicomStudyRef
    study_id: str
    datasets: dict[str, Any]
    unreadable: dict[str, str]
    scrub: Callable[[str], str]  # for paths and messages: also single parts of person names
    scrub_report: Callable[[str], str]  # for clinical text: whole identifying values only

    def error(self, file: str, reason: str) -> StudyError:
        return StudyError(self.study_id, self.scrub(file), self.scrub(reason))

    def folder(self) -> str:
        """The study's own folder (or its single file): what a study-level error points at."""
        files = self.ref.files
        if len(files) == 1:
            return files[0]
        common = posixpath.commonpath(files) if files else ""
        return common or "."


def _open(ref: DicomStudyRef, salt: str) -> _Context:
    root = pathlib.Path(ref.root)
    datasets, unreadable, phi = {}, {}, {ref.study_uid}
    for rel in ref.files:
        try:
            ds = read_dataset(root / rel, headers_only=False)
        except Exception as exc:  # recorded; the series holding it fails with this reason
            unreadable[rel] = describe(exc, root)
            continue
        datasets[rel] = ds
        phi |= phi_values(ds)
    return _Context(ref, ref.study_id(salt), datasets, unreadable, Scrubber(phi, name_parts=True), Scrubber(phi))


def _candidates(ref: DicomStudyRef, modality: str) -> list[DicomSeriesRef]:
    series = [s for s in ref.series if s.modality == modality]
    return sorted(series, key=lambda s: (s.is_localizer, not s.attenuation_corrected, -len(s.files),
                                         s.series_number if s.series_number is not None else 1 << 30))


def _series_volume(ctx: _Context, series: DicomSeriesRef) -> tuple[Volume, list[Any], list[str]]:
    if series.conflict:
        raise SeriesError(series.files[0], series.conflict)
    if series.is_localizer:
        raise SeriesError(series.files[0], "localizer (scout) series: not a volume")
    for rel in series.files:
        if rel in ctx.unreadable:
            raise SeriesError(rel, f"unreadable file: {ctx.unreadable[rel]}")
    items = [(rel, ctx.datasets[rel]) for rel in series.files]
    if series.modality == "CT":
        volume, headers, files, notes = build_volume(items, "HU")
        return volume, headers, notes
    units = str(items[0][1].get("Units", "") or "").strip().upper()
    volume, headers, files, notes = build_volume(items, "BQML" if units == "BQML" else "raw")
    declared = str(headers[0].get("NumberOfSlices", "") or "").strip()
    if declared.isdigit() and int(declared) != len(files):  # PET states its slice count: a lost edge shows
        raise SeriesError(files[0], f"PET series has {len(files)} slices but NumberOfSlices is {declared} "
                                    "(missing or extra files)")
    try:
        with quiet():
            factor = suvbw_factor(pet_dose_from_headers(headers))
    except SuvError as exc:
        raise SeriesError(files[0], str(exc)) from None
    for file, ds in zip(files, headers):
        if str(ds.get("Units", "") or "").strip().upper() != units:
            raise SeriesError(file, "mixed series: PET Units differ between slices")
    data = (volume.data.astype(np.float64) * factor).astype(np.float32)
    return dataclasses.replace(volume, data=data, units="SUVbw"), headers, notes


def _pick(ctx: _Context, modality: str) -> tuple[Volume, list[Any], list[str], DicomSeriesRef]:
    name = "CT" if modality == "CT" else "PET"
    candidates = _candidates(ctx.ref, modality)
    if not candidates:
        raise ctx.error(ctx.folder(), f"no {name} series in this study")
    failures: list[SeriesError] = []
    for series in candidates:
        try:
            volume, headers, notes = _series_volume(ctx, series)
        except SeriesError as exc:
            failures.append(exc)
            continue
        except Exception as exc:  # malformed values pydicom cannot convert: bad input, never a crash
            failures.append(SeriesError(series.files[0], f"malformed header ({describe(exc, pathlib.Path('.'))})"))
            continue
        notes = [f"{name} series #{series.series_number}: {n}" for n in notes]
        notes += [f"{name} series not used: {f.file}: {f.reason}" for f in failures]
        others = [s for s in candidates if s is not series][len(failures):]
        notes += [f"{name} series #{s.series_number} ({len(s.files)} files) not used: "
                  + ("localizer (scout)" if s.is_localizer else "lower in the pick order") for s in others]
        return volume, headers, [ctx.scrub(n) for n in notes], series
    first = failures[0]
    more = f" ({len(failures) - 1} other {name} series unusable too)" if len(failures) > 1 else ""
    raise ctx.error(first.file, f"no usable {name} series: {first.reason}{more}")


def _metadata(headers: Sequence[Any], notes: list[str]) -> Metadata:
    ds = headers[0]

    def text(key: str) -> str:
        with quiet():
            return str(ds.get(key, "") or "").strip().upper()

    sex = text("PatientSex")
    with quiet():
        date = None
        for key in ("StudyDate", "SeriesDate", "AcquisitionDate"):
            try:
                date = parse_da(ds.get(key))
            except SuvError:
                date = None
            if date:
                break
        age = _age(text("PatientAge"), ds.get("PatientBirthDate"), date)
        height = _plausible(ds.get("PatientSize"), 0.3, 2.6, "PatientSize (m)", notes)
        weight = _plausible(ds.get("PatientWeight"), 1.0, 400.0, "PatientWeight (kg)", notes)
    return Metadata(sex=sex if sex in ("M", "F") else None, age_years=age, height_m=height, weight_kg=weight,
                    year=date.year if date else None, month=date.month if date else None)


def _age(age_string: str, birth: Any, date: Optional[dt.date]) -> Optional[int]:
    """PatientAge (nnnY/M/W/D), else from birth date and study date; the birth date itself is never kept."""
    years: Optional[int] = None
    m = re.fullmatch(r"(\d{1,3})([YMWD])", age_string)
    if m:
        n = int(m.group(1))
        years = n if m.group(2) == "Y" else n // {"M": 12, "W": 52, "D": 365}[m.group(2)]
    elif date is not None:
        try:
            born = parse_da(birth)
        except SuvError:
            born = None
        if born is not None and born <= date:
            years = date.year - born.year - ((date.month, date.day) < (born.month, born.day))
    return None if years is None else min(years, MAX_REPORTED_AGE)


def _plausible(value: Any, low: float, high: float, name: str, notes: list[str]) -> Optional[float]:
    try:
        v = float(value) if value is not None and str(value).strip() else None
    except (TypeError, ValueError):
        v = None
    if v is not None and not low <= v <= high:
        notes.append(f"{name} outside [{low:g}, {high:g}]: not kept")
        return None
    return v


def _scrub_report(report: Optional[Report], scrub: Callable[[str], str]) -> Optional[Report]:
    if report is None:
        return None
    return Report(impression=scrub(report.impression), findings={k: scrub(v) for k, v in report.findings.items()})


def load_dicom_study(ref: DicomStudyRef, *, salt: str, report: Optional[Report] = None,
                     report_en: Optional[Report] = None) -> tuple[Study, list[str]]:
    """The study and its notes (series not used, duplicates dropped, implausible values ignored), all scrubbed."""
    with quiet():
        return _load(ref, salt, report, report_en)


def _load(ref: DicomStudyRef, salt: str, report: Optional[Report],
          report_en: Optional[Report]) -> tuple[Study, list[str]]:
    ctx = _open(ref, salt)
    ct, ct_headers, ct_notes, ct_series = _pick(ctx, "CT")
    pet, pet_headers, pet_notes, pet_series = _pick(ctx, "PT")
    try:
        physics.check_volumes(ct, pet)
    except physics.PhysicsError as e:
        raise ctx.error((ct_series if e.modality == "CT" else pet_series).files[0], e.reason) from None
    try:
        return _assemble(ctx, ct, ct_headers, pet, pet_headers, pet_series, ct_notes + pet_notes, report, report_en)
    except StudyError:
        raise
    except Exception as exc:  # malformed values in the chosen series' headers
        raise ctx.error(pet_series.files[0], f"malformed header ({describe(exc, pathlib.Path('.'))})") from None


def _assemble(ctx: _Context, ct: Volume, ct_headers: list, pet: Volume, pet_headers: list,
              pet_series: DicomSeriesRef, notes: list[str], report: Optional[Report],
              report_en: Optional[Report]) -> tuple[Study, list[str]]:
    ct_for = str(ct_headers[0].get("FrameOfReferenceUID", "") or "")
    pet_for = str(pet_headers[0].get("FrameOfReferenceUID", "") or "")
    pet_file = pet_series.files[0]
    if ct_for and pet_for and ct_for != pet_for:
        raise ctx.error(pet_file, "CT and PET have different FrameOfReferenceUIDs: they are not co-registered "
                                  "(registration is not supported)")
    if not (ct_for and pet_for):
        notes.append("FrameOfReferenceUID missing: CT and PET are assumed to share patient coordinates")
    if overlap_fraction(pet, ct) == 0.0:
        raise ctx.error(pet_file, "PET and CT fields of view do not overlap")
    pet_on_ct = resample_to_grid(pet, ct)
    metadata = _metadata(ct_headers, notes)
    if metadata.weight_kg is None:
        metadata = dataclasses.replace(metadata, weight_kg=_metadata(pet_headers, notes).weight_kg)
    study = Study(study_id=ctx.study_id, ct=ct, pet=pet_on_ct, metadata=metadata,
                  report=_scrub_report(report, ctx.scrub_report),
                  report_en=_scrub_report(report_en, ctx.scrub_report),
                  source="dicom")
    notes = [ctx.scrub(n) for n in notes]
    for n in notes:
        log.info("study %s: %s", ctx.study_id, n)
    return study, notes


def read_dicom_study(ref: DicomStudyRef, *, salt: str, report: Optional[Report] = None,
                     report_en: Optional[Report] = None) -> Study:
    """CT in HU and PET in SUVbw resampled onto the CT grid; raises StudyError (scrubbed) on bad input."""
    return load_dicom_study(ref, salt=salt, report=report, report_en=report_en)[0]


def read_dicom_volume(ref: DicomStudyRef, modality: str, *, salt: str) -> tuple[Volume, list[str]]:
    """One modality on its own grid: "CT" in HU or "PT" in SUVbw (e.g. to inspect a CT-only study)."""
    if modality not in ("CT", "PT"):
        raise ValueError("modality must be 'CT' or 'PT'")
    with quiet():
        ctx = _open(ref, salt)
        volume, _, notes, _ = _pick(ctx, modality)
    return volume, notes


@dataclasses.dataclass
class DicomFolderResult:
    studies: list[Study]
    errors: list[StudyError]  # studies that could not be read, each naming pseudonym, file and reason
    skipped: list[Skipped]  # files that joined no study


def read_dicom_folder(root, *, salt: str) -> DicomFolderResult:
    """Every study under `root`; a bad study is reported and the rest are still read."""
    refs = find_dicom_studies(root)
    studies, errors = [], []
    for ref in refs:
        try:
            studies.append(read_dicom_study(ref, salt=salt))
        except StudyError as exc:
            log.warning("skipping %s", exc)
            errors.append(exc)
    return DicomFolderResult(studies, errors, list(refs.skipped))
