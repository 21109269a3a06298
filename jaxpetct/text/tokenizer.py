"""Tokenizers behind one small protocol: Mistral's own SentencePiece model, or any Hugging Face tokenizer folder.

The paper's LLM is Mistral-7B (via LLaVA-Med v1.5); its 32,000-piece SentencePiece model ships inside the
`mistral-common` wheel (data/tokenizer.model.v1), so the default needs no download at run time. Any other
decoder (Llama-2, Qwen2, a locally converted checkpoint) brings its HF tokenizer folder.

Every text is NFC-normalised before encoding: Vietnamese reports arrive in both composed and decomposed form,
and the Mistral model does no normalisation of its own (a decomposed "ó" becomes two pieces), so without it the
same word would have two tokenisations. Decoding therefore returns NFC text.
"""
from __future__ import annotations

import importlib.resources
import json
import os
import pathlib
from typing import Optional, Protocol, Sequence, runtime_checkable

from jaxpetct.text.report import nfc
from jaxpetct.errors import UserError

MISTRAL_V1 = "mistral-v1"
_MISTRAL_V1_FILE = "tokenizer.model.v1"


class TokenizerError(UserError, ValueError):
    """A tokenizer cannot be loaded or used; names the source (a spec or a folder's name) and the reason."""

    def __init__(self, source: str, reason: str):
        self.source, self.reason = source, reason
        super().__init__(f"tokenizer {source}: {reason}")


@runtime_checkable
class Tokenizer(Protocol):
    """What prompts, VQA and the data pipeline need from a tokenizer; nothing model-specific leaks past it.

    `encode` never adds BOS/EOS: chat templates place special tokens themselves. `adds_prefix_space` is True
    for SentencePiece-style tokenizers that prepend a word boundary to every encoded string (so a template
    segment that starts with a space must drop it, or the space would be encoded twice). `pad_id` is the
    tokenizer's pad token, else its unk token, else EOS: the Llama/Mistral vocabularies have no pad, and LLaVA
    pads with unk. `special_id` maps a special token's text ("<|im_start|>") to its id, None if it is not one.
    """

    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> Optional[int]: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def adds_prefix_space(self) -> bool: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def special_id(self, token: str) -> Optional[int]: ...


def _probe_prefix_space(encode) -> bool:
    """True when encoding two words apart equals encoding them with a space between: each encode call then
    starts with the word boundary itself (SentencePiece's dummy prefix, Metaspace), unlike byte-level BPE."""
    return encode("x") + encode("a") == encode("x a") != encode("xa")


class SentencePieceTokenizer:
    """A SentencePiece model file (Mistral v1, or an HF folder that only has tokenizer.model)."""

    def __init__(self, model_file: str | os.PathLike, *, name: Optional[str] = None,
                 bos_token: Optional[str] = None, eos_token: Optional[str] = None,
                 pad_token: Optional[str] = None):
        import sentencepiece

        path = pathlib.Path(model_file)
        self._name = name or path.name
        if not path.is_file():
            raise TokenizerError(self._name, f"SentencePiece model {path.name} not found")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(self._name, f"{path.name} is not a SentencePiece model ({e})") from None
        self._bos = self._lookup(bos_token) if bos_token else self._valid(self._sp.bos_id())
        eos = self._lookup(eos_token) if eos_token else self._valid(self._sp.eos_id())
        if eos is None:
            raise TokenizerError(self._name, "the model has no end-of-sequence token")
        self._eos = eos
        pad = self._lookup(pad_token) if pad_token else self._valid(self._sp.pad_id())
        unk = self._valid(self._sp.unk_id())
        self._pad = next(i for i in (pad, unk, eos) if i is not None)
        self._prefix = _probe_prefix_space(self.encode)

    def _valid(self, i: int) -> Optional[int]:
        return i if 0 <= i < self._sp.vocab_size() else None

    def _lookup(self, token: str) -> int:
        i = self.special_id(token)
        if i is None:
            raise TokenizerError(self._name, f"special token {token!r} is not in the vocabulary")
        return i

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return int(self._sp.vocab_size())

    @property
    def bos_id(self) -> Optional[int]:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def adds_prefix_space(self) -> bool:
        return self._prefix

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(nfc(text)))

    def decode(self, ids: Sequence[int]) -> str:
        """Drops control tokens (BOS/EOS/pad) as generation output is decoded; out-of-range ids are an error."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(self._name, f"ids out of range [0, {self.vocab_size}): {bad[:5]}")
        return self._sp.decode([i for i in ids if not self._sp.is_control(i)])

    def special_id(self, token: str) -> Optional[int]:
        i = self._sp.piece_to_id(token)
        if self._sp.id_to_piece(i) != token:  # unknown pieces map to unk
            return None
        return i if self._sp.is_control(i) or self._sp.is_unknown(i) else None


def mistral_v1_model_file() -> pathlib.Path:
    """Mistral-7B v0.1's SentencePiece model, as installed with mistral-common (never downloaded)."""
    try:
        path = importlib.resources.files("mistral_common") / "data" / _MISTRAL_V1_FILE
    except ModuleNotFoundError:
        raise TokenizerError(MISTRAL_V1, "mistral-common is not installed (pip install mistral-common)") from None
    if not path.is_file():
        raise TokenizerError(MISTRAL_V1, f"this mistral-common build does not ship data/{_MISTRAL_V1_FILE}")
    return pathlib.Path(str(path))


def _token_text(value) -> Optional[str]:
    """HF configs store a special token as a string or as a serialised AddedToken {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: pathlib.Path, source: str) -> dict:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(source, f"{path.name} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise TokenizerError(source, f"{path.name} does not hold a JSON object")
    return obj


def hf_special_tokens(directory: str | os.PathLike) -> dict[str, Optional[str]]:
    """bos/eos/pad/unk token texts with transformers' precedence: tokenizer_config.json, overridden by
    special_tokens_map.json unless the config carries its own `added_tokens_decoder`."""
    d = pathlib.Path(directory)
    config = _read_json(d / "tokenizer_config.json", d.name)
    merged = {k: config.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    if "added_tokens_decoder" not in config:
        for k, v in _read_json(d / "special_tokens_map.json", d.name).items():
            if k in merged:
                merged[k] = v
    return {k: _token_text(v) for k, v in merged.items()}


class HFTokenizer:
    """An HF tokenizer folder read with the `tokenizers` library (tokenizer.json); no transformers import."""

    def __init__(self, directory: str | os.PathLike, *, name: Optional[str] = None):
        import tokenizers

        d = pathlib.Path(directory)
        self._name = name or f"hf:{d.name}"
        file = d / "tokenizer.json"
        if not file.is_file():
            raise TokenizerError(self._name, "no tokenizer.json in the folder")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # the Rust side raises plain Exception subclasses
            raise TokenizerError(self._name, f"tokenizer.json cannot be parsed ({e})") from None
        self._specials = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        texts = hf_special_tokens(d)
        ids = {k: (self._tok.token_to_id(v) if v else None) for k, v in texts.items()}
        if ids["eos_token"] is None:
            raise TokenizerError(self._name, "no end-of-sequence token (eos_token) in the vocabulary")
        self._bos, self._eos = ids["bos_token"], ids["eos_token"]
        self._pad = next(i for i in (ids["pad_token"], ids["unk_token"], ids["eos_token"]) if i is not None)
        self._prefix = _probe_prefix_space(self.encode)

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def bos_id(self) -> Optional[int]:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def adds_prefix_space(self) -> bool:
        return self._prefix

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(nfc(text), add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(self._name, f"ids out of range [0, {self.vocab_size}): {bad[:5]}")
        return self._tok.decode(ids, skip_special_tokens=True)

    def special_id(self, token: str) -> Optional[int]:
        return self._specials.get(token)


def load_tokenizer(spec: str | os.PathLike = MISTRAL_V1) -> Tokenizer:
    """"mistral-v1" (the paper's LLM, embedded) or an HF tokenizer folder (tokenizer.json, else tokenizer.model)."""
    if str(spec) == MISTRAL_V1:
        return SentencePieceTokenizer(mistral_v1_model_file(), name=MISTRAL_V1)
    d = pathlib.Path(spec)
    if not d.is_dir():
        raise TokenizerError(d.name or str(spec), f"not {MISTRAL_V1!r} and not an existing tokenizer folder")
    if (d / "tokenizer.json").is_file():
        return HFTokenizer(d)
    if (d / "tokenizer.model").is_file():
        t = hf_special_tokens(d)
        return SentencePieceTokenizer(d / "tokenizer.model", name=f"hf:{d.name}", bos_token=t["bos_token"],
                                      eos_token=t["eos_token"], pad_token=t["pad_token"] or t["unk_token"])
    raise TokenizerError(f"hf:{d.name}", "the folder has neither tokenizer.json nor tokenizer.model")
