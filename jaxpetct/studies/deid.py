"""De-identification at ingest: salted pseudonyms and PHI scrubbing of free text.

Two layers protect free text (reports, error messages, file paths). First, every value that a study's own
headers declare as identifying (`known_values`: names, ids, birth dates, addresses, institutions) is removed
wherever it appears, matched without case or Vietnamese accents, so "NGUYEN^VAN^A" in a DICOM tag also removes
"Nguyễn Văn A" from a report and "NGUYEN_VAN_A" from a folder name. Second, patterns remove what no header
declared: names after honorifics or labels ("Bệnh nhân", "BN:", "Ông", "BS."), labelled ids ("Mã BN", "PID"),
full dates, phone numbers, e-mails, addresses and hospital names.

The patterns are deliberately narrow where clinical text lives: sizes ("12 x 14 mm"), decimal SUVs ("4,6"),
vertebrae ("L4"), lymph-node groups ("IIB"), fractions ("1/3") and month/year references to prior scans
("PET/CT 5/2017", "tháng 6/2019") are kept. Month/year granularity is already part of a study's pseudonymous
metadata (the temporal split key), so it adds no identifying power; a full day-month-year date does and is removed.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import unicodedata
from typing import Iterable, Optional

from jaxpetct.errors import UserError

NAME_TAG, ID_TAG, DATE_TAG, PHONE_TAG = "[NAME]", "[ID]", "[DATE]", "[PHONE]"
ADDRESS_TAG, EMAIL_TAG, INSTITUTION_TAG, PHI_TAG = "[ADDRESS]", "[EMAIL]", "[INSTITUTION]", "[PHI]"

PSEUDONYM_HEX_CHARS = 16  # 64 bits: collisions stay negligible for any hospital's archive


SALT_ENV = "JAXPETCT_SALT"
# The public salt of synthetic cohorts (README, tests, the demo): anyone can recompute its pseudonyms, so it is
# refused for real data. The only place this literal is written.
DEMO_SALT = "jaxpetct-synthetic-demo"


class SaltError(UserError, ValueError):
    """No usable pseudonym salt for real patient data."""


def resolve_salt(explicit: Optional[str] = None, *, synthetic: bool, where: str = "--salt") -> str:
    """The pseudonym salt of every entry point: `explicit` (a flag or config value), else $JAXPETCT_SALT, else, for
    synthetic data only, the public demo salt. Real data without a secret salt is refused: a public or empty salt
    makes patient and study ids recomputable from the records. `where` names the setting in the message."""
    salt = explicit or os.environ.get(SALT_ENV) or ""
    if synthetic:
        return salt or DEMO_SALT
    if not salt or salt == DEMO_SALT:
        raise SaltError(f"this is real patient data but the pseudonym salt is {'the public demo value' if salt else 'unset'}"
                        f": set ${SALT_ENV} or {where} to a secret of your own (keep it: the same salt gives the same "
                        f"pseudonyms across builds)")
    return salt


def is_synthetic_cohort(path: str) -> bool:
    """`path` is, or lies inside, a cohort written by `jaxpetct.studies.synthetic` (which leaves its ground truth,
    synthetic_truth.jsonl, at the root); anything else is treated as real patient data."""
    here = os.path.abspath(os.fspath(path))
    while True:
        if os.path.isfile(os.path.join(here, "synthetic_truth.jsonl")):
            return True
        parent = os.path.dirname(here)
        if parent == here:
            return False
        here = parent


def pseudonymize(identifier: str, salt: str) -> str:
    """HMAC-SHA256(salt, identifier), truncated: stable per salt, not reversible without the salt.

    An empty salt is refused: an unsalted hash of a patient or study id can be reversed by hashing candidates.
    """
    if not salt:
        raise ValueError("pseudonymize needs a non-empty salt (an unsalted hash of an identifier is reversible)")
    key = salt.encode("utf-8")
    msg = unicodedata.normalize("NFC", str(identifier)).strip(" \x00").encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]


# ---------------------------------------------------------------------------------------------- folding
def _fold_char(c: str) -> str:
    """One character without accents, lower case; keeps a 1:1 index map between text and its folded form."""
    if c in "đĐ":
        return "d"
    base = "".join(ch for ch in unicodedata.normalize("NFD", c) if not unicodedata.combining(ch)).lower()
    return base if len(base) == 1 else (c.lower() if len(c.lower()) == 1 else c)


def fold(text: str) -> str:
    return "".join(_fold_char(c) for c in text)


_SEP = r"[\s\^_,.\-]*"  # what may separate name components: spaces, DICOM '^', '_' in folder names...
_NOT_ALNUM_BEFORE = r"(?<![^\W_])"  # not preceded by a letter or digit ('_' counts as a separator)
_NOT_ALNUM_AFTER = r"(?![^\W_])"


def _date_variants(value: str) -> list[str]:
    """A DICOM DA (YYYYMMDD) as it may be typed in text: 12/03/1965, 12-3-1965, 1965-03-12..."""
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", value)
    if not m:
        return []
    y, mo, d = m.groups()
    out = []
    for dd in {d, str(int(d))}:
        for mm in {mo, str(int(mo))}:
            for sep in "/-.":
                out += [f"{dd}{sep}{mm}{sep}{y}", f"{y}{sep}{mm}{sep}{dd}"]
    return out


def _known_value_patterns(values: Iterable[str], name_parts: bool = False) -> list[str]:
    """Folded regexes for each identifying value; components may be re-ordered or re-separated.

    `name_parts` also matches each part of a person name on its own ("CANARYONE.dcm"): right for paths and
    messages, wrong for reports, where a given name such as "Bình" is also an ordinary word ("bình thường").
    """
    pats: set[str] = set()
    for raw in values:
        if raw is None:
            continue
        value = unicodedata.normalize("NFC", str(raw)).strip(" \x00")
        if len(re.sub(r"[\W_]", "", value)) < 3:  # too short to remove without destroying ordinary text
            continue
        variants = [value] + _date_variants(value)
        comps = [c for c in re.split(r"\^", value) if c.strip()]
        if len(comps) > 1:  # DICOM PN: Family^Given^Middle: also Vietnamese (family middle given) and given-first
            fam, rest = comps[0], comps[1:]
            variants += [" ".join(comps), " ".join([fam] + rest[1:] + rest[:1]), " ".join(rest + [fam])]
        if name_parts and "^" in value:  # a person name (PN values always carry a '^', see dicom_scan)
            variants += [t for c in comps for t in c.split() if len(re.sub(r"[\W_]", "", t)) >= 3]
        for v in variants:
            tokens = [re.escape(t) for t in re.split(r"[\s\^_,]+", fold(v)) if t]
            if tokens:
                pats.add(_SEP.join(tokens))
    # Longest first: alternation takes the first alternative that matches, so a full name wins over a part.
    return sorted(pats, key=lambda p: (-len(p), p))


class Scrubber:
    """`scrub_text` with its known values compiled once: one study's values scrub many paths and messages.

    Use `name_parts=True` for paths and messages (never for reports, see `_known_value_patterns`)."""

    def __init__(self, known_values: Iterable[str] = (), *, name_parts: bool = False):
        pats = _known_value_patterns(known_values, name_parts)
        self._known = (re.compile(_NOT_ALNUM_BEFORE + "(?:" + "|".join(pats) + ")" + _NOT_ALNUM_AFTER)
                       if pats else None)

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        if self._known is not None:
            spans = [m.span() for m in self._known.finditer(fold(text)) if m.end() > m.start()]
            for start, end in reversed(spans):
                text = text[:start] + PHI_TAG + text[end:]
        for pat, repl in _RULES:
            if repl == "name2":
                text = pat.sub(lambda m: _replace_name(m, single_allowed=False), text)
            elif repl == "name1":
                text = pat.sub(lambda m: _replace_name(m, single_allowed=True), text)
            else:
                text = pat.sub(repl, text)
        return text


@functools.lru_cache(maxsize=64)
def _cached_scrubber(values: frozenset) -> Scrubber:
    return Scrubber(values)


# ---------------------------------------------------------------------------------------------- patterns
def _letters(pred) -> str:
    chars = [chr(i) for i in list(range(0x41, 0x250)) + list(range(0x1E00, 0x1F00))]
    return "".join(re.escape(c) for c in chars if c.isalpha() and pred(c))


_UP, _LO = _letters(str.isupper), _letters(str.islower)
# Clinical tokens that are capitalised but never part of a name ("BN K phổi": K = cancer).
_STOP = {"K", "UT", "PET", "CT", "MRI", "FDG", "SUV", "SUVMAX", "TNM", "HU", "CLVT", "XQ", "PET/CT", "IV"}
_NAME_WORD = rf"(?:[{_UP}][{_LO}]*|[{_UP}]{{2,}})"
_NAME = rf"{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{1,5}}"
_SINGLE_NAME = rf"{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,5}}"

_HONORIFIC = (r"bệnh nhân|người bệnh|bác sĩ|bác sỹ|BSCKII|BSCKI|BS|BN|ông|bà|anh|chị|cô|chú|bác|cháu|ThS|TS|PGS|"
              r"GS|KTV|điều dưỡng|ĐD|Mrs|Mr|Ms|Miss|Dr|Patient")
_NAME_LABEL = r"họ và tên|họ tên|tên bệnh nhân|tên BN|tên|name|patient name|người đọc|người ký|bác sĩ đọc"
_ID_LABEL = (r"mã bệnh nhân|mã BN|mã số bệnh nhân|mã số|mã y tế|mã hồ sơ|mã lưu trữ|số hồ sơ|số bệnh án|số BA|SBA|"
             r"PID|MRN|patient ID|ID|số CCCD|CCCD|CMND|BHYT|số thẻ|accession|số phiếu|mã phiếu|số vào viện")
_PHONE_LABEL = r"SĐT|ĐT|DĐ|điện thoại|di động|tel|phone|mobile|hotline|fax"
_ADDRESS_LABEL = r"địa chỉ|đ/c|đc|address|trú tại|thường trú|tạm trú|nơi ở|quê quán"
_BIRTH_LABEL = r"sinh năm|năm sinh|ngày sinh|ngày tháng năm sinh|SN|NS|DOB|date of birth"
_MONTHS = r"january|february|march|april|may|june|july|august|september|october|november|december|" \
          r"jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"


def _ci(s: str) -> str:
    return f"(?i:{s})"


_D, _M = r"(?:0?[1-9]|[12]\d|3[01])", r"(?:0?[1-9]|1[0-2])"
_B, _A = r"(?<![\w,.])", r"(?![\w]|[,.]\d)"  # number boundaries: no decimals like "4,6" or "1.5"

_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+"), EMAIL_TAG),
    # Labelled phone numbers first: "SĐT: 0912 345 678", "Tel +84 24 3869 3731".
    (re.compile(rf"(?<!\w)({_ci(_PHONE_LABEL)})(\s*[:.]?\s*)\+?\d[\d .\-()]{{5,}}\d"), r"\1\2" + PHONE_TAG),
    (re.compile(rf"(?<!\w)({_ci(_BIRTH_LABEL)})(\s*[:.]?\s*)(?:{_D}[/.\-]{_M}[/.\-])?(?:19|20)\d\d{_A}"),
     r"\1\2" + DATE_TAG),
    (re.compile(rf"(?<!\w)({_ci(_ID_LABEL)})(?![^\W\d_])(\s*[:#.]?\s*(?:số\s*)?[:#]?\s*)(?=[\w\-/.]*\d)[A-Za-z0-9][\w\-/.]*\w"),
     r"\1\2" + ID_TAG),
    # Dates: "ngày 12 tháng 3 năm 2019", dd/mm/yyyy, yyyy-mm-dd, "ngày 12/3", "12 March 2019", "March 12, 2019".
    (re.compile(rf"(?i:ngày)\s+{_D}\s+(?i:tháng)\s+{_M}(?:\s*(?i:năm)\s+\d{{4}})?{_A}"), DATE_TAG),
    (re.compile(rf"{_B}{_D}/{_M}/(?:\d{{4}}|\d{{2}}){_A}"), DATE_TAG),
    (re.compile(rf"{_B}{_D}([.\-]){_M}\1\d{{4}}{_A}"), DATE_TAG),
    (re.compile(rf"{_B}(?:19|20)\d\d([/.\-]){_M}\1{_D}{_A}"), DATE_TAG),
    (re.compile(rf"(?<!\w)((?i:ngày))(\s+){_D}[/.\-]{_M}{_A}"), r"\1\2" + DATE_TAG),
    (re.compile(rf"{_B}{_D}\s+(?i:{_MONTHS})\.?,?\s+\d{{4}}{_A}"), DATE_TAG),
    (re.compile(rf"(?<!\w)(?i:{_MONTHS})\.?\s+{_D}(?:st|nd|rd|th)?,?\s+\d{{4}}{_A}"), DATE_TAG),
    # Unlabelled Vietnamese phone numbers: 0 or +84 then 8-10 digits in groups.
    (re.compile(rf"{_B}(?:\+84|0)(?:[ .\-]?\d){{8,10}}{_A}"), PHONE_TAG),
    # Names after honorifics / labels: at least two capitalised words, or one after an explicit name label.
    (re.compile(rf"(?<!\w)({_ci(_HONORIFIC)})(?=[.:\-\s])(\.?[ \t]*[:\-]?[ \t]*)({_NAME})(?!\w)"), "name2"),
    (re.compile(rf"(?<!\w)({_ci(_NAME_LABEL)})(\s*:[ \t]*)({_SINGLE_NAME})(?!\w)"), "name1"),
    (re.compile(rf"(?<!\w)({_ci(_ADDRESS_LABEL)})(\s*:?\s*)[^\n;]+?(?=\.\s|\.$|[\n;]|$)"), r"\1\2" + ADDRESS_TAG),
    (re.compile(r"(?<!\w)(?i:số nhà|ngõ|ngách|hẻm|kiệt)\s+\d+[\w/]*"), ADDRESS_TAG),
    (re.compile(rf"(?<!\w)(?i:phường|quận|huyện|thị xã|thị trấn|tỉnh|thành phố|thôn|xóm|ấp)\s+"
                rf"(?:\d+|{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,3}})(?!\w)"), ADDRESS_TAG),
    (re.compile(rf"(?<!\w)(?:TP\.?|Tp\.?)\s*(?:HCM\b|{_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,3}})"), ADDRESS_TAG),
    (re.compile(rf"(?<!\w)(?:(?i:bệnh viện|phòng khám|trung tâm y tế|hospital|clinic)|BV)\s+"
                rf"(?:{_NAME_WORD}|\d+)(?:[ \t]+(?:{_NAME_WORD}|\d+)){{0,4}}(?!\w)"), INSTITUTION_TAG),
    # Leftover long numbers and DICOM-style UIDs are identifiers, never measurements.
    (re.compile(r"(?<![\w.])\d+(?:\.\d+){3,}(?![\w.])"), ID_TAG),
    (re.compile(r"(?<![\w,.])[A-Za-z]{0,4}\d{6,}(?![\w]|[,.]\d)"), ID_TAG),
]


def _replace_name(m: re.Match, single_allowed: bool) -> str:
    """Replace the capitalised words after a label, stopping at the first clinical token ("BN K phổi")."""
    words = list(re.finditer(r"\S+", m.group(3)))
    kept = 0
    while kept < len(words) and words[kept].group().upper() not in _STOP:
        kept += 1
    if kept < (1 if single_allowed else 2):
        return m.group(0)
    return m.group(1) + m.group(2) + NAME_TAG + m.group(3)[words[kept - 1].end():]


def scrub_text(text: str, known_values: Iterable[str] = ()) -> str:
    """Remove identifying content from free text; returns NFC text (the form every comparison uses)."""
    return _cached_scrubber(frozenset(str(v) for v in known_values if v is not None))(text)
