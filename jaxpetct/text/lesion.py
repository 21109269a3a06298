"""The paper's lesion schema, shared by the synthetic cohort (ground truth), the extractor and clinical F1.

Keys in JSON are the release's Vietnamese keys; missing values are "Không có" ("none"), as in the release.
"""
from __future__ import annotations

import dataclasses
from typing import Any

SIZE_KEY = "Kích thước khối u, tổn thương, bất thường"
TYPE_KEY = "Hình dạng của khối u, tổn thương, bất thường"
LOCATION_KEY = "Vị trí của khối u, tổn thương, bất thường"
FDG_KEY = "Mức độ FDG"
SUVMAX_KEY = "SUVmax"
UPTAKE_KEY = "Tăng chuyển hoá FDG"
INVASION_KEY = "Xâm lấn"
STAGE_KEY = "Giai đoạn chuyển hoá"
NONE_VALUE = "Không có"


@dataclasses.dataclass(frozen=True)
class Lesion:
    size: str = NONE_VALUE  # e.g. "56 x 60 mm"
    type: str = NONE_VALUE  # e.g. "Hạch", "Nốt mờ", "Khối"
    location: str = NONE_VALUE  # e.g. "thùy trên phổi phải"
    suvmax: str = NONE_VALUE  # e.g. "12,5" (Vietnamese decimal comma kept as written)
    uptake: str = NONE_VALUE  # "Có tăng" / "Không tăng" / ...
    invasion: str = NONE_VALUE
    stage: str = NONE_VALUE

    def to_json(self) -> dict[str, Any]:
        return {
            SIZE_KEY: self.size,
            TYPE_KEY: self.type,
            LOCATION_KEY: self.location,
            FDG_KEY: {SUVMAX_KEY: self.suvmax, UPTAKE_KEY: self.uptake},
            INVASION_KEY: self.invasion,
            STAGE_KEY: self.stage,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Lesion":
        """Tolerates the spelling variants seen in the release (hoá/hóa, decomposed accents, missing keys)."""
        import unicodedata

        def norm(k: str) -> str:
            k = unicodedata.normalize("NFC", k).replace("hóa", "hoá").replace("Hóa", "Hoá")
            return k.strip().lower()

        flat = {norm(k): v for k, v in obj.items()}
        fdg = flat.get(norm(FDG_KEY)) or {}
        if not isinstance(fdg, dict):
            fdg = {}
        fdg = {norm(k): v for k, v in fdg.items()}

        def get(d: dict, key: str) -> str:
            v = d.get(norm(key), NONE_VALUE)
            return NONE_VALUE if v is None else str(v)

        return cls(
            size=get(flat, SIZE_KEY),
            type=get(flat, TYPE_KEY),
            location=get(flat, LOCATION_KEY),
            suvmax=get(fdg, SUVMAX_KEY),
            uptake=get(fdg, UPTAKE_KEY),
            invasion=get(flat, INVASION_KEY),
            stage=get(flat, STAGE_KEY),
        )
