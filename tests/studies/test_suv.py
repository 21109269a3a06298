"""SUVbw through the whole DICOM path equals a value computed by hand from dose, weight and decay time."""
import datetime as dt
import math

import numpy as np
import pytest

from jaxpetct.studies.dicom import find_dicom_studies, read_dicom_study, read_dicom_volume
from jaxpetct.studies.dicom_writer import PatientTags, PetAcquisition, write_dicom_study
from jaxpetct.studies.study import StudyError
from jaxpetct.studies.suv import PetDose, SuvError, decay_factor, parse_dt, parse_tm, suvbw_factor

from tests.studies.test_dicom_support import SALT, constant_pet, ct_volume, edit

C_BQML = 5000.0  # activity concentration written into every PET voxel
WEIGHT_KG = 62.0
DOSE_BQ = 2.3e8
T_HALF = 6586.2  # F-18, seconds


def _by_hand_start(uptake_s: float) -> float:
    return C_BQML * WEIGHT_KG * 1000.0 / (DOSE_BQ * math.exp(-math.log(2.0) * uptake_s / T_HALF))


def _read_suv(tmp_path, acquisition, edit_fn=None, units="BQML", value=C_BQML, weight=WEIGHT_KG):
    written = write_dicom_study(tmp_path, ct_volume(), constant_pet(value, units=units),
                                patient=PatientTags(weight_kg=weight), acquisition=acquisition)
    if edit_fn is not None:
        for path in written.pet_files:
            edit(path, edit_fn)
    (ref,) = find_dicom_studies(tmp_path)
    volume, _ = read_dicom_volume(ref, "PT", salt=SALT)
    return volume, ref


D0 = dt.datetime(2019, 5, 14, 9, 5)
CASES = {  # name: (acquisition, uptake in seconds, stated by hand)
    "start_datetime": (PetAcquisition(DOSE_BQ, D0, D0 + dt.timedelta(hours=1)), 3600.0),
    "start_time_only": (PetAcquisition(DOSE_BQ, D0, D0 + dt.timedelta(minutes=52), write_start_datetime=False),
                        52 * 60.0),
    "midnight_with_dates": (PetAcquisition(DOSE_BQ, dt.datetime(2019, 5, 14, 23, 30),
                                           dt.datetime(2019, 5, 15, 0, 45)), 75 * 60.0),
    "midnight_times_only": (PetAcquisition(DOSE_BQ, dt.datetime(2019, 5, 14, 23, 30),
                                           dt.datetime(2019, 5, 15, 0, 45), write_start_datetime=False,
                                           write_dates=False), 75 * 60.0),
    "midnight_series_date_start_time": (PetAcquisition(DOSE_BQ, dt.datetime(2019, 5, 14, 23, 30),
                                                       dt.datetime(2019, 5, 15, 0, 45),
                                                       write_start_datetime=False), 75 * 60.0),
    "reprocessed_series": (PetAcquisition(DOSE_BQ, D0, D0 + dt.timedelta(hours=1), reprocessed_delay_s=7200.0),
                           3600.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_suvbw_start_matches_hand_computation(tmp_path, name):
    acquisition, uptake = CASES[name]
    volume, _ = _read_suv(tmp_path, acquisition)
    expected = _by_hand_start(uptake)
    assert volume.units == "SUVbw"
    np.testing.assert_allclose(volume.data, expected, rtol=1e-4)
    print(f"{name}: uptake {uptake / 60:.0f} min -> SUVbw {expected:.6f}, read {float(volume.data.mean()):.6f}")


def test_suvbw_admin_ignores_decay(tmp_path):
    """ADMIN: values already refer to the injection time; SUV = C * W / D, whatever the scan time."""
    acquisition = PetAcquisition(DOSE_BQ, D0, D0 + dt.timedelta(hours=3), decay_correction="ADMIN")
    volume, _ = _read_suv(tmp_path, acquisition)
    np.testing.assert_allclose(volume.data, C_BQML * WEIGHT_KG * 1000.0 / DOSE_BQ, rtol=1e-4)


def test_gml_is_already_suvbw(tmp_path):
    volume, _ = _read_suv(tmp_path, PetAcquisition(units="GML"), units="raw", value=3.25)
    np.testing.assert_allclose(volume.data, 3.25, rtol=1e-4)


def test_study_pet_is_suvbw_on_the_ct_grid(tmp_path):
    written = write_dicom_study(tmp_path, ct_volume(), constant_pet(C_BQML), patient=PatientTags(weight_kg=62.0),
                                acquisition=CASES["start_datetime"][0])
    (ref,) = find_dicom_studies(tmp_path)
    study = read_dicom_study(ref, salt=SALT)
    assert written.ct_files and study.pet.shape == study.ct.shape
    inside = study.pet.data > 0
    assert inside.mean() > 0.3  # the PET field of view covers a good part of the CT
    np.testing.assert_allclose(study.pet.data[inside], _by_hand_start(3600.0), rtol=1e-4)


def _delete(*keys):
    def fn(ds):
        for key in keys:
            if key in ds:
                del ds[key]
            info = ds.RadiopharmaceuticalInformationSequence[0]
            if key in info:
                del info[key]
    return fn


ERRORS = {
    "units_cnts": (PetAcquisition(units="CNTS"), None, "raw", "Units CNTS"),
    "units_propcnts": (PetAcquisition(units="PROPCNTS"), None, "raw", "Units PROPCNTS"),
    "units_suvbsa": (PetAcquisition(units="CM2ML"), None, "raw", "Units CM2ML"),
    "decay_none": (PetAcquisition(decay_correction="NONE"), None, "BQML", "DecayCorrection NONE"),
    "decay_other": (PetAcquisition(decay_correction="XYZ"), None, "BQML", "DecayCorrection XYZ"),
    "no_dose": (PetAcquisition(), _delete("RadionuclideTotalDose"), "BQML", "RadionuclideTotalDose"),
    "no_half_life": (PetAcquisition(), _delete("RadionuclideHalfLife"), "BQML", "RadionuclideHalfLife"),
    "no_injection_time": (PetAcquisition(), _delete("RadiopharmaceuticalStartTime",
                                                    "RadiopharmaceuticalStartDateTime"), "BQML", "injection time"),
    "no_weight": (PetAcquisition(), _delete("PatientWeight"), "BQML", "PatientWeight"),
    "injected_after_scan": (PetAcquisition(injection=D0 + dt.timedelta(hours=2), series=D0), None, "BQML",
                            "uptake time"),
    "times_only_implausible": (PetAcquisition(injection=D0 + dt.timedelta(hours=2), series=D0, write_dates=False,
                                              write_start_datetime=False), None, "BQML", "uptake time"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_unsupported_or_incomplete_pet_is_a_clear_error(tmp_path, name):
    acquisition, fn, units, needle = ERRORS[name]
    with pytest.raises(StudyError) as info:
        _read_suv(tmp_path, acquisition, edit_fn=fn, units=units)
    assert needle in info.value.reason and "PET" in info.value.reason
    assert info.value.file.startswith("PET/")


def test_admin_does_not_need_half_life_or_times(tmp_path):
    acquisition = PetAcquisition(decay_correction="ADMIN")
    volume, _ = _read_suv(tmp_path, acquisition, edit_fn=_delete("RadionuclideHalfLife", "SeriesTime",
                                                                  "RadiopharmaceuticalStartTime",
                                                                  "RadiopharmaceuticalStartDateTime"))
    np.testing.assert_allclose(volume.data, C_BQML * WEIGHT_KG * 1000.0 / DOSE_BQ, rtol=1e-4)


def test_factor_and_time_parsing_units():
    assert decay_factor(T_HALF, T_HALF) == pytest.approx(0.5)
    assert parse_tm("101500") == dt.time(10, 15) == parse_tm("10:15:00") == parse_tm("1015")
    assert parse_tm("101500.25") == dt.time(10, 15, 0, 250000)
    assert parse_dt("20190514101500.000000+0700") == dt.datetime(2019, 5, 14, 10, 15)
    dose = PetDose("BQML", "START", 70.0, 3.7e8, T_HALF, dt.datetime(2020, 1, 1, 8), dt.datetime(2020, 1, 1, 9))
    assert suvbw_factor(dose) == pytest.approx(70000.0 / (3.7e8 * 2 ** (-3600 / T_HALF)), rel=1e-12)
    for bad in ("25:00:00", "ab", "1"):
        with pytest.raises(SuvError):
            parse_tm(bad)


@pytest.mark.parametrize("weight,dose,match", [
    (0.06, 3.7e8, "PatientWeight 0.06 kg is outside the plausible 2..350 kg"),  # grams? tonnes? refused
    (1.9, 3.7e8, "PatientWeight 1.9 kg"), (351.0, 3.7e8, "PatientWeight 351 kg"),
    (70.0, 370.0, "RadionuclideTotalDose 370 Bq is implausible: it looks like MBq"),
    (70.0, 9.9e6, "RadionuclideTotalDose 9.9e\\+06 Bq is outside"), (70.0, 5.1e9, "RadionuclideTotalDose 5.1e\\+09 Bq"),
    (70.0, 5001.0, "RadionuclideTotalDose 5001 Bq is outside")])
def test_implausible_weight_and_dose_are_refused_with_the_number(weight, dose, match):
    admin = PetDose("BQML", "ADMIN", weight, dose, None, None, None)
    with pytest.raises(SuvError, match=match):
        suvbw_factor(admin)


@pytest.mark.parametrize("weight,dose", [(2.0, 1.0e7), (350.0, 5.0e9), (3.5, 2.6e7), (70.0, 3.7e8)])
def test_the_bounds_themselves_and_typical_studies_pass(weight, dose):
    assert suvbw_factor(PetDose("BQML", "ADMIN", weight, dose, None, None, None)) == pytest.approx(weight * 1e3 / dose)
