"""Canary PHI of synthetic studies: made-up names, ids, birth dates, addresses and phone numbers written into DICOM
tags, folder names and report text when a cohort is asked for them, so the tests can check that none of them
survives ingestion (every value carries CANARY or a pattern no real record has)."""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxpetct.studies.synthetic import StudySpec


def phi_header(spec: StudySpec) -> str:
    """Canary PHI written into the report text when asked: each value must be scrubbed at ingest."""
    p = canary_patient(spec)
    dob = dt.datetime.strptime(p.birth_date, "%Y%m%d").strftime("%d/%m/%Y")
    family, middle, given = p.name.split("^")
    return (f"Bệnh nhân {family.capitalize()} {middle.capitalize()} {given.capitalize()}, mã BN {p.patient_id}, "
            f"ngày sinh {dob}, SĐT {dict(p.extra)['PatientTelephoneNumbers']}.")


def canary_patient(spec: StudySpec):
    from jaxpetct.studies.dicom_writer import PatientTags

    n = spec.index
    tag = "".join(chr(ord("A") + (n // 26 ** p) % 26) for p in range(3))  # names carry letters only
    return PatientTags(
        name=f"NGUYEN^VAN^CANARY{tag}", patient_id=f"PIDCANARY{n:06d}", birth_date=f"19{50 + n % 40:02d}0{1 + n % 9}1{n % 10}",
        address=f"So {n + 1} Ngo Canary, Phuong Dich Vong, Ha Noi", accession=f"ACCCANARY{n:05d}",
        institution="Benh vien Canary Trung uong", referring_physician="TRAN^THI^CANARYDOC", sex=spec.sex,
        age_years=spec.age, height_m=spec.height_m, weight_kg=spec.weight_kg,
        extra=(("PatientTelephoneNumbers", f"09{n:08d}"), ("OtherPatientIDs", f"OTHERCANARY{n:04d}")))
