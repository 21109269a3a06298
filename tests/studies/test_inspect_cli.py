"""`python -m jaxpetct.studies inspect|synth`: the JSON record, DICOM folders, and one-line errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxpetct.studies import cohort
from jaxpetct.studies.__main__ import main
from jaxpetct.text.report import IMPRESSION_KEY, SECTIONS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS = {"study_id", "ct", "pet", "regions", "report_sections", "problems"}


def _run(*args):
    return subprocess.run([sys.executable, "-m", "jaxpetct.studies", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_inspect_release_study_json(tiny_cohort, capsys):
    ref = cohort.list_studies(str(tiny_cohort))[4]
    assert main(["inspect", str(tiny_cohort), "--patient", ref.release.name, "--json", "--salt", "s"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert KEYS <= set(rec) and rec["study_id"] == cohort.study_id(ref, "s")
    with np.load(tiny_cohort / ref.release.ct_path, allow_pickle=False) as z:
        ct = z["data"]
    with np.load(tiny_cohort / ref.release.pet_path, allow_pickle=False) as z:
        pet = z["data"]
    assert rec["ct"]["shape"] == list(ct.shape) and rec["pet"]["shape"] == list(pet.shape)
    assert (rec["ct"]["hu_min"], rec["ct"]["hu_max"]) == (float(ct.min()), float(ct.max()))
    assert rec["pet"]["units"] == "SUVbw" and rec["pet"]["suv_max"] == pytest.approx(pet.max() / 1000, rel=1e-6)
    assert rec["ct"]["spacing_mm"] == [18.0, 7.8125, 7.8125] and rec["pet"]["spacing_mm"] == [18.0, 15.625, 15.625]
    assert set(rec["regions"]) == {"head_neck", "chest", "abdomen_pelvis", "whole_body"}
    assert rec["report_sections"] == [IMPRESSION_KEY, *SECTIONS]
    assert all("overlap reduced" in p or "clamped" in p for p in rec["problems"])  # tiny volumes only
    # by study key too, and the human summary
    assert main(["inspect", str(tiny_cohort), "--patient", ref.key]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study ") and "head_neck" in out and "SUVmax" in out


def test_inspect_subprocess_and_one_line_error(tiny_cohort, tmp_path):
    ref = cohort.list_studies(str(tiny_cohort))[2]
    ok = _run("inspect", str(tiny_cohort), "--patient", ref.release.name, "--json")
    assert ok.returncode == 0 and KEYS <= set(json.loads(ok.stdout))
    root = tmp_path / "broken"
    shutil.copytree(tiny_cohort, root)
    path = root / ref.release.ct_path
    path.write_bytes(path.read_bytes()[:5000])  # truncated NPZ
    bad = _run("inspect", str(root), "--patient", ref.release.name, "--json")
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and ref.release.ct_path in lines[0] and "Traceback" not in bad.stderr
    missing = _run("inspect", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_inspect_usage_errors(tiny_cohort, tmp_path, capsys):
    assert main(["inspect", str(tiny_cohort)]) == 2
    assert "--patient" in capsys.readouterr().err
    assert main(["inspect", str(tiny_cohort), "--patient", "patient_999"]) == 2
    root = tmp_path / "dup"
    shutil.copytree(tiny_cohort, root)
    lines = (root / "metadata.csv").read_text("utf-8").splitlines()
    lines[2] = "patient_0" + lines[2][lines[2].index(","):]  # a name repeated across years, as in the release
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", "utf-8")
    capsys.readouterr()
    assert main(["inspect", str(root), "--patient", "patient_0"]) == 2
    err = capsys.readouterr().err
    assert "names 2 studies" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["inspect", str(empty)]) == 2
    assert "no CT/PET DICOM study" in capsys.readouterr().err


def test_inspect_dicom_folder(canary_cohort, capsys):
    folder = canary_cohort / "dicom" / "study_0001"
    assert main(["inspect", str(folder), "--json"]) == 0
    out = capsys.readouterr().out
    rec = json.loads(out)
    assert KEYS <= set(rec) and rec["source"] == "dicom" and "canary" not in out.lower()
    [ref] = [r for r in cohort.list_studies(str(canary_cohort)) if r.release.patient == 1]
    with np.load(canary_cohort / ref.release.ct_path, allow_pickle=False) as z:
        ct = z["data"]
    with np.load(canary_cohort / ref.release.pet_path, allow_pickle=False) as z:
        pet = z["data"] / 1000.0
    assert rec["ct"]["shape"] == list(ct.shape)  # same image, now from DICOM
    assert (rec["ct"]["hu_min"], rec["ct"]["hu_max"]) == (float(ct.min()), float(ct.max()))
    assert rec["pet"]["units"] == "SUVbw" and rec["pet"]["shape"] == list(ct.shape)  # resampled onto the CT grid
    assert 0.5 * pet.max() < rec["pet"]["suv_max"] <= pet.max() * 1.001
    hn = rec["regions"]["head_neck"]["slices"]
    assert hn[1] == ct.shape[0]  # DICOM slices run feet to head here: head-neck is at the end
    assert rec["report_sections"] == [IMPRESSION_KEY, *SECTIONS]
    assert main(["inspect", str(canary_cohort / "dicom")]) == 2  # three studies: ask for one
    assert "3 DICOM studies" in capsys.readouterr().err


def test_synth_cli(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(["synth", str(out), "--n", "3", "--seed", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["studies"] == 3 and set(summary["splits"]) == {"train", "validation", "test"}
    assert len(cohort.list_studies(str(out))) == 3
    assert main(["synth", str(out), "--n", "3"]) == 2  # never overwrites silently
    assert "exists" in capsys.readouterr().err


def test_inspect_without_encoding_reports_raw_pet_and_nominal_geometry(tiny_cohort, tmp_path, capsys):
    root = tmp_path / "plain"
    shutil.copytree(tiny_cohort, root)
    os.unlink(root / "encoding.json")  # as the public release ships
    assert main(["inspect", str(root), "--patient", "patient_0", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["pet"]["units"] == "raw" and rec["pet"]["suv_max"] is None and rec["pet"]["max"] > 1000
    assert rec["ct"]["spacing_mm"] == [3.0, 500 / 64, 500 / 64] and not rec["ct"]["geometry_known"]
    assert any("no SUV" in p for p in rec["problems"]) and sum("nominal" in p for p in rec["problems"]) == 2
