"""VQA: the release's pairs grouped into LLaVA conversations, and QA generated from lesion lists."""
from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest

from jaxpetct.text import vqa
from jaxpetct.text.lesion import Lesion
from jaxpetct.text.lesion_values import fdg_avid, suvmax_value
from jaxpetct.text.prompts import encode_conversation
from jaxpetct.text.report import nfc

LESIONS = [
    Lesion(size="31 x 28 mm", type="Khối mờ bờ tua gai", location="thùy dưới phổi phải", suvmax="11,2",
           uptake="Có tăng"),
    Lesion(size="12 x 9 mm", type="Hạch", location="thượng đòn trái", suvmax="4,9", uptake="Cao"),
    Lesion(size="10 mm", type="Hạch", location="hố nách hai bên", uptake="Không tăng"),
    Lesion(size="Vài mm", type="Nốt mờ", location="thùy trên phổi trái", suvmax="Không có", uptake="Không có"),
]


def test_release_pairs_load_and_group_into_llava_conversations(realdata):
    pairs, skipped = vqa.load_vqa_pairs(realdata / "vqa.jsonl", key=lambda pid: f"study-{pid}")
    lines = [json.loads(x) for x in (realdata / "vqa.jsonl").read_text("utf-8").splitlines() if x.strip()]
    assert skipped == [] and sum(map(len, pairs.values())) == len(lines)
    assert set(pairs) == {f"study-{r['patient_id']}" for r in lines}
    records = vqa.group_conversations(pairs, seed=0, max_turns=3)
    used = collections.Counter((r["id"].rsplit("-vqa", 1)[0], t["value"].removeprefix("<image>\n"))
                               for r in records for t in r["conversations"] if t["from"] == "human")
    assert used == collections.Counter((k, qa.question) for k, v in pairs.items() for qa in v)  # each pair once
    turns = collections.Counter(len(r["conversations"]) // 2 for r in records)
    assert turns[1] > 0 and sum(v for k, v in turns.items() if k > 1) > 0 and max(turns) <= 3
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        human = [t["value"] for t in r["conversations"] if t["from"] == "human"]
        assert human[0].startswith("<image>\n") and not any("<image>" in h for h in human[1:])
        assert r["image"] == r["id"].rsplit("-vqa", 1)[0]
    assert vqa.group_conversations(pairs, seed=0) == records
    assert vqa.group_conversations(pairs, seed=1) != records


def test_release_conversations_encode_with_the_image_block(realdata, mistral):
    pairs, _ = vqa.load_vqa_pairs(realdata / "vqa.jsonl")
    for record in vqa.group_conversations(pairs, seed=3)[:40]:
        enc = encode_conversation(vqa.llava_messages(record), mistral, "mistral", num_image_tokens=14)
        answers = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
        assert enc.image_mask.sum() == 14
        assert mistral.decode(enc.input_ids[enc.loss_mask == 1].tolist()) == " ".join(nfc(a) for a in answers)


def test_bad_lines_are_skipped_with_reasons(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join([
        json.dumps({"patient_id": "p1", "question": "Có hạch không?", "answer": "Không."}, ensure_ascii=False),
        "{broken", json.dumps([1, 2]), json.dumps({"patient_id": "p2", "question": " ", "answer": "Có."}),
        "", json.dumps({"patient_id": "p1", "question": "Gan?", "answer": "Bình thường."}, ensure_ascii=False),
        json.dumps({"patient_id": "p3", "question": "Gan?", "answer": "Có\ud800."})]))  # a lone surrogate escape
    pairs, skipped = vqa.load_vqa_pairs(f)
    assert [len(v) for v in pairs.values()] == [2]
    assert skipped == [("pairs.jsonl:2", "not valid JSON"), ("pairs.jsonl:3", "not a JSON object"),
                       ("pairs.jsonl:4", "missing or empty field(s): question"),
                       ("pairs.jsonl:7", "answer: character 3 is a lone surrogate (U+D800), not Unicode text")]
    pairs, skipped = vqa.load_vqa_pairs(f, key=lambda pid: None if pid == "p1" else pid)
    assert pairs == {} and ("pairs.jsonl:1", "no study in the cohort for this patient id") in skipped
    with pytest.raises(vqa.VQAError, match="missing.jsonl: cannot read"):
        vqa.load_vqa_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(vqa.VQAError, match="turn 0 needs"):
        vqa.llava_messages({"id": "x", "conversations": [{"from": "bot", "value": "?"}]})


def _answer_for(pairs, question_part):
    return [p.answer for p in pairs if question_part in p.question]


def test_lesion_answers_are_determined_by_the_lesions():
    pairs = vqa.lesion_qa(LESIONS, "chest", seed=0)
    assert pairs[0].answer.startswith("Có. Ghi nhận 4 tổn thương ở vùng ngực")
    counts = [p.answer for p in pairs if p.answer.startswith("Có 4 tổn thương được ghi nhận")]
    assert len(counts) == 1
    # Uptake of the fourth lesion is not stated, so no avid count is asked; the hottest lesion is the 11,2 mass.
    assert not any("tăng chuyển hóa FDG ở vùng ngực?" in p.question for p in pairs)
    hottest = [p.answer for p in pairs if "SUVmax cao nhất" in p.answer]
    assert hottest == ["Tổn thương có SUVmax cao nhất là khối mờ bờ tua gai ở thùy dưới phổi phải, với SUVmax 11,2."]
    # Two lesions are "Hạch": no question asks where "the" node is; each node is still named by its location.
    assert not any(re.match(r"(Hạch nằm|Vị trí của hạch)", p.question) for p in pairs)
    assert any("Hạch ở thượng đòn trái có kích thước 12 x 9 mm." == p.answer for p in pairs)
    assert any(p.answer == "Không. Hạch ở hố nách hai bên không tăng chuyển hóa FDG." for p in pairs)
    assert any(p.answer == "Nốt mờ nằm ở thùy trên phổi trái." for p in pairs)
    assert not any("nốt mờ" in p.question.lower() and "FDG" in p.question for p in pairs)  # uptake unknown
    for p in pairs:
        assert p.question.endswith(("?", ".")) and p.answer.endswith(".")
    assert vqa.lesion_qa(LESIONS, "chest", seed=0) == pairs
    assert {p.question for p in vqa.lesion_qa(LESIONS, "chest", seed=5)} != {p.question for p in pairs}


def test_empty_region_and_whole_study():
    pairs = vqa.lesion_qa([], "head_neck", findings="Hình ảnh bắt xạ sinh lý ở não.", seed=2)
    assert pairs[0].answer == "Không. Chưa phát hiện hình ảnh bất thường ở vùng đầu - cổ."
    assert pairs[-1].answer == "Hình ảnh bắt xạ sinh lý ở não."
    assert all("đầu - cổ" in p.question for p in pairs[:-1])
    study = vqa.lesion_qa(LESIONS[:2], None, seed=1)
    assert "trên PET/CT toàn thân" in study[0].question and "Có 2 tổn thương tăng chuyển hóa FDG" in " ".join(
        p.answer for p in study)
    some = vqa.lesion_qa(LESIONS, "chest", seed=4, max_pairs=3)
    assert len(some) == 3 and some[0] == vqa.lesion_qa(LESIONS, "chest", seed=4)[0]
    records = vqa.lesion_conversations("s7/chest", LESIONS, "chest", seed=4, image="s7/chest.npz")
    assert all(r["image"] == "s7/chest.npz" and r["id"].startswith("s7/chest-vqa") for r in records)
    assert sum(len(r["conversations"]) for r in records) == 2 * len(vqa.lesion_qa(LESIONS, "chest", seed=4))


def test_generated_qa_on_real_lesions_quote_only_stated_values(real_lesions, realdata):
    real_questions = {json.loads(x)["question"] for x in (realdata / "vqa.jsonl").read_text("utf-8").splitlines()}
    n = 0
    for seed, lesions in enumerate(real_lesions):
        pairs = vqa.lesion_qa(lesions, "chest", seed=seed)
        n += len(pairs)
        assert f"{len(lesions)} tổn thương" in pairs[1].answer or not lesions
        stated = " ".join(f"{les.size} {les.suvmax} {les.location} {les.type}" for les in lesions)
        numbers = set(re.findall(r"\d+(?:[.,]\d+)?", stated)) | {str(len(lesions))}
        numbers |= {str(sum(bool(fdg_avid(les)) for les in lesions))}
        for p in pairs:
            assert set(re.findall(r"\d+(?:[.,]\d+)?", p.answer)) <= numbers, p.answer  # nothing invented
            assert p.question not in real_questions  # our own wording, never a copied line
        suvs = [suvmax_value(les) for les in lesions if fdg_avid(les) and suvmax_value(les) is not None]
        hottest = [p.answer for p in pairs if "SUVmax cao nhất" in p.answer]
        if hottest:
            assert suvs.count(max(suvs)) == 1
            assert any(float(x.replace(",", ".")) == max(suvs) for x in re.findall(r"SUVmax (\S+)\.$", hottest[0]))
    assert n > 500


def test_records_feed_every_template(mistral):
    records = vqa.lesion_conversations("s1/chest", LESIONS, "chest", seed=0, max_turns=4)
    lengths = [len(encode_conversation(vqa.llava_messages(r), mistral, "llama2", num_image_tokens=14))
               for r in records]
    assert all(n > 14 for n in lengths) and np.sum(lengths) > 100
