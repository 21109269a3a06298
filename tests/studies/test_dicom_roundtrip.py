"""Writer -> reader round trips: arrays and geometry come back whatever the export layout; bad series are named."""
import dataclasses
import pickle

import numpy as np
import pytest

from jaxpetct.studies.dicom import find_dicom_studies, load_dicom_study, read_dicom_folder, read_dicom_volume
from jaxpetct.studies.dicom_writer import Layout, PatientTags, write_dicom_study
from jaxpetct.studies.resample import resample_to_grid

from tests.studies import test_dicom_support as sup

LAYOUTS = {
    "plain": Layout(),
    "shuffled_nested": Layout(shuffle_names=True, nest_depth=3, series_folders=False),
    "reversed_instances": Layout(reverse_instances=True, shuffle_names=True),
    "top_down_stack": Layout(reverse_slices=True, nest_depth=2),
    "everything": Layout(shuffle_names=True, nest_depth=2, reverse_instances=True, reverse_slices=True,
                         phi_in_paths=True),
}


def _assert_geometry(got, want):
    np.testing.assert_allclose(got.origin_mm, want.origin_mm, atol=1e-9)
    np.testing.assert_allclose(got.spacing_mm, want.spacing_mm, atol=1e-9)
    np.testing.assert_allclose(got.direction, want.direction, atol=1e-9)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("oblique", [False, True])
def test_round_trip_returns_arrays_and_geometry(tmp_path, name, oblique):
    direction = sup.rotation(7) if oblique else sup.IDENTITY
    ct = sup.ct_volume(direction=direction)
    pet = sup.pet_volume(direction=direction)
    patient = PatientTags(sex="F", age_years=47, height_m=1.55, weight_kg=51.5)
    write_dicom_study(tmp_path, ct, pet, patient=patient, layout=LAYOUTS[name], seed=3)
    (ref,) = find_dicom_studies(tmp_path)
    study, notes = load_dicom_study(ref, salt=sup.SALT)
    assert notes == [] and study.source == "dicom" and study.study_id == ref.study_id(sup.SALT)

    np.testing.assert_array_equal(study.ct.data, ct.data)  # HU are integers: exact
    _assert_geometry(study.ct, ct)
    native, _ = read_dicom_volume(ref, "PT", salt=sup.SALT)
    _assert_geometry(native, pet)
    quantum = sup.pet_quantum(pet)[:, None, None]  # int16 storage with one RescaleSlope per slice
    assert np.all(np.abs(native.data - pet.data) <= 0.5 * quantum + 1e-5)
    # PET on the CT grid equals resampling the written SUV volume directly, up to the same quantisation.
    expected = resample_to_grid(pet, ct).data
    assert np.abs(study.pet.data - expected).max() <= quantum.max() + 1e-5
    assert study.pet.units == "SUVbw" and study.ct.units == "HU" and (study.pet.data > 0).mean() > 0.3
    md = study.metadata
    assert (md.sex, md.age_years, md.height_m, md.weight_kg, md.year, md.month) == ("F", 47, 1.55, 51.5, 2019, 5)


def test_left_handed_input_comes_back_as_the_same_physical_image(tmp_path):
    """A volume described with its slice axis against row x column is returned reordered along the normal."""
    ct = sup.ct_volume()
    flipped_dir = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
    ct_left = dataclasses.replace(ct, direction=flipped_dir)
    write_dicom_study(tmp_path, ct_left, sup.pet_volume(origin=(-14.0, -17.0, -35.0)), seed=4)
    (ref,) = find_dicom_studies(tmp_path)
    got, _ = read_dicom_volume(ref, "CT", salt=sup.SALT)
    np.testing.assert_array_equal(got.data, ct.data[::-1])
    top = ct.origin_mm[2] - ct.spacing_mm[0] * (ct.shape[0] - 1)
    np.testing.assert_allclose(got.origin_mm, (ct.origin_mm[0], ct.origin_mm[1], top), atol=1e-9)
    np.testing.assert_allclose(got.direction, sup.IDENTITY, atol=1e-12)


def test_refs_are_picklable_and_print_no_uids_or_paths(tmp_path):
    written = write_dicom_study(tmp_path, sup.ct_volume(), sup.pet_volume(), layout=Layout(phi_in_paths=True))
    refs = find_dicom_studies(tmp_path)
    again = pickle.loads(pickle.dumps(refs[0]))
    assert again == refs[0] and again.study_id("s") == refs[0].study_id("s")
    text = repr(refs) + str(refs[0]) + repr(refs[0].series)
    assert written.study_uid not in text and str(tmp_path) not in text and "CANARY" not in text
    assert text.startswith("[DicomStudyRef(#0: 1 CT + 1 PET series, 9 files)]")


def _two_series(tmp_path, second_ct_depth=7):
    """One study with two CT and two PET series (a second acquisition written with the same study UID)."""
    first = write_dicom_study(tmp_path / "a", sup.ct_volume(), sup.pet_volume(), seed=10)
    deeper = sup.ct_volume(shape=(second_ct_depth, 8, 7), seed=5)
    second = write_dicom_study(tmp_path / "b", deeper, sup.pet_volume(seed=9), seed=11, study_uid=first.study_uid,
                               frame_of_reference_uid=first.frame_of_reference_uid)
    return first, second, deeper


def test_pick_rule_prefers_more_slices_and_names_the_other(tmp_path):
    first, second, deeper = _two_series(tmp_path)
    (ref,) = find_dicom_studies(tmp_path)
    study, notes = load_dicom_study(ref, salt=sup.SALT)
    np.testing.assert_array_equal(study.ct.data, deeper.data)  # 7 slices beat 5
    assert any("CT series #2 (5 files) not used" in n for n in notes)


def test_pick_rule_falls_back_when_the_preferred_series_is_broken(tmp_path):
    first, second, deeper = _two_series(tmp_path)
    second.ct_files[3].unlink()  # the 7-slice series now has a gap
    (ref,) = find_dicom_studies(tmp_path)
    study, notes = load_dicom_study(ref, salt=sup.SALT)
    np.testing.assert_array_equal(study.ct.data, sup.ct_volume().data)
    assert any("uneven slice spacing" in n for n in notes)


def test_pet_pick_prefers_attenuation_corrected(tmp_path):
    first, second, _ = _two_series(tmp_path)
    for path in first.pet_files:  # the first PET becomes a NAC series in counts: never chosen over AC
        sup.edit(path, lambda ds: (setattr(ds, "CorrectedImage", ["DECY"]), setattr(ds, "Units", "CNTS")))
    (ref,) = find_dicom_studies(tmp_path)
    study, notes = load_dicom_study(ref, salt=sup.SALT)
    native, _ = read_dicom_volume(ref, "PT", salt=sup.SALT)
    assert np.abs(native.data - sup.pet_volume(seed=9).data).max() < 1e-3
    assert any("PET series" in n and "not used" in n for n in notes)


def test_identical_copy_of_an_instance_is_dropped_with_a_note(tmp_path):
    written = write_dicom_study(tmp_path, sup.ct_volume(), sup.pet_volume())
    (tmp_path / "again").write_bytes(written.ct_files[2].read_bytes())
    (ref,) = find_dicom_studies(tmp_path)
    study, notes = load_dicom_study(ref, salt=sup.SALT)
    np.testing.assert_array_equal(study.ct.data, sup.ct_volume().data)
    assert len(notes) == 1 and "second copy" in notes[0]


@pytest.mark.parametrize("name", sorted(k for k, v in sup.BAD.items() if v[1] is not None))
def test_bad_series_give_a_named_reason(tmp_path, name):
    corrupt, reason = sup.BAD[name]
    written = write_dicom_study(tmp_path, sup.ct_volume(), sup.pet_volume(), seed=20)
    touched = corrupt(written, np.random.default_rng(0))
    result = read_dicom_folder(tmp_path, salt=sup.SALT)
    assert result.studies == [] and len(result.errors) == 1
    error = result.errors[0]
    assert sup.reason_matches(error.reason, reason) and error.study == sup.pseudonym(written.study_uid)
    assert error.file != "" and not error.file.startswith("/")
    print(f"{name}: {error}  (touched {len(touched)} files)")


def test_tilt_tolerance_accepts_rounding_but_not_a_tilt(tmp_path):
    """Positions printed with 6 decimals (rounding ~1e-6 mm) are fine; a 0.5 degree tilt is not."""
    from jaxpetct.studies.dicom_series import build_volume, SeriesError
    import pydicom

    written = write_dicom_study(tmp_path, sup.ct_volume(), sup.pet_volume())
    items = [(p.name, pydicom.dcmread(p)) for p in written.ct_files]
    for k, (_, ds) in enumerate(items):
        ds.ImagePositionPatient = [f"{float(v) + 1e-6 * (-1) ** k:.6f}" for v in ds.ImagePositionPatient]
    build_volume(items, "HU")
    items = [(p.name, pydicom.dcmread(p)) for p in written.ct_files]  # build_volume consumed the pixel data
    for k, (_, ds) in enumerate(items):
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + k * 2.5 * np.tan(np.radians(0.5)),
                                   *ds.ImagePositionPatient[1:]]
    with pytest.raises(SeriesError, match="0.50 degrees off the slice normal"):
        build_volume(items, "HU")


def test_implicit_vr_and_preamble_less_files_are_read(tmp_path):
    """Older exports: Implicit VR Little Endian, and raw data sets with neither preamble nor file meta."""
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    ct, pet = sup.ct_volume(), sup.pet_volume()
    written = write_dicom_study(tmp_path, ct, pet, layout=Layout(shuffle_names=True))
    for n, path in enumerate(written.files):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        if n % 2:
            ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
        else:  # no 128-byte preamble, no "DICM", no group 0002: the data set starts at (0008,0005)
            del ds.file_meta
            ds.preamble = None
            pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
            assert path.read_bytes()[:2] == b"\x08\x00"
    (ref,) = find_dicom_studies(tmp_path)
    study, notes = load_dicom_study(ref, salt=sup.SALT)
    np.testing.assert_array_equal(study.ct.data, ct.data)
    _assert_geometry(study.ct, ct)
    assert np.abs(study.pet.data - resample_to_grid(pet, ct).data).max() <= sup.pet_quantum(pet).max() + 1e-5
