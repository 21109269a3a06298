"""SUVbw from PET activity concentration: the physics that the reference code skipped.

    SUVbw = C (Bq/ml) * body weight (g) / D_ref (Bq)

where D_ref is the injected dose decayed to the time the image values refer to:

- DecayCorrection START: the scanner decay-corrected every frame to the acquisition start, so
  D_ref = RadionuclideTotalDose * 2^(-(t_ref - t_inj) / RadionuclideHalfLife), with t_ref the series start
  (SeriesDate/SeriesTime) or, when the series was re-processed later, the earliest AcquisitionDate/Time of its
  slices (the QIBA rule: a reconstruction made after the scan carries a later SeriesTime than its acquisition).
- DecayCorrection ADMIN: values are already corrected back to the administration time, so D_ref = the dose.
- DecayCorrection NONE (each frame at its own time, needing per-frame decay) and anything else: refused.

Injection time: RadiopharmaceuticalStartDateTime when present, else RadiopharmaceuticalStartTime on the scan's
date; when only times of day are known and the injection time is later than the scan time, the scan crossed
midnight and the injection is taken on the previous day. An uptake time that is negative or longer than ten
half-lives (under 0.1 % of the dose left: 18 h for F-18, days for Zr-89) is refused as a timing error.

Units: BQML is converted; GML (g/ml) is already SUVbw and passes through; CNTS, PROPCNTS, CM2ML (SUVbsa),
and other vendor units are refused because their scale needs vendor-private tags.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from typing import Any, Optional, Sequence
from jaxpetct.errors import UserError
from jaxpetct.studies.physics import BOUNDS

F18_HALF_LIFE_S = 6586.2  # 109.77 min
SUPPORTED_DECAY_CORRECTIONS = ("START", "ADMIN")
MAX_UPTAKE_HALF_LIVES = BOUNDS["uptake_half_lives"].high
_NO_DATE = dt.date(2000, 1, 1)  # stands in when a header carries times of day but no dates


class SuvError(UserError, ValueError):
    """The PET header does not allow a well-defined SUVbw; the message is the reason (no header values)."""


@dataclasses.dataclass(frozen=True)
class PetDose:
    """What SUVbw needs from a PET series header; `injection`/`reference` are naive datetimes (scanner time)."""

    units: str
    decay_correction: str
    weight_kg: Optional[float]
    injected_dose_bq: Optional[float]
    half_life_s: Optional[float]
    injection: Optional[dt.datetime]
    reference: Optional[dt.datetime]

    @property
    def uptake_s(self) -> Optional[float]:
        if self.injection is None or self.reference is None:
            return None
        return (self.reference - self.injection).total_seconds()


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """Fraction of activity left after `elapsed_s`."""
    return 2.0 ** (-elapsed_s / half_life_s)


def suvbw_factor(dose: PetDose) -> float:
    """The number that turns the stored unit (Bq/ml, or g/ml) into SUVbw."""
    units = (dose.units or "").upper()
    if units == "GML":
        return 1.0
    if units != "BQML":
        raise SuvError(f"PET Units {units or 'missing'} cannot be converted to SUVbw (supported: BQML, GML)")
    weight = _plausible(_positive(dose.weight_kg, "PatientWeight (kg)"), "weight")
    total = _positive(dose.injected_dose_bq, "RadionuclideTotalDose (Bq)")
    if 10.0 <= total <= 5000.0:  # that many MBq written as Bq: refused, not corrected (see physics.py)
        raise SuvError(f"RadionuclideTotalDose {total:g} Bq is implausible: it looks like MBq (the DICOM unit is Bq); "
                       "SUVbw would be a million times too large")
    total = _plausible(total, "dose")
    mode = (dose.decay_correction or "").upper()
    if mode == "ADMIN":
        ref_dose = total
    elif mode == "START":
        half_life = _plausible(_positive(dose.half_life_s, "RadionuclideHalfLife (s)"), "half_life")
        uptake = dose.uptake_s
        if uptake is None:
            raise SuvError("DecayCorrection START needs the injection time and the series time, one is missing")
        if not 0.0 <= uptake <= MAX_UPTAKE_HALF_LIVES * half_life:
            raise SuvError(f"uptake time {uptake / 60:.1f} min between injection and scan is negative or longer "
                           f"than {MAX_UPTAKE_HALF_LIVES:g} half-lives: the times are inconsistent")
        ref_dose = total * decay_factor(uptake, half_life)
    elif mode == "NONE":
        raise SuvError("DecayCorrection NONE (frames not decay corrected) is not supported: per-frame decay timing "
                       "varies between vendors")
    else:
        raise SuvError(f"DecayCorrection {mode or 'missing'} is not supported (supported: START, ADMIN)")
    return weight * 1000.0 / ref_dose


def bqml_factor(dose: PetDose) -> float:
    """Inverse of `suvbw_factor` for BQML images: SUVbw -> Bq/ml (used to write synthetic PET)."""
    return 1.0 / suvbw_factor(dose)


def _plausible(value: float, key: str) -> float:
    """Header numbers are not identifiers (the weight is quoted so the user can find the error)."""
    bound = BOUNDS[key]
    if not bound.holds(value):
        raise SuvError(f"{bound.describe(value)}: SUVbw would be wrong by the same factor")
    return value


def _positive(value: Optional[float], name: str) -> float:
    if value is None:
        raise SuvError(f"missing {name}")
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise SuvError(f"{name} must be a positive number, got a non-positive or non-finite value")
    return v


# ------------------------------------------------------------------------------------------ DICOM times
def parse_da(value: Any) -> Optional[dt.date]:
    s = str(value or "").strip()
    if not s:
        return None
    m = re.fullmatch(r"(\d{4})\.?(\d{2})\.?(\d{2})", s)
    if not m:
        raise SuvError("a DA (date) value is not YYYYMMDD")
    try:
        return dt.date(*map(int, m.groups()))
    except ValueError:
        raise SuvError("a DA (date) value is not a valid calendar date") from None


def parse_tm(value: Any) -> Optional[dt.time]:
    """DICOM TM: HH[MM[SS[.F{1,6}]]], also the legacy HH:MM:SS form."""
    s = str(value or "").strip().replace(":", "")
    if not s:
        return None
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", s)
    if not m:
        raise SuvError("a TM (time) value is not HHMMSS.FFFFFF")
    hh, mm, ss, frac = m.groups()
    try:
        return dt.time(int(hh), int(mm or 0), min(int(ss or 0), 59), int((frac or "0").ljust(6, "0")))
    except ValueError:
        raise SuvError("a TM (time) value is out of range") from None


def parse_dt(value: Any) -> Optional[dt.datetime]:
    """DICOM DT: YYYYMMDDHHMMSS.FFFFFF with an optional &ZZXX offset (ignored: all scanner times share a clock)."""
    s = re.sub(r"[+\-]\d{4}$", "", str(value or "").strip())
    if not s:
        return None
    if len(s) < 8:
        raise SuvError("a DT (date-time) value is shorter than YYYYMMDD")
    date = parse_da(s[:8])
    time = parse_tm(s[8:]) if len(s) > 8 else dt.time(0)
    return dt.datetime.combine(date, time)  # type: ignore[arg-type]


def combine(date: Optional[dt.date], time: Optional[dt.time]) -> Optional[dt.datetime]:
    if time is None:
        return None
    return dt.datetime.combine(date or _NO_DATE, time)


def reference_time(series: Optional[dt.datetime], acquisitions: Sequence[dt.datetime]) -> Optional[dt.datetime]:
    """Series start, or the earliest slice acquisition when the series was re-processed after the scan."""
    first_acq = min(acquisitions) if acquisitions else None
    if series is None:
        return first_acq
    if first_acq is not None and dt.timedelta(0) < series - first_acq < dt.timedelta(hours=12):
        return first_acq  # (a 12 h bound keeps a date-less acquisition just past midnight from winning)
    return series


def injection_time(start_datetime: Optional[dt.datetime], start_time: Optional[dt.time],
                   reference: Optional[dt.datetime]) -> Optional[dt.datetime]:
    """Injection as a datetime on the scan's clock, stepping back a day when only a time of day crosses midnight."""
    if start_datetime is not None:
        return start_datetime
    if start_time is None or reference is None:
        return None
    inj = dt.datetime.combine(reference.date(), start_time)
    if inj > reference:
        inj -= dt.timedelta(days=1)
    return inj


def pet_dose_from_headers(headers: Sequence[Any]) -> PetDose:
    """Collect the SUV inputs from a PET series' slice headers (pydicom Datasets; series-level tags from the first)."""
    ds = headers[0]
    units = str(ds.get("Units", "") or "").strip().upper()
    mode = str(ds.get("DecayCorrection", "") or "").strip().upper()
    weight = _float_or_none(ds.get("PatientWeight"), "PatientWeight")
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    info = seq[0] if seq is not None and len(seq) else None

    def rp(key):
        return info.get(key) if info is not None else None

    total = _float_or_none(rp("RadionuclideTotalDose"), "RadionuclideTotalDose")
    half_life = _float_or_none(rp("RadionuclideHalfLife"), "RadionuclideHalfLife")
    start_dt = parse_dt(rp("RadiopharmaceuticalStartDateTime"))
    base_date = parse_da(ds.get("SeriesDate")) or parse_da(ds.get("StudyDate"))
    series = combine(base_date, parse_tm(ds.get("SeriesTime")))
    acquisitions = [t for t in (combine(parse_da(h.get("AcquisitionDate")) or base_date,
                                        parse_tm(h.get("AcquisitionTime"))) for h in headers) if t is not None]
    reference = reference_time(series, acquisitions)
    if base_date is None and start_dt is not None and reference is not None:
        # The scan has times of day only: place it on the injection's day, or the next one past midnight.
        reference = dt.datetime.combine(start_dt.date(), reference.time())
        if reference < start_dt:
            reference += dt.timedelta(days=1)
    injection = injection_time(start_dt, parse_tm(rp("RadiopharmaceuticalStartTime")), reference)
    return PetDose(units, mode, weight, total, half_life, injection, reference)


def _float_or_none(value: Any, name: str) -> Optional[float]:
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SuvError(f"{name} is not a number") from None
