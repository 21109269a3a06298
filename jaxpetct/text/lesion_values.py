"""Reading the free-text values of a `Lesion` (size, SUVmax, uptake) as numbers and booleans.

The release writes values the way radiologists do: "56 x 60 mm", "Vài mm", "2 cm", SUVmax "12,5" or "10 và 8.7",
uptake "Có tăng"/"Cao"/"Không tăng"/"Không đều". Questions and comparison texts are generated from these
values, so every reading is conservative: anything not clearly stated is None (unknown), never a guess.
Texts quote the values as written; the numbers are only used to decide (larger? avid? which is highest?).
"""
from __future__ import annotations

import re
from typing import Optional

from jaxpetct.text.lesion import NONE_VALUE, Lesion
from jaxpetct.text.report import nfc

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_UNKNOWN = {"", nfc(NONE_VALUE).lower(), "không rõ", "không xác định", "none", "null", "n/a"}


def is_stated(value: Optional[str]) -> bool:
    return value is not None and nfc(str(value)).strip().lower() not in _UNKNOWN


def _numbers(text: str) -> list[float]:
    return [float(m.group().replace(",", ".")) for m in _NUMBER.finditer(nfc(text))]


def suvmax_value(lesion: Lesion) -> Optional[float]:
    """The highest SUVmax written for the lesion ("10 và 8.7" -> 10.0); None when not stated."""
    if not is_stated(lesion.suvmax):
        return None
    values = _numbers(lesion.suvmax)
    return max(values) if values else None


def size_mm(lesion: Lesion) -> Optional[float]:
    """The largest dimension in mm ("41 x 25 mm" -> 41, "2 cm" -> 20); None for "vài mm" or no size."""
    if not is_stated(lesion.size):
        return None
    text = nfc(lesion.size).lower()
    values = _numbers(text)
    if not values:
        return None
    scale = 10.0 if re.search(r"\bcm\b", text) else 1.0
    return max(values) * scale


def fdg_avid(lesion: Lesion) -> Optional[bool]:
    """Whether the lesion takes up FDG: from the uptake text, else from a stated SUVmax; None when unknown.

    "Không đều" (irregular) is uptake, not its absence; "Không có" is the release's "not stated".
    """
    text = nfc(lesion.uptake).strip().lower()
    if is_stated(text):
        if text == "không" or text.startswith("không tăng"):
            return False
        if any(w in text for w in ("tăng", "cao", "có", "nhẹ", "đều", "ít", "mạnh")):
            return True
        return None
    suv = suvmax_value(lesion)
    return None if suv is None else suv > 0
