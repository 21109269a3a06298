"""How generated Vietnamese text names a lesion: shared by generated VQA answers and comparison texts.

Values are quoted as the lesion states them (sizes, SUVmax with their own decimal mark, locations with their
sides); only the case of a sentence-initial word changes when it moves inside a sentence.
"""
from __future__ import annotations

from jaxpetct.text.lesion import Lesion
from jaxpetct.text.lesion_values import fdg_avid, is_stated
from jaxpetct.text.report import nfc


def lower_first(text: str) -> str:
    """Lower-cases a sentence-initial word but keeps acronyms and labels (FDG, D12, IIA)."""
    return text[:1].lower() + text[1:] if len(text) > 1 and not text[1].isupper() and not text[1].isdigit() else text


def upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def clean_value(value: str) -> str:
    """A value as written, without the surrounding blanks and trailing punctuation it may carry into a sentence."""
    return nfc(value).strip().rstrip(".;,: ")


def lesion_name(lesion: Lesion) -> str:
    """The lesion's type as a noun phrase ("hạch", "nốt mờ"); "tổn thương" when the type is not stated."""
    return lower_first(clean_value(lesion.type)) if is_stated(lesion.type) else "tổn thương"


def lesion_location(lesion: Lesion) -> str:
    return lower_first(clean_value(lesion.location))


def fdg_clause(lesion: Lesion) -> str:
    """'tăng chuyển hóa FDG với SUVmax x' / 'có tăng ...' / 'không tăng ...', or '' when uptake is unknown."""
    avid = fdg_avid(lesion)
    if avid and is_stated(lesion.suvmax):
        return f"tăng chuyển hóa FDG với SUVmax {clean_value(lesion.suvmax)}"
    return {True: "có tăng chuyển hóa FDG", False: "không tăng chuyển hóa FDG", None: ""}[avid]


def describe_lesion(lesion: Lesion, *, details: bool = True) -> str:
    """'<type> ở <location>, kích thước <size>, <FDG clause>' with only the stated parts."""
    parts = [lesion_name(lesion) + (f" ở {lesion_location(lesion)}" if is_stated(lesion.location) else "")]
    if details and is_stated(lesion.size):
        parts.append(f"kích thước {lower_first(clean_value(lesion.size))}")
    if details and fdg_clause(lesion):
        parts.append(fdg_clause(lesion))
    return ", ".join(parts)
