"""Release reader: the real manifest, volumes checked against numpy's own NPZ reader, encodings, bad rows."""
import csv
import json
import os
import pickle
import shutil

import numpy as np
import pytest

from jaxpetct.studies import cohort, npz, release
from jaxpetct.studies.study import StudyError
from jaxpetct.text.report import (ABDOMEN_PELVIS, CHEST, HEAD_NECK, MUSCULOSKELETAL, SECTIONS, Report,
                                  report_from_json, report_to_json)

SALT = "test-salt"


def test_real_manifest_parses(realdata):
    refs = release.read_manifest(str(realdata))
    with open(realdata / "metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))  # the stdlib reader as the reference for row count and fields
    assert len(refs) == len(rows) == 2757
    assert [r.problem for r in refs if r.problem] == []
    assert len({r.key for r in refs}) == len(refs)  # names repeat across years, keys do not
    assert len({r.name for r in refs}) < len(refs)
    for ref, row in zip(refs, rows):
        folder_year, folder_month = row["ct_path"].split("/")[:2]
        assert folder_year == f"PETCT{ref.year}" and folder_month == f"THANG {ref.month}"
        assert ref.ct_path == row["ct_path"] and ref.pet_path == row["pet_path"]
        assert ref.height_m == float(row["height"]) and ref.weight_kg == float(row["weight"])
        assert ref.sex == (row["sex"] or None)
    assert release.read_encoding(str(realdata)) == release.DEFAULT_ENCODING  # no encoding.json: PET is "raw"
    listed = cohort.list_studies(str(realdata))
    assert [r.key for r in listed] == [r.key for r in refs] and listed.skipped == []
    print(f"\nreal manifest: {len(refs)} studies, {len({r.name for r in refs})} distinct names, "
          f"years {sorted({r.year for r in refs})}")


def test_synthetic_release_matches_numpy_reader(tiny_cohort):
    refs = cohort.list_studies(str(tiny_cohort))
    walk = cohort.iter_studies(refs, salt=SALT)
    studies = list(walk)
    assert walk.skipped == [] and len(studies) == 24
    for ref, study in zip(refs, studies):
        with np.load(tiny_cohort / ref.release.ct_path, allow_pickle=False) as z:
            ct_ref = z["data"]
        with np.load(tiny_cohort / ref.release.pet_path, allow_pickle=False) as z:
            pet_ref = z["data"]
        assert isinstance(study.ct.data, np.memmap)  # stored uncompressed: never loaded whole
        np.testing.assert_array_equal(study.ct.data, ct_ref)
        np.testing.assert_array_equal(study.pet.data, pet_ref.astype(np.float32) * np.float32(0.001))
        d = ct_ref.shape[0]
        assert 46 <= d <= 64 and ct_ref.shape[1:] == (64, 64) and pet_ref.shape == (d, 32, 32)
        assert study.ct.units == "HU" and study.pet.units == "SUVbw"
        assert study.ct.geometry_known and study.ct.spacing_mm == (18.0, 7.8125, 7.8125)
        assert study.pet.spacing_mm == (18.0, 15.625, 15.625)
        assert study.ct.direction[2][2] == -1.0  # head first
        with open(tiny_cohort / ref.release.report_path, encoding="utf-8") as f:
            assert study.report == report_from_json(json.load(f))  # scrubbing left clinical text intact
        assert study.report_en is not None and study.report_en.findings[CHEST]
        assert study.study_id == cohort.study_id(ref, SALT) != ref.key
        assert study.metadata.year == ref.year and study.metadata.month == ref.month


def test_refs_are_picklable_and_phi_free(tiny_cohort):
    refs = cohort.list_studies(str(tiny_cohort))
    assert pickle.loads(pickle.dumps(refs)) == list(refs)
    assert all(r.year and r.month for r in refs)


def _manual_release(tmp_path, ct, pet, report=None, *, compressed=False, encoding=None):
    """A one-study release written with numpy's own np.savez (not our writer)."""
    base = tmp_path / "PETCT2018" / "THANG 10"
    for sub in ("CT", "PET", "reports", "reports_en"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compressed else np.savez
    save(base / "CT" / "day_3_patient_7.npz", data=ct)
    save(base / "PET" / "day_3_patient_7.npz", data=pet)
    report = report or {"Nhận định kết quả": "Bình thường.", "Mô tả hình ảnh": {s: "" for s in SECTIONS}}
    (base / "reports" / "day_3_patient_7.json").write_text(json.dumps(report, ensure_ascii=False), "utf-8")
    rel = "PETCT2018/THANG 10/{}/day_3_patient_7.{}"
    (tmp_path / "metadata.csv").write_text(
        ",".join(release.COLUMNS) + "\n" + ",".join(["patient_7", "F", "1.52", "50.5", "2018", rel.format("PET", "npz"),
                                                     rel.format("CT", "npz"), rel.format("reports", "json"), ""]) + "\n",
        "utf-8")
    if encoding is not None:
        (tmp_path / "encoding.json").write_text(json.dumps(encoding), "utf-8")
    return tmp_path


@pytest.mark.parametrize("compressed", [False, True])
def test_default_encoding_is_nominal_geometry_and_raw_pet(tmp_path, compressed):
    rng = np.random.default_rng(0)
    ct = rng.integers(-1024, 2000, (5, 8, 6), dtype=np.int16)
    pet = rng.integers(0, 30000, (5, 4, 3), dtype=np.int16)
    root = _manual_release(tmp_path, ct, pet, compressed=compressed)
    [ref] = cohort.list_studies(str(root))
    study = cohort.load_study(ref, salt=SALT)
    assert isinstance(study.ct.data, np.memmap) != compressed
    np.testing.assert_array_equal(study.ct.data, ct)
    np.testing.assert_array_equal(study.pet.data, pet)
    assert study.ct.units == "HU" and study.pet.units == "raw"
    assert not study.ct.geometry_known and not study.pet.geometry_known
    assert study.ct.spacing_mm == (release.NOMINAL_SLICE_MM, release.NOMINAL_FOV_MM / 8, release.NOMINAL_FOV_MM / 6)
    assert study.pet.spacing_mm == (release.NOMINAL_SLICE_MM, release.NOMINAL_FOV_MM / 4, release.NOMINAL_FOV_MM / 3)
    # CT and PET grids share their centre, so PET voxel (0,0) covers CT voxels (0..1, 0..1)
    ct_first = np.array(study.ct.origin_mm[:2]) + np.array(study.ct.spacing_mm[2:0:-1]) / 2
    np.testing.assert_allclose(ct_first, study.pet.origin_mm[:2])
    assert study.report_en is None and study.metadata.height_m == 1.52 and study.metadata.sex == "F"


def test_encoding_json_scales_and_validates(tmp_path):
    ct = np.full((3, 4, 4), -1000, np.int16)  # air, and bone: what the physics gate asks of a CT
    ct[1, 1:3, 1:3] = 400
    pet = np.full((3, 2, 2), 1234, np.int16)
    enc = {"version": 1, "slice_order": "feet_first", "ct": {"units": "HU"},
           "pet": {"units": "SUVbw", "scale": 0.001, "offset": 0.0, "spacing_mm": [2.0, 4.0, 4.0]}}
    root = _manual_release(tmp_path / "ok", ct, pet, encoding=enc)
    study = cohort.load_study(cohort.list_studies(str(root))[0], salt=SALT)
    np.testing.assert_allclose(study.pet.data, 1.234, rtol=1e-6)
    assert study.pet.geometry_known and not study.ct.geometry_known and study.pet.direction[2][2] == 1.0
    for bad in ({"version": 2}, {"version": 1, "ct": {"units": "HU"}, "pet": {"units": "kBq"}},
                {"version": 1, "ct": {"units": "HU", "scale": 0}, "pet": {"units": "raw"}},
                {"version": 1, "ct": {"units": "HU"}, "pet": {"units": "raw", "spacing_mm": [1, -2, 2]}}):
        root = _manual_release(tmp_path / f"bad{len(os.listdir(tmp_path))}", ct, pet, encoding=bad)
        with pytest.raises(StudyError) as e:
            cohort.list_studies(str(root))
        assert e.value.file == "encoding.json"


def test_bad_rows_are_reported_not_lost(tmp_path, tiny_cohort):
    root = tmp_path / "r"
    shutil.copytree(tiny_cohort, root)
    lines = (root / "metadata.csv").read_text("utf-8").splitlines()
    lines[1] = lines[1].replace(",2023,", ",2O23,").replace(",2019,", ",2O19,").replace(",2018,", ",2O18,") \
        .replace(",2017,", ",2O17,")
    lines[2] = ",".join(lines[2].split(",")[:5])  # truncated row
    lines[3] = lines[3].replace(".npz", ".npy", 1)
    lines.append(lines[4])  # duplicate study
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", "utf-8")
    refs = cohort.list_studies(str(root))
    assert len(refs) == 25
    walk = cohort.iter_studies(refs, salt=SALT)
    assert len(list(walk)) == 21
    assert sorted(s.reason.split(":")[0] for s in walk.skipped) == ["row 2", "row 26", "row 3", "row 4"]
    assert all(s.file == "metadata.csv" for s in walk.skipped)
    (root / "metadata.csv").write_text("name;sex\n", "utf-8")
    with pytest.raises(StudyError, match="header"):
        cohort.list_studies(str(root))


def test_report_json_round_trip_and_schema_errors():
    report = Report("Kết luận.", {HEAD_NECK: "a", CHEST: "b", ABDOMEN_PELVIS: "c", MUSCULOSKELETAL: ""})
    assert report_from_json(report_to_json(report)) == report
    en = report_to_json(report, english=True)
    assert set(en) == {"Impression", "Findings"} and report_from_json(en) == report
    aliases = {"impression": "x", "findings": {"Head and neck": "h", "THORAX": "c"}}
    assert report_from_json(aliases).findings[CHEST] == "c"
    for bad in ([], {"Nhận định kết quả": "x"}, {"Nhận định kết quả": 3, "Mô tả hình ảnh": {}},
                {"Nhận định kết quả": "x", "Mô tả hình ảnh": {"Tim": "y"}},
                {"Nhận định kết quả": "x", "Mô tả hình ảnh": {CHEST: ["y"]}},
                {"Nhận định kết quả": "x", "Impression": "y", "Mô tả hình ảnh": {}}):
        with pytest.raises(ValueError):
            report_from_json(bad)
    # Valid JSON that is not text: a lone surrogate escape, a NUL (json.loads gives both back as str).
    lone = json.loads('{"Nhận định kết quả": "ok", "Mô tả hình ảnh": {"Lồng ngực": "Nốt \\udc80 phổi"}}')
    with pytest.raises(ValueError, match=r"findings section Lồng ngực: character 5 is a lone surrogate \(U\+DC80\)"):
        report_from_json(lone)
    with pytest.raises(ValueError, match="impression: character 2 is a NUL character"):
        report_from_json(json.loads('{"Impression": "a\\u0000b", "Findings": {}}'))
    paired = json.loads('{"Impression": "\\ud83d\\ude00", "Findings": {}}')  # a valid pair is one character
    assert report_from_json(paired).impression == "\U0001F600"


def test_npz_refuses_pickles_and_checks_crc(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, data=np.array([{"a": 1}], dtype=object))
    with pytest.raises(npz.NpzError, match="pickle|object"):
        npz.read_array(str(path))
    good = tmp_path / "good.npz"
    npz.write_npz(str(good), {"data": np.arange(4000, dtype=np.int16)})
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2] ^= 0x40  # inside the array data: only the CRC can tell
    good.write_bytes(bytes(raw))
    with pytest.raises(npz.NpzError, match="CRC"):
        npz.read_array(str(good))
