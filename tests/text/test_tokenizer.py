"""Tokenizers against references we did not write: mistral-common's tokenizer and transformers' AutoTokenizer."""
from __future__ import annotations

import json
import shutil
import unicodedata

import pytest

from jaxpetct.text.report import nfc
from jaxpetct.text.tokenizer import (HFTokenizer, SentencePieceTokenizer, Tokenizer, TokenizerError, load_tokenizer,
                                     mistral_v1_model_file)
from tests.text.references import OWN_TEXTS


def test_mistral_v1_is_the_embedded_32k_model(mistral, mistral_sp):
    import mistral_common

    assert isinstance(mistral, Tokenizer)
    assert mistral.name == "mistral-v1"
    assert mistral_v1_model_file().is_relative_to(__import__("pathlib").Path(mistral_common.__file__).parent)
    assert (mistral.vocab_size, mistral.bos_id, mistral.eos_id) == (32000, mistral_sp.bos_id, mistral_sp.eos_id)
    assert mistral.pad_id == 0 and mistral.special_id("<unk>") == 0  # no pad in the vocabulary: LLaVA pads with unk
    assert mistral.adds_prefix_space
    assert mistral.special_id("<s>") == 1
    assert mistral.special_id("[INST]") is None and mistral.special_id("▁the") is None  # v1 has no [INST] token
    for text in OWN_TEXTS:
        assert mistral.encode(text) == mistral_sp.encode(text, bos=False, eos=False)


def test_mistral_round_trips_real_reports(mistral, mistral_sp, real_reports, realdata):
    answers = [json.loads(x)["answer"] for x in (realdata / "vqa.jsonl").read_text("utf-8").splitlines()]
    n_tokens = 0
    for text in real_reports + answers:
        ids = mistral.encode(text)
        n_tokens += len(ids)
        assert ids == mistral_sp.encode(nfc(text), bos=False, eos=False)
        assert mistral.decode(ids) == nfc(text)
        # Decomposed input (as some hospital exports write it) gets the same ids: NFC happens before encoding.
        assert mistral.encode(unicodedata.normalize("NFD", text)) == ids
    assert n_tokens > 100_000  # the whole development share went through


def test_decode_drops_control_tokens_and_rejects_bad_ids(mistral):
    ids = mistral.encode("Hạch nách trái")
    assert mistral.decode([mistral.bos_id, *ids, mistral.eos_id]) == "Hạch nách trái"
    with pytest.raises(TokenizerError, match="out of range"):
        mistral.decode([5, 32000])


def _compare_with_auto(tok: HFTokenizer, directory, texts):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(directory))
    assert tok.vocab_size == len(auto)
    assert tok.eos_id == auto.eos_token_id and tok.bos_id == auto.bos_token_id
    if auto.pad_token_id is not None:
        assert tok.pad_id == auto.pad_token_id
    for text in texts:
        ids = tok.encode(text)
        assert ids == auto(nfc(text), add_special_tokens=False).input_ids
        assert tok.decode(ids) == auto.decode(ids, skip_special_tokens=True)
    return auto


def test_hf_folders_match_transformers(llama_dir, chatml_dir, mistral):
    llama = load_tokenizer(llama_dir)
    assert isinstance(llama, HFTokenizer) and isinstance(llama, Tokenizer) and llama.adds_prefix_space
    _compare_with_auto(llama, llama_dir, OWN_TEXTS)
    chatml = load_tokenizer(chatml_dir)
    assert not chatml.adds_prefix_space and chatml.bos_id is None
    assert chatml.special_id("<|im_start|>") is not None and chatml.special_id("hello") is None
    _compare_with_auto(chatml, chatml_dir, OWN_TEXTS)
    # The converted folder and the SentencePiece file are one tokenizer: same ids, same text back.
    for text in OWN_TEXTS[:4]:
        assert llama.encode(text) == mistral.encode(text)
        assert llama.decode(llama.encode(text)) == nfc(text)


def test_hf_folders_match_transformers_on_real_reports(llama_dir, chatml_dir, mistral, real_reports):
    llama, chatml = load_tokenizer(llama_dir), load_tokenizer(chatml_dir)
    _compare_with_auto(llama, llama_dir, real_reports[:30])
    _compare_with_auto(chatml, chatml_dir, real_reports[:30])
    for text in real_reports:
        assert llama.encode(text) == mistral.encode(text)
        assert llama.decode(llama.encode(text)) == nfc(text) == chatml.decode(chatml.encode(text))


@pytest.mark.parametrize("layout", ["map_overrides_config", "config_with_decoder_wins", "dict_tokens"])
def test_special_token_precedence_follows_transformers(chatml_dir, tmp_path, layout):
    d = tmp_path / layout
    shutil.copytree(chatml_dir, d)
    config = json.loads((d / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    if layout == "map_overrides_config":
        overrides = {"eos_token": "<|endoftext|>", "bos_token": "<|im_start|>"}
        (d / "special_tokens_map.json").write_text(json.dumps(overrides))
    elif layout == "config_with_decoder_wins":
        config["added_tokens_decoder"] = {str(i): {"content": c, "special": True, "lstrip": False, "rstrip": False,
                                                   "normalized": False, "single_word": False}
                                          for i, c in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
        (d / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    else:
        # transformers 4 wrote special tokens as serialised AddedTokens
        config["eos_token"] = {"__type": "AddedToken", "content": "<|endoftext|>", "special": True}
        config["pad_token"] = None
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(d)
    auto = _compare_with_auto(tok, d, OWN_TEXTS[:2])
    assert tok.eos_id == auto.eos_token_id
    expected_eos = "<|im_end|>" if layout == "config_with_decoder_wins" else "<|endoftext|>"
    assert tok.eos_id == tok.special_id(expected_eos)


def test_tokenizer_model_only_folder_uses_sentencepiece(tmp_path, mistral):
    shutil.copy(mistral_v1_model_file(), tmp_path / "tokenizer.model")
    specials = {"bos_token": "<s>", "eos_token": {"content": "</s>"}}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(specials))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, SentencePieceTokenizer) and tok.name == f"hf:{tmp_path.name}"
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
    assert tok.encode(OWN_TEXTS[0]) == mistral.encode(OWN_TEXTS[0])


def test_bad_sources_give_one_clear_error(tmp_path, chatml_dir):
    with pytest.raises(TokenizerError, match="not 'mistral-v1' and not an existing tokenizer folder"):
        load_tokenizer(tmp_path / "no_such_folder")
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot be parsed"):
        load_tokenizer(broken)
    no_eos = tmp_path / "no_eos"
    shutil.copytree(chatml_dir, no_eos)
    (no_eos / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(TokenizerError, match="no end-of-sequence token"):
        load_tokenizer(no_eos)
    bad_config = tmp_path / "bad_config"
    shutil.copytree(chatml_dir, bad_config)
    (bad_config / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(TokenizerError, match="tokenizer_config.json is not valid JSON") as err:
        load_tokenizer(bad_config)
    assert str(tmp_path) not in str(err.value)  # folder names only: a hospital path may carry a name
    not_sp = tmp_path / "not_sp"
    not_sp.mkdir()
    (not_sp / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        load_tokenizer(not_sp)
