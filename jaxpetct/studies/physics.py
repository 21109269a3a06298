"""The physics gate: one table of plausible ranges that the SUV conversion, the build and `inspect` share.

A study outside these ranges is not an odd patient but a broken conversion: a CT read without its rescale (air at
+13 "HU"), a weight in grams (SUV 1,000x too small), a dose in MBq written as Bq (10^6x too large). Training on
such a study silently teaches the model wrong intensities, so the readers refuse it with the number that failed
and the file it came from; nothing is "corrected" by guessing a unit (a wrong guess would be just as silent).

Every bound is wide enough for real whole-body PET/CT from any vendor and tight enough to catch a unit error of
10x or more; the sources are in each row's `why`. `USUAL` holds the narrower ranges that `inspect` reports as
worth a look without refusing the study.
"""
from __future__ import annotations

import dataclasses
import math
import numpy as np

from jaxpetct.errors import UserError


@dataclasses.dataclass(frozen=True)
class Bound:
    """A closed range [low, high] of one quantity in `unit`."""

    name: str
    unit: str
    low: float
    high: float
    why: str

    def holds(self, value: float) -> bool:
        return math.isfinite(value) and self.low <= value <= self.high

    def describe(self, value: float) -> str:
        return (f"{self.name} {value:g} {self.unit} is outside the plausible {self.low:g}..{self.high:g} "
                f"{self.unit} ({self.why})")


# The one table. Headers: DICOM PS3.3 (C.7.1.3 PatientWeight in kg, C.8.9.1 RadionuclideTotalDose in Bq,
# RadionuclideHalfLife in s). Doses: EANM paediatric dosage card (FDG minimum 14 MBq) to above cardiac Rb-82's
# ~2.2 GBq; adult FDG is ~150-750 MBq (EANM 2015: 2-3.5 MBq/kg). Half-lives: Rb-82 75 s to I-124 4.2 d.
BOUNDS = {
    "weight": Bound("PatientWeight", "kg", 2.0, 350.0, "a newborn to past the load limit of PET/CT tables"),
    "dose": Bound("RadionuclideTotalDose", "Bq", 1.0e7, 5.0e9, "paediatric FDG minimum to above an Rb-82 dose"),
    "half_life": Bound("RadionuclideHalfLife", "s", 60.0, 4.0e5, "Rb-82's 75 s to I-124's 4.2 days"),
    "uptake_half_lives": Bound("uptake time", "half-lives", 0.0, 10.0,
                               "injection before the scan, and under 0.1 % of the dose left after 10"),
    # Every whole-body CT holds air (-1000 HU) around the body and in the lungs; a lowest value above -900 HU
    # is a CT whose stored values were not rescaled (or were offset). Below -1024 HU is scanner padding outside
    # the field of view (-2000, -3024, -32768 by vendor), which is allowed.
    "ct_lowest": Bound("lowest CT value", "HU", -32768.0, -900.0, "every whole-body CT holds air at -1000 HU"),
    # Soft tissue is ~+40 HU and bone several hundred; the extended CT scale ends at 32767 (metal).
    "ct_highest": Bound("highest CT value", "HU", 100.0, 32767.0, "soft tissue and bone are above +100 HU"),
    # FDG whole-body SUVmax is at least the brain's or the bladder's (~5-10, rarely under 2); urine and hot
    # tumours reach tens to a few hundred. Outside 1..1000 the weight, dose or units were wrong by 10^3 or more.
    "suv_max": Bound("PET SUVmax", "g/ml", 1.0, 1000.0, "brain or bladder uptake to the hottest urine"),
    # Slices from 0.3 mm (CT) to 10 mm (old PET); pixels from ~0.3 mm to ~6 mm. 0.1..20 mm catches cm or
    # micrometre written as mm.
    "spacing": Bound("voxel spacing", "mm", 0.1, 20.0, "CT and PET voxels are 0.3-10 mm"),
}
# What `inspect` lists as unusual but still builds.
USUAL = {"hu": (-1100.0, 4000.0), "suv_max": 100.0}


class PhysicsError(UserError, ValueError):
    """A value outside `BOUNDS`; `modality` ("CT", "PET" or "header") tells the reader which file to name."""

    def __init__(self, modality: str, reason: str):
        self.modality, self.reason = modality, reason
        super().__init__(reason)


def check(key: str, value: float, modality: str = "header") -> float:
    """`value` if it lies within BOUNDS[key]; otherwise PhysicsError with the number."""
    bound = BOUNDS[key]
    if not bound.holds(float(value)):
        raise PhysicsError(modality, bound.describe(float(value)))
    return float(value)


def value_range(data: np.ndarray) -> tuple[float, float]:
    """(min, max) without a float64 copy of the volume; NaN or inf gives a non-finite result, which fails."""
    arr = np.asarray(data)
    return float(arr.min()), float(arr.max())


def check_volumes(ct, pet) -> None:
    """The volume part of the gate for a study about to be written (CT in HU; PET checked only when in SUVbw).
    Readers pass the PET on its own grid: trilinear resampling onto the CT grid lowers its maximum."""
    for modality, vol in (("CT", ct), ("PET", pet)):
        for spacing in vol.spacing_mm if vol.geometry_known else ():  # nominal spacing is not a measurement
            check("spacing", spacing, modality)
    if ct.units == "HU":
        low, high = value_range(ct.data)
        check("ct_lowest", low, "CT")
        check("ct_highest", high, "CT")
    if pet.units == "SUVbw":
        low, high = value_range(pet.data)
        if not math.isfinite(low):
            raise PhysicsError("PET", "PET holds non-finite values")
        check("suv_max", high, "PET")
