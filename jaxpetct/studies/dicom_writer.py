"""Write one study's CT (HU) and PET (SUVbw) volumes as DICOM series, the way a hospital PACS export looks.

Why: the DICOM reader must be tested on folders whose truth is known (geometry, HU, dose and timing), and the
synthetic cohort ships an optional DICOM form. The files carry realistic tags, including identifying values
(`PatientTags`), so tests can plant canaries and check that none comes out of ingestion. Layout options
reproduce what real exports do to a reader: random file names, arbitrary nesting, instance numbers that run
against the slice position, and stacks stored top-down.

Each file is written atomically (`jaxpetct.atomic`).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
import random
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from jaxpetct.studies.study import Volume
from jaxpetct.studies.suv import F18_HALF_LIFE_S, PetDose, bqml_factor
from jaxpetct.atomic import open_atomic

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
CT_INTERCEPT = -1024.0
_INT16_MAX = 32767


@dataclasses.dataclass(frozen=True)
class PatientTags:
    """Patient-level tag values. The identifying ones are canaries in tests and must never come out of ingestion."""

    name: str = "NGUYEN^VAN^CANARY"
    patient_id: str = "PID-CANARY-0001"
    birth_date: str = "19650312"
    address: str = "So 12 Ngo Canary, Phuong Dich Vong, Quan Cau Giay, Ha Noi"
    accession: str = "ACC-CANARY-77"
    institution: str = "Benh vien Canary Trung uong"
    referring_physician: str = "TRAN^THI^CANARYDOC"
    sex: Optional[str] = "M"
    age_years: Optional[int] = 56
    height_m: Optional[float] = 1.68
    weight_kg: Optional[float] = 62.0
    extra: tuple[tuple[str, str], ...] = (  # any further tag keyword -> value
        ("PatientTelephoneNumbers", "0912345678"),
        ("OtherPatientIDs", "OTHER-CANARY-42"),
        ("OperatorsName", "LE^CANARY^OPERATOR"),
        ("InstitutionAddress", "78 Giai Phong Canary Street"),
    )


@dataclasses.dataclass(frozen=True)
class PetAcquisition:
    """Dose and timing of the PET scan. `series` is the acquisition start the scanner decay-corrects to (START)."""

    injected_dose_bq: float = 2.3e8
    injection: dt.datetime = dt.datetime(2019, 5, 14, 9, 5, 0)
    series: dt.datetime = dt.datetime(2019, 5, 14, 10, 5, 0)
    half_life_s: float = F18_HALF_LIFE_S
    decay_correction: str = "START"
    units: str = "BQML"
    write_start_datetime: bool = True  # also write RadiopharmaceuticalStartDateTime (else StartTime only)
    write_dates: bool = True  # False: times of day only (no Study/Series/Acquisition dates)
    reprocessed_delay_s: float = 0.0  # SeriesTime later than AcquisitionTime, as in a re-reconstructed series

    def dose(self, weight_kg: Optional[float]) -> PetDose:
        return PetDose(self.units, self.decay_correction, weight_kg, self.injected_dose_bq, self.half_life_s,
                       self.injection, self.series)


@dataclasses.dataclass(frozen=True)
class Layout:
    shuffle_names: bool = False  # random hex names without extension instead of CT/0001.dcm
    nest_depth: int = 0  # each file in 0..nest_depth random sub-folders
    reverse_instances: bool = False  # InstanceNumber 1 is the last slice along the slice normal
    reverse_slices: bool = False  # store the stack top-down: same image, slice axis and origin flipped
    phi_in_paths: bool = False  # top folder named after the patient, as hospital exports often are
    series_folders: bool = True  # CT/ and PET/ sub-folders


@dataclasses.dataclass(frozen=True)
class WrittenStudy:
    root: pathlib.Path
    study_uid: str
    ct_series_uid: str
    pet_series_uid: str
    frame_of_reference_uid: str
    ct_files: tuple[pathlib.Path, ...]  # in stored slice order (top-down when Layout.reverse_slices)
    pet_files: tuple[pathlib.Path, ...]

    @property
    def files(self) -> tuple[pathlib.Path, ...]:
        return self.ct_files + self.pet_files


def _uid(seed: int, *parts: str) -> str:
    return str(generate_uid(entropy_srcs=[str(seed), *parts]))


def _ds(v: float) -> str:
    return format_number_as_ds(float(v))


def _flip_slices(vol: Volume) -> Volume:
    """The same physical image described from its last slice: data reversed, slice axis negated."""
    m = np.asarray(vol.direction, dtype=np.float64)
    origin = np.asarray(vol.origin_mm) + m[:, 2] * vol.spacing_mm[0] * (vol.shape[0] - 1)
    m2 = m.copy()
    m2[:, 2] = -m[:, 2]
    return dataclasses.replace(vol, data=vol.data[::-1], origin_mm=tuple(origin.tolist()),
                               direction=tuple(map(tuple, m2.tolist())))


def _common(ds: Dataset, patient: PatientTags, acq: PetAcquisition, study_uid: str, for_uid: str, seed: int):
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientAddress = patient.address
    ds.AccessionNumber = patient.accession
    ds.InstitutionName = patient.institution
    ds.ReferringPhysicianName = patient.referring_physician
    for keyword, value in patient.extra:
        setattr(ds, keyword, value)
    if patient.sex:
        ds.PatientSex = patient.sex
    if patient.age_years is not None:
        ds.PatientAge = f"{int(patient.age_years):03d}Y"
    if patient.height_m is not None:
        ds.PatientSize = _ds(patient.height_m)
    if patient.weight_kg is not None:
        ds.PatientWeight = _ds(patient.weight_kg)
    ds.StudyInstanceUID = study_uid
    ds.StudyID = f"S{seed % 100000:05d}"
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "WHOLEBODY"
    ds.Manufacturer = "jaxpetct synthetic"
    if acq.write_dates:
        ds.StudyDate = acq.series.strftime("%Y%m%d")
    ds.StudyTime = acq.series.strftime("%H%M%S")


def _slice_datasets(vol: Volume, modality: str, patient: PatientTags, acq: PetAcquisition, study_uid: str,
                    for_uid: str, series_uid: str, seed: int, reverse_instances: bool):
    """Yield (instance number, Dataset) per slice; pixel encoding per modality (CT fixed rescale, PET per slice)."""
    m = np.asarray(vol.direction, dtype=np.float64)
    depth = vol.shape[0]
    ss, sr, sc = (float(s) for s in vol.spacing_mm)
    acq_start = acq.series
    series_time = acq.series + dt.timedelta(seconds=acq.reprocessed_delay_s)
    for k in range(depth):
        ds = Dataset()
        _common(ds, patient, acq, study_uid, for_uid, seed)
        sop_uid = _uid(seed, series_uid, str(k))
        ds.SOPClassUID = CT_IMAGE_STORAGE if modality == "CT" else PET_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2 if modality == "CT" else 3
        ds.SeriesDescription = "CT WB 3.75mm" if modality == "CT" else "PET WB AC"
        instance = depth - k if reverse_instances else k + 1
        ds.InstanceNumber = instance
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        if acq.write_dates:
            ds.SeriesDate = series_time.strftime("%Y%m%d")
            ds.AcquisitionDate = acq_start.strftime("%Y%m%d")
            ds.ContentDate = series_time.strftime("%Y%m%d")
        ds.SeriesTime = series_time.strftime("%H%M%S.%f")
        ds.AcquisitionTime = acq_start.strftime("%H%M%S.%f")
        position = np.asarray(vol.origin_mm, dtype=np.float64) + m[:, 2] * ss * k
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in list(m[:, 0]) + list(m[:, 1])]
        ds.PixelSpacing = [_ds(sr), _ds(sc)]
        ds.SliceThickness = _ds(ss)
        ds.SliceLocation = _ds(position[2])
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        plane = np.asarray(vol.data[k], dtype=np.float64)
        if modality == "CT":
            stored = np.rint(plane - CT_INTERCEPT)
            if stored.min(initial=0) < -_INT16_MAX - 1 or stored.max(initial=0) > _INT16_MAX:
                raise ValueError("CT values do not fit int16 with intercept -1024")
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(CT_INTERCEPT), "1", "HU"
        else:
            peak = float(np.abs(plane).max(initial=0.0))
            slope = float(_ds(peak / _INT16_MAX)) if peak > 0 else 1.0
            stored = np.rint(plane / slope)
            ds.RescaleIntercept, ds.RescaleSlope = "0", _ds(slope)
            _pet_tags(ds, acq, depth, k)
        ds.PixelData = stored.astype("<i2").tobytes()
        yield instance, ds


def _pet_tags(ds: Dataset, acq: PetAcquisition, depth: int, k: int):
    ds.Units = acq.units
    ds.DecayCorrection = acq.decay_correction
    ds.CorrectedImage = ["ATTN", "SCAT", "DECY", "RAN", "NORM"] if acq.decay_correction != "NONE" else ["ATTN"]
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.CountsSource = "EMISSION"
    ds.NumberOfSlices = depth
    ds.ImageIndex = k + 1
    ds.DecayFactor = "1"
    info = Dataset()
    info.Radiopharmaceutical = "Fluorodeoxyglucose"
    info.RadiopharmaceuticalStartTime = acq.injection.strftime("%H%M%S.%f")
    if acq.write_start_datetime:
        info.RadiopharmaceuticalStartDateTime = acq.injection.strftime("%Y%m%d%H%M%S.%f")
    info.RadionuclideTotalDose = _ds(acq.injected_dose_bq)
    info.RadionuclideHalfLife = _ds(acq.half_life_s)
    info.RadionuclidePositronFraction = "0.9673"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C-111A1", "SRT", "^18^Fluorine"
    info.RadionuclideCodeSequence = Sequence([code])
    ds.RadiopharmaceuticalInformationSequence = Sequence([info])


def _save(ds: Dataset, path: pathlib.Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    with open_atomic(path, "wb") as fh:
        pydicom.dcmwrite(fh, ds, enforce_file_format=True)


def _relpath(rng: random.Random, layout: Layout, patient: PatientTags, modality: str, instance: int) -> str:
    parts = []
    if layout.phi_in_paths:
        parts.append(f"{patient.name.replace('^', '_')}_{patient.patient_id}")
    if layout.series_folders:
        parts.append("CT" if modality == "CT" else "PET")
    parts += [f"{rng.getrandbits(16):04x}" for _ in range(rng.randint(0, layout.nest_depth))]
    parts.append(f"{rng.getrandbits(40):010x}" if layout.shuffle_names else f"{modality}{instance:04d}.dcm")
    return "/".join(parts)


def write_dicom_study(out_dir, ct: Volume, pet: Volume, *, patient: PatientTags = PatientTags(),
                      acquisition: PetAcquisition = PetAcquisition(), layout: Layout = Layout(), seed: int = 0,
                      study_uid: Optional[str] = None, frame_of_reference_uid: Optional[str] = None) -> WrittenStudy:
    """Write CT (units HU) and PET (units SUVbw, or raw values written as-is under `acquisition.units`).

    SUVbw is turned into the stored unit with the same physics the reader inverts (BQML: SUV * decayed dose /
    weight; GML: unchanged); `study_uid`/`frame_of_reference_uid` let a test add a PET to an existing CT study.
    """
    if ct.units != "HU":
        raise ValueError(f"CT volume must be in HU, got {ct.units}")
    root = pathlib.Path(out_dir)
    study_uid = study_uid or _uid(seed, "study")
    for_uid = frame_of_reference_uid or _uid(seed, "frame-of-reference")
    ct_uid, pet_uid = _uid(seed, "series-ct"), _uid(seed, "series-pet")
    if pet.units == "SUVbw" and acquisition.units.upper() == "BQML":
        pet = dataclasses.replace(pet, data=np.asarray(pet.data, np.float64) * bqml_factor(
            acquisition.dose(patient.weight_kg)), units="BQML")
    rng = random.Random(seed)
    files: list[pathlib.Path] = []
    for modality, vol, series_uid in (("CT", ct, ct_uid), ("PT", pet, pet_uid)):
        if layout.reverse_slices:
            vol = _flip_slices(vol)
        for instance, ds in _slice_datasets(vol, modality, patient, acquisition, study_uid, for_uid, series_uid,
                                            seed, layout.reverse_instances):
            path = root / _relpath(rng, layout, patient, modality, instance)
            while path in files:
                path = root / _relpath(rng, layout, patient, modality, instance)
            _save(ds, path)
            files.append(path)
    n_ct = ct.shape[0]
    return WrittenStudy(root, study_uid, ct_uid, pet_uid, for_uid, tuple(files[:n_ct]), tuple(files[n_ct:]))
