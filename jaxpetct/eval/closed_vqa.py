"""Closed-form accuracy of VQA answers: the part of an open answer that has one right value.

Open-ended VQA is scored with text metrics, which reward wording. Many questions, in the release and in the ones
generated from lesion tables, have an exact answer inside the free text: "... có ... không?" is answered yes or no,
"bao nhiêu" by a number, a question on FDG uptake by an SUVmax, "vị trí nào" by an anatomical place. Where the
reference answer states that value, the generated answer is scored on it alone (exact match after normalisation):

- yes_no: the answer's first word, có (yes) or không / chưa (no);
- count: the first number (digits or a Vietnamese number word up to ten);
- suvmax_bin: the SUVmax's bin, < 2.5 / 2.5-5 / 5-10 / >= 10 (the usual reading thresholds: a value off by 0.1
  is the same finding, a value in another bin is not);
- location: the location group of the lesion vocabulary (head-neck, thorax, mediastinum, abdomen, pelvis,
  musculoskeletal);
- lesion_type: the type category of the lesion vocabulary (lymph node, nodule, mass, cyst, bone lesion, ...),
  asked of the lesion at a named place ("Tổn thương ở ... là loại tổn thương gì?", generated from lesion tables).

A question whose reference states no such value is not counted. A generated answer that states none is wrong.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

from jaxpetct.eval.lesion_vocab import OTHER, find_location, find_type_head, parse_suv
from jaxpetct.text.vietnamese import normalize_for_matching

KINDS = ("yes_no", "count", "suvmax_bin", "location", "lesion_type")
SUV_BINS = (2.5, 5.0, 10.0)
# With their accents: folded, "năm" (five) is "nằm" (lies) and "sáu" (six) is "sau" (after).
_NUMBER_WORDS = {"một": 1, "hai": 2, "ba": 3, "bốn": 4, "năm": 5, "sáu": 6, "bảy": 7, "tám": 8, "chín": 9, "mười": 10}
_ASKS = {"count": re.compile(r"\b(co bao nhieu|so luong)\b"),
         "location": re.compile(r"\b(vi tri nao|o dau|nam o vung nao)\b"),
         "suvmax_bin": re.compile(r"\b(suv ?max|muc do chuyen hoa|dac diem chuyen hoa)\b"),
         "lesion_type": re.compile(r"\b(loai ton thuong gi|la loai gi|thuoc loai nao)\b")}
_WORD = re.compile(r"\w+")
_SUV = re.compile(r"suv\s*max[^0-9]{0,20}(\d+(?:[.,]\d+)?)")


def _folded(text: str) -> str:
    return normalize_for_matching(text or "", fold=True)


def question_kind(question: str) -> Optional[str]:
    """Which exact value the question asks for, from its wording; None for an open question (sizes included)."""
    q = _folded(question)
    if q.rstrip(" ?.").endswith("khong"):  # "... có ... không?": yes or no, whatever else it names
        return "yes_no"
    if "kich thuoc" in q:
        return None
    for kind in ("lesion_type", "count", "suvmax_bin", "location"):
        if _ASKS[kind].search(q):
            return kind
    return None


def answer_value(kind: str, answer: str):
    """The exact value an answer states for `kind`, or None when it states none."""
    a = _folded(answer)
    if kind == "yes_no":
        words = _WORD.findall(a)
        first = words[0] if words else ""
        return "yes" if first == "co" else "no" if first in ("khong", "chua") else None
    if kind == "count":
        for w in _WORD.findall(normalize_for_matching(answer or "")):
            if w.isdigit():
                return int(w)
            if w in _NUMBER_WORDS:
                return _NUMBER_WORDS[w]
        return None
    if kind == "suvmax_bin":
        m = _SUV.search(a)
        value = parse_suv(m.group(1)) if m else None
        return None if value is None else sum(value >= edge for edge in SUV_BINS)
    if kind == "location":
        hit = find_location(normalize_for_matching(answer or ""))
        return hit[0] if hit and hit[0] != OTHER else None
    if kind == "lesion_type":
        hit = find_type_head(normalize_for_matching(answer or ""))
        return hit[0] if hit else None
    raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")


def closed_form_accuracy(records: Sequence[Mapping]) -> dict:
    """{kind: {"count", "accuracy" (0-100)}} over VQA prediction records ({"prompt", "reference", "generated"}),
    plus "all"; only questions whose reference states the value count."""
    hits: dict[str, list[bool]] = {k: [] for k in KINDS}
    for r in records:
        kind = question_kind(r["prompt"])
        expected = None if kind is None else answer_value(kind, r["reference"])
        if expected is None:
            continue
        hits[kind].append(answer_value(kind, r["generated"]) == expected)
    out = {k: {"count": len(v), "accuracy": 100.0 * sum(v) / len(v)} for k, v in hits.items() if v}
    every = [h for v in hits.values() for h in v]
    out["all"] = {"count": len(every), "accuracy": 100.0 * sum(every) / len(every) if every else 0.0}
    return out
