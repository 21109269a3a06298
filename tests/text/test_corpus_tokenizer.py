"""The corpus tokenizer (data.tokenizer='corpus'): lossless on any text, deterministic, Mistral's id layout, and
trained on exactly the texts the loader encodes."""
from __future__ import annotations

import numpy as np
import pytest

from jaxpetct.data.corpus import conversation_texts
from jaxpetct.data.inputs import TextConfig
from jaxpetct.errors import ConfigError
from jaxpetct.text import corpus_tokenizer, prompts
from jaxpetct.text.tokenizer import SentencePieceTokenizer, load_tokenizer
from tests.text.references import OWN_TEXTS

SECTIONS = [prompts.REGION_ALIASES[r] for r in ("head_neck", "chest", "abdomen_pelvis")]


def _records(n: int = 60) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        size = int(rng.integers(8, 30))
        text = (f"Nốt mờ thùy trên phổi phải kích thước {size}x{size - 2}mm, tăng chuyển hóa FDG, SUVmax "
                f"{rng.uniform(2, 12):.1f}." if i % 2 else "Chưa thấy bất thường tăng chuyển hóa FDG.")
        out.append({"section": SECTIONS[i % 3].encode(), "findings": text.encode(), "findings_en": b""})
    return out


def _texts(records=None) -> list[str]:
    return list(conversation_texts(records or _records(), "report", TextConfig(template="mistral")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "corpus_tokenizer"
    info = corpus_tokenizer.train(_texts(), out, 512)
    return out, info


def test_texts_are_what_the_loader_encodes():
    texts = _texts(_records(6))
    assert not any(prompts.IMAGE_PLACEHOLDER in t for t in texts)
    assert any("[INST]" in t for t in texts) and any("[/INST]" in t for t in texts)  # the template's own words
    assert prompts.report_instruction(SECTIONS[0], None) in "".join(texts)  # canonical instruction (eval's)
    assert sum("Nốt mờ" in t for t in texts) == 3 * 3  # three drawn conversations of each of 3 lesion records
    assert texts == _texts(_records(6))  # deterministic


def test_tokenizer_is_lossless_and_uses_mistral_ids(trained):
    out, info = trained
    tok = load_tokenizer(out)
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.special_id("<unk>"), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)
    assert tok.vocab_size == info["vocab_size"] <= 512 and tok.adds_prefix_space
    for text in OWN_TEXTS + ["Khối 漢字 Ω ñ 🙂 SUVmax 11.4", "  hai  khoảng trắng\tvà tab"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text.strip() or tok.decode(ids) == text  # byte fallback: nothing is lost
    # the corpus's own words are single pieces: far fewer tokens than Mistral's 32k vocabulary gives
    report = _records(2)[1]["findings"].decode()
    assert len(tok.encode(report)) < 0.6 * len(load_tokenizer("mistral-v1").encode(report))
    enc = prompts.encode_conversation(prompts.report_messages(report, SECTIONS[1]), tok, "mistral")
    assert enc.input_ids[0] == tok.bos_id and enc.input_ids[-1] == tok.eos_id


def test_training_is_deterministic_and_stamped(trained, tmp_path):
    out, info = trained
    again = tmp_path / "again"
    assert corpus_tokenizer.train(_texts(), again, 512) == info
    assert (again / "tokenizer.model").read_bytes() == (out / "tokenizer.model").read_bytes()
    assert corpus_tokenizer.is_current(out, corpus_tokenizer.fingerprint(_texts(), 512))
    assert not corpus_tokenizer.is_current(out, corpus_tokenizer.fingerprint(_texts()[1:], 512))
    assert not corpus_tokenizer.is_current(out, corpus_tokenizer.fingerprint(_texts(), 1024))


def test_impossible_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size") as e:
        corpus_tokenizer.train(_texts(), tmp_path / "small", 64)  # fewer pieces than bytes + characters
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no text"):
        corpus_tokenizer.train(["", "  "], tmp_path / "empty", 512)
    assert not (tmp_path / "small").exists() and not (tmp_path / "empty").exists()
