"""BERTScore (Zhang et al., 2020) in JAX from a local RoBERTa-family encoder folder; nothing is ever downloaded.

Definition (identical to the `bert-score` package, v0.3.13, for one reference per candidate):
  * each text becomes `<s> tokens </s>` with the checkpoint's own tokenizer (`encoder_tokenizer`), cut to the
    encoder's length; the contextual embedding of every token is the hidden state after encoder layer `layer`
    (0 = the embedding output), L2-normalised;
  * greedy matching on cosine similarity: each candidate token takes its best reference token (precision),
    each reference token its best candidate token (recall); P and R are the weighted means of those maxima,
    F = 2PR / (P + R) (0 when P + R = 0);
  * weights: without IDF every token weighs 1 except <s> and </s> (0); with IDF, w(t) = log((N + 1) / (df(t) + 1))
    with df counted over the N *reference* texts of the call (a token never seen in a reference gets log(N + 1)),
    so <s> and </s>, present in every reference, weigh 0 as well;
  * a text that is empty after stripping scores P = R = F = 0 (bert-score's rule);
  * optional baseline rescaling, only when a baseline file is given: x' = (x - b) / (1 - b) per P/R/F, with b
    read from a bert-score style CSV (header LAYER,P,R,F; the row of the chosen layer).
The corpus numbers are the means over pairs, x100 (the paper's scale). Similarities are computed over real tokens
only (bert-score multiplies padded similarities by 0 inside a padded batch, which can raise a max when every real
similarity is negative; a batch of one pair, or any batch of a real encoder in practice, never sees that).

Default layer: bert-score's tuned table where the model is known (roberta-base 10, roberta-large 17,
distilroberta-base 5, xlm-roberta-base 9, xlm-roberta-large 17). PhoBERT is not in that table; we use 9 for 12-layer
encoders (PhoBERT-base) and 17 for 24-layer ones, the values bert-score uses for its multilingual models
(bert-base-multilingual-cased, its default for Vietnamese, and xlm-roberta-base are both 9), and the last layer
for other depths. Pass `layer=` to override; the layer used is always reported.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import pathlib
from collections import Counter
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpetct.text.encoder_tokenizer import EncoderTokenizer, EncoderTokenizerError
from jaxpetct.models.safetensors_io import CheckpointError
from jaxpetct.models.text_encoder import load_roberta
from jaxpetct.errors import UserError

KNOWN_LAYERS = {"roberta-base": 10, "roberta-large": 17, "distilroberta-base": 5, "xlm-roberta-base": 9,
                "xlm-roberta-large": 17, "vinai/phobert-base": 9, "vinai/phobert-large": 17}
DEPTH_LAYERS = {6: 5, 12: 9, 24: 17}
SKIP_MESSAGE = "BERTScore skipped: no encoder checkpoint directory given (pass one; nothing is downloaded)"


class BertScoreError(UserError, ValueError):
    """BERTScore cannot run: a missing/unreadable encoder folder, a bad layer or baseline; says which and why."""


def default_layer(num_layers: int, name: Optional[str] = None) -> int:
    if name in KNOWN_LAYERS:
        return min(KNOWN_LAYERS[name], num_layers)
    return DEPTH_LAYERS.get(num_layers, num_layers)


def idf_weights(reference_ids: Sequence[Sequence[int]]) -> tuple[dict[int, float], float]:
    """(token -> idf, idf of unseen tokens) from the references' token sets (bert-score's get_idf_dict)."""
    n = len(reference_ids)
    df = Counter(t for ids in reference_ids for t in set(ids))
    return {t: math.log((n + 1) / (c + 1)) for t, c in df.items()}, math.log(n + 1)


@jax.jit
def greedy_match(hyp: jax.Array, hyp_w: jax.Array, ref: jax.Array, ref_w: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """P, R, F (B,) of normalised embeddings (B, L, d) with weights (B, L); weight < 0 marks padding."""
    sim = jnp.einsum("bid,bjd->bij", hyp, ref, precision=jax.lax.Precision.HIGHEST)
    valid = (hyp_w >= 0)[:, :, None] & (ref_w >= 0)[:, None, :]
    sim = jnp.where(valid, sim, -jnp.inf)
    word_p = jnp.max(sim, axis=2)
    word_r = jnp.max(sim, axis=1)
    hw, rw = jnp.maximum(hyp_w, 0.0), jnp.maximum(ref_w, 0.0)
    p = jnp.sum(jnp.where(hyp_w >= 0, word_p, 0.0) * hw, axis=1) / jnp.sum(hw, axis=1)
    r = jnp.sum(jnp.where(ref_w >= 0, word_r, 0.0) * rw, axis=1) / jnp.sum(rw, axis=1)
    f = 2 * p * r / (p + r)
    return p, r, jnp.where(jnp.isnan(f), 0.0, f)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _embed(graphdef, state, ids: jax.Array, mask: jax.Array) -> jax.Array:
    hidden, _ = nnx.merge(graphdef, state)(ids, mask)
    hidden = hidden.astype(jnp.float32)
    return hidden / jnp.linalg.norm(hidden, axis=-1, keepdims=True)


def read_baseline(path, layer: int) -> np.ndarray:
    """(P, R, F) baselines of `layer` from a bert-score style CSV (LAYER,P,R,F)."""
    p = pathlib.Path(path)
    try:
        with p.open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise BertScoreError(f"baseline {p.name}: cannot read ({e.strerror})") from None
    for row in rows:
        try:
            if int(row["LAYER"]) == layer:
                return np.asarray([float(row["P"]), float(row["R"]), float(row["F"])], np.float32)
        except (KeyError, TypeError, ValueError):
            raise BertScoreError(f"baseline {p.name}: expected columns LAYER,P,R,F with numbers") from None
    raise BertScoreError(f"baseline {p.name}: no row for layer {layer}")


@dataclasses.dataclass(frozen=True)
class BertScoreResult:
    precision: np.ndarray  # (N,) per pair, in [-1, 1] (rescaled values may leave that range)
    recall: np.ndarray
    f1: np.ndarray
    settings: dict

    def summary(self) -> dict:
        """Corpus means x100, as metrics files report them; `bertscore` is F1 (what papers call BERTScore)."""
        mean = lambda a: float(100.0 * np.mean(a)) if len(a) else 0.0  # noqa: E731
        return {"bertscore": mean(self.f1), "bertscore_precision": mean(self.precision),
                "bertscore_recall": mean(self.recall)}


class BertScorer:
    """Loads the encoder once (truncated to `layer` layers: later layers are never computed) and scores corpora."""

    def __init__(self, model_dir, *, layer: Optional[int] = None, idf: bool = False, baseline=None,
                 batch_size: int = 16, bucket: int = 32):
        if model_dir is None:
            raise BertScoreError(SKIP_MESSAGE)
        d = pathlib.Path(model_dir)
        if not d.is_dir():
            raise BertScoreError(f"encoder folder {d.name!r} does not exist")
        config = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
        try:
            self.tokenizer = EncoderTokenizer(d, max_length=self._max_tokens(config))
            model = load_roberta(d, add_pooling_layer=False)
        except (CheckpointError, EncoderTokenizerError) as e:
            raise BertScoreError(f"encoder folder {d.name!r}: {e}") from e
        depth = model.cfg.num_layers
        self.layer = default_layer(depth, config.get("_name_or_path")) if layer is None else int(layer)
        if not 0 <= self.layer <= depth:
            raise BertScoreError(f"layer {self.layer} is out of range: {d.name} has {depth} layers (0 = embeddings)")
        model.layers = nnx.List(list(model.layers)[: self.layer])
        self._graphdef, self._state = nnx.split(model)
        self.idf, self.batch_size, self.bucket = idf, batch_size, bucket
        self.baseline = None if baseline is None else read_baseline(baseline, self.layer)
        self.settings = {"model": d.name, "layer": self.layer, "num_layers": depth, "idf": bool(idf),
                         "baseline": None if baseline is None else pathlib.Path(baseline).name,
                         "max_tokens": self.tokenizer.max_length}

    @staticmethod
    def _max_tokens(config: dict) -> Optional[int]:
        """Positions a RoBERTa can embed: max_position_embeddings minus the pad offset (512 / PhoBERT 256)."""
        if "max_position_embeddings" not in config:
            return None
        return int(config["max_position_embeddings"]) - int(config.get("pad_token_id", 1)) - 1

    def _padded(self, seqs: Sequence[Sequence[int]], weights: Sequence[Sequence[float]], length: int):
        rows = self.batch_size
        ids = np.full((rows, length), self.tokenizer.pad_id, np.int32)
        w = np.full((rows, length), -1.0, np.float32)
        for i, (s, ws) in enumerate(zip(seqs, weights)):
            ids[i, : len(s)] = s
            w[i, : len(s)] = ws
        w[len(seqs):, 0] = 1.0  # filler rows: one valid token, so their (discarded) scores stay finite
        return ids, w

    def _check_tokens(self, texts: Sequence[str], ids: Sequence[Sequence[int]], what: str) -> None:
        """A non-empty text must give tokens: if the tokenizer gives none (only <s> </s>), every score would be a
        silent 0 (bert-score's rule for empty texts), which is a broken tokenizer, not a bad report."""
        for k, (text, seq) in enumerate(zip(texts, ids)):
            if text.strip() and len(seq) <= 2:
                raise BertScoreError(f"encoder folder {self.settings['model']!r}: its tokenizer gives no tokens for "
                                     f"{what} #{k} (a non-empty text): wrong or broken tokenizer files?")

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> BertScoreResult:
        if len(candidates) != len(references):
            raise BertScoreError(f"{len(candidates)} candidates but {len(references)} references")
        hyp_ids = [self.tokenizer.encode(c) for c in candidates]
        ref_ids = [self.tokenizer.encode(r) for r in references]
        self._check_tokens(candidates, hyp_ids, "candidate")
        self._check_tokens(references, ref_ids, "reference")
        special = {self.tokenizer.cls_id, self.tokenizer.sep_id}
        if self.idf:
            table, unseen = idf_weights(ref_ids)
            weight = lambda t: table.get(t, unseen)  # noqa: E731
        else:
            weight = lambda t: 0.0 if t in special else 1.0  # noqa: E731
        out = np.zeros((3, len(candidates)), np.float32)
        for start in range(0, len(candidates), self.batch_size):
            h, r = hyp_ids[start : start + self.batch_size], ref_ids[start : start + self.batch_size]
            longest = max(len(s) for s in h + r)
            length = -(-longest // self.bucket) * self.bucket
            hi, hw = self._padded(h, [[weight(t) for t in s] for s in h], length)
            ri, rw = self._padded(r, [[weight(t) for t in s] for s in r], length)
            he = _embed(self._graphdef, self._state, jnp.asarray(hi), jnp.asarray(hw >= 0))
            re_ = _embed(self._graphdef, self._state, jnp.asarray(ri), jnp.asarray(rw >= 0))
            p, rc, f = greedy_match(he, jnp.asarray(hw), re_, jnp.asarray(rw))
            scores = np.stack([np.asarray(p), np.asarray(rc), np.asarray(f)])[:, : len(h)]
            scores[:, [len(a) == 2 or len(b) == 2 for a, b in zip(h, r)]] = 0.0  # an empty text scores 0
            out[:, start : start + len(h)] = scores
        if self.baseline is not None:
            out = (out - self.baseline[:, None]) / (1.0 - self.baseline[:, None])
        return BertScoreResult(out[0], out[1], out[2], dict(self.settings))


def compute_bertscore(candidates: Sequence[str], references: Sequence[str], model_dir, *,
                      layer: Optional[int] = None, idf: bool = False, baseline=None) -> dict:
    """Corpus BERTScore (x100) plus the settings used; raises BertScoreError (SKIP_MESSAGE when model_dir is None)."""
    result = BertScorer(model_dir, layer=layer, idf=idf, baseline=baseline).score(candidates, references)
    return {**result.summary(), "bertscore_settings": result.settings}
