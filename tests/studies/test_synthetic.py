"""Synthetic cohort: deterministic, fast, and its reports say exactly what its images hold."""
import collections
import hashlib
import json
import os
import re
import time

import numpy as np
import pytest

from jaxpetct.studies import cohort, phantom, regions, splits, synthetic
from jaxpetct.studies.synthetic_reports import SITES
from jaxpetct.text.lesion import Lesion
from jaxpetct.text.report import SECTIONS

SALT = "synthetic-test"
SIZE_VI = re.compile(r"(\d+) x (\d+) mm")
SUV_VI = re.compile(r"SUVmax: (\d+),(\d)\)")
SUV_EN = re.compile(r"SUVmax (\d+)\.(\d)\)")


def _tree_digest(root) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_deterministic_by_seed_and_fast(tmp_path):
    t0 = time.perf_counter()
    synthetic.write_cohort(str(tmp_path / "a"), n=24, seed=11)
    elapsed = time.perf_counter() - t0
    synthetic.write_cohort(str(tmp_path / "b"), n=24, seed=11)
    synthetic.write_cohort(str(tmp_path / "c"), n=24, seed=12)
    a, b, c = (_tree_digest(tmp_path / x) for x in "abc")
    print(f"\n24 tiny studies written in {elapsed:.2f} s ({len(a)} files)")
    assert a == b and len(a) > 24 * 4
    assert a["metadata.csv"] != c["metadata.csv"] and a["synthetic_truth.jsonl"] != c["synthetic_truth.jsonl"]
    assert elapsed < 15.0
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no temp folders left behind
    with pytest.raises(FileExistsError):
        synthetic.write_cohort(str(tmp_path / "a"), n=2, seed=0)
    synthetic.write_cohort(str(tmp_path / "a"), n=2, seed=0, overwrite=True)
    assert len(cohort.list_studies(str(tmp_path / "a"))) == 2


def test_a_crash_leaves_nothing_half_written(tmp_path, monkeypatch):
    real_render, calls = synthetic.render, []

    def failing(spec, size):
        calls.append(spec.index)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real_render(spec, size)

    monkeypatch.setattr(synthetic, "render", failing)
    with pytest.raises(RuntimeError):
        synthetic.write_cohort(str(tmp_path / "out"), n=5, seed=0)
    assert os.listdir(tmp_path) == []  # neither the cohort nor its temporary folder
    synthetic.write_cohort(str(tmp_path / "keep"), n=2, seed=0)
    before = _tree_digest(tmp_path / "keep")
    calls.clear()
    with pytest.raises(RuntimeError):
        synthetic.write_cohort(str(tmp_path / "keep"), n=5, seed=1, overwrite=True)
    assert _tree_digest(tmp_path / "keep") == before and os.listdir(tmp_path) == ["keep"]


def _numbers_left(text: str) -> list[str]:
    """Digits not accounted for by a size, an SUVmax or a vertebra name."""
    text = SUV_EN.sub("", SUV_VI.sub("", SIZE_VI.sub("", text)))
    text = re.sub(r"\b[DTL]\d{1,2}\b", "", text)
    return re.findall(r"\d", text)


def test_reports_mention_exactly_the_lesions(tiny_cohort):
    truth = synthetic.truth_by_study_id(str(tiny_cohort), SALT)
    refs = cohort.list_studies(str(tiny_cohort))
    kinds = collections.Counter()
    for study in cohort.iter_studies(refs, salt=SALT):
        rec = truth[study.study_id]
        lesions = rec["lesions"]
        kinds.update(les["kind"] for les in lesions)
        for section in SECTIONS:
            mine = [les for les in lesions if les["section"] == section]
            for lang, report, suv_re in (("vi", study.report, SUV_VI), ("en", study.report_en, SUV_EN)):
                text = report.findings[section]
                sizes = sorted(tuple(map(int, m)) for m in SIZE_VI.findall(text))
                assert sizes == sorted(tuple(les["diameters_mm"]) for les in mine), (lang, section, text)
                suvs = sorted(float(f"{a}.{b}") for a, b in suv_re.findall(text))
                assert suvs == sorted(les["suvmax"] for les in mine if les["suvmax"] is not None)
                assert _numbers_left(text) == []
            for les in mine:
                parsed = Lesion.from_json(les["lesion"])
                assert parsed.location in study.report.findings[section]
                assert parsed.size in study.report.findings[section]
                assert parsed.to_json() == les["lesion"]
                assert (parsed.suvmax == "Không có") == (les["suvmax"] is None)
        sites = {les["site"] for les in lesions}
        every_text = " ".join([study.report.impression, *study.report.findings.values()])
        assert [s for s in SITES if s not in sites and SITES[s].vi in every_text] == []  # no location invented
        sizes = sorted(tuple(map(int, m)) for m in SIZE_VI.findall(study.report.impression))
        assert sizes == sorted(tuple(les["diameters_mm"]) for les in lesions)
        assert "SUVmax" not in study.report.impression and _numbers_left(study.report.impression) == []
        if not lesions:
            assert "chưa ghi nhận tổn thương" in study.report.impression
    print(f"\nlesion kinds across the tiny cohort: {dict(kinds)}")
    assert set(kinds) == {"lung", "node", "liver", "bone"}


def test_images_hold_the_lesions_of_the_truth(tiny_cohort):
    truth = synthetic.truth_by_study_id(str(tiny_cohort), SALT)
    size = synthetic.SIZES["tiny"]
    n_checked = 0
    for study in cohort.iter_studies(cohort.list_studies(str(tiny_cohort)), salt=SALT):
        rec = truth[study.study_id]
        ct_grid, pet_grid = synthetic.grids(size, rec["depth"])
        pet = np.asarray(study.pet.data)
        cores = regions.split_regions(rec["depth"], rec["slice_mm"], rec["height_m"],
                                      regions.RegionConfig(overlap_slices=0)).regions
        for les in rec["lesions"]:
            k, j, i = les["pet_voxel"]
            shape = phantom.Ellipsoid(tuple(les["centre_mm"]), tuple(les["semi_axes_mm"]))
            mask = phantom.mask_of(pet_grid, shape)
            assert mask[k, j, i]
            if les["suvmax"] is None:  # a cyst: cold on PET
                assert pet[k, j, i] < 1.0
            else:
                assert pet[k, j, i] == pytest.approx(les["suvmax"], rel=1e-6)
                assert pet[mask].max() == pytest.approx(les["suvmax"], rel=1e-6)
            assert int(study.ct.data[tuple(les["ct_voxel"])]) == les["hu"]
            ct_mask = phantom.mask_of(ct_grid, shape)
            assert ct_mask.sum() >= 4 and (np.asarray(study.ct.data)[ct_mask] == les["hu"]).all()
            region = next(r for r in cores if r.name == les["region"])
            assert region.start <= k < region.stop, (les["site"], k, region)
            assert SITES[les["site"]].region == les["region"]
            n_checked += 1
    assert n_checked >= 24


def test_expert_files_hold_the_truth(tiny_cohort):
    truth = synthetic.read_truth(str(tiny_cohort))
    keys, bad = splits.read_expert_set(str(tiny_cohort / "expert_lesions"))
    assert bad == [] and keys
    for key in keys:
        rec = truth[f"PETCT{key.year}/THANG {key.month}/day_{key.day}_patient_{key.patient}"]
        with open(tiny_cohort / "expert_lesions" / splits.expert_name(key), encoding="utf-8") as f:
            lesions = [Lesion.from_json(o) for o in json.load(f)]
        assert lesions == [Lesion.from_json(les["lesion"]) for les in rec["lesions"]]
        assert splits.split_of(key.year, key.month) == splits.TEST


def test_physiological_uptake_and_body(tiny_cohort):
    spec = synthetic.make_spec(0, 5, synthetic.SIZES["tiny"])
    ct, pet = synthetic.render(spec, synthetic.SIZES["tiny"])
    _, pet_grid = synthetic.grids(synthetic.SIZES["tiny"], spec.depth)
    anat = phantom.make_anatomy(spec.height_m, spec.weight_kg, spec.depth * 18.0, spec.uptake)
    assert ct[:, 0, 0].max() < -900 and pet[:, 0, 0].max() == 0  # air outside the body
    for organ in ("brain", "heart", "liver", "bladder"):
        core = phantom.mask_of(pet_grid, anat.organ(organ).shape.shrunk(12.0))
        assert core.any()
        np.testing.assert_allclose(np.median(pet[core]) / 1000, spec.uptake[organ], rtol=0.05)
    assert (ct < -700).mean() > 0.3  # air and lungs
    assert (ct > 300).sum() > 0  # bone


@pytest.mark.slow
def test_paper_size_study():
    size = synthetic.SIZES["paper"]
    spec = synthetic.make_spec(0, 1, size)
    ct, pet = synthetic.render(spec, size)
    assert 200 <= spec.depth <= 300 and ct.shape == (spec.depth, 512, 512) and pet.shape == (spec.depth, 256, 256)
    assert ct.dtype == pet.dtype == np.int16
    rec = synthetic.truth_record(spec, size)
    for les in rec["lesions"]:
        if les["suvmax"] is not None:
            assert pet[tuple(les["pet_voxel"])] == round(les["suvmax"] * 1000)
