"""Closed-form VQA accuracy: question kinds and exact values on the real VQA samples and on the questions that
jaxpetct.text.vqa generates from lesion tables; wrong values score 0; it reaches metrics.json through the runner."""
import json

import pytest

from jaxpetct.eval.closed_vqa import answer_value, closed_form_accuracy, question_kind
from jaxpetct.eval.runner import task_metrics
from jaxpetct.text.lesion import Lesion
from jaxpetct.text.vqa import lesion_qa


def _rows(realdata):
    return [json.loads(line) for line in (realdata / "vqa.jsonl").read_text("utf-8").splitlines() if line.strip()]


def test_real_samples_have_derivable_values_and_score_themselves_perfectly(realdata):
    rows = _rows(realdata)
    records = [{"prompt": r["question"], "reference": r["answer"], "generated": r["answer"]} for r in rows]
    acc = closed_form_accuracy(records)
    print(f"\nclosed-form questions among {len(rows)} real VQA pairs: "
          + ", ".join(f"{k} {v['count']}" for k, v in acc.items()))
    assert acc["yes_no"]["count"] >= 120 and acc["all"]["count"] >= 140
    assert all(v["accuracy"] == 100.0 for v in acc.values())
    flipped = [dict(r, generated=("Không." if answer_value("yes_no", r["reference"]) == "yes" else "Có."))
               for r in records if question_kind(r["prompt"]) == "yes_no"]
    assert closed_form_accuracy(flipped)["yes_no"]["accuracy"] == 0.0


@pytest.mark.parametrize("question,answer,kind,value", [
    ("Phổi có tổn thương tăng chuyển hóa FDG khu trú không?", "Chưa phát hiện tổn thương.", "yes_no", "no"),
    ("Có dấu hiệu xâm lấn không?", "Có, khối lan vào thân tử cung.", "yes_no", "yes"),
    ("Có bao nhiêu tổn thương được ghi nhận ở lồng ngực?", "Có hai tổn thương.", "count", 2),
    ("Số lượng tổn thương ở gan là bao nhiêu?", "Ghi nhận 3 tổn thương.", "count", 3),
    ("Có bao nhiêu hạch?", "Hạch nằm ở cổ trái.", "count", None),  # "nằm" (lies) is not "năm" (five)
    ("Kích thước khối ở gan là bao nhiêu?", "61 x 44 mm", None, None),  # a size: not a closed value here
    ("Mức độ chuyển hóa FDG của khối như thế nào?", "Tăng rõ, SUVmax 4,99.", "suvmax_bin", 1),
    ("Mức độ chuyển hóa FDG của khối như thế nào?", "Tăng rõ, SUVmax 5,0.", "suvmax_bin", 2),
    ("Các hạch có SUVmax bao nhiêu?", "SUVmax khoảng 12.", "suvmax_bin", 3),
    ("Tổn thương có mức chuyển hóa FDG cao nhất nằm ở vị trí nào?", "Ở thùy trên phổi phải.", "location", "thorax"),
    ("Hãy mô tả các phát hiện ở lồng ngực.", "Bình thường.", None, None),
])
def test_question_kinds_and_values(question, answer, kind, value):
    assert question_kind(question) == kind
    if kind is not None:
        assert answer_value(kind, answer) == value


def test_generated_lesion_questions_are_scored_and_reach_metrics():
    lesions = [Lesion(size="15 x 14 mm", type="Hạch", location="nhóm II cổ trái", suvmax="5,4", uptake="Có tăng"),
               Lesion(size="22 x 20 mm", type="Nốt", location="thùy trên phổi phải", suvmax="8,1", uptake="Có tăng")]
    pairs = lesion_qa(lesions, region=None, findings="Hạch cổ trái và nốt phổi phải tăng chuyển hoá FDG.")
    kinds = {question_kind(p.question) for p in pairs} - {None}
    assert {"yes_no", "count", "lesion_type", "suvmax_bin", "location"} <= kinds, [p.question for p in pairs]
    rows = [{"task": "vqa", "turn": 0, "prompt": p.question, "reference": p.answer, "generated": p.answer}
            for p in pairs]
    metrics = task_metrics(rows, "vqa")
    assert metrics["closed_accuracy"] == 100.0 and metrics["closed_form"]["all"]["count"] >= 2
    wrong = [dict(r, generated="Không rõ.") for r in rows]
    assert task_metrics(wrong, "vqa")["closed_accuracy"] < 100.0
