"""Tokenizer folders built locally for the text tests (nothing is downloaded).

- `llama_dir`: Mistral-7B v0.1's SentencePiece model (shipped by mistral-common) converted by transformers into an
  HF LlamaTokenizer folder, with the official Llama-2-chat template in its tokenizer_config.json.
- `chatml_dir`: a tiny byte-level BPE trained here, with Qwen2's special tokens and its official ChatML template.
"""
from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import sys
from unittest import mock

import pytest

from jaxpetct.text import prompts
from jaxpetct.text.tokenizer import load_tokenizer, mistral_v1_model_file
from tests.text.references import LLAMA2_CHAT_TEMPLATE, OWN_TEXTS, QWEN2_CHAT_TEMPLATE


@pytest.fixture(scope="session")
def mistral():
    return load_tokenizer("mistral-v1")


@pytest.fixture(scope="session")
def mistral_sp():
    """mistral-common's own SentencePiece tokenizer: the reference for ids."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.v1().instruct_tokenizer.tokenizer


@contextlib.contextmanager
def _sentencepiece_proto():
    """sentencepiece 0.2.3 ships protobuf code newer than the protobuf runtime installed here, which breaks
    transformers' SentencePiece conversion; transformers carries the same schema, used only while converting."""
    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401
        yield
        return
    except Exception:  # protobuf raises its VersionError at import time
        pass
    import sentencepiece
    from transformers.utils import sentencepiece_model_pb2_new as pb2

    with mock.patch.dict(sys.modules, {"sentencepiece.sentencepiece_model_pb2": pb2}), \
            mock.patch.object(sentencepiece, "sentencepiece_model_pb2", pb2, create=True):
        yield


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> pathlib.Path:
    from transformers import AutoTokenizer

    src = tmp_path_factory.mktemp("mistral_sp")
    shutil.copy(mistral_v1_model_file(), src / "tokenizer.model")
    (src / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    with _sentencepiece_proto():
        tok = AutoTokenizer.from_pretrained(str(src))
    out = tmp_path_factory.mktemp("llama2_hf")
    tok.save_pretrained(str(out))
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = LLAMA2_CHAT_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return out


@pytest.fixture(scope="session")
def chatml_dir(tmp_path_factory) -> pathlib.Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = OWN_TEXTS + list(prompts.REGION_INSTRUCTIONS) + list(prompts.STUDY_INSTRUCTIONS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    out = tmp_path_factory.mktemp("qwen2_chatml")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
         "pad_token": "<|endoftext|>", "chat_template": QWEN2_CHAT_TEMPLATE}))
    return out


@pytest.fixture(scope="session")
def real_reports(realdata) -> list[str]:
    return [json.loads(line)["report"] for line in (realdata / "reports.jsonl").read_text("utf-8").splitlines()]


@pytest.fixture(scope="session")
def real_lesions(realdata) -> list[list]:
    from jaxpetct.text.lesion import Lesion

    text = (realdata / "report_lesions_llm_extracted.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    return [[Lesion.from_json(x) for x in r["lesions"]] for r in rows]
