"""The builder without TensorFlow: every config builds and reads back, HU/SUV survive within the stated precision
(checked against torch's trilinear interpolation of the ingested volumes), texts pair with the right volumes."""
from __future__ import annotations

import collections
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from jaxpetct.data import records
from jaxpetct.data.pipeline import open_source
from jaxpetct.studies import cohort as cohort_api
from jaxpetct.studies import splits, synthetic
from jaxpetct.text.augment import comparison_text
from jaxpetct.text.lesion import Lesion
from tests.tfds_builder import cohort_fixtures as cf

T = records.as_text


def read_all(summary, split):
    src = open_source(summary.dataset_dir, split)
    return [src[i] for i in range(len(src))]


def torch_resize(x: np.ndarray, shape) -> np.ndarray:
    """The reference: torch's interpolate, as the paper's code calls it (align_corners=False)."""
    t = torch.from_numpy(np.asarray(x, np.float32))[None, None]
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    return torch.nn.functional.interpolate(t, size=tuple(shape), mode=mode, align_corners=False)[0, 0].numpy()


@pytest.fixture(scope="module")
def studies(cohort):
    """study_id -> (ref, Study) of the clean cohort, read through the ingestion API with the build's salt."""
    out = {}
    for ref in cohort_api.list_studies(cohort.root):
        study = cohort_api.load_study(ref, salt=cf.SALT)
        out[study.study_id] = (ref, study)
    return out


@pytest.fixture(scope="module")
def expected_split_counts(cohort):
    counts = {k: v for k, v in cohort.split_counts.items() if v}
    keys, _ = splits.read_expert_set(f"{cohort.root}/expert_lesions")
    counts["test_expert"] = len(keys)
    return counts


def test_every_config_builds_and_reads_back_without_tensorflow(built, expected_split_counts, cohort):
    truth = synthetic.read_truth(cohort.root)
    depth_by_split = collections.Counter()
    for key, rec in truth.items():
        year, month = int(key[5:9]), int(key.split("/")[1].split()[1])
        depth_by_split[splits.split_of(year, month)] += rec["depth"]
    expert_keys, _ = splits.read_expert_set(f"{cohort.root}/expert_lesions")
    depth_by_split["test_expert"] = sum(truth[f"PETCT{k.year}/THANG {k.month}/day_{k.day}_patient_{k.patient}"]["depth"]
                                        for k in expert_keys)
    expected = {
        "regions": {s: 3 * n for s, n in expected_split_counts.items()},
        "study": dict(expected_split_counts),
        "slices": {s: depth_by_split[s] for s in expected_split_counts},
        "comparison": {s: n for s, n in expected_split_counts.items() if n >= 2},
    }
    for kind, summary in built.items():
        assert summary.quarantined == [], kind
        if kind in expected:
            assert summary.examples == expected[kind], kind
        for split, n in summary.examples.items():
            rows = read_all(summary, split)
            assert len(rows) == n and n > 0
            ids = [T(r["id"]) for r in rows]
            assert len(set(ids)) == n, f"{kind}/{split}: duplicate ids"
            for r in rows:
                shape = (2, *cf.SIDE) if kind == "comparison" else cf.SLICE if kind == "slices" else cf.VOLUME
                assert r["ct"].shape == r["pet"].shape == shape
                assert r["ct"].dtype == np.int16 and r["pet"].dtype == np.uint16
                assert T(r["pet_units"]) == "SUVbw" and np.isclose(r["pet_scale"], 0.002)
                assert r["ct_clipped"] == 0 and r["pet_clipped"] == 0
                assert "patient_" not in T(r["id"]) and "PETCT" not in T(r["id"])  # pseudonyms only
    vqa = built["vqa"]
    region_ids = {T(r["id"]) for s in built["regions"].examples for r in read_all(built["regions"], s)}
    study_ids = {T(r["id"]) for s in built["study"].examples for r in read_all(built["study"], s)}
    for split in vqa.examples:
        for r in read_all(vqa, split):
            conv = json.loads(T(r["conversation"]))
            assert conv["image"] == T(r["image"]) and conv["conversations"][0]["value"].startswith("<image>\n")
            assert T(r["image"]) in region_ids | study_ids
    if importlib.util.find_spec("tensorflow") is None:
        assert "tensorflow" not in sys.modules


def test_hu_and_suv_decode_within_stated_precision(built, studies):
    ct_tol, pet_tol = records.precision("ct") + 1e-3, records.precision("pet", "SUVbw") + 1e-5
    assert records.precision("ct") == 0.5 and records.precision("pet", "SUVbw") == 0.001
    for split in built["regions"].examples:
        for r in read_all(built["regions"], split):
            _, study = studies[T(r["study_id"])]
            a, b = (int(v) for v in r["slice_range"])
            ct = records.decode_ct(r["ct"])
            pet = records.decode_pet(r["pet"], r["pet_scale"])
            assert np.abs(ct - torch_resize(study.ct.data[a:b], cf.VOLUME)).max() <= ct_tol
            assert np.abs(pet - torch_resize(study.pet.data[a:b], cf.VOLUME)).max() <= pet_tol
    for r in read_all(built["study"], "train"):
        _, study = studies[T(r["study_id"])]
        assert np.abs(records.decode_ct(r["ct"]) - torch_resize(study.ct.data, cf.VOLUME)).max() <= ct_tol
        assert np.abs(records.decode_pet(r["pet"], r["pet_scale"]) - torch_resize(study.pet.data, cf.VOLUME)).max() <= pet_tol
    checked = 0
    for r in read_all(built["slices"], "validation"):
        _, study = studies[T(r["study_id"])]
        k = int(r["slice_index"])
        # the stored CT grid is the native one: the release's int16 HU come back bit for bit
        np.testing.assert_array_equal(r["ct"], np.asarray(study.ct.data[k]))
        pet = records.decode_pet(r["pet"], r["pet_scale"])
        assert np.abs(pet - torch_resize(study.pet.data[k], cf.SLICE)).max() <= pet_tol
        checked += 1
    assert checked == built["slices"].examples["validation"]


def test_encoding_clips_and_counts_out_of_range_values():
    hu = np.array([-40000.0, -1024.4, 0.5, 3071.6, 40000.0])
    stored, clipped = records.encode_ct(hu)
    assert clipped == 2 and stored.tolist() == [-32768, -1024, 0, 3072, 32767]
    suv = np.array([-1.0, 0.0, 2.3456, 131.07, 500.0])
    stored, scale, clipped = records.encode_pet(suv, "SUVbw")
    assert clipped == 2 and scale == 0.002
    assert np.abs(records.decode_pet(stored, scale)[1:4] - suv[1:4]).max() <= 0.001 + 1e-6
    with pytest.raises(records.RecordError):
        records.encode_pet(suv, "percent")


def test_region_records_pair_findings_and_lesions(built, studies, cohort):
    truth = synthetic.read_truth(cohort.root)
    for split in built["regions"].examples:
        for r in read_all(built["regions"], split):
            ref, study = studies[T(r["study_id"])]
            section = T(r["section"])
            assert T(r["findings"]) == study.report.findings[section]
            assert T(r["impression"]) == study.report.impression
            assert T(r["findings_en"]) == study.report_en.findings[section]
            want = [les["lesion"] for les in truth[ref.key]["lesions"] if les["section"] == section]
            assert json.loads(T(r["lesions"])) == want


def test_vqa_answers_follow_the_lesions(built, studies, cohort):
    truth = synthetic.read_truth(cohort.root)
    answers = collections.defaultdict(list)
    for split in set(built["vqa"].examples) - {"test_expert"}:  # the expert set repeats test studies
        for r in read_all(built["vqa"], split):
            assert T(r["origin"]) == "generated"
            turns = json.loads(T(r["conversation"]))["conversations"]
            answers[T(r["image"])] += [t["value"] for t in turns if t["from"] == "gpt"]
    seen = 0
    for image, texts in answers.items():
        sid, _, region = image.partition("/")
        ref, _ = studies[sid]
        lesions = truth[ref.key]["lesions"]
        if region:
            section = {"head_neck": "Đầu - cổ", "chest": "Lồng ngực", "abdomen_pelvis": "Ổ bụng - khung chậu"}[region]
            lesions = [les for les in lesions if les["section"] == section]
        presence = [t for t in texts if t.startswith(("Có. Ghi nhận", "Không. Chưa phát hiện"))]
        assert len(presence) == 1, image
        assert presence[0].startswith("Có. Ghi nhận") == bool(lesions), image
        if lesions:
            assert f"Ghi nhận {len(lesions)} tổn thương" in presence[0]
        seen += 1
    assert seen >= 4 * cf.N  # three regions and the whole study per study


def test_comparison_uses_both_volumes_and_both_lesion_lists(built, studies, cohort):
    truth = synthetic.read_truth(cohort.root)
    tol = records.precision("ct") + 1e-3
    for split in built["comparison"].examples:
        for r in read_all(built["comparison"], split):
            (ref_a, prior), (ref_b, current) = studies[T(r["prior_id"])], studies[T(r["current_id"])]
            assert ref_a.key != ref_b.key
            ct = records.decode_ct(r["ct"])
            assert np.abs(ct[0] - torch_resize(prior.ct.data, cf.SIDE)).max() <= tol
            assert np.abs(ct[1] - torch_resize(current.ct.data, cf.SIDE)).max() <= tol
            assert not np.array_equal(r["ct"][0], r["ct"][1])

            def by_section(key):
                out = collections.defaultdict(list)
                for les in truth[key]["lesions"]:
                    out[les["section"]].append(Lesion.from_json(les["lesion"]))
                return dict(out)

            assert T(r["text"]) == comparison_text(by_section(ref_a.key), by_section(ref_b.key))


def test_vqa_from_the_release_file_is_bound_to_its_study_and_scrubbed(cohort, studies, tmp_path):
    import shutil

    root = tmp_path / "manual"
    shutil.copytree(cohort.root, root)
    spec = synthetic.make_spec(cf.SEED, 0, synthetic.SIZES["tiny"])
    canary = synthetic.phi_header(spec)
    pairs = [("Có tổn thương ở phổi không?", "Không."), ("Hạch cổ có tăng chuyển hóa FDG không?", "Có."),
             ("Bệnh nhân là ai?", canary)]
    lines = [json.dumps({"patient_id": "patient_0", "question": q, "answer": a}, ensure_ascii=False) for q, a in pairs]
    lines += [json.dumps({"patient_id": "patient_999", "question": "?", "answer": "!"}), "not json"]
    (root / "vqa.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = cf.build(str(root), str(tmp_path / "data"), "vqa")
    sid = next(s for s, (ref, _) in studies.items() if ref.release.name == "patient_0")
    found, other_origins = [], set()
    for split in summary.examples:
        for r in read_all(summary, split):
            if T(r["study_id"]) == sid:
                assert T(r["origin"]) == "release" and T(r["image"]) == sid and T(r["region"]) == "study"
                found += json.loads(T(r["conversation"]))["conversations"]
            else:
                other_origins.add(T(r["origin"]))
            assert "CANARY" not in T(r["conversation"]).upper()
    questions = [t["value"].removeprefix("<image>\n") for t in found if t["from"] == "human"]
    assert sorted(questions) == sorted(q for q, _ in pairs)
    assert other_origins == {"generated"}
    with open(f"{summary.dataset_dir}/build_notes.json", encoding="utf-8") as f:
        notes = json.load(f)["notes"]
    assert any(n.startswith("vqa.jsonl:4: no study") for n in notes) and any("vqa.jsonl:5" in n for n in notes)
