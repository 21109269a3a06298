"""Vietnamese PET/CT report structure: an impression plus findings per body region.

The release stores each report as JSON {"Nhận định kết quả": impression, "Mô tả hình ảnh": {region: text}};
the regional findings are what each anatomical region of the volume is paired with for training.
"""
from __future__ import annotations

import dataclasses
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
