"""G (fact-preserving paraphrase) and C (study comparison) text augmentations."""
from __future__ import annotations

import collections
import dataclasses
import re

import pytest

from jaxpetct.text import augment
from jaxpetct.text.lesion import Lesion
from jaxpetct.text.lesion_values import is_stated
from jaxpetct.text.report import CHEST, HEAD_NECK, Report, nfc

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
SIDES = re.compile(r"(?<!\w)(trái|phải|hai bên|2 bên|bên)(?!\w)", re.IGNORECASE)
NEGATIONS = re.compile(r"(?<!\w)(không|chưa)(?!\w)", re.IGNORECASE)
# Words the table must never hold: anatomy, sides, units, measures, quantities.
PROTECTED = {"trái", "phải", "bên", "hai", "mm", "cm", "suvmax", "phổi", "gan", "thận", "hạch", "xương", "não", "tim",
             "thùy", "trên", "dưới", "giữa", "nách", "bẹn", "cổ", "ngực", "bụng", "vú", "giáp", "lách", "đại", "tràng",
             "nốt", "khối", "kích", "thước", "đường", "kính", "trung", "thất", "thực", "quản", "dạ", "dày",
             "vài", "nhiều", "một", "các", "ít", "lớn", "nhỏ", "nhất", "số", "lượng", "mới", "cũ", "to"}
QUANTITIES = re.compile(r"(?<!\w)(vài|nhiều|một|các|lớn nhất|nhỏ)(?!\w)", re.IGNORECASE)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", nfc(text).lower().replace("hoá", "hóa"))


TABLE_WORDS = {w for group in augment.PHRASE_GROUPS + augment.SENTENCE_START_GROUPS for p in group for w in _words(p)}
_CANON = {" ".join(_words(p)): " ".join(_words(g[0])) for g in augment.PHRASE_GROUPS + augment.SENTENCE_START_GROUPS
          for p in g}
_CANON_RE = re.compile(r"(?<!\w)(" + "|".join(re.escape(p) for p in sorted(_CANON, key=len, reverse=True)) + r")(?!\w)")


def _canonical_sentences(text: str) -> collections.Counter:
    """Each sentence with every table phrase replaced by its group's first member: what a paraphrase may not change."""
    sentences, _ = augment.split_sentences(text)
    folded = (" ".join(_words(s)) for s in sentences)
    return collections.Counter(_CANON_RE.sub(lambda m: _CANON[m.group()], s) for s in folded)


def _facts(text: str) -> dict:
    sentences, _ = augment.split_sentences(text)
    return {
        "numbers": collections.Counter(NUMBER.findall(text)),
        "sides": collections.Counter(m.lower() for m in SIDES.findall(text)),
        "negations": len(NEGATIONS.findall(text)),
        "tăng": _words(text).count("tăng"),
        "nhẹ": _words(text).count("nhẹ"),
        "fdg": text.count("FDG"),
        "suvmax": text.count("SUVmax"),
        "other_words": collections.Counter(w for w in _words(text) if w not in TABLE_WORDS),
        "numbers_per_sentence": collections.Counter(tuple(NUMBER.findall(s)) for s in sentences),
        "quantities": collections.Counter(m.lower() for m in QUANTITIES.findall(text)),
        "canonical_sentences": _canonical_sentences(text),
    }


def test_paraphrase_preserves_every_fact_of_the_real_reports(real_reports):
    changed = 0
    for i, text in enumerate(real_reports):
        before = _facts(text)
        for seed in range(3):
            out = augment.paraphrase(text, seed)
            assert _facts(out) == before, (i, seed)
            changed += out != nfc(text)
    assert changed >= 0.95 * 3 * len(real_reports)


def test_phrase_table_hygiene():
    seen = set()
    for group in augment.PHRASE_GROUPS + augment.SENTENCE_START_GROUPS:
        folded = [" ".join(_words(p)) for p in group]
        assert len(group) >= 2 and len(set(folded)) == len(folded)
        assert not seen & set(folded)
        seen |= set(folded)
        for phrase in group:
            assert not re.search(r"\d", phrase) and not set(_words(phrase)) & PROTECTED, phrase


def test_substitution_keeps_case_and_spelling_variants():
    text = "Chưa phát hiện tổn thương. Tăng nhẹ chuyển hoá FDG ở amydal, khả năng do viêm."
    outs = {augment.paraphrase(text, s, p_substitute=1.0, reorder=False) for s in range(30)}
    assert len(outs) == 2  # the only free choice at p=1: which other member replaces "chưa phát hiện"
    for out in outs:
        first, second = augment.split_sentences(out)[0]
        assert first[0].isupper() and second[0].isupper()
        assert "thương tổn" in first  # always substituted at p=1
        assert "tăng nhẹ chuyển hoá FDG" not in second.lower() and "amydal" in second
    assert augment.paraphrase(text, 0, p_substitute=0.0, reorder=False) == text


def test_follow_up_sentences_stay_with_their_finding():
    text = ("Hình ảnh khối ở thực quản 1/3 dưới, SUVmax 13,5. Đối chiếu với nội soi. Hạch lớn nhất 12 mm. "
            "Chưa phát hiện hình ảnh tràn dịch màng phổi hai bên. Hình ảnh nốt mờ 4 mm ở thùy giữa phổi phải. "
            "Cần lưu ý theo dõi.")
    orders = set()
    for seed in range(25):
        sentences, seps = augment.split_sentences(augment.paraphrase(text, seed))
        assert len(sentences) == 6 and set(seps) == {" "}
        i = next(k for k, s in enumerate(sentences) if "13,5" in s)
        assert "nội soi" in sentences[i + 1] and "12 mm" in sentences[i + 2]
        j = next(k for k, s in enumerate(sentences) if "4 mm" in s)
        assert "theo dõi" in sentences[j + 1]
        orders.add((i, j))
    assert len(orders) > 2  # the three groups really move


def test_reorder_only_and_determinism():
    text = "Hình ảnh A ở gan, 12 mm. Hình ảnh B ở lách, 9 mm. Chưa phát hiện C. Hình ảnh D ở thận phải, 5 mm."
    out = augment.paraphrase(text, 7, p_substitute=0.0)
    assert sorted(augment.split_sentences(out)[0]) == sorted(augment.split_sentences(text)[0])
    assert augment.paraphrase(text, 7) == augment.paraphrase(text, 7)
    assert len({augment.paraphrase(text, s) for s in range(10)}) > 5
    variants = augment.paraphrases(text, 3, seed=1)
    assert len(variants) == 3 and len(set(variants)) == 3 and text not in variants
    assert augment.paraphrase("", 3) == "" and augment.paraphrases("Không.", 2, 0) == []


def test_report_sections_are_paraphrased_apart():
    report = Report(impression="Tổn thương ác tính thùy trên phổi phải (SUVmax 9,1). Cần đối chiếu với mô bệnh học.",
                    findings={HEAD_NECK: "Hình ảnh bắt xạ theo đặc điểm sinh lý ở não. Hình ảnh hạch cổ trái 8 mm.",
                              CHEST: "Hình ảnh khối mờ thùy trên phổi phải 31 x 28 mm. Chưa phát hiện tràn dịch."})
    out = augment.paraphrase_report(report, 4)
    assert set(out.findings) == set(report.findings)
    for key in report.findings:
        assert _facts(out.findings[key]) == _facts(report.findings[key])
    assert _facts(out.impression) == _facts(report.impression)


PRIOR = {"chest": [Lesion(size="31 x 28 mm", type="Khối mờ", location="Thùy dưới phổi phải", suvmax="11,2",
                          uptake="Có tăng"),
                   Lesion(size="10 mm", type="Hạch", location="trước khí quản", uptake="Không tăng"),
                   Lesion(size="8 mm", type="Nốt mờ", location="thùy giữa phổi phải", suvmax="2,1", uptake="Có tăng")],
         "head_neck": [Lesion(size="9 x 11 mm", type="Hạch", location="nhóm IIA trái", suvmax="4,9", uptake="Cao")]}


def _current():
    chest = PRIOR["chest"]
    return {"chest": [dataclasses.replace(chest[0], size="22 x 20 mm", suvmax="5,3", location="thùy dưới phổi phải."),
                      dataclasses.replace(chest[1], suvmax="3,8", uptake="Có tăng"),
                      Lesion(size="6 mm", type="Nốt mờ", location="thùy trên phổi trái", suvmax="Không có",
                             uptake="Không tăng")],
            "head_neck": list(PRIOR["head_neck"])}


def test_comparison_states_each_difference():
    text = augment.comparison_text(PRIOR, _current())
    assert text.startswith("So với lần chụp trước: 1 tổn thương mới, 1 tổn thương không còn thấy, "
                           "2 tổn thương thay đổi, 1 tổn thương không thay đổi.")
    assert ("Khối mờ ở thùy dưới phổi phải: kích thước giảm từ 31 x 28 mm xuống 22 x 20 mm, "
            "SUVmax giảm từ 11,2 xuống 5,3.") in text
    assert ("Hạch ở trước khí quản: SUVmax trước đây không ghi nhận, nay 3,8, "
            "chuyển từ không tăng sang tăng chuyển hóa FDG.") in text
    assert "Không còn thấy nốt mờ ở thùy giữa phổi phải, kích thước 8 mm, tăng chuyển hóa FDG với SUVmax 2,1." in text
    assert "Xuất hiện mới nốt mờ ở thùy trên phổi trái, kích thước 6 mm, không tăng chuyển hóa FDG." in text
    assert "Vùng đầu - cổ: Không thay đổi: hạch ở nhóm IIA trái." in text
    assert text.index("Vùng đầu - cổ") < text.index("Vùng ngực")  # report section order


def test_comparison_direction_and_identity():
    forward, backward = augment.comparison_text(PRIOR, _current()), augment.comparison_text(_current(), PRIOR)
    assert forward != backward
    assert "kích thước tăng từ 22 x 20 mm lên 31 x 28 mm" in backward and "Xuất hiện mới nốt mờ ở thùy giữa" in backward
    same = augment.comparison_text(PRIOR, PRIOR)
    assert same == "Không có thay đổi so với lần chụp trước: 4 tổn thương không thay đổi."
    assert augment.comparison_text([], []).startswith("Không ghi nhận tổn thương ở cả hai lần chụp")
    grown = [dataclasses.replace(PRIOR["chest"][1], size="2 cm")]
    assert "kích thước tăng từ 10 mm lên 2 cm" in augment.comparison_text(PRIOR["chest"][1:2], grown)
    few = [dataclasses.replace(PRIOR["chest"][1], size="Vài mm")]
    assert "kích thước thay đổi từ 10 mm thành vài mm" in augment.comparison_text(PRIOR["chest"][1:2], few)


def test_diff_is_one_to_one():
    prior = [Lesion(type="Hạch", location="hố nách hai bên", size="10 mm")] * 2 + [Lesion(type="Nang", location="gan")]
    current = [Lesion(type="Hạch", location="Hố nách hai bên", size="10 mm")]
    changes = augment.diff_lesions(prior, current)
    assert collections.Counter(c.kind for c in changes) == {"unchanged": 1, "resolved": 2}
    assert all(c.region is None for c in changes)
    with pytest.raises(ValueError, match="unknown region"):
        augment.diff_lesions({"knee": prior}, current)


def test_comparison_of_real_studies_invents_nothing(real_lesions):
    for a, b in zip(real_lesions[::2], real_lesions[1::2]):
        changes = augment.diff_lesions(a, b)
        assert sum(c.prior is not None for c in changes) == len(a)
        assert sum(c.current is not None for c in changes) == len(b)
        text = augment.comparison_text(a, b, prior_label="PET/CT 2018")
        stated = " ".join(f"{les.size} {les.suvmax} {les.location} {les.type}" for les in a + b)
        allowed = set(NUMBER.findall(stated)) | {str(n) for n in range(len(a) + len(b) + 1)} | {"2018"}
        assert set(NUMBER.findall(text)) <= allowed
        for c in changes:
            if c.kind == "new" and is_stated(c.current.location):
                assert nfc(c.current.location.strip())[1:].rstrip(".;,: ") in text


def test_comparison_messages_encode(mistral):
    from jaxpetct.text.prompts import encode_conversation

    msgs = augment.comparison_messages(PRIOR, _current(), seed=2)
    assert msgs[0].content.startswith("<image>\n") and msgs[1].content == augment.comparison_text(PRIOR, _current())
    enc = encode_conversation(msgs, mistral, num_image_tokens=14)  # 70 + 70 slices: one 140-slice CT-ViT input
    assert enc.image_mask.sum() == 14
    assert mistral.decode(enc.input_ids[enc.loss_mask == 1].tolist()) == msgs[1].content
