"""End to end: canary PHI planted in DICOM tags, folder names and report text never comes out of ingestion."""
import dataclasses
import datetime as dt
import json
import logging
import os
import shutil

import pytest

from jaxpetct.studies import cohort, synthetic
from jaxpetct.studies.__main__ import main
from jaxpetct.studies.deid import fold
from jaxpetct.studies.study import StudyError

SALT = "canary-salt"


def _canaries(n_studies: int) -> set[str]:
    """Every planted identifying value, in the forms it was written (tags, folders, report text)."""
    out = set()
    for i in range(n_studies):
        spec = synthetic.make_spec(5, i, synthetic.SIZES["tiny"])
        p = synthetic.canary_patient(spec)
        born = dt.datetime.strptime(p.birth_date, "%Y%m%d")
        out |= {p.name, p.name.replace("^", " "), p.name.split("^")[-1], p.patient_id, p.birth_date,
                born.strftime("%d/%m/%Y"), p.address, p.accession, p.institution, p.referring_physician,
                *(v for _, v in p.extra)}
        assert p.patient_id in synthetic.phi_header(spec)  # the report text really carries them
    return out


def _leaks(text: str, canaries: set[str]) -> list[str]:
    folded = fold(text)
    found = [c for c in canaries if fold(c) in folded]
    return found + (["canary"] if "canary" in folded else [])


def _study_text(study) -> str:
    """Every non-pixel field of a Study, as text."""
    parts = [study.study_id, study.source, repr(study.metadata)]
    for vol in (study.ct, study.pet):
        parts.append(repr({f.name: getattr(vol, f.name) for f in dataclasses.fields(vol) if f.name != "data"}))
    for rep in (study.report, study.report_en):
        if rep is not None:
            parts += [rep.impression, *rep.findings.keys(), *rep.findings.values()]
    return "\n".join(parts)


def test_no_canary_leaves_ingestion(canary_cohort, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    canaries = _canaries(3)
    # The inputs really hold them: tags (checked by the writer's own tests), folder names, report text.
    assert any("CANARY" in d for d in os.listdir(canary_cohort / "dicom" / "study_0000"))
    vi_report = (canary_cohort / cohort.list_studies(str(canary_cohort))[0].release.report_path).read_text("utf-8")
    assert _leaks(vi_report, canaries)
    outputs = []
    for root in (canary_cohort, canary_cohort / "dicom"):
        refs = cohort.list_studies(str(root))
        outputs += [repr(r) for r in refs] + [repr(s) for s in refs.skipped]
        walk = cohort.iter_studies(refs, salt=SALT)
        studies = list(walk)
        assert len(studies) == 3 and walk.skipped == []
        assert {s.source for s in studies} == {"release" if root == canary_cohort else "dicom"}
        for s in studies:
            assert "[" in s.report.impression  # the canary header was replaced by tags, not kept
            outputs.append(_study_text(s))
    assert main(["inspect", str(canary_cohort / "dicom" / "study_0000"), "--json"]) == 0
    outputs.append(capsys.readouterr().out)

    # Damaged copies: errors and skip records must be clean too.
    broken = tmp_path / "dicom"
    shutil.copytree(canary_cohort / "dicom", broken)
    phi_dir = next(d for d in (broken / "study_0000").iterdir() if d.is_dir())
    ct_files = sorted(f for f in (phi_dir / "CT").rglob("*") if f.is_file())
    ct_file = ct_files[len(ct_files) // 2]
    ct_file.write_bytes(ct_file.read_bytes()[:-100])  # pixel data cut short, in a folder named after the patient
    phi_dir2 = next(d for d in (broken / "study_0002").iterdir() if d.is_dir())
    os.unlink(broken / "study_0002" / "report.json")
    (phi_dir2 / "report.json").write_text("{broken", "utf-8")  # a bad sidecar inside the patient's folder
    refs = cohort.list_studies(str(broken))
    walk = cohort.iter_studies(refs, salt=SALT)
    read = list(walk)
    assert len(read) == 1 and len(walk.skipped) == 2
    outputs += [repr(s) for s in walk.skipped] + [repr(s) for s in refs.skipped]
    outputs += [_study_text(s) for s in read]
    for ref in refs:
        try:
            cohort.load_study(ref, salt=SALT)
        except StudyError as e:
            outputs += [str(e), e.file, e.reason]
    assert main(["inspect", str(broken / "study_0000")]) == 2
    outputs.append(capsys.readouterr().err)
    outputs += [r.getMessage() for r in caplog.records]
    leaks = {c for text in outputs for c in _leaks(text, canaries)}
    print(f"\nchecked {len(outputs)} outputs and {len(caplog.records)} log records against "
          f"{len(canaries)} canaries: {sorted(leaks) or 'no leak'}")
    assert leaks == set(), [t[:400] for t in outputs if _leaks(t, canaries)]
    files = sorted(s.file for s in walk.skipped)  # errors still name the file, scrubbed
    assert files[0].startswith("study_0000/") and files[0].endswith(".dcm") and "[" in files[0]
    assert files[1].startswith("study_0002/") and files[1].endswith("/report.json") and "[" in files[1]


def test_truth_file_is_keyed_by_pseudonym_only_on_request(canary_cohort):
    truth = (canary_cohort / synthetic.TRUTH).read_text("utf-8")
    assert not _leaks(truth, _canaries(3))  # ground truth never carried the canaries
    ids = synthetic.truth_by_study_id(str(canary_cohort), SALT)
    studies = list(cohort.iter_studies(cohort.list_studies(str(canary_cohort)), salt=SALT))
    assert {s.study_id for s in studies} == set(ids)
    with pytest.raises(ValueError):
        synthetic.truth_by_study_id(str(canary_cohort), "")  # unsalted pseudonyms are refused
    json.loads(truth.splitlines()[0])


def test_truth_can_carry_study_ids(tmp_path):
    synthetic.write_cohort(str(tmp_path / "c"), n=2, seed=0, salt=SALT)
    text = (tmp_path / "c" / synthetic.TRUTH).read_text("utf-8")
    assert SALT not in text
    ids = {json.loads(line)["study_id"] for line in text.splitlines()}
    assert ids == {s.study_id for s in cohort.iter_studies(cohort.list_studies(str(tmp_path / "c")), salt=SALT)}


def test_stray_files_cost_no_study_its_report(canary_cohort, tmp_path):
    """Two mistakes seen in hospital exports: a copy of one study's slice dropped into another study's folder, and
    a file of a study outside the cohort (its own StudyInstanceUID, no CT+PET pair) dropped in the same way."""
    import pydicom

    root = tmp_path / "dicom"
    shutil.copytree(canary_cohort / "dicom", root)
    host = next(d for d in (root / "study_0000").iterdir() if d.is_dir())
    other_pet = next(f for f in sorted((root / "study_0002").rglob("PT*.dcm")))
    shutil.copy(other_pet, host / "PET" / "PT9000.dcm")  # a duplicate instance of study 2, in study 0's folder
    outsider = host / "CT" / "CT9000.dcm"
    ds = pydicom.dcmread(next(f for f in sorted((root / "study_0001").rglob("*")) if f.is_file() and "CT" in str(f)
                              and not f.name.endswith(".json")))
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.99999"
    ds.save_as(outsider)
    refs = cohort.list_studies(str(root))
    walk = cohort.iter_studies(refs, salt=SALT)
    studies = list(walk)
    assert len(refs) == 4 and len(studies) == 3
    assert all(s.report is not None and s.report_en is not None for s in studies)
    [skip] = walk.skipped
    assert skip.reason.startswith("stray DICOM file(s) of another study") and skip.file.endswith("CT/CT9000.dcm")
    assert not _leaks(f"{skip.file} {skip.reason}", _canaries(3))  # the patient-named folder is scrubbed
