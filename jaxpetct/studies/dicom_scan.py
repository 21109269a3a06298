"""Discovery of CT and PET series anywhere under a folder, reading headers only.

Hospital exports nest folders arbitrarily, name files anything (or nothing), and mix in DICOMDIR indexes,
localizers, other modalities and stray files. So nothing here trusts names or layout: every regular file is
parsed as DICOM (headers only, `stop_before_pixels`), files are grouped by StudyInstanceUID, then by
(SeriesInstanceUID, Modality), and whatever cannot join a study is recorded with a reason instead of raising.

The refs carry paths and UIDs but print neither: UIDs and folder names are identifiers too. Every recorded
path and reason is scrubbed with all identifying values seen during the scan, since a hospital folder is often
named after its patient.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import pathlib
import re
import warnings
from typing import Iterable, Optional

import pydicom
from pydicom.errors import InvalidDicomError

from jaxpetct.studies.deid import Scrubber, pseudonymize
from jaxpetct.studies.study import StudyError

log = logging.getLogger(__name__)

MODALITIES = ("CT", "PT")
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Identifying attributes (DICOM PS3.15 Basic Profile, the ones hospitals fill in). Their values are collected
# only to be scrubbed from paths, messages and reports; they never leave this module otherwise.
PHI_KEYWORDS = frozenset({
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate", "PatientBirthTime",
    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "AccessionNumber",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName", "OperatorsName",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician", "StudyID", "MedicalRecordLocator",
    "StationName", "IssuerOfPatientID", "PatientComments", "AdditionalPatientHistory", "AdmissionID",
    "RequestedProcedureID", "PerformedProcedureStepID", "ScheduledProcedureStepID", "RegionOfResidence",
    "MilitaryRank", "BranchOfService", "Occupation", "DeviceSerialNumber", "StudyDate", "StudyInstanceUID",
    "FrameOfReferenceUID",
})  # Series/SOP instance UIDs are left to the scrubber's UID pattern: thousands per study, never printed


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def quiet():
    """pydicom warns and logs about odd values by quoting them ("Invalid value for VR PN: '...'"): such
    messages would carry PHI into logs, so both channels are muted while we touch data sets."""
    drop = _DropAll()
    pydicom_log = logging.getLogger("pydicom")
    pydicom_log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_log.removeFilter(drop)


def read_dataset(path: pathlib.Path, *, headers_only: bool) -> pydicom.Dataset:
    """Parse one file; files without the DICM preamble are accepted only if they open on a group-0008 element.

    Pixel data is deferred when not skipped, so headers of a whole study can be read before any volume is built.
    """
    kwargs = {"stop_before_pixels": True} if headers_only else {"defer_size": "64 KB"}
    with quiet():
        try:
            return pydicom.dcmread(path, **kwargs)
        except InvalidDicomError:
            with open(path, "rb") as fh:
                head = fh.read(4)
            if len(head) == 4 and head[:2] == b"\x08\x00":  # raw dataset starting at (0008,xxxx)
                return _with_transfer_syntax(pydicom.dcmread(path, force=True, **kwargs))
            raise


def _with_transfer_syntax(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A raw data set has no file meta; record the encoding it was parsed with, or its pixels cannot decode."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        ds.file_meta = meta if meta is not None else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                                          pydicom.uid.ExplicitVRLittleEndian if little else
                                          pydicom.uid.ExplicitVRBigEndian)
    return ds


def describe(exc: BaseException, root: pathlib.Path) -> str:
    """An exception as a short reason without absolute paths (the caller still scrubs PHI)."""
    if isinstance(exc, InvalidDicomError):
        return "not a DICOM file (no DICM preamble and no DICOM data set at its start)"
    msg = str(exc).replace(str(root.resolve()), "<root>").replace(str(root), "<root>")
    msg = re.sub(r"\s+", " ", msg).strip()[:160]
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


_PHI_TAGS = frozenset(int(pydicom.datadict.tag_for_keyword(k)) for k in PHI_KEYWORDS)


def phi_values(ds: pydicom.Dataset) -> set[str]:
    """Every identifying value in a data set, nested sequences included, as strings (PN also by component).

    Only identifying elements (and sequences) are decoded: converting every element of every file would cost
    more than reading the files.
    """
    out: set[str] = set()
    with quiet():
        _collect(ds, out, depth=0)
    return out


def _collect(ds: pydicom.Dataset, out: set[str], depth: int) -> None:
    for tag in list(ds.keys()):
        try:
            raw = ds.get_item(tag)
            vr = getattr(raw, "VR", None)
            if vr is None:
                vr = pydicom.datadict.dictionary_VR(tag) if pydicom.datadict.dictionary_has_tag(tag) else "UN"
            if vr == "SQ":
                if depth < 8:
                    for item in ds[tag].value:
                        _collect(item, out, depth + 1)
                continue
            if int(tag) not in _PHI_TAGS and vr != "PN":
                continue
            value = ds[tag].value
        except Exception:  # a broken element must not stop collection of the others
            continue
        values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        for v in values:
            if isinstance(v, bytes):
                v = v.decode("utf-8", "ignore")
            text = str(v).strip(" \x00")
            if text and vr == "PN" and "^" not in text:
                text += "^"  # marks a one-component person name as a name for the scrubber
            if text:
                out.add(text)
                out.update(p for p in text.split("=") if p.strip())  # PN alphabetic=ideographic=phonetic


def _tag(ds: pydicom.Dataset, keyword: str) -> str:
    with quiet():
        try:
            v = ds.get(keyword)
        except Exception:
            return ""
    return str(v).strip(" \x00") if v is not None else ""


def _multi(ds: pydicom.Dataset, keyword: str) -> tuple[str, ...]:
    with quiet():
        try:
            v = ds.get(keyword)
        except Exception:
            return ()
    if v is None:
        return ()
    items = list(v) if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else str(v).split("\\")
    return tuple(str(x).strip(" \x00").upper() for x in items if str(x).strip(" \x00"))


def _safe_code(value: str) -> str:
    """Print a coded string (Modality, Units) only when it looks like a code, never free text."""
    return value if re.fullmatch(r"[A-Z0-9_ ]{1,16}", value or "") else "unrecognised"


@dataclasses.dataclass(frozen=True)
class Skipped:
    file: str  # path relative to the scanned root, scrubbed
    reason: str


@dataclasses.dataclass(frozen=True, repr=False)
class DicomSeriesRef:
    modality: str  # "CT" or "PT"
    series_uid: str
    files: tuple[str, ...]  # relative POSIX paths
    series_number: Optional[int]
    image_type: tuple[str, ...]
    corrected_image: tuple[str, ...]
    conflict: str = ""  # set when this SeriesInstanceUID also holds files of another modality

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type

    @property
    def attenuation_corrected(self) -> bool:
        return not self.corrected_image or "ATTN" in self.corrected_image

    def __repr__(self) -> str:
        return f"DicomSeriesRef({self.modality}, #{self.series_number}, {len(self.files)} files)"


@dataclasses.dataclass(frozen=True, repr=False)
class DicomStudyRef:
    """One study found under `root`: picklable, and its repr shows neither paths nor UIDs."""

    index: int
    root: str
    study_uid: str
    series: tuple[DicomSeriesRef, ...]

    def study_id(self, salt: str) -> str:
        return pseudonymize(self.study_uid, salt)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for s in self.series for f in s.files)

    def __repr__(self) -> str:
        n_ct = sum(s.modality == "CT" for s in self.series)
        n_pt = sum(s.modality == "PT" for s in self.series)
        return f"DicomStudyRef(#{self.index}: {n_ct} CT + {n_pt} PET series, {len(self.files)} files)"

    __str__ = __repr__


class DicomStudyList(list):
    """The studies found, plus `skipped`: files that joined no study, each with its reason."""

    def __init__(self, studies: Iterable[DicomStudyRef] = (), skipped: Iterable[Skipped] = ()):
        super().__init__(studies)
        self.skipped: list[Skipped] = list(skipped)


def find_dicom_studies(root) -> DicomStudyList:
    """All studies holding CT or PET images under `root`, in a deterministic order (sorted walk)."""
    with quiet():
        return _find(root)


def _series_refs(study_uid: str, by_series: dict, first_header: dict) -> tuple:
    """One study's DicomSeriesRefs, in (series UID, modality) order; a UID shared by CT and PT files is flagged."""
    modalities_of = collections.defaultdict(set)
    for series_uid, modality in by_series:
        modalities_of[series_uid].add(modality)
    series = []
    for (series_uid, modality), files in sorted(by_series.items()):
        first = first_header[(study_uid, series_uid, modality)]
        number = _tag(first, "SeriesNumber")
        series.append(DicomSeriesRef(
            modality=modality, series_uid=series_uid, files=tuple(files),
            series_number=int(number) if re.fullmatch(r"-?\d+", number) else None,
            image_type=_multi(first, "ImageType"), corrected_image=_multi(first, "CorrectedImage"),
            conflict="files of modalities CT and PT share one SeriesInstanceUID (mixed series)"
            if len(modalities_of[series_uid]) > 1 else ""))
    return tuple(series)


def _find(root) -> DicomStudyList:
    root = pathlib.Path(root)
    if not root.is_dir():
        raise StudyError("-", ".", "the DICOM input is not an existing folder")
    groups: dict[str, dict[tuple[str, str], list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    first_header: dict[tuple[str, str, str], pydicom.Dataset] = {}  # one header per series, not one per file
    skipped: list[Skipped] = []
    phi: set[str] = set()
    n_files = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = pathlib.Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if name.startswith(".tmp-") and name.endswith(".part"):
                continue  # a writer's temp file in flight
            if not path.is_file():
                skipped.append(Skipped(rel, "not a regular file"))
                continue
            n_files += 1
            try:
                ds = read_dataset(path, headers_only=True)
            except Exception as exc:  # any parse failure: the file is recorded, the scan goes on
                skipped.append(Skipped(rel, describe(exc, root)))
                continue
            phi |= phi_values(ds)
            modality, study_uid, series_uid = (_tag(ds, k) for k in ("Modality", "StudyInstanceUID",
                                                                      "SeriesInstanceUID"))
            sop_class = _tag(getattr(ds, "file_meta", pydicom.Dataset()), "MediaStorageSOPClassUID")
            if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
                skipped.append(Skipped(rel, "DICOMDIR index, not an image"))
            elif modality not in MODALITIES:
                skipped.append(Skipped(rel, f"modality {_safe_code(modality) if modality else 'missing'} "
                                            "is neither CT nor PT"))
            elif not study_uid or not series_uid:
                skipped.append(Skipped(rel, "missing StudyInstanceUID or SeriesInstanceUID: cannot group it"))
            else:
                groups[study_uid][(series_uid, modality)].append(rel)
                first_header.setdefault((study_uid, series_uid, modality), ds)
    studies = [DicomStudyRef(index, os.path.abspath(root), study_uid,
                             _series_refs(study_uid, groups[study_uid], first_header))
               for index, study_uid in enumerate(sorted(groups))]
    scrub = Scrubber(phi, name_parts=True)
    skipped = [Skipped(scrub(s.file), scrub(s.reason)) for s in skipped]
    log.info("DICOM scan: %d files, %d studies, %d files skipped", n_files, len(studies), len(skipped))
    for s in skipped:
        log.debug("skipped %s: %s", s.file, s.reason)
    return DicomStudyList(studies, skipped)
