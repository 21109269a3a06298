"""Seeded build fuzz: bad studies mixed into good cohorts, each built by the real CLI in a fresh process.

Fault families (one fault per bad study): lone surrogates, NUL and invalid UTF-8 in every per-study text file
(Vietnamese and English reports of the release, report.json / report_en.json sidecars of DICOM studies), bad
manifest rows, truncated and missing volumes, depth mismatches, values outside the physics gate (a CT not rescaled,
a CT without tissue, a PET 1000x too small), DICOM rescale tags missing on every slice or empty on one, weight in
grams, dose in MBq, a stray file of another study, JPEG 2000 compressed CT, and a split whose studies are all bad.

Invariants: the build exits 0 (1 line and exit 2 when a split has no good study); each good study's records are
byte-identical to a build of the good studies alone; each bad study is quarantined with a reason that names the
damaged file (relative path); no traceback on stdout or stderr.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from jaxpetct.data.build_paths import QUARANTINE, read_quarantine
from jaxpetct.studies import cohort, release, splits, synthetic

from tests.tfds_builder.test_build_paths import REPO, record_set

pytestmark = pytest.mark.integration
SALT = "fuzz-salt"
PER_FAMILY_RELEASE, PER_FAMILY_DICOM = 26, 5


def _build(root, data_dir):
    run = subprocess.run([sys.executable, "-m", "jaxpetct.data", "build", "--manual-dir", str(root), "--data-dir",
                          str(data_dir), "--config", "regions", "--volume-shape", "8", "16", "16", "--salt", SALT,
                          "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
    return run


def _dataset(data_dir) -> str:
    return str(data_dir / "vimed_pet" / "regions_8x16x16" / "1.0.0")


def _records(data_dir) -> dict:
    path = _dataset(data_dir)
    return {split: record_set(path, split) for split in ("train", "validation", "test", "test_expert")}


# ------------------------------------------------------------------------------------------ release faults
def _rewrite_report(path, fn):
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    first = next(iter(report))
    report[first] = fn(report[first])
    with open(path, "w", encoding="ascii") as f:
        json.dump(report, f)  # ensure_ascii: a surrogate is written as the escape \ud800, valid JSON


def _npz(path, fn):
    with np.load(path) as z:
        data = z["data"]
    np.savez(path, data=fn(data))


def _bad_utf8(path):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:20] + b"\xff\xfe" + raw[20:])


RELEASE = {  # family: (column damaged, damage(path)); the reason must name that column's file
    "report_surrogate": ("report_path", lambda p: _rewrite_report(p, lambda t: t[:3] + "\ud800" + t[3:])),
    "report_en_surrogate": ("report_en_path", lambda p: _rewrite_report(p, lambda t: t[:3] + "\udfff" + t[3:])),
    "report_nul": ("report_path", lambda p: _rewrite_report(p, lambda t: t + "\x00")),
    "report_en_bad_utf8": ("report_en_path", _bad_utf8),
    "ct_truncated": ("ct_path", lambda p: open(p, "r+b").truncate(os.path.getsize(p) // 3)),
    "pet_missing": ("pet_path", os.remove),
    "pet_depth": ("pet_path", lambda p: _npz(p, lambda a: a[:-2])),
    "ct_not_rescaled": ("ct_path", lambda p: _npz(p, lambda a: a + 1024)),
    "ct_no_tissue": ("ct_path", lambda p: _npz(p, lambda a: np.full_like(a, -1000))),
    "pet_1000x_small": ("pet_path", lambda p: _npz(p, lambda a: a // 1000)),
    "row_bad_height": ("metadata.csv", None),
}


def _add_bad_release(root, rows, n: int, rng) -> dict:
    """Copies of good studies under new names, one fault each; returns {release key: (family, damaged file)}."""
    cols = release.COLUMNS
    expected, new_rows = {}, []
    families = [f for f in RELEASE for _ in range(n)]
    rng.shuffle(families)
    for i, family in enumerate(families):
        src = dict(zip(cols, rows[i % len(rows)]))
        row = dict(src, name=f"patient_{900 + i}")
        for col in ("pet_path", "ct_path", "report_path", "report_en_path"):
            row[col] = src[col].replace(os.path.basename(src[col]).split(".")[0], f"day_28_patient_{900 + i}")
            os.link(root / src[col], root / row[col])
        column, damage = RELEASE[family]
        if column == "metadata.csv":
            row["height"] = "tall"
        else:
            target = root / row[column]
            shutil.copyfile(root / src[column], str(target) + ".tmp")  # break the hard link before damaging
            os.replace(str(target) + ".tmp", target)
            damage(target)
        new_rows.append(",".join(row[c] for c in cols))
        key = row["ct_path"].replace("/CT/", "/").removesuffix(".npz")
        expected[key] = (family, row[column] if column != "metadata.csv" else column)
    with open(root / "metadata.csv", "a", encoding="utf-8") as f:
        f.write("\n".join(new_rows) + "\n")
    return expected


def _rows(root) -> list[list[str]]:
    with open(root / "metadata.csv", encoding="utf-8") as f:
        return [line.split(",") for line in f.read().splitlines()[1:] if line]


def _check_quarantine(data_dir_or_dataset, expected: dict, ids: dict) -> collections.Counter:
    quarantined = {q["study"]: q for q in read_quarantine(data_dir_or_dataset)}
    assert set(quarantined) == {ids[k] for k in expected}, "quarantined studies differ from the bad ones"
    tally = collections.Counter()
    for key, (family, file) in expected.items():
        q = quarantined[ids[key]]
        assert q["file"] == file, (family, q)  # the damaged file, relative to the root
        assert q["reason"] and "\n" not in q["reason"], (family, q)
        tally[family] += 1
    return tally


@pytest.fixture(scope="module")
def release_clean(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz_release")
    synthetic.write_cohort(str(base / "clean"), n=12, seed=11)
    run = _build(base / "clean", base / "clean_data")
    assert run.returncode == 0, run.stderr[-3000:]
    return base, _records(base / "clean_data")


def test_release_fuzz_bad_studies_cost_only_themselves(release_clean):
    base, clean = release_clean
    assert all(clean[s] for s in ("train", "validation", "test"))  # the comparison below is not vacuous
    root = base / "fuzz"
    shutil.copytree(base / "clean", root, copy_function=os.link)
    os.remove(root / "metadata.csv")  # the one file appended to: a copy, never the clean cohort's (hard link)
    shutil.copyfile(base / "clean" / "metadata.csv", root / "metadata.csv")
    expected = _add_bad_release(root, _rows(base / "clean"), PER_FAMILY_RELEASE, np.random.default_rng(7))
    run = _build(root, base / "fuzz_data")
    assert run.returncode == 0, run.stderr[-3000:]
    assert _records(base / "fuzz_data") == clean  # good studies byte-identical, nothing from a bad one
    ids = {r.key: cohort.study_id(r, SALT) for r in cohort.list_studies(str(root))}
    tally = _check_quarantine(_dataset(base / "fuzz_data"), expected, ids)
    assert sum(tally.values()) == len(RELEASE) * PER_FAMILY_RELEASE >= 280
    print(f"\nrelease fuzz: {sum(tally.values())} bad studies in {len(tally)} families, all quarantined: {dict(tally)}")


def test_a_split_of_only_bad_studies_is_one_line_naming_the_quarantine(release_clean):
    base, _ = release_clean
    root = base / "all_bad"
    shutil.copytree(base / "clean", root, copy_function=shutil.copyfile)
    damaged = 0
    for row in _rows(root):
        year, month = release.parse_release_path(row[7])[:2]
        if splits.split_of(year, month) == splits.VALIDATION:
            _rewrite_report(root / row[7], lambda t: "\ud800" + t)
            damaged += 1
    run = _build(root, base / "all_bad_data")
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1 and damaged > 0, run.stderr[-3000:]
    listed = base / "all_bad_data" / "vimed_pet" / "regions_8x16x16" / QUARANTINE
    assert errors[0].startswith("error: split validation:") and errors[0].endswith(str(listed))
    assert sum(q["split"] == "validation" for q in read_quarantine(str(listed.parent))) == damaged
    assert not os.path.exists(_dataset(base / "all_bad_data"))


# ------------------------------------------------------------------------------------------ DICOM faults
def _copy_study(src, dst, n: int) -> str:
    """`src` copied to `dst` as a new study: fresh Study/Series/SOP instance UIDs in every file."""
    shutil.copytree(src, dst)
    study_uid = pydicom.uid.generate_uid(entropy_srcs=[f"fuzz-study-{n}"])
    series = {}
    for path in sorted(p for p in dst.rglob("*") if p.is_file() and p.suffix != ".json"):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, pydicom.uid.generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(path, enforce_file_format=True)
    return study_uid


def _slices(folder, modality: str) -> list:
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".json"):
        if pydicom.dcmread(path, stop_before_pixels=True).Modality == modality:
            out.append(path)
    return out


def _edit(paths, fn) -> list:
    for path in paths:
        ds = pydicom.dcmread(path)
        fn(ds)
        ds.save_as(path, enforce_file_format=True)
    return list(paths)


def _dose(value):
    return lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose", value)


def _sidecar(name, fn):
    def damage(folder):
        fn(folder / name)
        return [folder / name]
    return damage


DICOM = {  # family: damage(study folder) -> the files damaged; the reason must name one of them
    "sidecar_surrogate": _sidecar("report.json", lambda p: _rewrite_report(p, lambda t: "\ud800" + t)),
    "sidecar_en_surrogate": _sidecar("report_en.json", lambda p: _rewrite_report(p, lambda t: t + "\udbff")),
    "sidecar_bad_utf8": _sidecar("report.json", _bad_utf8),
    "ct_no_intercept": lambda f: _edit(_slices(f, "CT"), lambda ds: delattr(ds, "RescaleIntercept")),
    "ct_empty_intercept": lambda f: _edit(_slices(f, "CT")[3:4], lambda ds: setattr(ds, "RescaleIntercept", "")),
    "weight_in_grams": lambda f: _edit(_slices(f, "PT"), lambda ds: setattr(ds, "PatientWeight", "70000")),
    "dose_in_mbq": lambda f: _edit(_slices(f, "PT"), _dose("370")),
}


def _compress_ct(folder) -> None:
    from pydicom.uid import JPEG2000Lossless

    def fn(ds):
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    _edit(_slices(folder, "CT"), fn)


def _add_bad_dicom(root, good: list, rng) -> dict:
    """Bad copies, stray files and compressed good studies; returns {study uid: (family, files that may be named)}."""
    expected = {}
    families = [f for f in DICOM for _ in range(PER_FAMILY_DICOM)]
    rng.shuffle(families)
    for i, family in enumerate(families):
        dst = root / f"study_{100 + i:04d}"
        uid = _copy_study(root / good[i % len(good)], dst, i)
        expected[uid] = (family, {p.relative_to(root).as_posix() for p in DICOM[family](dst)})
    for i, host in enumerate(good[:2]):  # a file of a study outside the cohort, dropped into a good study's folder
        uid = f"1.2.826.0.1.3680043.8.498.{777 + i}"
        stray = _slices(root / host, "CT")[0].parent / f"stray_{i}.dcm"
        shutil.copyfile(_slices(root / good[-1 - i], "CT")[0], stray)

        def fresh(ds, uid=uid):
            ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, uid + ".1"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid + ".1.1"
        _edit([stray], fresh)
        expected[uid] = ("stray", {stray.relative_to(root).as_posix()})
    return expected


@pytest.fixture(scope="module")
def dicom_clean(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz_dicom")
    synthetic.write_cohort(str(base / "c"), n=8, seed=5, dicom=True)
    run = _build(base / "c" / "dicom", base / "clean_data")
    assert run.returncode == 0, run.stderr[-3000:]
    return base, _records(base / "clean_data")


def test_dicom_fuzz_bad_studies_cost_only_themselves(dicom_clean):
    from jaxpetct.studies.deid import pseudonymize

    base, clean = dicom_clean
    assert all(clean[s] for s in ("train", "validation", "test"))
    root = base / "fuzz"
    shutil.copytree(base / "c" / "dicom", root)
    good = sorted(p.name for p in root.iterdir() if p.is_dir())
    expected = _add_bad_dicom(root, good, np.random.default_rng(8))
    compressed = importlib.util.find_spec("openjpeg") is not None  # the dicom-codecs extra: encoder and decoder
    if compressed:  # lossless JPEG 2000 in place: the records must not change by a bit
        for name in good[2:4]:
            _compress_ct(root / name)
    run = _build(root, base / "fuzz_data")
    assert run.returncode == 0, run.stderr[-3000:]
    assert _records(base / "fuzz_data") == clean  # good, stray-hosting and compressed studies byte-identical
    quarantined = {q["study"]: q for q in read_quarantine(_dataset(base / "fuzz_data"))}
    assert set(quarantined) == {pseudonymize(uid, SALT) for uid in expected}
    tally = collections.Counter()
    for uid, (family, files) in expected.items():
        q = quarantined[pseudonymize(uid, SALT)]
        assert q["file"] in files, (family, q)
        tally[family] += 1
    assert sum(tally.values()) == len(DICOM) * PER_FAMILY_DICOM + 2
    print(f"\nDICOM fuzz: {sum(tally.values())} bad studies quarantined {dict(tally)}; "
          f"{2 * compressed} JPEG 2000 studies built identically")


def test_damaged_cohort_level_text_costs_a_note_not_the_build(release_clean):
    """A lone surrogate in a line of the lesion truth or of vqa.jsonl (text files shared by the cohort) leaves that
    line out with a build note naming file and line; the build and every study go on."""
    base, _ = release_clean
    root = base / "shared_text"
    shutil.copytree(base / "clean", root, copy_function=shutil.copyfile)
    truth = (root / synthetic.TRUTH).read_text("utf-8").splitlines()
    first = json.loads(truth[0])
    first["lesions"][0]["lesion"]["Xâm lấn"] = "\ud800"
    truth[0] = json.dumps(first)  # ensure_ascii: written as the escape, valid JSON
    (root / synthetic.TRUTH).write_text("\n".join(truth) + "\n", "utf-8")
    names = [row[0] for row in _rows(root)]
    vqa = [{"patient_id": names[0], "question": "Có tổn thương không?", "answer": "Không."},
           {"patient_id": names[1], "question": "Có tổn thương không?", "answer": "C\udfffó."}]
    (root / "vqa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in vqa), "utf-8")
    run = subprocess.run([sys.executable, "-m", "jaxpetct.data", "build", "--manual-dir", str(root), "--data-dir",
                          str(base / "shared_text_data"), "--config", "vqa", "--volume-shape", "8", "16", "16",
                          "--salt", SALT, "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
    dataset = base / "shared_text_data" / "vimed_pet" / "vqa_8x16x16" / "1.0.0"
    notes = json.loads((dataset / "build_notes.json").read_text("utf-8"))["notes"]
    assert any(n.startswith(f"{synthetic.TRUTH}:1: lesion list left out") and "surrogate" in n for n in notes), notes
    assert any(n.startswith("vqa.jsonl:2") and "surrogate" in n for n in notes), notes
    assert read_quarantine(str(dataset)) == []  # no study lost
