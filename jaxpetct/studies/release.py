"""Reader for the public ViMed-PET release layout: metadata.csv + NPZ volumes + JSON reports.

Layout (relative to the release root):
    metadata.csv                          name,sex,height,weight,year,pet_path,ct_path,report_path,report_en_path
    PETCT<year>/THANG <m>/CT/day_<d>_patient_<n>.npz       key `data`, int16 (D, H, W)
    PETCT<year>/THANG <m>/PET/day_<d>_patient_<n>.npz      key `data`, int16 (D, H/2, W/2), same D
    PETCT<year>/THANG <m>/reports/day_<d>_patient_<n>.json  {"Nhận định kết quả", "Mô tả hình ảnh": {4 regions}}
    PETCT<year>/THANG <m>/reports_en/day_<d>_patient_<n>.json
    encoding.json                         optional: what the int16 values mean (see below)

Names such as `patient_12` repeat across years, so a study's identity is its path stem `key`
("PETCT2017/THANG 8/day_1_patient_0"); the study id handed downstream is a salted pseudonym of that key.

Intensity encoding. A volume value is `stored * scale + offset` in `units`. Without encoding.json the release
defaults apply: CT int16 is HU (scale 1); PET int16 is an undocumented vendor scale, so its units are "raw" and
no SUV can be claimed. A cohort that knows better writes encoding.json, e.g. the synthetic cohort:

    {"format": "jaxpetct.release-encoding", "version": 1, "slice_order": "head_first",
     "ct":  {"units": "HU",    "scale": 1.0,   "offset": 0.0, "spacing_mm": [dz, dy, dx]},
     "pet": {"units": "SUVbw", "scale": 0.001, "offset": 0.0, "spacing_mm": [dz, 2 dy, 2 dx]}}

PET int16 = round(SUVbw x 1000) recovers SUV to 5e-4 (exactly for one-decimal SUVmax values) up to SUV 32.7.

Geometry. Release NPZ files carry no geometry. Unless encoding.json gives `spacing_mm`, spacing is nominal
(`geometry_known=False`): NOMINAL_SLICE_MM between slices and a NOMINAL_FOV_MM transaxial field of view shared by
CT and PET (so a PET voxel covers exactly 2x2 CT voxels). Both grids are centred on the scanner axis; slice 0 is
the head end unless `slice_order` says "feet_first" (an assumption for the real release, which documents neither).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from typing import Optional

import numpy as np

from jaxpetct.studies import deid, npz, physics
from jaxpetct.studies.study import Metadata, Study, StudyError, Volume
from jaxpetct.text.report import Report, report_from_json

NOMINAL_SLICE_MM = 3.0
NOMINAL_FOV_MM = 500.0
MANIFEST = "metadata.csv"
ENCODING = "encoding.json"
COLUMNS = ("name", "sex", "height", "weight", "year", "pet_path", "ct_path", "report_path", "report_en_path")
VALID_UNITS = ("HU", "SUVbw", "BQML", "raw")
_PATH_RE = re.compile(r"PETCT(\d{4})/THANG (\d{1,2})/(CT|PET|reports|reports_en)/day_(\d{1,2})_patient_(\d+)\.(npz|json)")
_FOLDER_EXT = {"CT": "npz", "PET": "npz", "reports": "json", "reports_en": "json"}


@dataclasses.dataclass(frozen=True)
class ModalityEncoding:
    units: str
    scale: float = 1.0
    offset: float = 0.0
    spacing_mm: Optional[tuple[float, float, float]] = None  # None: nominal geometry

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0


@dataclasses.dataclass(frozen=True)
class ReleaseEncoding:
    ct: ModalityEncoding = ModalityEncoding("HU")
    pet: ModalityEncoding = ModalityEncoding("raw")
    slice_order: str = "head_first"


DEFAULT_ENCODING = ReleaseEncoding()


@dataclasses.dataclass(frozen=True)
class ReleaseRef:
    """One manifest row, parsed and checked but with no volume read. Picklable; holds no identifying value.

    `problem` is set when the row itself is unusable (loading it raises StudyError with that reason), so that
    a cohort walk reports bad rows like any other bad study instead of losing them at listing time.
    """

    root: str
    key: str  # "PETCT2017/THANG 8/day_1_patient_0", or "metadata.csv row N" when the paths are unusable
    year: Optional[int]
    month: Optional[int]
    day: Optional[int]
    patient: Optional[int]
    name: str = ""  # the release's own pseudonym ("patient_12"; repeats across years)
    ct_path: str = ""
    pet_path: str = ""
    report_path: str = ""
    report_en_path: str = ""
    sex: Optional[str] = None
    height_m: Optional[float] = None
    weight_kg: Optional[float] = None
    encoding: ReleaseEncoding = DEFAULT_ENCODING
    problem: Optional[str] = None
    row: int = 0  # 1-based line number in metadata.csv (the header is line 1)


def study_id(ref: ReleaseRef, salt: str) -> str:
    return deid.pseudonymize(ref.key, salt)


def parse_release_path(rel: str) -> tuple[int, int, str, str, str, str]:
    """(year, month, folder, day, patient, ext) of a release-relative path; ValueError when it is not one."""
    m = _PATH_RE.fullmatch(rel)
    if m is None:
        raise ValueError("path is not of the form PETCT<year>/THANG <m>/<CT|PET|reports|reports_en>/day_<d>_patient_<n>")
    year, month, folder, day, patient, ext = m.groups()
    if _FOLDER_EXT[folder] != ext:
        raise ValueError(f"{folder}/ files must be .{_FOLDER_EXT[folder]}")
    if not 1 <= int(month) <= 12 or not 1 <= int(day) <= 31:
        raise ValueError("month or day out of range")
    return int(year), int(month), folder, day, patient, ext


# --- encoding.json -------------------------------------------------------------------------------------------

def _modality(obj: object, name: str) -> ModalityEncoding:
    if not isinstance(obj, dict):
        raise ValueError(f"{name} must be an object")
    units = obj.get("units")
    if units not in VALID_UNITS:
        raise ValueError(f"{name}.units must be one of {VALID_UNITS}")
    scale, offset = obj.get("scale", 1.0), obj.get("offset", 0.0)
    for label, v in (("scale", scale), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}.{label} must be a finite number")
    if scale == 0:
        raise ValueError(f"{name}.scale must not be 0")
    spacing = obj.get("spacing_mm")
    if spacing is not None:
        ok = isinstance(spacing, list) and len(spacing) == 3 and all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in spacing)
        if not ok:
            raise ValueError(f"{name}.spacing_mm must be three positive numbers (slice, row, column)")
        spacing = tuple(float(s) for s in spacing)
    return ModalityEncoding(units, float(scale), float(offset), spacing)


def read_encoding(root: str) -> ReleaseEncoding:
    path = os.path.join(root, ENCODING)
    if not os.path.exists(path):
        return DEFAULT_ENCODING
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8-sig"))
        if not isinstance(obj, dict) or obj.get("version") != 1:
            raise ValueError("expected an object with \"version\": 1")
        order = obj.get("slice_order", "head_first")
        if order not in ("head_first", "feet_first"):
            raise ValueError("slice_order must be head_first or feet_first")
        return ReleaseEncoding(_modality(obj.get("ct"), "ct"), _modality(obj.get("pet"), "pet"), order)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StudyError("-", ENCODING, f"unreadable encoding ({type(e).__name__}: {e})") from None


def encoding_to_json(enc: ReleaseEncoding) -> dict:
    def mod(m: ModalityEncoding) -> dict:
        out = {"units": m.units, "scale": m.scale, "offset": m.offset}
        if m.spacing_mm is not None:
            out["spacing_mm"] = list(m.spacing_mm)
        return out

    return {"format": "jaxpetct.release-encoding", "version": 1, "slice_order": enc.slice_order,
            "ct": mod(enc.ct), "pet": mod(enc.pet)}


# --- metadata.csv --------------------------------------------------------------------------------------------

def _number(text: str, label: str) -> Optional[float]:
    if text.strip() == "":
        return None
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{label} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{label} must be a positive finite number")
    return v


def _parse_row(root: str, lineno: int, fields: list[str], enc: ReleaseEncoding) -> ReleaseRef:
    bare = ReleaseRef(root, f"{MANIFEST} row {lineno}", None, None, None, None, encoding=enc, row=lineno)
    if len(fields) != len(COLUMNS):
        return dataclasses.replace(bare, problem=f"row {lineno}: {len(fields)} fields, expected {len(COLUMNS)}")
    row = dict(zip(COLUMNS, fields))
    parsed = {}
    try:
        for col in ("ct_path", "pet_path"):
            parsed[col] = parse_release_path(row[col])
        for col in ("report_path", "report_en_path"):  # a new patient's study has no report yet (prediction)
            if row[col]:
                parsed[col] = parse_release_path(row[col])
    except ValueError as e:
        return dataclasses.replace(bare, problem=f"row {lineno}: {e}")
    year, month, _, day, patient, _ = parsed["ct_path"]
    key = f"PETCT{year}/THANG {month}/day_{day}_patient_{patient}"
    ref = dataclasses.replace(bare, key=key, year=year, month=month, day=int(day), patient=int(patient),
                              name=row["name"], ct_path=row["ct_path"], pet_path=row["pet_path"], report_path=row["report_path"],
                              report_en_path=row["report_en_path"])
    expect = {"ct_path": "CT", "pet_path": "PET", "report_path": "reports", "report_en_path": "reports_en"}
    try:
        for col, (y, m, folder, d, n, _) in parsed.items():
            if folder != expect[col]:
                raise ValueError(f"{col} points into {folder}/, expected {expect[col]}/")
            if (y, m, d, n) != (year, month, day, patient):
                raise ValueError(f"{col} names a different study than ct_path")
        if row["year"].strip() != str(year):
            raise ValueError("year column disagrees with the PETCT<year> folder")
        if not row["name"].strip() or any(ord(c) < 32 or ord(c) == 127 for c in row["name"]):
            raise ValueError("name is empty or holds control characters")
        if row["sex"] not in ("M", "F", ""):
            raise ValueError("sex must be M, F or empty")
        height, weight = _number(row["height"], "height"), _number(row["weight"], "weight")
    except ValueError as e:
        return dataclasses.replace(ref, problem=f"row {lineno}: {e}")
    return dataclasses.replace(ref, sex=row["sex"] or None, height_m=height, weight_kg=weight)


def read_manifest(root: str) -> list[ReleaseRef]:
    """Every row of metadata.csv as a ReleaseRef (bad rows carry `problem`); raises StudyError only when the
    manifest as a whole is unusable (missing, not UTF-8 text, wrong header)."""
    root = os.path.abspath(root)
    enc = read_encoding(root)
    try:
        with open(os.path.join(root, MANIFEST), "rb") as f:
            text = f.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise StudyError("-", MANIFEST, "file is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StudyError("-", MANIFEST, f"unreadable ({type(e).__name__})") from None
    lines = text.splitlines()
    if not lines or [c.strip() for c in lines[0].split(",")] != list(COLUMNS):
        raise StudyError("-", MANIFEST, f"header must be {','.join(COLUMNS)}")
    refs: list[ReleaseRef] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:  # one physical line per row: the release never quotes newlines, and a damaged line stays local
            fields = next(csv.reader([line]))
        except csv.Error as e:
            refs.append(ReleaseRef(root, f"{MANIFEST} row {lineno}", None, None, None, None, encoding=enc,
                                   row=lineno, problem=f"row {lineno}: not CSV ({e})"))
            continue
        ref = _parse_row(root, lineno, fields, enc)
        if ref.problem is None and ref.key in seen:
            ref = dataclasses.replace(ref, problem=f"row {lineno}: same study as row {seen[ref.key]}")
        seen.setdefault(ref.key, lineno)
        refs.append(ref)
    return refs


# --- volumes and reports --------------------------------------------------------------------------------------

def _header(ref: ReleaseRef, sid: str, rel: str) -> npz.NpyHeader:
    """Shape and dtype from the .npy header alone, so mismatches are found before any voxel is read."""
    try:
        head = npz.read_header(os.path.join(ref.root, rel))
    except npz.NpzError as e:
        raise StudyError(sid, rel, str(e)) from None
    if len(head.shape) != 3 or min(head.shape) < 1:
        raise StudyError(sid, rel, f"array has shape {head.shape}, expected a non-empty (D, H, W) volume")
    if head.dtype.kind != "i" or head.dtype.itemsize != 2:
        raise StudyError(sid, rel, f"array has dtype {head.dtype}, expected int16")
    return head


def _read_volume(ref: ReleaseRef, sid: str, rel: str) -> np.ndarray:
    try:
        return npz.read_array(os.path.join(ref.root, rel))
    except npz.NpzError as e:
        raise StudyError(sid, rel, str(e)) from None


def _read_report(ref: ReleaseRef, sid: str, rel: str) -> Report:
    try:
        with open(os.path.join(ref.root, rel), "rb") as f:
            obj = json.loads(f.read().decode("utf-8-sig"))
        report = report_from_json(obj)
    except FileNotFoundError:
        raise StudyError(sid, rel, "file is missing") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise StudyError(sid, rel, f"not a valid report ({type(e).__name__}: {e})") from None
    return Report(impression=deid.scrub_text(report.impression),
                  findings={k: deid.scrub_text(v) for k, v in report.findings.items()})


def _to_units(stored: np.ndarray, enc: ModalityEncoding) -> np.ndarray:
    """Keep the (memory-mapped) int16 when it already is the unit; otherwise materialise float32 values."""
    if enc.identity and stored.dtype == np.dtype(np.int16):
        return stored
    if enc.identity:
        return np.asarray(stored, dtype=np.int16)
    return (np.asarray(stored, dtype=np.float32) * np.float32(enc.scale) + np.float32(enc.offset)).astype(np.float32)


def _volume(stored: np.ndarray, enc: ModalityEncoding, slice_order: str) -> Volume:
    d, h, w = stored.shape
    if enc.spacing_mm is not None:
        spacing, known = enc.spacing_mm, True
    else:
        spacing, known = (NOMINAL_SLICE_MM, NOMINAL_FOV_MM / h, NOMINAL_FOV_MM / w), False
    sign = -1.0 if slice_order == "head_first" else 1.0  # LPS: +z points to the head
    origin = (-(w - 1) / 2 * spacing[2], -(h - 1) / 2 * spacing[1], 0.0)
    direction = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, sign))
    return Volume(_to_units(stored, enc), tuple(float(s) for s in spacing), enc.units, origin, direction, known)


def read_release_study(ref: ReleaseRef, *, salt: str) -> Study:
    """Load one release study (volumes memory-mapped where stored uncompressed); StudyError on any bad input."""
    sid = study_id(ref, salt)
    if ref.problem is not None:
        raise StudyError(sid, MANIFEST, ref.problem)
    ct_shape, pet_shape = _header(ref, sid, ref.ct_path).shape, _header(ref, sid, ref.pet_path).shape
    if ct_shape[0] != pet_shape[0]:
        raise StudyError(sid, ref.pet_path, f"PET has {pet_shape[0]} slices, CT has {ct_shape[0]}")
    if ct_shape[1:] != (2 * pet_shape[1], 2 * pet_shape[2]):
        raise StudyError(sid, ref.pet_path, f"CT in-plane {ct_shape[1:]} is not twice PET in-plane {pet_shape[1:]}")
    ct, pet = _read_volume(ref, sid, ref.ct_path), _read_volume(ref, sid, ref.pet_path)
    report = _read_report(ref, sid, ref.report_path) if ref.report_path else None
    report_en = _read_report(ref, sid, ref.report_en_path) if ref.report_en_path else None
    enc = ref.encoding
    meta = Metadata(sex=ref.sex, age_years=None, height_m=ref.height_m, weight_kg=ref.weight_kg,
                    year=ref.year, month=ref.month)
    ct_vol, pet_vol = _volume(ct, enc.ct, enc.slice_order), _volume(pet, enc.pet, enc.slice_order)
    try:
        physics.check_volumes(ct_vol, pet_vol)
    except physics.PhysicsError as e:
        raise StudyError(sid, ref.ct_path if e.modality == "CT" else ref.pet_path, e.reason) from None
    return Study(study_id=sid, ct=ct_vol, pet=pet_vol, metadata=meta, report=report, report_en=report_en,
                 source="release")
