"""Vietnamese PET/CT report structure: an impression plus findings per body region.

The release stores each report as JSON {"Nhận định kết quả": impression, "Mô tả hình ảnh": {region: text}};
the regional findings are what each anatomical region of the volume is paired with for training.
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata

IMPRESSION_KEY = "Nhận định kết quả"
FINDINGS_KEY = "Mô tả hình ảnh"
HEAD_NECK = "Đầu - cổ"
CHEST = "Lồng ngực"
ABDOMEN_PELVIS = "Ổ bụng - khung chậu"
MUSCULOSKELETAL = "Hệ cơ - xương"
SECTIONS = (HEAD_NECK, CHEST, ABDOMEN_PELVIS, MUSCULOSKELETAL)

# English keys used by the release's reports_en/ translations.
EN_IMPRESSION_KEY = "Impression"
EN_FINDINGS_KEY = "Findings"


def nfc(text: str) -> str:
    """Vietnamese text arrives in both composed and decomposed Unicode; every comparison happens in NFC."""
    return unicodedata.normalize("NFC", text)


# JSON may escape a lone UTF-16 surrogate ("\ud800"): valid JSON, but not text -- it cannot be written as UTF-8,
# so it would crash the record writer far from the file it came from. NUL ends strings in C consumers.
_NOT_TEXT = re.compile("[\ud800-\udfff\x00]")


def checked_text(text: str, what: str) -> str:
    """`text` unchanged, or ValueError naming `what` and the character's position and code (never the content)."""
    bad = _NOT_TEXT.search(text)
    if bad is not None:
        kind = "a NUL character" if bad.group() == "\x00" else f"a lone surrogate (U+{ord(bad.group()):04X})"
        raise ValueError(f"{what}: character {bad.start() + 1} is {kind}, not Unicode text")
    return text


@dataclasses.dataclass(frozen=True)
class Report:
    impression: str
    findings: dict[str, str]  # section name (one of SECTIONS, or the English equivalent) -> text

    def full_text(self) -> str:
        """Findings in section order, then the impression: the layout of the release's joined reports."""
        parts = [self.findings[s] for s in self.findings if self.findings[s].strip()]
        if self.impression.strip():
            parts.append(self.impression)
        return " ".join(p.strip() for p in parts)


# --- JSON form of the release's report files (reports/*.json, reports_en/*.json) -------------------------------
# English section names written by our own tools; the reader also accepts common spellings (the public release's
# exact English keys are not documented), matched after dropping case, accents, spaces and punctuation.
EN_SECTIONS = {
    HEAD_NECK: "Head - Neck",
    CHEST: "Chest",
    ABDOMEN_PELVIS: "Abdomen - Pelvis",
    MUSCULOSKELETAL: "Musculoskeletal",
}


def _squash(key: str) -> str:
    base = unicodedata.normalize("NFKD", nfc(key).replace("đ", "d").replace("Đ", "D"))
    return "".join(c for c in base.lower() if c.isalnum())


_KEY_ALIASES = {
    _squash(IMPRESSION_KEY): "impression",
    _squash(EN_IMPRESSION_KEY): "impression",
    _squash("Conclusion"): "impression",
    _squash(FINDINGS_KEY): "findings",
    _squash(EN_FINDINGS_KEY): "findings",
    _squash("Image description"): "findings",
}
_SECTION_ALIASES = {_squash(s): s for s in SECTIONS}
_SECTION_ALIASES.update({_squash(v): k for k, v in EN_SECTIONS.items()})
_SECTION_ALIASES.update({
    _squash("Head and neck"): HEAD_NECK,
    _squash("Thorax"): CHEST,
    _squash("Abdomen and pelvis"): ABDOMEN_PELVIS,
    _squash("Musculoskeletal system"): MUSCULOSKELETAL,
    _squash("Bones and muscles"): MUSCULOSKELETAL,
})


def report_from_json(obj: object) -> Report:
    """Parse one release report (Vietnamese or English keys) into a `Report` keyed by the canonical SECTIONS.

    Raises ValueError with the reason when the object does not follow the schema: a top-level object with an
    impression string and a findings object whose values are strings and whose keys are the four regions.
    Missing regions become empty strings (some reports omit a region with nothing to say).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"report is a {type(obj).__name__}, expected an object")
    parts: dict[str, object] = {}
    # Messages name keys by position, never by content: a damaged file might carry anything in a key.
    for i, (key, value) in enumerate(obj.items()):
        role = _KEY_ALIASES.get(_squash(str(key)))
        if role is None:
            raise ValueError(f"report key #{i + 1} is neither the impression nor the findings")
        if role in parts:
            raise ValueError(f"report key {role} given twice")
        parts[role] = value
    for role in ("impression", "findings"):
        if role not in parts:
            raise ValueError(f"report has no {role}")
    impression, findings_obj = parts["impression"], parts["findings"]
    if not isinstance(impression, str):
        raise ValueError(f"impression is a {type(impression).__name__}, expected a string")
    checked_text(impression, "impression")
    if not isinstance(findings_obj, dict):
        raise ValueError(f"findings is a {type(findings_obj).__name__}, expected an object")
    findings = {s: "" for s in SECTIONS}
    seen: set[str] = set()
    for i, (key, text) in enumerate(findings_obj.items()):
        section = _SECTION_ALIASES.get(_squash(str(key)))
        if section is None:
            raise ValueError(f"findings key #{i + 1} is not one of the four regions")
        if section in seen:
            raise ValueError(f"findings section {section} given twice")
        if not isinstance(text, str):
            raise ValueError(f"findings section {section} is a {type(text).__name__}, expected a string")
        checked_text(text, f"findings section {section}")
        seen.add(section)
        findings[section] = nfc(text)
    return Report(impression=nfc(impression), findings=findings)


def report_to_json(report: Report, *, english: bool = False) -> dict:
    """The release's JSON form; `english` writes the reports_en/ keys (EN_* names)."""
    if english:
        return {
            EN_IMPRESSION_KEY: report.impression,
            EN_FINDINGS_KEY: {EN_SECTIONS[s]: report.findings.get(s, "") for s in SECTIONS},
        }
    return {IMPRESSION_KEY: report.impression, FINDINGS_KEY: {s: report.findings.get(s, "") for s in SECTIONS}}
