"""PHI canaries planted in DICOM tags, folder names and report text never come out of ingestion.

Checked outputs: every field of the Study (recursively) and its repr, the notes, every log record at DEBUG,
every Python warning, the refs' repr, the skipped-file records and the errors raised for broken variants of
the same patient's study.
"""
import dataclasses
import logging
import warnings

import numpy as np
import pytest

from jaxpetct.studies.deid import fold
from jaxpetct.studies.dicom import find_dicom_studies, load_dicom_study, read_dicom_folder
from jaxpetct.studies.dicom_writer import Layout, PatientTags, PetAcquisition, write_dicom_study
from jaxpetct.text.report import ABDOMEN_PELVIS, CHEST, HEAD_NECK, MUSCULOSKELETAL, Report

from tests.studies import test_dicom_support as sup

PATIENT = PatientTags(
    name="NGUYỄN^VĂN^CANARYONE", patient_id="PID-CANARY-0001", birth_date="19650312",
    address="12 Ngõ Canary, Phường Dịch Vọng, Quận Cầu Giấy, Hà Nội", accession="ACC-CANARY-77",
    institution="Bệnh viện Canary Trung ương", referring_physician="TRẦN^THỊ^CANARYDOC",
    extra=(("PatientTelephoneNumbers", "0912345678"), ("OtherPatientIDs", "OTHER-CANARY-42"),
           ("OperatorsName", "LÊ^CANARY^OPERATOR"), ("InstitutionAddress", "78 Giải Phóng Canary")))
# What must never appear, compared without case or accents.
NEEDLES = ["canary", "19650312", "12/03/1965", "1965-03-12", "0912345678", "0912 345 678", "nguyen van"]

REPORT = Report(
    impression="Bệnh nhân Nguyễn Văn Canaryone (Mã BN: PID-CANARY-0001), sinh ngày 12/03/1965: hình ảnh tăng "
               "chuyển hóa FDG ở thùy trên phổi phải (SUVmax: 4,6), kích thước 12 x 14 mm.",
    findings={
        HEAD_NECK: "Hình ảnh bắt xạ theo đặc điểm sinh lý ở não. Hạch nhóm IIB hai bên, kích thước 10 mm.",
        CHEST: "Khối ở 1/3 trên phổi phải, so với PET/CT 5/2017. Liên hệ SĐT 0912 345 678.",
        ABDOMEN_PELVIS: "Địa chỉ: 12 Ngõ Canary, Hà Nội. BS. Trần Thị Canarydoc đọc tại Bệnh viện Canary Trung "
                        "ương, accession ACC-CANARY-77.",
        MUSCULOSKELETAL: "Tổn thương tiêu xương ở đốt sống L4.",
    })


def _strings(obj):
    """Every string reachable from a Study (dataclasses, dicts, tuples), plus reprs of non-string leaves."""
    if isinstance(obj, str):
        yield obj
    elif dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            yield from _strings(getattr(obj, field.name))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)
    elif not isinstance(obj, np.ndarray):
        yield repr(obj)


def _assert_clean(texts):
    for text in texts:
        folded = fold(text)
        for needle in NEEDLES:
            assert fold(needle) not in folded, (needle, text[:300])


def _write(root, seed, **acq):
    return write_dicom_study(root, sup.ct_volume(), sup.pet_volume(), patient=PATIENT,
                             acquisition=PetAcquisition(**acq), layout=Layout(phi_in_paths=True, nest_depth=1),
                             seed=seed)


def test_canaries_never_leave_ingestion(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    good = _write(tmp_path / "good", seed=1)
    assert "NGUYỄN_VĂN_CANARYONE" in good.ct_files[0].parent.parent.name  # the folder really carries the name
    no_pet = _write(tmp_path / "no_pet", seed=2)
    for p in no_pet.pet_files:
        p.unlink()
    _write(tmp_path / "counts", seed=3, units="CNTS")
    gap = _write(tmp_path / "gap", seed=4)
    gap.ct_files[2].unlink()
    folder = good.ct_files[0].parent.parent
    (folder / "NGUYEN_VAN_CANARYONE_ghi_chu.txt").write_text("Bệnh nhân Nguyễn Văn Canaryone", encoding="utf-8")
    (folder / "CANARYONE.dcm").write_bytes(b"\x00" * 50)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refs = find_dicom_studies(tmp_path)
        good_ref = [r for r in refs if r.study_uid == good.study_uid][0]
        study, notes = load_dicom_study(good_ref, salt=sup.SALT, report=REPORT, report_en=None)
        result = read_dicom_folder(tmp_path, salt=sup.SALT)

    assert len(result.studies) == 1 and len(result.errors) == 3 and len(refs.skipped) == 2
    reasons = sorted(e.reason for e in result.errors)
    assert any("no PET series" in r for r in reasons) and any("Units CNTS" in r for r in reasons)
    assert any("uneven slice spacing" in r for r in reasons)

    outputs = list(_strings(study)) + [repr(study), str(study.metadata)] + notes
    outputs += [str(e) for e in result.errors] + [f"{s.file}: {s.reason}" for s in refs.skipped]
    outputs += [repr(refs), caplog.text] + [str(w.message) for w in caught]
    outputs += [r.getMessage() for r in caplog.records]
    _assert_clean(outputs)

    # The scrubbed report keeps its clinical content.
    text = study.report.full_text()
    for clinical in ("SUVmax: 4,6", "12 x 14 mm", "nhóm IIB", "1/3 trên", "PET/CT 5/2017", "đốt sống L4"):
        assert clinical in text, clinical
    assert study.metadata.age_years == 56 and study.study_id == sup.pseudonym(good.study_uid)
    print(f"scrubbed impression: {study.report.impression}")
    print(f"errors: {[str(e) for e in result.errors]}")


def test_pseudonym_depends_on_salt_and_study_only(tmp_path):
    written = _write(tmp_path, seed=5)
    (ref,) = find_dicom_studies(tmp_path)
    a, _ = load_dicom_study(ref, salt="salt-a")
    b, _ = load_dicom_study(ref, salt="salt-a")
    c, _ = load_dicom_study(ref, salt="salt-b")
    assert a.study_id == b.study_id != c.study_id
    assert written.study_uid not in a.study_id and len(a.study_id) == 16
    with pytest.raises(ValueError):
        load_dicom_study(ref, salt="")
