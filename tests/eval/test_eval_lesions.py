"""The deterministic lesion extractor: hand-written sentences with known answers, robustness, agreement with an
LLM's extraction and with the expert annotations of the same real reports, and its CLI."""
import collections
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxpetct.eval.clinical import categorize, clinical_f1, read_expert_file, read_lesion_file
from jaxpetct.eval.lesions import extract_lesions, extract_many
from jaxpetct.text.lesion import NONE_VALUE, SIZE_KEY, TYPE_KEY, Lesion


def keys(text):
    return [(k.type, k.location, k.fdg) for k in map(categorize, extract_lesions(text))]


@pytest.mark.parametrize(
    "text",
    [
        "Hình ảnh bắt xạ theo đặc điểm sinh lý ở thận phải.",
        "Tăng nhẹ chuyển hóa FDG ở amydal phải theo đặc điểm sinh lý.",
        "Chưa phát hiện hình ảnh hạch to, tăng chuyển hóa FDG ở ổ bụng.",
        "Không phát hiện tràn dịch màng tim.",
        "Tuyến giáp kích thước to, không thấy tăng chuyển hóa FDG khu trú.",
        "Cần đối chiếu với nội soi dạ dày.",
        "Lách kích thước to, không tăng chuyển hóa FDG.",
        "Hình ảnh tăng chuyển hóa FDG đối xứng ở vùng cổ hai bên do mỡ nâu.",
        "",
    ],
)
def test_physiology_negation_and_advice_are_not_lesions(text):
    assert extract_lesions(text) == []


def test_one_lesion_with_every_field():
    text = ("Hình ảnh khối mờ bờ tua gai ở thùy dưới phổi phải, kích thước 35 x 28 mm, tăng chuyển hóa FDG "
            "(SUVmax: 12,4), xâm lấn màng phổi thành sau.")
    (lesion,) = extract_lesions(text)
    assert lesion == Lesion(size="35 x 28 mm", type="Khối mờ bờ tua gai", location="Thuỳ dưới phổi phải",
                            suvmax="12,4", uptake="Có tăng", invasion="Xâm lấn màng phổi thành sau", stage=NONE_VALUE)
    assert keys(text) == [("mass", "thorax", True)]


def test_non_avid_node_and_uptake_wording():
    assert keys("Hình ảnh vài hạch nách trái, kích thước 8 mm, không tăng chuyển hóa FDG.") == [
        ("lymph_node", "thorax", False)]
    (mild,) = extract_lesions("Hình ảnh hạch nhóm IIA bên phải, đường kính 9mm, tăng nhẹ chuyển hóa FDG.")
    assert (mild.size, mild.uptake) == ("9 mm", "Tăng nhẹ") and categorize(mild).location == "head_neck"
    (suv_only,) = extract_lesions("Hình ảnh nốt mờ ở thùy trên phổi trái (SUVmax: 2,9).")
    assert suv_only.uptake == "Có tăng" and categorize(suv_only).fdg


def test_largest_node_sentence_completes_the_previous_finding():
    text = ("Hình ảnh nhiều hạch ở cạnh phải khí quản. Hạch lớn nhất có kích thước 15 x 11 mm, tăng chuyển hóa FDG "
            "(SUVmax: 6,3). Hình ảnh vài hạch bẹn trái, kích thước 7 mm, không tăng chuyển hóa FDG.")
    first, second = extract_lesions(text)
    assert (first.location, first.size, first.suvmax, first.uptake) == ("Cạnh phải khí quản", "15 x 11 mm", "6,3", "Có tăng")
    assert categorize(first) == categorize(first).__class__("lymph_node", "mediastinum", True)
    assert categorize(second).location == "pelvis" and not categorize(second).fdg


def test_two_findings_in_one_sentence_share_the_trailing_uptake():
    text = "Hình ảnh dải mờ ở thùy trên phổi trái và nốt mờ ở thùy giữa phổi phải, không tăng chuyển hóa FDG."
    assert keys(text) == [("lung_opacity", "thorax", False), ("nodule", "thorax", False)]


def test_impression_restatement_is_merged_and_adds_the_stage():
    findings = "Hình ảnh dày thành dạ dày vùng hang vị, tăng chuyển hóa FDG (SUVmax: 9,8)."
    impression = "Hình ảnh dày thành dạ dày vùng hang vị, tăng chuyển hóa FDG tương ứng với ác tính nguyên phát."
    (lesion,) = extract_lesions(findings + " " + impression)
    assert (lesion.suvmax, lesion.stage) == ("9,8", "U nguyên phát")
    assert categorize(lesion) == categorize(lesion).__class__("thickening", "abdomen", True)
    focus = "Hình ảnh tăng chuyển hóa FDG khu trú (SUVmax: 7,1) ở thân đốt sống L4."
    restated = "Hình ảnh tổn thương ở thân đốt sống L4, tăng chuyển hóa FDG do metastases."
    (bone,) = extract_lesions(focus + " " + restated)
    assert (bone.stage, categorize(bone).location) == ("Di căn", "musculoskeletal")


def test_left_and_right_findings_stay_apart():
    text = "Hình ảnh tràn dịch màng phổi phải mức độ vừa. Hình ảnh tràn dịch màng phổi trái mức độ ít."
    assert keys(text) == [("effusion", "thorax", False)] * 2


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="hạchnốtkhốiởvàtăngkhôngxmm0123456789 ,.;:()SUVmaxHìnhảnhphổigan", max_size=120))
def test_extractor_never_raises(text):
    out = extract_lesions(text)
    assert all(isinstance(x, Lesion) for x in out)


def test_extract_many_skips_non_strings_with_reasons():
    results, skipped = extract_many(["Hình ảnh hạch ở rốn phổi trái.", None, 7])
    assert len(results) == 3 and len(results[0]) == 1 and results[1] == [] and results[2] == []
    assert skipped == [(1, "report is NoneType, not a string"), (2, "report is int, not a string")]


# ------------------------------------------------------------------------------------------ real reports
@pytest.fixture(scope="module")
def reports_and_llm(realdata):
    reports = [json.loads(x) for x in (realdata / "reports.jsonl").read_text(encoding="utf-8").splitlines() if x]
    llm = read_lesion_file(realdata / "report_lesions_llm_extracted.jsonl")
    assert [r["patient_id"] for r in reports] == [pid for pid, _ in llm]
    return reports, llm


def test_agreement_with_the_llm_extraction(reports_and_llm):
    """Our extractor vs what an LLM extracted from the same reports, scored with our clinical matching.

    An id that occurs twice in reports.jsonl (two studies of one pseudonym) carries the same LLM extraction on
    both lines (one of the two reports'), so such ids are left out rather than scored against the wrong text.
    """
    reports, llm = reports_and_llm
    counts = collections.Counter(r["patient_id"] for r in reports)
    for pid in (p for p, c in counts.items() if c > 1):
        dup = [les for (p, les) in llm if p == pid]
        assert all(d == dup[0] for d in dup)
    keep = [i for i, r in enumerate(reports) if counts[r["patient_id"]] == 1]
    ours = [extract_lesions(reports[i]["report"]) for i in keep]
    theirs = [llm[i][1] for i in keep]
    res = clinical_f1(ours, theirs)
    d = res["details"]
    print(f"\nextractor vs LLM on {len(keep)} reports ({d['n_pred_lesions']} vs {d['n_ref_lesions']} lesions): "
          + ", ".join(f"{k} {res[k]:.2f} (P {d[k]['precision']:.1f} R {d[k]['recall']:.1f})" for k in ("F1-T", "F1-TP", "F1-TF", "F1-TPF")))
    # Measured 63.69 / 62.70 / 63.36 / 62.20: the LLM omits many findings (21 reports with none), so recall
    # (~90) is the informative half; floors sit a few points below the measurement.
    assert res["F1-T"] >= 60.0 and res["F1-TP"] >= 59.0 and res["F1-TF"] >= 60.0 and res["F1-TPF"] >= 58.0
    assert d["F1-T"]["recall"] >= 85.0


def test_recall_of_the_expert_annotated_lesions(realdata, reports_and_llm):
    """Experts annotated lung-cancer (chest) lesions only, so recall is what must be high."""
    reports, llm = reports_and_llm
    counts = collections.Counter(r["patient_id"] for r in reports)
    index = {r["patient_id"]: i for i, r in enumerate(reports) if counts[r["patient_id"]] == 1}
    ours, theirs, expert = [], [], []
    for path in sorted((realdata / "expert_lesions").glob("*.json")):
        pid = re.search(r"REPORT_(patient_\d+)\.json$", path.name).group(1)
        if pid in index:
            ours.append(extract_lesions(reports[index[pid]]["report"]))
            theirs.append(llm[index[pid]][1])
            expert.append(read_expert_file(path))
    assert len(expert) >= 10
    mine, llms = clinical_f1(ours, expert), clinical_f1(theirs, expert)
    print(f"\nrecall of {mine['details']['n_ref_lesions']} expert lesions in {len(expert)} reports: "
          f"extractor T {mine['details']['F1-T']['recall']:.1f} / TPF {mine['details']['F1-TPF']['recall']:.1f}, "
          f"LLM T {llms['details']['F1-T']['recall']:.1f} / TPF {llms['details']['F1-TPF']['recall']:.1f}")
    assert mine["details"]["F1-T"]["recall"] >= 90.0 and mine["details"]["F1-TPF"]["recall"] >= 88.0


def test_lesions_cli(run_cli, jsonl_file):
    rows = [
        {"patient_id": "p1", "report": "Hình ảnh hạch ở rốn phổi trái, kích thước 11 mm, tăng chuyển hóa FDG (SUVmax: 4,2)."},
        {"patient_id": "p2", "report": "Chưa phát hiện tổn thương bất thường."},
    ]
    out = run_cli("jaxpetct.eval.lesions", "--reports", jsonl_file(rows))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["patient_id"] for x in lines] == ["p1", "p2"] and lines[1]["lesions"] == []
    (lesion,) = lines[0]["lesions"]
    assert lesion[SIZE_KEY] == "11 mm" and lesion[TYPE_KEY] == "Hạch"
    assert Lesion.from_json(lesion) == extract_lesions(rows[0]["report"])[0]
    other = run_cli("jaxpetct.eval.lesions", "--reports", jsonl_file([{"id": 3, "text": rows[0]["report"]}]),
                    "--text-key", "text")
    assert other.returncode == 0 and json.loads(other.stdout)["patient_id"] == 3


def test_lesions_cli_bad_input(run_cli, jsonl_file, tmp_path):
    bad = jsonl_file([{"patient_id": "a", "report": "x"}, {"patient_id": "b", "text": "y"}], "bad.jsonl")
    out = run_cli("jaxpetct.eval.lesions", "--reports", bad)
    assert out.returncode == 2 and "bad.jsonl:2: missing key 'report'" in out.stderr and out.stdout == ""
    missing = run_cli("jaxpetct.eval.lesions", "--reports", tmp_path / "none.jsonl")
    assert missing.returncode == 2 and "none.jsonl: file not found" in missing.stderr
