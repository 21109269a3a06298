"""A SentencePiece BPE model (Mistral/Llama `tokenizer.model`) as a `tokenizers` tokenizer.json, offline.

transformers can only convert `tokenizer.model` through protobuf, and a protobuf runtime older than the one its
bundled `sentencepiece_model_pb2` was generated for makes it fall back to a failing path; an export directory
therefore ships tokenizer.json next to tokenizer.model, built here from the sentencepiece library alone.

SentencePiece BPE repeatedly merges the adjacent pair whose concatenation is the highest-scoring piece; a byte-level
fallback spells characters outside the vocabulary as <0xNN> pieces. A `tokenizers` BPE model does the same given
every pair (a, b) whose concatenation is a piece, ranked by that piece's score (ties: by piece id, then by the ids
of a and b), with `byte_fallback=True`. Spaces become "▁" and one "▁" is prepended (SentencePiece's dummy prefix),
which is the Metaspace pre-tokenizer with `prepend_scheme="first"`, as transformers' Llama tokenizer sets it.
"""
from __future__ import annotations

import os
from typing import Union


def spm_tokenizer(model_file: Union[str, os.PathLike]):
    """A `tokenizers.Tokenizer` equal to the SentencePiece BPE model in `model_file` (BOS added by its template)."""
    import sentencepiece
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    mergeable = {i for i in range(n) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))}
    merges = []
    for i in mergeable:
        piece = sp.id_to_piece(i)
        for k in range(1, len(piece)):
            a, b = vocab.get(piece[:k]), vocab.get(piece[k:])
            if a in mergeable and b in mergeable:
                merges.append((-sp.get_score(i), i, a, b))
    merges.sort()
    unk = sp.id_to_piece(sp.unk_id())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(sp.id_to_piece(a), sp.id_to_piece(b)) for _, _, a, b in merges],
                               unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    specials = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False) for i in specials])
    if sp.bos_id() >= 0:
        bos = sp.id_to_piece(sp.bos_id())
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, sp.bos_id())])
    return tok


def write_tokenizer_json(model_file: Union[str, os.PathLike], path: Union[str, os.PathLike]) -> None:
    spm_tokenizer(model_file).save(str(path))
