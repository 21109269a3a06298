"""Tokenizers of RoBERTa-family encoder checkpoints, for BERTScore: read from the checkpoint folder, never fetched.

Two folder layouts occur:
  * ``tokenizer.json`` (any fast tokenizer: roberta-base, xlm-roberta, a locally trained BPE), read with the
    `tokenizers` library. Byte-level BPE folders get a leading space before the text, as bert-score asks of
    GPT-2/RoBERTa tokenizers (``add_prefix_space=True``): the first word is then encoded like every other word.
  * PhoBERT's ``vocab.txt`` + ``bpe.codes`` (fastBPE, no tokenizer.json exists for it): implemented here as
    transformers' ``PhobertTokenizer`` does it: whitespace words, BPE merges by rank inside each word with an
    end-of-word marker, "@@" on non-final pieces, ids 0-3 for <s> <pad> </s> <unk> then the vocabulary in file
    order. PhoBERT was pre-trained on word-segmented text ("hình_ảnh"), so callers should pass segmented input.
Every sequence is `<s> tokens </s>` (cls/sep), cut to `max_length` the way transformers truncates (content first,
special tokens kept). Texts are NFC-normalised and stripped first.
"""
from __future__ import annotations

import json
import pathlib
import re
from typing import Optional, Sequence

from jaxpetct.text.report import nfc
from jaxpetct.errors import UserError

UNLIMITED = 10**6  # transformers' "no model_max_length" is 1e30; anything this large means unset


class EncoderTokenizerError(UserError, ValueError):
    """An encoder folder whose tokenizer cannot be read; names the folder (its last component) and the reason."""


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EncoderTokenizerError(f"{path.parent.name}/{path.name}: not valid JSON ({e})") from None
    return obj if isinstance(obj, dict) else {}


def _token_text(value, default: str) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default


class _FastBPE:
    """PhoBERT's fastBPE word splitter (vocab.txt + bpe.codes)."""

    def __init__(self, vocab_file: pathlib.Path, codes_file: pathlib.Path, specials: Sequence[str]):
        self.vocab: dict[str, int] = {tok: i for i, tok in enumerate(specials)}
        for line in vocab_file.read_text(encoding="utf-8").splitlines():
            word = line.rstrip().rsplit(" ", 1)[0] if " " in line.strip() else line.strip()
            if word and word not in self.vocab:
                self.vocab[word] = len(self.vocab)
        merges = [tuple(line.split()[:2]) for line in codes_file.read_text(encoding="utf-8").splitlines()
                  if len(line.split()) >= 2]
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.cache: dict[str, list[str]] = {}

    def pieces(self, word: str) -> list[str]:
        if word in self.cache:
            return self.cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        out = [s + "@@" for s in symbols[:-1]] + [symbols[-1][: -len("</w>")] if symbols[-1].endswith("</w>")
                                                  else symbols[-1]]
        self.cache[word] = out
        return out

    def encode(self, text: str, unk_id: int) -> list[int]:
        return [self.vocab.get(p, unk_id) for w in re.findall(r"\S+\n?", text) for p in self.pieces(w)]


class EncoderTokenizer:
    """`encode(text) -> ids` with `<s> ... </s>`; `cls_id`, `sep_id`, `pad_id` as the checkpoint defines them."""

    def __init__(self, directory, *, max_length: Optional[int] = None):
        d = pathlib.Path(directory)
        self.name = d.name
        config = _read_json(d / "tokenizer_config.json")
        smap = _read_json(d / "special_tokens_map.json")

        def special(key: str, default: str) -> str:
            return _token_text(config.get(key, smap.get(key)), default)

        cls_t, sep_t = special("cls_token", special("bos_token", "<s>")), special("sep_token", special("eos_token", "</s>"))
        pad_t, unk_t = special("pad_token", "<pad>"), special("unk_token", "<unk>")
        limit = config.get("model_max_length")
        self.max_length = min(x for x in (max_length, limit if isinstance(limit, int) and limit < UNLIMITED else None,
                                          UNLIMITED) if x is not None)
        if (d / "tokenizer.json").is_file():
            import tokenizers

            try:
                self._fast = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
            except Exception as e:  # the Rust side raises plain Exception subclasses
                raise EncoderTokenizerError(f"{self.name}: tokenizer.json cannot be parsed ({e})") from None
            self._bpe = None
            spec = _read_json(d / "tokenizer.json").get("pre_tokenizer") or {}
            kinds = [spec.get("type")] + [p.get("type") for p in spec.get("pretokenizers", []) if isinstance(p, dict)]
            self.prefix_space = "ByteLevel" in kinds
            lookup = self._fast.token_to_id
        elif (d / "vocab.txt").is_file() and (d / "bpe.codes").is_file():
            self._fast = None
            self._bpe = _FastBPE(d / "vocab.txt", d / "bpe.codes", (cls_t, pad_t, sep_t, unk_t))
            self.prefix_space = False
            lookup = self._bpe.vocab.get
        else:
            raise EncoderTokenizerError(f"{self.name}: no tokenizer.json and no PhoBERT vocab.txt + bpe.codes")
        ids = {name: lookup(tok) for name, tok in (("cls", cls_t), ("sep", sep_t), ("pad", pad_t), ("unk", unk_t))}
        for name in ("cls", "sep", "pad"):
            if ids[name] is None:
                raise EncoderTokenizerError(f"{self.name}: special token {name} is not in the vocabulary")
        self.cls_id, self.sep_id, self.pad_id = int(ids["cls"]), int(ids["sep"]), int(ids["pad"])
        self.unk_id = ids["unk"] if ids["unk"] is not None else self.pad_id

    def content_ids(self, text: str) -> list[int]:
        """Token ids of the text alone (no special tokens)."""
        text = nfc(text).strip()
        if not text:
            return []
        if self._bpe is not None:
            return self._bpe.encode(text, self.unk_id)
        if self.prefix_space:
            text = " " + text
        return list(self._fast.encode(text, add_special_tokens=False).ids)

    def encode(self, text: str) -> list[int]:
        body = self.content_ids(text)[: max(self.max_length - 2, 0)]
        return [self.cls_id, *body, self.sep_id]


class ContentTokenizer:
    """An encoder tokenizer behind the project's Tokenizer protocol (encode = content ids, bos/eos = cls/sep), so
    the data pipeline can tokenise report text for the CLIP text tower exactly as the checkpoint expects."""

    def __init__(self, directory, *, max_length: Optional[int] = None):
        self._tok = EncoderTokenizer(directory, max_length=max_length)
        self.name = self._tok.name
        self.bos_id, self.eos_id, self.pad_id = self._tok.cls_id, self._tok.sep_id, self._tok.pad_id

    def encode(self, text: str) -> list[int]:
        return self._tok.content_ids(text)
