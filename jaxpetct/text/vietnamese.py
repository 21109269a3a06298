"""Vietnamese text normalisation and the tokenisation every text metric in jaxpetct uses.

Why a module of its own: the paper never says how it tokenised Vietnamese for BLEU/ROUGE, and the common
reproductions feed Vietnamese to rouge-score's default tokenizer, which keeps only [a-z0-9] and so deletes
every accented letter ("hạch" and "học" both become "h ch"). Every number we report is computed on the
tokens defined here, so it can be re-derived exactly by anyone with this file.

The metric tokenisation (`tokenize`), in order:
  1. Unicode NFC (reports arrive both composed and decomposed).
  2. Tone-placement normalisation (`normalize_tone_placement`): "hóa"/"hoá", "thủy"/"thuỷ" are two correct
     spellings of one syllable (old vs new orthography); both become the new style (tone on the main vowel,
     as in the release's own key "Tăng chuyển hoá FDG"), so no metric rewards or punishes a spelling habit.
  3. Sizes: "12x14mm", "12 × 14 mm" and "12 x 14 mm" all become the tokens "12", "x", "14", "mm"; a number glued
     to a unit ("10mm") is split from it ("10", "mm"), because reports write both.
  4. Tokens are decimal numbers with a comma or point kept whole ("4,6", "15,5", "1.000"), runs of word
     characters (a Vietnamese syllable, an abbreviation such as "FDG", "SUVmax", "IIB", "L3"), or one
     punctuation character. Syllables are separated by whitespace in Vietnamese, so a token is a syllable,
     not a word, unless word segmentation is asked for (step 6).
  5. Lower-casing (default on: sentence-initial capitals carry no clinical content).
  6. Optional word segmentation (`segment=True`): syllables of one word are joined with "_" by pyvi's CRF
     model, which ships inside the pyvi wheel (works offline). Without pyvi installed it raises
     `WordSegmentationUnavailable`; nothing is downloaded.
  7. Punctuation: `"split"` (default) keeps each punctuation mark as its own token, the convention of
     sacrebleu's 13a tokenizer; `"drop"` removes them. BLEU, ROUGE, METEOR and CIDEr-D all use the same
     choice, so their numbers describe the same token sequences.

Accent folding (`fold_accents`) is not part of the metric tokenisation (it would merge distinct words such as
"cổ" (neck) and "cơ" (muscle)); it is used for loose matching of short category values ("Có tăng" vs "co tang").
"""
from __future__ import annotations

import functools
import re
import unicodedata
from typing import Literal, Sequence

from jaxpetct.text.report import nfc

Punctuation = Literal["split", "drop"]

_TONE_MARKS = "\u0300\u0301\u0303\u0309\u0323"  # grave, acute, tilde, hook above, dot below
# In NFD an unmodified o/u followed directly by a tone mark, then a bare a/e (after o) or y (after u) that ends
# the syllable: the old-style placement. "qu" is a consonant cluster, so "quý" is never moved.
_OLD_TONE_RE = re.compile(
    rf"(?<![qQ])([oO])([{_TONE_MARKS}])([aAeE])(?![^\W\d_])(?![\u0300-\u036f])"
    rf"|(?<![qQ])([uU])([{_TONE_MARKS}])([yY])(?![^\W\d_])(?![\u0300-\u036f])"
)
_SIZE_X_RE = re.compile(r"(?<=\d)\s*[x×X]\s*(?=\d)")
_GLUED_UNIT_RE = re.compile(r"(?<=\d)(mm|cm|ml|mbq|mci|kg)\b", re.IGNORECASE)
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)+|\w+|[^\w\s]")
_PUNCT_TOKEN_RE = re.compile(r"^[^\w\s]$")
# Sentence ends: . ! ? followed by space; line breaks; and the report's own sentence openers when a period was
# forgotten ("... do viêm Hình ảnh vài hạch ..."), which happens in the release.
_SENTENCE_OPENERS = ("Hình ảnh", "Chưa phát hiện", "Không phát hiện", "Cần đối chiếu", "Đối chiếu", "Cần lưu ý")
_SENTENCE_SPLIT_RE = re.compile(
    r"(?<=[.!?;])\s+|\s*\n+\s*|[\s,]+(?=(?:" + "|".join(_SENTENCE_OPENERS) + r")\b)"
)


class WordSegmentationUnavailable(RuntimeError):
    """Word segmentation was asked for but pyvi (the offline Vietnamese segmenter) is not installed."""


def normalize_tone_placement(text: str) -> str:
    """Old-style tone placement ("hóa", "thủy", "khỏe") -> new style ("hoá", "thuỷ", "khoẻ"); NFC out."""
    decomposed = unicodedata.normalize("NFD", text)

    def move(m: re.Match) -> str:
        if m.group(1) is not None:
            return m.group(1) + m.group(3) + m.group(2)
        return m.group(4) + m.group(6) + m.group(5)

    return unicodedata.normalize("NFC", _OLD_TONE_RE.sub(move, decomposed))


def fold_accents(text: str) -> str:
    """Remove every diacritic (tone and vowel marks) and map đ/Đ to d/D: "Có tăng" -> "Co tang"."""
    decomposed = unicodedata.normalize("NFD", text)
    stripped = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    return unicodedata.normalize("NFC", stripped.replace("đ", "d").replace("Đ", "D"))


def normalize_for_matching(text: str, *, fold: bool = False) -> str:
    """The key used to compare short values: NFC, new-style tones, lower case, single spaces, optionally folded."""
    out = normalize_tone_placement(nfc(text)).lower()
    if fold:
        out = fold_accents(out)
    return " ".join(out.split())


def split_sentences(text: str) -> list[str]:
    """Sentences of a report, in order, without empty pieces; periods inside numbers ("4.7") never split."""
    text = nfc(text)
    return [s.strip() for s in _SENTENCE_SPLIT_RE.split(text) if s and s.strip()]


def _syllables(text: str) -> list[str]:
    text = normalize_tone_placement(nfc(text))
    text = _SIZE_X_RE.sub(" x ", text)
    text = _GLUED_UNIT_RE.sub(r" \1", text)
    return _TOKEN_RE.findall(text)


def tokenize(
    text: str,
    *,
    lowercase: bool = True,
    punctuation: Punctuation = "split",
    segment: bool = False,
) -> list[str]:
    """The metric tokens of `text` (see the module docstring for the exact rules)."""
    if punctuation not in ("split", "drop"):
        raise ValueError(f"punctuation must be 'split' or 'drop', got {punctuation!r}")
    tokens = _syllables(text)
    if segment:
        tokens = segment_words(tokens)
    if lowercase:
        tokens = [t.lower() for t in tokens]
    if punctuation == "drop":
        tokens = [t for t in tokens if not _PUNCT_TOKEN_RE.match(t)]
    return tokens


@functools.lru_cache(maxsize=1)
def _pyvi_tokenizer():
    try:
        from pyvi.ViTokenizer import ViTokenizer  # noqa: PLC0415  (optional dependency, loaded only when asked for)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise WordSegmentationUnavailable(
            "word segmentation needs pyvi (pip install 'jaxpetct[vi-seg]'); its CRF model ships in the wheel"
        ) from e
    return ViTokenizer


def segment_words(syllables: Sequence[str]) -> list[str]:
    """Join the syllables of multi-syllable words with "_" ("hình", "ảnh" -> "hình_ảnh") using pyvi's CRF.

    The CRF sees our syllable tokens directly (not pyvi's own splitter), so numbers such as "8,7" and the
    punctuation rules above are unchanged; pyvi's own guard is kept: punctuation and numbers are never joined.
    Case matters to the CRF's features, so call this before lower-casing.
    """
    syllables = list(syllables)
    if not syllables:
        return []
    vi = _pyvi_tokenizer()
    labels = vi.model.predict([vi.sent2features(syllables, False)])[0]
    words = [syllables[0]]
    for i in range(1, len(syllables)):
        prev, cur = syllables[i - 1], syllables[i]
        joinable = (
            labels[i] == "I_W"
            and cur[0].isalpha()
            and prev[-1].isalpha()
            and not (cur[0].istitle() and not prev[0].istitle())
        )
        if joinable:
            words[-1] = words[-1] + "_" + cur
        else:
            words.append(cur)
    return words
