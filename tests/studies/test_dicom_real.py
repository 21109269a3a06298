"""The DICOM reader on real files that no one here wrote: pydicom's CT samples and deid-data's CT files.

HU must equal pydicom's own `apply_rescale` voxel for voxel, slices must come out ordered along the slice
normal (these files' InstanceNumbers and names run the other way), and the broken samples among them
(a series with a 200 mm gap, a two-slice "series" of different orientations, a colour CT, non-image CT
records) must give clear errors that carry none of the files' identifying values.
"""
import dataclasses
import pathlib
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale

from jaxpetct.studies.deid import fold
from jaxpetct.studies.dicom import find_dicom_studies, read_dicom_study, read_dicom_volume
from jaxpetct.studies.dicom_scan import phi_values
from jaxpetct.studies.study import StudyError

from tests.studies.test_dicom_support import SALT

DICOMDIR_TESTS = pathlib.Path(get_testdata_file("DICOMDIR")).parent  # pydicom's dicomdirtests folder


def _hu(path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return apply_rescale(ds.pixel_array, ds)


def test_ct_small_hu_equals_pydicom_apply_rescale(tmp_path):
    src = pathlib.Path(get_testdata_file("CT_small.dcm"))
    dst = tmp_path / "export" / "a" / "b" / "IMG0001"  # no extension, nested: names mean nothing
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    (ref,) = find_dicom_studies(tmp_path)
    volume, notes = read_dicom_volume(ref, "CT", salt=SALT)
    ds = pydicom.dcmread(src)
    assert volume.units == "HU" and volume.shape == (1, 128, 128) and notes == []
    np.testing.assert_array_equal(volume.data[0], _hu(src))
    assert volume.origin_mm == tuple(float(v) for v in ds.ImagePositionPatient)
    assert volume.spacing_mm == (float(ds.SliceThickness), *map(float, ds.PixelSpacing))
    print(f"CT_small: HU range [{volume.data.min():.0f}, {volume.data.max():.0f}] equals apply_rescale")
    with pytest.raises(StudyError, match="no PET series"):
        read_dicom_study(ref, salt=SALT)


def _study_with(refs, name: str):
    (ref,) = [r for r in refs if any(f.endswith("/" + name) for f in r.files)]
    return ref


@pytest.fixture(scope="module")
def refs():
    return find_dicom_studies(DICOMDIR_TESTS)


def test_dicomdirtests_series_ordered_along_normal_and_hu_exact(refs):
    assert len(refs) == 3  # two CT studies plus the non-image TINY_ALPHA set; MR/CR studies skipped
    reasons = {s.file.rsplit("/", 1)[-1]: s.reason for s in refs.skipped}
    assert reasons["DICOMDIR"] == "DICOMDIR index, not an image"
    assert sum("modality MR" in r for r in reasons.values()) == 17
    assert sum("modality CR" in r for r in reasons.values()) == 3
    assert "not a DICOM file" in reasons["README.txt"]

    ref = _study_with(refs, "2392")  # 98892001/CT5N: 5 axial slices, InstanceNumber against position
    volume, notes = read_dicom_volume(ref, "CT", salt=SALT)
    files = sorted((DICOMDIR_TESTS / "98892001" / "CT5N").iterdir(),
                   key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    instance_order = [int(pydicom.dcmread(p).InstanceNumber) for p in files]
    assert instance_order == sorted(instance_order, reverse=True)  # so InstanceNumber order would be wrong
    assert volume.shape == (5, 16, 16)
    for k, path in enumerate(files):
        np.testing.assert_array_equal(volume.data[k], _hu(path))
    assert volume.origin_mm == tuple(float(v) for v in pydicom.dcmread(files[0]).ImagePositionPatient)
    assert volume.spacing_mm[0] == pytest.approx(2.5, abs=1e-6)
    # The other CT series of this study (two scout slices of different orientation) is named as not used.
    assert len(notes) == 1 and "not used: localizer" in notes[0]
    print(f"CT5N: 5 slices ordered along the normal, HU exact; notes: {notes}")


def test_dicomdirtests_broken_series_are_clear_errors(refs):
    gap = _study_with(refs, "17136")  # 77654033/CT2: slices at -99.5, 103.0, 104.3, 105.5 mm
    with pytest.raises(StudyError, match="uneven slice spacing") as info:
        read_dicom_volume(gap, "CT", salt=SALT)
    assert info.value.study == gap.study_id(SALT) and info.value.file.endswith("CT2/17136")
    assert "77654033" not in str(info.value)  # the folder is named by the patient id: scrubbed

    # 98892001/CT2N: two scout slices of different orientation. Refused as a localizer (ImageType), and
    # without that flag, as a mixed series.
    study = _study_with(refs, "6293")
    ct2n = [s for s in study.series if len(s.files) == 2][0]
    assert ct2n.is_localizer
    from jaxpetct.studies.dicom import _open, _series_volume  # the single series, past the pick rule
    from jaxpetct.studies.dicom_series import SeriesError
    with pytest.raises(SeriesError, match="localizer"):
        _series_volume(_open(study, SALT), ct2n)
    unflagged = dataclasses.replace(ct2n, image_type=())
    with pytest.raises(SeriesError, match="mixed series: ImageOrientationPatient"):
        _series_volume(_open(study, SALT), unflagged)

    tiny = _study_with(refs, "IM000002")  # pydicom's TINY_ALPHA: "CT" records without any image
    with pytest.raises(StudyError, match="no usable CT series: missing or zero Rows/Columns"):
        read_dicom_volume(tiny, "CT", salt=SALT)


def test_deid_data_colour_ct_refused_without_leaking_its_phi(tmp_path, caplog):
    import deid_data

    data = pathlib.Path(deid_data.__file__).parent / "data"
    sources = sorted((data / "humans").glob("ctbrain*.dcm")) + sorted((data / "dicom-cookies").glob("*.dcm"))
    phi = set()
    for src in sources:
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        phi |= {str(ds.PatientName), str(ds.PatientID), str(ds.get("InstitutionName", "")),
                str(ds.get("ReferringPhysicianName", "")), str(ds.get("PatientBirthDate", ""))}
        folder = tmp_path / f"{str(ds.PatientName).replace('^', '_')}_{ds.PatientID}"  # a hospital-style layout
        folder.mkdir(exist_ok=True)
        shutil.copy(src, folder / src.name)
    phi = {p for p in phi if len(p) >= 4}
    assert {"SIMPSON^HOMER^J^", "00007041776", "SGH SPRINGFIELD GENERAL HOSPITAL"} <= phi

    caplog.set_level("DEBUG")
    refs = find_dicom_studies(tmp_path)
    assert len(refs) == 1 and len(refs[0].files) == 2  # the two ctbrain files; the cookies have no modality
    assert len(refs.skipped) == 7 and all("modality missing" in s.reason for s in refs.skipped)
    with pytest.raises(StudyError, match="colour image") as info:
        read_dicom_study(refs[0], salt=SALT)
    ds = pydicom.dcmread(sources[0])
    assert ds.SamplesPerPixel == 3  # really colour: apply_rescale of it would be RGB triplets, not HU

    outputs = [str(info.value), repr(refs), repr(refs[0])] + [f"{s.file} {s.reason}" for s in refs.skipped]
    outputs.append(caplog.text)
    for value in phi | phi_values(ds):
        for part in [value] + value.replace("^", " ").split():
            if len(part) >= 4:
                assert all(fold(part) not in fold(text) for text in outputs), part
    print(f"deid-data: {len(sources)} files, error: {info.value}")


def test_undecodable_compressed_pixels_name_the_transfer_syntax_and_the_plugins():
    """pydicom's 12-bit JPEG Extended sample: neither Pillow nor libjpeg (the dicom-codecs extra) decodes it. The
    reason names the syntax and, when no decoder is installed, what to install; never the file's content."""
    from jaxpetct.studies.dicom_series import SeriesError, _modality_values

    ds = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0  # the NM sample has none; CT and PET must (tested below)
    with pytest.raises(SeriesError) as err:
        _modality_values(ds, "study/JPEG-lossy.dcm", (int(ds.Rows), int(ds.Columns)))
    reason = str(err.value)
    assert "transfer syntax JPEG Extended (Process 2 and 4)" in reason
    assert "the installed decoders could not decode it" in reason or "jaxpetct[dicom-codecs]" in reason
    assert "Traceback" not in reason and "\n" not in reason


@pytest.mark.parametrize("edit,match", [
    (lambda ds: delattr(ds, "RescaleIntercept"), "RescaleIntercept is missing or empty"),
    (lambda ds: setattr(ds, "RescaleIntercept", ""), "RescaleIntercept is missing or empty"),
    (lambda ds: delattr(ds, "RescaleSlope"), "RescaleSlope is missing or empty"),
    (lambda ds: setattr(ds, "RescaleSlope", 0), "RescaleSlope is 0")])
def test_a_ct_slice_without_its_rescale_is_refused_not_read_as_raw_values(edit, match):
    """pydicom's CT_small with its Type 1 rescale removed: read as raw stored values its darkest voxel would be +128 "HU", not -896."""
    from jaxpetct.studies.dicom_series import SeriesError, _modality_values

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    shape = (int(ds.Rows), int(ds.Columns))
    assert _modality_values(pydicom.dcmread(get_testdata_file("CT_small.dcm")), "f.dcm", shape).min() < -500
    edit(ds)
    with pytest.raises(SeriesError, match=match):
        _modality_values(ds, "study/CT_small.dcm", shape)
