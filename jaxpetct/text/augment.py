"""The paper's text augmentations, offline and deterministic: G (fact-preserving paraphrase) and C (comparison).

G: the paper asked an LLM for paraphrases that keep every clinical fact. Here a curated table of interchangeable
Vietnamese report phrases is applied, and findings are reordered within a section; no phrase of the table holds
a number, a side (trái/phải/hai bên), a unit or an anatomical word, and numbers are never matched, so sizes,
SUVmax values, laterality and locations come out exactly as they went in (tested on the real reports). A
sentence that does not open a new finding (a recommendation, "Hạch lớn nhất ...") moves with the one before it.

C: a "study comparison" pair shows two studies' volumes side by side with a text of their differences; the text
is built here from both studies' lesion lists (new, resolved, size and SUVmax changes by location), so both sides
are explicit arguments (the reference code's pairing used the first volume twice).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Literal, Mapping, Optional, Sequence, Union

from jaxpetct.text import _seeded
from jaxpetct.text.lesion import Lesion
from jaxpetct.text.lesion_values import fdg_avid, is_stated, size_mm, suvmax_value
from jaxpetct.text.prompts import REGION_PHRASES, Message, comparison_instruction, image_turn, region_section
from jaxpetct.text.report import SECTIONS, Report, nfc
from jaxpetct.text.phrasing import clean_value, describe_lesion, lower_first, upper_first

# Interchangeable phrases (any member may replace any other). Matching ignores case and hóa/hoá spelling.
PHRASE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("chưa phát hiện", "không phát hiện", "chưa ghi nhận"),
    ("bắt xạ theo đặc điểm sinh lý", "bắt xạ sinh lý"),
    ("theo đặc điểm sinh lý", "phù hợp với đặc điểm sinh lý"),
    ("khả năng do", "có thể do"),
    ("cần đối chiếu với", "đề nghị đối chiếu với", "nên đối chiếu với"),
    ("cần lưu ý theo dõi", "nên lưu ý theo dõi", "cần theo dõi thêm"),
    ("tăng nhẹ chuyển hóa FDG", "tăng chuyển hóa FDG mức độ nhẹ"),
    ("khu trú, bất thường", "bất thường, khu trú"),
    ("tổn thương", "thương tổn"),
    ("tỉ trọng", "tỷ trọng"),
)
# Only at the start of a sentence ("hình ảnh" inside a sentence is part of another phrase).
SENTENCE_START_GROUPS: tuple[tuple[str, ...], ...] = (("Hình ảnh", "Ghi nhận hình ảnh", "Có hình ảnh"),)
# Openers of an independent finding; any other sentence stays attached to the one before it when reordering.
FINDING_OPENERS = ("hình ảnh", "ghi nhận hình ảnh", "có hình ảnh", "chưa phát hiện", "không phát hiện",
                   "chưa ghi nhận", "tăng nhẹ chuyển hóa", "tăng chuyển hóa")


def _fold(text: str) -> str:
    return nfc(text).lower().replace("hoá", "hóa")


def _phrase_pattern(phrase: str) -> str:
    return re.escape(_fold(phrase)).replace("hóa", "h(?:óa|oá)")


def _table(groups, anchored: bool):
    lookup = {_fold(p): g for g in groups for p in g}
    alternation = "|".join(_phrase_pattern(p) for p in sorted(lookup, key=len, reverse=True))
    head = r"^" if anchored else r"(?<!\w)"
    return re.compile(f"{head}(?:{alternation})(?!\\w)", re.IGNORECASE), lookup


_ANYWHERE = _table(PHRASE_GROUPS, anchored=False)
_AT_START = _table(SENTENCE_START_GROUPS, anchored=True)


def _substitute(sentence: str, table, r, p: float) -> str:
    pattern, lookup = table

    def repl(m: re.Match) -> str:
        group = lookup[_fold(m.group())]
        if r.random() >= p:
            return m.group()
        others = [g for g in group if _fold(g) != _fold(m.group())]
        new = _seeded.pick(r, others)
        return upper_first(new) if m.group()[:1].isupper() else lower_first(new)

    return pattern.sub(repl, sentence)


def split_sentences(text: str) -> tuple[list[str], list[str]]:
    """Sentences and the whitespace between them; a break needs ".!?", whitespace, then a non-lowercase letter."""
    parts = re.split(r"(?<=[.!?])(\s+)", text.strip())
    sentences, seps = [parts[0]], []
    for sep, s in zip(parts[1::2], parts[2::2]):
        if s[:1].islower():
            sentences[-1] += sep + s
        else:
            seps.append(sep)
            sentences.append(s)
    return sentences, seps


def paraphrase(text: str, seed: int, *, p_substitute: float = 0.5, reorder: bool = True, salt: str = "") -> str:
    """A fact-preserving variant of one report section; deterministic in (text, seed, salt)."""
    text = nfc(text)
    if not text.strip():
        return text
    r = _seeded.rng(seed, "paraphrase", salt, text)
    sentences, seps = split_sentences(text)
    groups: list[list[str]] = []
    for s in sentences:
        if not groups or _fold(s).startswith(FINDING_OPENERS):
            groups.append([s])
        else:
            groups[-1].append(s)
    if reorder:
        groups = _seeded.shuffled(r, groups)
    out = [_substitute(_substitute(s, _AT_START, r, p_substitute), _ANYWHERE, r, p_substitute)
           for g in groups for s in g]
    return "".join(s + sep for s, sep in zip(out, seps + [""]))


def paraphrase_report(report: Report, seed: int, **kw) -> Report:
    """Every findings section and the impression paraphrased on their own (never mixed across sections)."""
    findings = {k: paraphrase(v, seed, salt=k, **kw) for k, v in report.findings.items()}
    return Report(impression=paraphrase(report.impression, seed, salt="impression", **kw), findings=findings)


def paraphrases(text: str, n: int, seed: int, **kw) -> list[str]:
    """Up to n distinct variants that differ from the text (fewer when the text offers little to vary)."""
    seen, out = {nfc(text)}, []
    for attempt in range(4 * n):
        v = paraphrase(text, seed * 1_000_003 + attempt, **kw)
        if v not in seen:
            seen.add(v)
            out.append(v)
            if len(out) == n:
                break
    return out


# --- C: study comparison -----------------------------------------------------------------------------------

Lesions = Union[Mapping[Optional[str], Sequence[Lesion]], Sequence[Lesion]]


@dataclasses.dataclass(frozen=True)
class LesionChange:
    kind: Literal["new", "resolved", "changed", "unchanged"]
    region: Optional[str]  # report section, None for a whole-study list
    prior: Optional[Lesion]
    current: Optional[Lesion]


def _by_region(lesions: Lesions) -> dict[Optional[str], list[Lesion]]:
    if isinstance(lesions, Mapping):
        return {region_section(k): list(v) for k, v in lesions.items()}
    return {None: list(lesions)}


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s/]", " ", _fold(text)).split())


def diff_lesions(prior: Lesions, current: Lesions) -> list[LesionChange]:
    """Lesions matched one-to-one by region and location (same type preferred); the rest are new or resolved.

    Locations must agree after normalisation (case, accents' composition, punctuation): a lesion described at a
    differently worded location is reported as resolved plus new rather than guessed to be the same.
    """
    before, after = _by_region(prior), _by_region(current)
    order = [None, *SECTIONS]
    regions = sorted(set(before) | set(after), key=lambda k: order.index(k) if k in order else len(order))
    out: list[LesionChange] = []
    for region in regions:
        left, right = before.get(region, []), list(after.get(region, []))
        free = list(range(len(right)))
        for les in left:
            same_loc = [j for j in free if _norm(right[j].location) == _norm(les.location) and is_stated(les.location)]
            same_type = [j for j in same_loc if _norm(right[j].type) == _norm(les.type)]
            j = (same_type or same_loc or [None])[0]
            if j is None:
                out.append(LesionChange("resolved", region, les, None))
                continue
            free.remove(j)
            kind = "changed" if change_details(les, right[j]) else "unchanged"
            out.append(LesionChange(kind, region, les, right[j]))
        out += [LesionChange("new", region, None, right[j]) for j in free]
    return out


def _trend(label: str, a: str, b: str, va: Optional[float], vb: Optional[float]) -> Optional[str]:
    """'<label> tăng từ a lên b' / 'giảm từ a xuống b', quoting both values as written; None when equal."""
    if va is not None and vb is not None:
        if va == vb:
            return None
        up = vb > va
        return f"{label} {'tăng' if up else 'giảm'} từ {a} {'lên' if up else 'xuống'} {b}"
    if is_stated(a) and is_stated(b):
        return None if _norm(a) == _norm(b) else f"{label} thay đổi từ {a} thành {b}"
    if is_stated(a) != is_stated(b):
        was, now = (v if is_stated(v) else "không ghi nhận" for v in (a, b))
        return f"{label} trước đây {was}, nay {now}"
    return None


def change_details(prior: Lesion, current: Lesion) -> list[str]:
    """What differs between two matched lesions (size, SUVmax, uptake); empty when nothing stated differs.

    An uptake known on one side only is not called a change: the text must not claim what was not stated.
    """
    parts = [_trend("kích thước", lower_first(clean_value(prior.size)), lower_first(clean_value(current.size)),
                    size_mm(prior), size_mm(current)),
             _trend("SUVmax", clean_value(prior.suvmax), clean_value(current.suvmax),
                    suvmax_value(prior), suvmax_value(current))]
    before, after = fdg_avid(prior), fdg_avid(current)
    if before is not None and after is not None and before != after:
        parts.append("chuyển từ không tăng sang tăng chuyển hóa FDG" if after
                     else "chuyển từ tăng sang không tăng chuyển hóa FDG")
    return [p for p in parts if p]


def comparison_text(prior: Lesions, current: Lesions, *, prior_label: str = "lần chụp trước") -> str:
    """Vietnamese text of what changed from the prior study to the current one (the paper's "C" target)."""
    changes = diff_lesions(prior, current)
    count = {k: sum(c.kind == k for c in changes) for k in ("new", "resolved", "changed", "unchanged")}
    if not changes:
        return f"Không ghi nhận tổn thương ở cả hai lần chụp; không có thay đổi so với {prior_label}."
    if count["unchanged"] == len(changes):
        return f"Không có thay đổi so với {prior_label}: {len(changes)} tổn thương không thay đổi."
    lines = [f"So với {prior_label}: {count['new']} tổn thương mới, {count['resolved']} tổn thương không còn thấy, "
             f"{count['changed']} tổn thương thay đổi, {count['unchanged']} tổn thương không thay đổi."]
    for region in dict.fromkeys(c.region for c in changes):
        said = []
        for c in (c for c in changes if c.region == region):
            if c.kind == "new":
                said.append(f"Xuất hiện mới {describe_lesion(c.current)}.")
            elif c.kind == "resolved":
                said.append(f"Không còn thấy {describe_lesion(c.prior)}.")
            elif c.kind == "changed":
                name = upper_first(describe_lesion(c.current, details=False))
                said.append(f"{name}: {', '.join(change_details(c.prior, c.current))}.")
        stable = [describe_lesion(c.current, details=False)
                  for c in changes if c.region == region and c.kind == "unchanged"]
        if stable:
            said.append(f"Không thay đổi: {'; '.join(stable)}.")
        if said:
            lead = f"{upper_first(REGION_PHRASES[region])}: " if region is not None else ""
            lines.append(lead + " ".join(said))
    return " ".join(lines)


def comparison_messages(prior: Lesions, current: Lesions, seed: Optional[int] = None, *,
                        prior_label: str = "lần chụp trước") -> list[Message]:
    """The "C" training conversation: one image turn and the difference text as the answer. The pipeline fills
    that image with both studies' volumes, prior first, concatenated along depth (the paper's 70 + 70 slices)."""
    return [Message("user", image_turn(comparison_instruction(seed))),
            Message("assistant", comparison_text(prior, current, prior_label=prior_label))]
