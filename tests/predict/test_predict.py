"""Prediction for new studies: a DICOM study without a report and with canary PHI, a folder with broken studies,
bad files and archives, and the same text as evaluation's record path gives for a test-split study."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from jaxpetct.data.inputs import AugmentConfig, model_images
from jaxpetct.eval.vlm_generate import DecodingConfig
from jaxpetct.predict import Predictor, predict_path
from jaxpetct.predict.__main__ import main
from jaxpetct.studies import synthetic

from tests.eval.synthetic_eval import tiny_export
from tests.studies.test_phi_canary import _canaries, _leaks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_STUDIES = 10
DECODING = DecodingConfig(max_new_tokens=8, batch_size=4, length_buckets=(128,))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("model") / "export", DECODING)


@pytest.fixture(scope="module")
def dicom_cohort(tmp_path_factory):
    """Ten synthetic DICOM studies with canary PHI in tags, folder names and report text; no report sidecars."""
    root = tmp_path_factory.mktemp("cohort") / "c"
    synthetic.write_cohort(str(root), n=N_STUDIES, seed=5, dicom=True, phi_canaries=True)
    for sidecar in (root / "dicom").rglob("report*.json"):
        sidecar.unlink()  # new patients come without a report
    return root / "dicom"


def _files_text(folder) -> str:
    return "\n".join(p.read_text("utf-8", errors="replace") + str(p) for p in folder.rglob("*") if p.is_file())


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "jaxpetct.predict", *map(str, args), "--no-progress"], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_a_study_without_report_gets_report_lesions_and_viewer_and_no_canary(export_dir, dicom_cohort, tmp_path):
    out = tmp_path / "out"
    run = _cli("--model", export_dir, "--study", dicom_cohort / "study_0001", "--out", out, "--salt", "s")
    assert run.returncode == 0, run.stderr[-3000:]
    [folder] = [p for p in out.iterdir() if p.is_dir()]
    report = json.loads((folder / "report.json").read_text("utf-8"))
    assert set(report) == {"Nhận định kết quả", "Mô tả hình ảnh"}
    assert list(report["Mô tả hình ảnh"]) == ["Đầu - cổ", "Lồng ngực", "Ổ bụng - khung chậu", "Hệ cơ - xương"]
    assert all(report["Mô tả hình ảnh"][s] for s in ("Đầu - cổ", "Lồng ngực", "Ổ bụng - khung chậu"))
    lesions = json.loads((folder / "lesions.json").read_text("utf-8"))
    assert lesions["study_id"] == folder.name and set(lesions["sections"]) <= set(report["Mô tả hình ảnh"])
    page = (folder / "viewer.html").read_text("utf-8")
    assert 'id="pet-mip"' in page and "report-generated" in page and "report-reference" not in page
    summary = json.loads((out / "predict_summary.json").read_text("utf-8"))
    assert summary == {"predicted": [folder.name], "failed": [], "skipped_files": 0, "skipped_example": ""}
    leaks = _leaks(_files_text(out) + run.stdout + run.stderr, _canaries(N_STUDIES))
    assert leaks == [], leaks


def test_a_folder_with_two_broken_studies_gives_eight_reports_and_two_lines(export_dir, dicom_cohort, tmp_path, capsys):
    root = tmp_path / "dicom"
    shutil.copytree(dicom_cohort, root)
    ct = sorted(p for d in (root / "study_0003").rglob("CT") if d.is_dir() for p in d.rglob("*") if p.is_file())
    for path in ct:
        path.write_bytes(path.read_bytes()[:-200])  # one study's CT pixel data cut short
    for folder in [d for d in (root / "study_0006").rglob("PET") if d.is_dir()]:
        shutil.rmtree(folder)  # another study without its PET series
    out = tmp_path / "out"
    code = main(["--model", str(export_dir), "--study", str(root), "--out", str(out), "--salt", "s", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    failed = [line for line in err if line.startswith("failed: ")]
    assert code == 1 and len(failed) == 2, err
    assert len([p for p in out.iterdir() if p.is_dir()]) == N_STUDIES - 2
    summary = json.loads((out / "predict_summary.json").read_text("utf-8"))
    assert len(summary["predicted"]) == 8 and len(summary["failed"]) == 2
    assert any("no PET series" in f["reason"] or "no usable PET" in f["reason"] for f in summary["failed"])
    assert not _leaks("\n".join(err) + _files_text(out), _canaries(N_STUDIES))


def test_random_bytes_dcm_is_one_line_exit_2(export_dir, tmp_path):
    junk = tmp_path / "scan.dcm"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    run = _cli("--model", export_dir, "--study", junk, "--out", tmp_path / "out", "--salt", "s")
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines[0].startswith("error: --study scan.dcm: no CT/PET study found (1 files skipped")


def test_zip_uploads_safe_and_unsafe(export_dir, dicom_cohort, tmp_path, capsys):
    good = tmp_path / "study.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as z:
        for path in (dicom_cohort / "study_0002").rglob("*"):
            if path.is_file():
                z.write(path, path.relative_to(dicom_cohort).as_posix())
    args = ["--model", str(export_dir), "--out", str(tmp_path / "out"), "--salt", "s", "--no-progress"]
    assert main(args + ["--study", str(good)]) == 0
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as z:
        z.writestr("../../outside.dcm", b"x")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", b"\0" * (4 << 20))  # 4 MiB of zeros: a few KiB zipped
    capsys.readouterr()
    assert main(args + ["--study", str(slip)]) == 2
    assert main(args + ["--study", str(bomb), "--max-unzipped-gb", "0.001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "leaves the archive" in err[0] and "more than 1.02 MiB" in err[1], err
    assert not (tmp_path / "outside.dcm").exists() and not (tmp_path.parent / "outside.dcm").exists()


def test_prediction_equals_the_record_path_of_evaluation(export_dir, tmp_path):
    """A test-split study: its regions built into records, read back and decoded as eval does, answered by eval's
    batching, give the text that predict gives from the raw study."""
    from jaxpetct.data import pipeline
    from jaxpetct.eval.runner import EvalExample, answer_all
    from jaxpetct.studies import cohort
    from tests.tfds_builder import cohort_fixtures as cf

    root = tmp_path / "manual"
    cf.write_cohort(str(root))
    summary = cf.build(str(root), str(tmp_path / "data"), "regions")
    predictor = Predictor.from_export(export_dir)
    records = list(pipeline.open_source(summary.dataset_dir, "test"))
    study_id = _text(records[0]["study_id"])
    rows = [r for r in records if _text(r["study_id"]) == study_id]
    image = predictor.pre.image
    examples = [EvalExample.report(f"{study_id}:{_text(r['region'])}", model_images(r, image, AugmentConfig(), None),
                                   "", region=_text(r["region"]), study_id=study_id) for r in rows]
    expected = {rec["region"]: rec["generated"] for rec in answer_all(predictor.generator, DECODING, examples)[0]}
    [ref] = [r for r in cohort.list_studies(str(root)) if cohort.study_id(r, cf.SALT) == study_id]
    got = predictor.predict(cohort.load_study(ref, salt=cf.SALT))
    assert got.regions == expected and len(expected) == 3
    # The same study as a new patient's: its manifest row without report paths (the release layout allows it).
    manifest = (root / "metadata.csv").read_text("utf-8").splitlines()
    rows = [line.split(",") for line in manifest]
    for row in rows[1:]:
        if row[6] == ref.release.ct_path:
            row[7] = row[8] = ""
    (root / "metadata.csv").write_text("\n".join(",".join(r) for r in rows) + "\n", "utf-8")
    summary = predict_path(predictor, str(root), str(tmp_path / "out"), salt=cf.SALT, patient=ref.key, progress=False)
    assert summary.predicted == [study_id] and not summary.failed
    report = json.loads((tmp_path / "out" / study_id / "report.json").read_text("utf-8"))["Mô tả hình ảnh"]
    assert sorted(t for t in report.values() if t) == sorted(expected.values())


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def test_an_english_model_writes_english_reports(dicom_cohort, tmp_path):
    """An export whose preprocess says "en" is asked in English and writes reports_en's keys."""
    export = tiny_export(tmp_path / "export", DECODING, language="en")
    predictor = Predictor.from_export(export)
    assert predictor.pre.language == "en"
    examples, _, _ = predictor.examples(_one_study(dicom_cohort / "study_0004"))
    assert examples[0].turns[0][0].startswith("Describe the PET/CT findings of")
    summary = predict_path(predictor, str(dicom_cohort / "study_0004"), str(tmp_path / "out"), salt="s", progress=False)
    report = json.loads((tmp_path / "out" / summary.predicted[0] / "report.json").read_text("utf-8"))
    assert set(report) == {"Impression", "Findings"} and len(report["Findings"]) == 4


def _one_study(folder):
    from jaxpetct.studies import cohort

    [ref] = cohort.list_studies(str(folder))
    return cohort.load_study(ref, salt="s")
