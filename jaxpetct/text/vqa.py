"""Open-ended Vietnamese VQA in LLaVA's conversation format: loaded from the release, or generated from lesions.

A record is {"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}
(LLaVA's layout, which the paper's VQA release follows); "image" names the study/region record whose volume
the conversation is about. The release has no closed-form questions; generated ones are open-ended too, in the
release's style (a direct "Có."/"Không." first, then the finding with its location, size and SUVmax), and every
answer is determined by the lesion list: the synthetic cohort's VQA is checkable ground truth.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Callable, Mapping, Optional, Sequence

from jaxpetct.text import _seeded
from jaxpetct.text.lesion import Lesion
from jaxpetct.text.lesion_values import fdg_avid, is_stated, suvmax_value
from jaxpetct.text.phrasing import (clean_value, describe_lesion, fdg_clause, lesion_location, lesion_name, lower_first,
                                    upper_first)
from jaxpetct.text.prompts import REGION_PHRASES, Message, image_turn, region_section
from jaxpetct.text.report import checked_text, nfc
from jaxpetct.errors import UserError


class VQAError(UserError, ValueError):
    """A VQA file or record is malformed; names the file (and line) or the record field, never its content."""


@dataclasses.dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


def load_vqa_pairs(path: str | os.PathLike, key: Callable[[str], Optional[str]] = lambda pid: pid
                   ) -> tuple[dict[str, list[QAPair]], list[tuple[str, str]]]:
    """Pairs per study key, in file order, from a JSONL of {"patient_id", "question", "answer"}.

    `key` maps the release's patient id to the caller's study key (e.g. its salted pseudonym), or to None for
    a patient outside the cohort. Bad lines and unmapped patients are skipped and returned as
    ("<file>:<line>", reason), never naming the patient; a missing or unreadable file raises VQAError.
    """
    p = pathlib.Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VQAError(f"{p.name}: cannot read VQA pairs ({type(e).__name__})") from None
    pairs: dict[str, list[QAPair]] = {}
    skipped: list[tuple[str, str]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{p.name}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            skipped.append((where, "not valid JSON"))
            continue
        if not isinstance(obj, dict):
            skipped.append((where, "not a JSON object"))
            continue
        missing = [k for k in ("patient_id", "question", "answer")
                   if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if missing:
            skipped.append((where, f"missing or empty field(s): {', '.join(missing)}"))
            continue
        try:
            for k in ("patient_id", "question", "answer"):
                checked_text(obj[k], k)
        except ValueError as e:
            skipped.append((where, str(e)))
            continue
        study = key(obj["patient_id"])
        if study is None:
            skipped.append((where, "no study in the cohort for this patient id"))
            continue
        pairs.setdefault(study, []).append(QAPair(nfc(obj["question"].strip()), nfc(obj["answer"].strip())))
    return pairs, skipped


def llava_record(record_id: str, image: str, pairs: Sequence[QAPair]) -> dict:
    """One LLaVA conversation; the image placeholder opens the first human turn only."""
    if not pairs:
        raise VQAError(f"record {record_id}: a conversation needs at least one QA pair")
    turns = []
    for i, qa in enumerate(pairs):
        turns.append({"from": "human", "value": image_turn(qa.question) if i == 0 else qa.question})
        turns.append({"from": "gpt", "value": qa.answer})
    return {"id": record_id, "image": image, "conversations": turns}


def llava_messages(record: Mapping) -> list[Message]:
    """A LLaVA record as chat messages for `prompts.encode_conversation` (human -> user, gpt -> assistant)."""
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    turns = record.get("conversations") if isinstance(record, Mapping) else None
    rid = record.get("id", "?") if isinstance(record, Mapping) else "?"
    if not isinstance(turns, list) or not turns:
        raise VQAError(f"record {rid}: 'conversations' must be a non-empty list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, Mapping) or t.get("from") not in roles or not isinstance(t.get("value"), str):
            raise VQAError(f"record {rid}: turn {i} needs 'from' in {sorted(roles)} and a string 'value'")
        out.append(Message(roles[t["from"]], t["value"]))
    return out


def group_conversations(pairs_by_key: Mapping[str, Sequence[QAPair]], seed: int, *, max_turns: int = 3,
                        single_turn_prob: float = 0.5, image: Callable[[str], str] = lambda key: key) -> list[dict]:
    """A study's pairs grouped into single- and multi-turn conversations, each pair used exactly once.

    Deterministic in (seed, key): the pairs are shuffled, then cut into runs of 1 (with `single_turn_prob`) or
    2..max_turns. Records come sorted by key, ids are "<key>-vqa<k>".
    """
    if max_turns < 1:
        raise VQAError(f"max_turns must be >= 1, got {max_turns}")
    records = []
    for key in sorted(pairs_by_key):
        r = _seeded.rng(seed, "vqa-group", key)
        order = _seeded.shuffled(r, pairs_by_key[key])
        i = k = 0
        while i < len(order):
            single = max_turns == 1 or r.random() < single_turn_prob
            size = 1 if single else 2 + _seeded.below(r, max_turns - 1)
            records.append(llava_record(f"{key}-vqa{k}", image(key), order[i:i + size]))
            i, k = i + size, k + 1
    return records


# --- Questions whose answers are determined by a lesion list ---------------------------------------------------

_PRESENCE_Q = ("Có phát hiện bất thường {where} không?", "Hình ảnh PET/CT {where} có tổn thương nào không?",
               "Có ghi nhận tổn thương bất thường nào {where} không?")
_COUNT_Q = ("Có bao nhiêu tổn thương được ghi nhận {where}?", "Số lượng tổn thương {where} là bao nhiêu?")
_AVID_COUNT_Q = ("Có bao nhiêu tổn thương tăng chuyển hóa FDG {where}?",
                 "Bao nhiêu tổn thương {where} có tăng chuyển hóa FDG?")
_HOTTEST_Q = ("Tổn thương có mức chuyển hóa FDG cao nhất nằm ở vị trí nào?",
              "Bất thường tăng chuyển hóa FDG mạnh nhất trên hình ảnh này ở đâu?")
_LOCATION_Q = ("{The} nằm ở vị trí nào?", "Vị trí của {the} là ở đâu?")
_SIZE_Q = ("{The} ở {location} có kích thước bao nhiêu?", "Kích thước của {the} ở {location} là bao nhiêu?")
_SUV_Q = ("Mức độ chuyển hóa FDG của {the} ở {location} như thế nào?",
          "{The} ở {location} có đặc điểm chuyển hóa FDG ra sao?")
_UPTAKE_Q = ("{The} ở {location} có tăng chuyển hóa FDG không?",
             "Có tăng chuyển hóa FDG ở {the} tại {location} không?")
_FINDINGS_Q = ("Hãy mô tả các phát hiện {where}.", "Hình ảnh PET/CT {where} cho thấy những gì?")
_TYPE_Q = ("Tổn thương ở {location} là loại tổn thương gì?", "Bất thường ghi nhận ở {location} là loại gì?")


def _where(region: Optional[str]) -> str:
    section = region_section(region)
    return "trên PET/CT toàn thân" if section is None else f"ở {REGION_PHRASES[section]}"


def _per_lesion_pairs(lesions: Sequence[Lesion], avid: Sequence[Optional[bool]], q) -> list[QAPair]:
    """Location (unique types only), size, SUVmax and uptake questions per lesion, asked in lesion order with the
    caller's seeded phrasing `q`; a lesion that shares type and location with another gets none."""
    out = []
    types = [nfc(lesion_name(les)).lower() for les in lesions]
    names = [(t, nfc(lesion_location(les)).lower()) for t, les in zip(types, lesions)]
    places = [loc for _, loc in names]
    for i, les in enumerate(lesions):
        if not is_stated(les.location):
            continue
        the, loc = lesion_name(les), lesion_location(les)
        if places.count(places[i]) == 1 and is_stated(les.type):  # the place alone names the lesion: its type
            out.append(QAPair(q(_TYPE_Q, location=loc), f"Đó là {the}."))
        if types.count(types[i]) == 1 and is_stated(les.type):
            out.append(QAPair(q(_LOCATION_Q, The=upper_first(the), the=the),
                              f"{upper_first(the)} nằm ở {loc}."))
        if names.count(names[i]) > 1:
            continue  # two lesions with the same type and location: no question can single one out
        fmt = dict(The=upper_first(the), the=the, location=loc)
        if is_stated(les.size):
            size = lower_first(clean_value(les.size))
            out.append(QAPair(q(_SIZE_Q, **fmt), f"{upper_first(the)} ở {loc} có kích thước {size}."))
        if avid[i] is not None:
            out.append(QAPair(q(_SUV_Q, **fmt), f"{upper_first(the)} ở {loc} {fdg_clause(les)}."))
            yes = "Có" if avid[i] else "Không"
            out.append(QAPair(q(_UPTAKE_Q, **fmt), f"{yes}. {upper_first(the)} ở {loc} {fdg_clause(les)}."))
    return out


def lesion_qa(lesions: Sequence[Lesion], region: Optional[str] = None, findings: Optional[str] = None,
              seed: int = 0, max_pairs: Optional[int] = None) -> list[QAPair]:
    """Open-ended QA pairs about a region's (or the study's) lesions: presence, counts, the hottest lesion,
    and per lesion its location, size, SUVmax and uptake, plus a findings question when the text is given.

    A question is only asked when the list determines its answer: a per-lesion question names the lesion by
    type and location, and is skipped when two lesions share both; location-by-type only for a unique type.
    Deterministic in (lesions, region, findings, seed); `max_pairs` keeps a seeded subset (presence first).
    """
    where = _where(region)
    r = _seeded.rng(seed, "lesion-qa", region, len(lesions))

    def q(options: Sequence[str], **fields: str) -> str:
        return _seeded.pick(r, options).format(**fields)

    n = len(lesions)
    if n:
        listing = "; ".join(describe_lesion(les) for les in lesions)
        presence = f"Có. Ghi nhận {n} tổn thương {where}: {listing}."
    else:
        presence = f"Không. Chưa phát hiện hình ảnh bất thường {where}."
    out = [QAPair(q(_PRESENCE_Q, where=where), presence)]
    count = f"Có {n} tổn thương được ghi nhận {where}." if n else f"Không có tổn thương nào được ghi nhận {where}."
    out.append(QAPair(q(_COUNT_Q, where=where), count))
    avid = [fdg_avid(les) for les in lesions]
    if None not in avid:
        k = sum(avid)
        text = (f"Có {k} tổn thương tăng chuyển hóa FDG {where}." if k
                else f"Không có tổn thương nào tăng chuyển hóa FDG {where}.")
        out.append(QAPair(q(_AVID_COUNT_Q, where=where), text))
    suvs = [(suvmax_value(les), i) for i, les in enumerate(lesions) if suvmax_value(les) is not None and avid[i]]
    if suvs:
        top = max(suvs)
        if sum(1 for v, _ in suvs if v == top[0]) == 1 and is_stated(lesions[top[1]].location):
            hot = lesions[top[1]]
            out.append(QAPair(q(_HOTTEST_Q), f"Tổn thương có SUVmax cao nhất là {lesion_name(hot)} ở "
                                             f"{lesion_location(hot)}, với SUVmax {clean_value(hot.suvmax)}."))
    out += _per_lesion_pairs(lesions, avid, q)
    if findings and findings.strip():
        out.append(QAPair(q(_FINDINGS_Q, where=where), nfc(findings.strip())))
    if max_pairs is not None and len(out) > max_pairs:
        rest = _seeded.shuffled(r, range(1, len(out)))[:max(max_pairs - 1, 0)]
        out = [out[0]] + [out[i] for i in sorted(rest)] if max_pairs > 0 else []
    return out


def lesion_conversations(key: str, lesions: Sequence[Lesion], region: Optional[str] = None,
                         findings: Optional[str] = None, seed: int = 0, *, max_turns: int = 3,
                         max_pairs: Optional[int] = None, image: Optional[str] = None) -> list[dict]:
    """LLaVA records for one study/region from its lesions (`key` is the study key, e.g. "<study>/<region>")."""
    pairs = lesion_qa(lesions, region, findings, seed, max_pairs)
    return group_conversations({key: pairs}, seed, max_turns=max_turns,
                               image=(lambda k: image) if image is not None else (lambda k: k))

