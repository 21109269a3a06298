"""The in-memory form of one PET/CT study, as every later stage sees it.

A `Study` is what ingestion promises downstream: volumes in physical units (CT in HU, PET in SUVbw when the
source allows it), their voxel geometry, pseudonymous metadata and the report. Nothing in it may identify a
patient: readers pseudonymise before a `Study` is built, so records, logs and checkpoints built from it are
clean by construction.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import numpy as np

from jaxpetct.text.report import Report
from jaxpetct.errors import UserError

Units = Literal["HU", "SUVbw", "BQML", "raw"]


class StudyError(UserError):
    """A study (or one of its files) cannot be read; carries the pseudonymous study id, the file and the reason.

    `file` is a path relative to the input root (never an absolute path that might carry a patient's name
    from a hospital's folder layout) and the message must never contain identifying values.
    """

    def __init__(self, study: str, file: str, reason: str):
        self.study, self.file, self.reason = study, file, reason
        super().__init__(f"study {study}: {file}: {reason}")


@dataclasses.dataclass(frozen=True)
class Volume:
    """A 3D image on a regular grid.

    `data` is (D, H, W) = (slice, row, column). Geometry follows DICOM patient coordinates (LPS, mm):
    `origin_mm` is the (x, y, z) centre of voxel [0, 0, 0]; `direction` is a 3x3 matrix whose columns are the
    unit vectors of the column, row and slice axes; `spacing_mm` is (slice, row, column) spacing. Release NPZ
    volumes carry no geometry, so spacing may be nominal: `geometry_known` says which.
    """

    data: np.ndarray
    spacing_mm: tuple[float, float, float]
    units: Units
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    geometry_known: bool = True

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Metadata:
    """Pseudonymous patient and acquisition facts: enough for SUV, region split and temporal split, no more."""

    sex: Optional[str]  # "M" / "F" / None
    age_years: Optional[int]
    height_m: Optional[float]
    weight_kg: Optional[float]
    year: Optional[int]  # acquisition year
    month: Optional[int]  # acquisition month (1-12): the temporal split key


@dataclasses.dataclass(frozen=True)
class Study:
    """One de-identified PET/CT study. `study_id` is a salted pseudonym, stable for a given salt."""

    study_id: str
    ct: Volume
    pet: Volume
    metadata: Metadata
    report: Optional[Report] = None  # Vietnamese report
    report_en: Optional[Report] = None
    source: str = ""  # "release" or "dicom": which reader built it (never a path)
