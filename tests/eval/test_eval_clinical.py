"""Clinical F1: category tables, one-to-one matching, micro/macro F1 on hand-built cases with known answers,
the expert lesion files (parsed and scored), and the CLI with extracted or external lesions."""
import collections
import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxpetct.eval import clinical as C
from jaxpetct.eval.lesion_vocab import fdg_positive, location_group, parse_suv, type_category
from jaxpetct.text.lesion import UPTAKE_KEY, Lesion


def L(type_="Hạch", location="rốn phổi phải", uptake="Có tăng", suv="Không có"):
    return Lesion(type=type_, location=location, uptake=uptake, suvmax=suv)


@pytest.mark.parametrize(
    "text, category",
    [
        ("Hình ảnh vài hạch trung thất", "lymph_node"), ("Khối hạch", "lymph_node"), ("Hạch có vôi hóa", "lymph_node"),
        ("Hình ảnh nốt mờ kính", "nodule"), ("Nhân giảm tỷ trọng", "nodule"), ("Khối mờ bờ đa cung", "mass"),
        ("U xơ tử cung", "mass"), ("Dày thành gây hẹp lòng thực quản", "thickening"), ("Nang gan", "cyst"),
        ("Vôi hoá", "calcification"), ("Tràn dịch", "effusion"), ("Tổn thương hủy xương", "bone_lesion"),
        ("Dày tổ chức kẽ lan tỏa", "lung_opacity"), ("Kính mờ", "lung_opacity"), ("Sỏi", "stone"),
        ("Phì đại", "enlargement"), ("Tổn thương tỉ trọng mô mềm", "lesion"), ("Tăng chuyển hóa FDG", "fdg_focus"),
        ("Không có", "other"), ("Tiền liệt tuyến", "other"), ("Tăng hấp thu FDG không đặc hiệu", "fdg_focus"),
    ],
)
def test_type_categories(text, category):
    assert type_category(text) == category


@pytest.mark.parametrize(
    "text, group",
    [
        ("góc hàm và phía trong cơ ức đòn chũm (nhóm IIB) hai bên", "head_neck"), ("Thượng đòn trái", "head_neck"),
        ("thùy phải tuyến giáp", "head_neck"), ("hạ phân thùy III thùy trên phổi phải", "thorax"),
        ("hố nách hai bên", "thorax"), ("rốn phổi phải", "mediastinum"), ("Trung thất nhóm 4R", "mediastinum"),
        ("1/3 dưới thực quản", "mediastinum"), ("hạ phân thùy VI gan", "abdomen"), ("cạnh động mạch chủ bụng", "abdomen"),
        ("cổ tử cung", "pelvis"), ("hố chậu trái", "pelvis"), ("đại tràng sigma", "pelvis"), ("hố bẹn hai bên", "pelvis"),
        ("xương cánh chậu trái", "musculoskeletal"), ("thân đốt sống L3", "musculoskeletal"),
        ("màng phổi trung thất phổi trái", "thorax"), ("bên trái", "other"), ("Không có", "other"),
    ],
)
def test_location_groups(text, group):
    assert location_group(text) == group


def test_fdg_yes_no():
    assert fdg_positive("Cao", 21) and fdg_positive("Tăng nhẹ, không đặc hiệu") and fdg_positive("Không đều", 5.0)
    assert fdg_positive("Không có", "3,7") and fdg_positive("Có tăng không đều")
    assert not fdg_positive("Không tăng", 0) and not fdg_positive("Không tăng", "3,8") and not fdg_positive("Giảm")
    assert not fdg_positive("Không có", "Không có") and not fdg_positive(None, None)
    assert parse_suv("10 và 8,7") == 10.0 and parse_suv(5.3) == 5.3 and parse_suv("Không có") is None


def test_matching_is_one_to_one_and_counts_each_criterion():
    pred = [[L(), L(uptake="Không tăng"), L("Khối", "thùy trên phổi phải")]]
    ref = [[L(), L(location="hố nách phải"), L("Nốt", "thùy trên phổi phải")]]
    out = C.clinical_f1(pred, ref)
    # T: two nodes on each side match, the mass and the nodule do not: 2 of 3 + 3 -> F1 = 2*2/6.
    assert out["F1-T"] == pytest.approx(200 * 2 / 6)
    # TP: pred nodes are both mediastinal, ref has one mediastinal node -> 1 match.
    assert out["F1-TP"] == pytest.approx(200 * 1 / 6)
    # TF: pred has one avid and one non-avid node, ref two avid nodes -> 1 match.
    assert out["F1-TF"] == pytest.approx(200 * 1 / 6)
    assert out["F1-TPF"] == pytest.approx(200 * 1 / 6)
    assert out["details"]["F1-T"]["precision"] == pytest.approx(200 / 3) and out["details"]["n_ref_lesions"] == 3


def test_micro_macro_and_empty_sides():
    assert C.clinical_f1([[]], [[]])["F1-T"] == 100.0
    assert C.clinical_f1([[L()]], [[]])["F1-TPF"] == 0.0 and C.clinical_f1([[]], [[L()]])["F1-T"] == 0.0
    # Report 1: 1 pred, 1 ref, matched. Report 2: 3 preds, 1 ref, matched once.
    out = C.clinical_f1([[L()], [L(), L(), L()]], [[L()], [L()]])
    assert out["F1-T"] == pytest.approx(200 * 2 / (4 + 2))  # micro
    assert out["details"]["F1-T"]["macro_f1"] == pytest.approx((100 + 200 * 1 / 4) / 2)
    with pytest.raises(ValueError, match="reference lists"):
        C.clinical_f1([[]], [])


_KEYS = st.builds(C.LesionKey, st.sampled_from(["lymph_node", "nodule", "mass"]),
                  st.sampled_from(["thorax", "abdomen"]), st.booleans())


@settings(max_examples=100, deadline=None)
@given(st.lists(_KEYS, max_size=7), st.lists(_KEYS, max_size=7), st.sampled_from(list(C.CRITERIA.values())))
def test_matching_equals_per_class_counting(pred, ref, fields):
    """Agreement on fields is an equivalence, so the maximum matching is sum over classes of min(count, count)."""
    cls = lambda k: tuple(getattr(k, f) for f in fields)  # noqa: E731
    cp, cr = collections.Counter(map(cls, pred)), collections.Counter(map(cls, ref))
    assert C.match_count(pred, ref, fields) == sum(min(cp[c], cr[c]) for c in cp)
    assert C.match_count(list(reversed(pred)), ref, fields) == C.match_count(pred, ref, fields)


# ------------------------------------------------------------------------------------------- expert files
@pytest.fixture(scope="module")
def expert_files(realdata):
    files = sorted((realdata / "expert_lesions").glob("*.json"))
    assert len(files) >= 20
    return files


def test_expert_files_parse_with_every_spelling(expert_files):
    """Both key spellings (hoá/hóa) and numeric or text SUVmax values are read; nothing is silently lost."""
    n = 0
    for path in expert_files:
        raw = json.loads(path.read_text(encoding="utf-8"))
        lesions = C.read_expert_file(path)
        assert len(lesions) == len(raw)
        for obj, lesion in zip(raw, lesions):
            n += 1
            fdg = obj["Mức độ FDG"]
            uptake = next(v for k, v in fdg.items() if k.replace("hóa", "hoá") == UPTAKE_KEY)
            assert lesion.uptake == str(uptake) and lesion.suvmax == str(fdg["SUVmax"])
            assert lesion.type == obj["Hình dạng của khối u, tổn thương, bất thường"]
            stage = next((v for k, v in obj.items() if k.startswith("Giai đoạn")), "Không có")
            assert lesion.stage == stage
    assert n >= 100


def test_expert_files_score_against_themselves_and_an_emptied_copy(expert_files):
    ref = [C.read_expert_file(p) for p in expert_files]
    self_score = C.clinical_f1(ref, ref)
    assert all(self_score[k] == 100.0 for k in C.CRITERIA)
    empty = C.clinical_f1([[] for _ in ref], ref)
    assert all(empty[k] == 0.0 for k in C.CRITERIA)
    assert empty["details"]["F1-T"]["recall"] == 0.0 and empty["details"]["n_ref_lesions"] == sum(map(len, ref))


def test_expert_file_known_perturbation(expert_files):
    """Move one avid chest lesion to the liver and make another non-avid; by hand, with n lesions:
    T is untouched (100); TP and TF each lose exactly one match (the changed lesion leaves its class, and the
    class it joins had as many predictions as references), so 2(n-1)/2n; TPF loses two, 2(n-2)/2n."""
    for path in expert_files:
        ref = C.read_expert_file(path)
        avid = [i for i, k in enumerate(map(C.categorize, ref)) if k.fdg and k.location != "abdomen"]
        if len(avid) >= 2:
            break
    else:
        pytest.fail("no expert file with two FDG-avid lesions outside the abdomen")
    a, b = avid[:2]
    pred = list(ref)
    pred[a] = dataclasses.replace(pred[a], location="hạ phân thùy VI gan")
    pred[b] = dataclasses.replace(pred[b], uptake="Không tăng", suvmax="0")
    n = len(ref)
    out = C.clinical_f1([pred], [ref])
    assert out["F1-T"] == pytest.approx(100.0)
    assert out["F1-TP"] == pytest.approx(100 * (n - 1) / n)
    assert out["F1-TF"] == pytest.approx(100 * (n - 1) / n)
    assert out["F1-TPF"] == pytest.approx(100 * (n - 2) / n)


# --------------------------------------------------------------------------------------------------- CLI
_REF = "Hình ảnh hạch ở rốn phổi trái, kích thước 11 mm, tăng chuyển hóa FDG (SUVmax: 4,2). Hình ảnh nang gan phải."
_GEN = "Hình ảnh hạch ở rốn phổi trái, không tăng chuyển hóa FDG."


def test_clinical_cli_with_the_extractor(run_cli, jsonl_file):
    rows = [{"patient_id": "a", "generated": _GEN, "reference": _REF}]
    out = run_cli("jaxpetct.eval.clinical", "--predictions", jsonl_file(rows))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    # 1 predicted node vs node + cyst: T/TP match (2*1/3), FDG differs.
    assert res["F1-T"] == pytest.approx(200 / 3) and res["F1-TP"] == pytest.approx(200 / 3)
    assert res["F1-TF"] == 0.0 and res["F1-TPF"] == 0.0


def test_clinical_cli_with_external_lesions(run_cli, jsonl_file):
    rows = [{"patient_id": "a", "generated": "ignored", "reference": "ignored"},
            {"patient_id": "b", "generated": _GEN, "reference": _REF}]
    node = {"Hình dạng của khối u, tổn thương, bất thường": "Hạch", "Vị trí của khối u, tổn thương, bất thường": "rốn phổi trái",
            "Mức độ FDG": {"SUVmax": 4.2, "Tăng chuyển hóa FDG": "Cao"}}
    ref_file = jsonl_file([{"patient_id": "a", "lesions": [node]}, {"patient_id": "b", "lesions": []}])
    pred_file = jsonl_file([{"patient_id": "a", "lesions": [node]}, {"patient_id": "b", "lesions": [node]}])
    both = run_cli("jaxpetct.eval.clinical", "--predictions", jsonl_file(rows), "--pred-lesions", pred_file,
                   "--ref-lesions", ref_file)
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout)["F1-TPF"] == pytest.approx(200 * 1 / 3)
    # References from the file, predictions from the extractor (row a's "ignored" gives no lesion).
    mixed = run_cli("jaxpetct.eval.clinical", "--predictions", jsonl_file(rows), "--ref-lesions", ref_file)
    assert mixed.returncode == 0 and json.loads(mixed.stdout)["F1-T"] == pytest.approx(0.0)


@pytest.mark.parametrize("case", ["missing_key", "count", "id", "lesion_type", "no_lesions_key", "bad_json"])
def test_clinical_cli_bad_input(run_cli, jsonl_file, case):
    rows = [{"patient_id": "a", "generated": _GEN, "reference": _REF}]
    args = []
    if case == "missing_key":
        preds = jsonl_file([{"patient_id": "a", "generated": _GEN}], "preds.jsonl")
        expect = "preds.jsonl:1: missing key 'reference'"
    else:
        preds = jsonl_file(rows, "preds.jsonl")
        lesion_rows = {
            "count": [{"patient_id": "a", "lesions": []}, {"patient_id": "b", "lesions": []}],
            "id": [{"patient_id": "zzz", "lesions": []}],
            "lesion_type": [{"patient_id": "a", "lesions": ["Hạch"]}],
            "no_lesions_key": [{"patient_id": "a"}],
            "bad_json": ["{oops"],
        }[case]
        args = ["--ref-lesions", jsonl_file(lesion_rows, "ref_lesions.jsonl")]
        expect = {"count": "ref_lesions.jsonl: 2 lesion lines but 1 predictions",
                  "id": "ref_lesions.jsonl:1: id 'zzz' does not match",
                  "lesion_type": "ref_lesions.jsonl:1: lesion 0 is str",
                  "no_lesions_key": "ref_lesions.jsonl:1: missing key 'lesions'",
                  "bad_json": "ref_lesions.jsonl:1: not valid JSON"}[case]
    out = run_cli("jaxpetct.eval.clinical", "--predictions", preds, *args)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and expect in out.stderr, out.stderr
