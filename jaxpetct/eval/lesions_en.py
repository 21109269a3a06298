"""A deterministic English lesion extractor, the counterpart of `lesions` for the release's English reports.

It writes the same lesion schema, so clinical F1 (`clinical`) scores English and Vietnamese reports alike: type and
location are kept as written (English) and mapped to categories by the shared vocabulary (`lesion_vocab` with
`lesion_vocab_en`); uptake takes the schema's canonical values ("Có tăng", "Tăng nhẹ", "Không tăng", "Không có")
and SUVmax the number as written. The rules mirror the Vietnamese extractor's, one sentence at a time:

- not lesions: physiological or urinary activity, brown fat, diffuse fatty liver; recommendations ("...
  correlation is advised", "follow-up"); text from a negation cue on ("No ...", "no evidence of", "not seen",
  "not identified", "without evidence of");
- a lesion: a clause with a lesion head (lymph node, nodule, mass, cyst, lytic lesion, ...) or a focal FDG uptake;
  type = the head phrase (articles and "There is" dropped) up to its location, size or uptake; location = the
  "in/at/along/of ..." phrase after it; size = the first "A x B mm"; SUVmax = the first SUV number;
- "without increased FDG uptake" / "not FDG-avid" is a non-avid lesion, not a negation of the lesion;
- the impression repeats findings: a lesion of the same type category with the same location words is merged
  into the earlier one.
"""
from __future__ import annotations

import dataclasses
import re

from jaxpetct.eval.lesion_vocab import find_type_head, type_category
from jaxpetct.text.lesion import NONE_VALUE, Lesion
from jaxpetct.text.report import nfc

_SENTENCE = re.compile(r"(?<=[.;:])\s+(?=[A-Z(])|\n+")
_SKIP = re.compile(r"physiologic|urinary|brown fat|fatty liver|correlation is advised|follow[- ]up|is recommended")
# "No ..." opening a sentence negates what follows; "no/without (increased) FDG uptake" later on is an uptake.
_NEGATION = re.compile(r"^(?:there (?:is|are) )?no\b|\b(?:no|without) evidence of\b|\bnot (?:seen|identified|detected)\b")
_LEAD = re.compile(r"^(?:there (?:is|are)\s+)?(?:(?:a|an|the|one|two|several|multiple)\s+)?")
_TYPE_END = re.compile(r",|;|\(|\.(?!\d)|\s(?:in|at|along|of|within|involving)\s|\s(?:measuring|with|without)\s|"
                       r"\s\d+(?:\.\d+)?(?:\s*x\s*\d+(?:\.\d+)?)*\s*(?:mm|cm)\b")
_LOC = re.compile(r"\s(?:in|at|along|of|within|involving)\s+(?:the\s+)?(.+?)(?=,|;|\(|:|\.(?!\d)|\s(?:measuring|with|"
                  r"without|and a|and an)\s|$)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?(?:\s*x\s*\d+(?:\.\d+)?)*)\s*(mm|cm)\b")
_SUV = re.compile(r"suv\s*max\s*(?:of\s+)?:?\s*(\d+(?:[.,]\d+)?)")
_SPLIT = re.compile(r",?\s+and\s+(?=(?:a|an)\s+(?:lymph node|node|nodule|mass|cyst|lesion)\b)")


def _uptake(low: str) -> str:
    if re.search(r"without (?:increased )?fdg|not fdg[- ]avid|no (?:increased )?fdg uptake|non[- ]avid", low):
        return "Không tăng"
    if re.search(r"mild(?:ly)? increased|slightly increased|low[- ]grade", low):
        return "Tăng nhẹ"
    if re.search(r"increased fdg|fdg[- ]avid|hypermetabolic|intense|suv", low):
        return "Có tăng"
    return NONE_VALUE


def _lesion(clause: str) -> Lesion | None:
    low = nfc(clause).lower().strip()
    head = find_type_head(low)
    if head is None:
        return None
    start = _LEAD.match(low[: head[1]]).end() if _LEAD.match(low[: head[1]]) else head[1]
    start = min(start, head[1])
    end = _TYPE_END.search(low, head[2])
    type_text = clause.strip()[start: end.start() if end else len(low)].strip(" ,")
    loc = _LOC.search(low, head[2])
    size = _SIZE.search(low)
    suv = _SUV.search(low)
    location = clause.strip()[loc.start(1): loc.end(1)].strip() if loc else NONE_VALUE
    return Lesion(size=f"{size.group(1)} {size.group(2)}" if size else NONE_VALUE, type=type_text or head[0],
                  location=location, suvmax=suv.group(1) if suv else NONE_VALUE, uptake=_uptake(low),
                  invasion=NONE_VALUE, stage=NONE_VALUE)


def _words(location: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", location.lower())) - {"the", "of", "in", "and", "a", "an"}


def _same(a: Lesion, b: Lesion) -> bool:
    """The impression's repeat of a finding: same type category and the same location words (two nodules in the
    left upper and the left lower lobe are two lesions)."""
    return type_category(a.type) == type_category(b.type) and _words(a.location) == _words(b.location)


def _merged(a: Lesion, b: Lesion) -> Lesion:
    fill = {f.name: getattr(b, f.name) for f in dataclasses.fields(a) if getattr(a, f.name) in ("", NONE_VALUE)}
    return dataclasses.replace(a, **fill)


def extract_lesions_en(report: str) -> list[Lesion]:
    """The lesions of an English report, in order of first mention."""
    out: list[Lesion] = []
    for sentence in _SENTENCE.split(nfc(report or "")):
        low = sentence.strip().lower()
        if not sentence.strip() or _SKIP.search(low):
            continue
        cue = _NEGATION.search(low)
        kept = sentence.strip()[: cue.start()] if cue else sentence.strip()
        for clause in _SPLIT.split(kept):
            lesion = _lesion(clause)
            if lesion is None:
                continue
            same = next((k for k, prev in enumerate(out) if _same(prev, lesion)), None)
            if same is None:
                out.append(lesion)
            else:
                out[same] = _merged(out[same], lesion)
    return out


def extractor_for(language: str):
    """The lesion extractor of a report language ("vi": `lesions.extract_lesions`, "en": this module's)."""
    if language == "en":
        return extract_lesions_en
    if language == "vi":
        from jaxpetct.eval.lesions import extract_lesions

        return extract_lesions
    raise ValueError(f"report language {language!r}; use 'vi' or 'en'")
