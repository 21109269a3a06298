"""The metric tokenisation: what it keeps, what it normalises, and that it never deletes a Vietnamese letter."""
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxpetct.text import vietnamese as vi


def test_composed_and_decomposed_input_give_the_same_tokens():
    text = "Hình ảnh hạch thượng đòn, tăng chuyển hóa FDG (SUVmax: 9,0)."
    decomposed = unicodedata.normalize("NFD", text)
    assert decomposed != text
    assert vi.tokenize(decomposed) == vi.tokenize(text)


def test_tone_placement_variants_are_one_spelling():
    pairs = [("hóa", "hoá"), ("Hòa", "Hoà"), ("thủy", "thuỷ"), ("khỏe", "khoẻ"), ("tùy", "tuỳ"), ("ủy ban", "uỷ ban")]
    for old, new in pairs:
        assert vi.normalize_tone_placement(old) == new
        assert vi.normalize_tone_placement(new) == new
    # Not ambiguous, so untouched: qu- is a consonant, a final consonant fixes the tone on the main vowel.
    for word in ("quý", "quá", "hoàn", "thuyền", "của", "người"):
        assert vi.normalize_tone_placement(word) == word
    assert vi.tokenize("chuyển hóa") == vi.tokenize("chuyển hoá") == ["chuyển", "hoá"]


def test_numbers_sizes_and_punctuation():
    toks = vi.tokenize("Hạch 12x14mm, kích thước 12 × 14 mm (SUVmax: 4,6; 8.7) ở L3, 10mm.")
    assert toks == [
        "hạch", "12", "x", "14", "mm", ",", "kích", "thước", "12", "x", "14", "mm", "(", "suvmax", ":", "4,6", ";",
        "8.7", ")", "ở", "l3", ",", "10", "mm", ".",
    ]
    dropped = vi.tokenize("Hạch 12 x 14 mm, (SUVmax: 4,6).", punctuation="drop")
    assert dropped == ["hạch", "12", "x", "14", "mm", "suvmax", "4,6"]
    assert vi.tokenize("FDG Hạch", lowercase=False) == ["FDG", "Hạch"]
    with pytest.raises(ValueError, match="punctuation"):
        vi.tokenize("x", punctuation="keep")


def test_fold_accents_and_matching_key():
    assert vi.fold_accents("Có tăng Đường kính ĐẦU cổ cơ") == "Co tang Duong kinh DAU co co"
    assert vi.normalize_for_matching("  Tăng  chuyển hóa ") == "tăng chuyển hoá"
    assert vi.normalize_for_matching("Tăng chuyển HÓA", fold=True) == "tang chuyen hoa"


def test_sentence_splitting():
    text = "Hình ảnh A (SUVmax: 4.7) Hình ảnh B. Chưa phát hiện C, Hình ảnh dày 8,7 mm. Cần đối chiếu.\nX"
    assert vi.split_sentences(text) == [
        "Hình ảnh A (SUVmax: 4.7)", "Hình ảnh B.", "Chưa phát hiện C", "Hình ảnh dày 8,7 mm.", "Cần đối chiếu.", "X",
    ]
    assert vi.split_sentences("") == []


_VI_LETTERS = "aăâbcdđeêghiklmnoôơpqrstuưvxyàáảãạằắẳẵặầấẩẫậèéẻẽẹềếểễệìíỉĩịòóỏõọồốổỗộờớởỡợùúủũụừứửữựỳýỷỹỵ"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=_VI_LETTERS + _VI_LETTERS.upper() + "0123456789 .,;:()/-%", max_size=80))
def test_tokenisation_never_deletes_a_letter(text):
    """Unlike rouge-score's default tokenizer, every character survives (only whitespace and tone position move)."""
    toks = vi.tokenize(text)
    expected = vi.normalize_tone_placement(unicodedata.normalize("NFC", text)).lower()
    assert "".join(toks) == "".join(expected.split())
    assert all(t and not any(c.isspace() for c in t) for t in toks)


def test_word_segmentation_with_pyvi():
    pytest.importorskip("pyvi", reason="pyvi (optional extra 'vi-seg') is not installed")
    toks = vi.tokenize("Hình ảnh khối giảm tỉ trọng, kích thước 41 x 25 mm (SUV lần lượt là 10 và 8,7).", segment=True)
    assert "hình_ảnh" in toks and "tỉ_trọng" in toks and "kích_thước" in toks
    assert {"41", "x", "25", "mm", "8,7", ",", "(", ")", "."} <= set(toks)  # numbers and punctuation never joined
    assert vi.segment_words([]) == []


def test_word_segmentation_without_pyvi_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyvi", None)
    monkeypatch.setitem(sys.modules, "pyvi.ViTokenizer", None)
    vi._pyvi_tokenizer.cache_clear()
    try:
        with pytest.raises(vi.WordSegmentationUnavailable, match="pyvi"):
            vi.tokenize("hình ảnh", segment=True)
    finally:
        vi._pyvi_tokenizer.cache_clear()
