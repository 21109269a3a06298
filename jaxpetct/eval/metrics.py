"""Text metrics for Vietnamese reports: corpus BLEU-1..4, ROUGE-1/2/L, METEOR (exact match), CIDEr-D.

Every metric sees the same tokens, from `jaxpetct.text.vietnamese.tokenize` (NFC, syllables, punctuation
split off, lower case), and is reported on the paper's 0-100 scale. Each is checked in tests against an
implementation nobody here wrote, on the same tokens:

- BLEU-n (n = 1..4): corpus BLEU (Papineni et al.), clipped n-gram counts and lengths summed over the corpus,
  uniform weights over orders 1..n, brevity penalty from the summed lengths; equal to
  `sacrebleu.BLEU(tokenize="none", max_ngram_order=n, smooth_method=...)`. Default smoothing is "exp"
  (sacrebleu's default, Chen & Cherry method 3 / NIST): it only acts when an order has zero matches in the
  whole corpus, which never happens on real reports, so the default equals unsmoothed corpus BLEU there
  while short VQA answers do not collapse to 0. "none", "floor" (0.1) and "add-k" (k=1) are available.
- ROUGE-1/2/L: F-measure per (prediction, reference) pair, averaged over pairs, like Google's rouge-score
  (no stemming; ROUGE-L over the whole text, not rougeLsum), on our tokens with those that hold no letter or digit
  dropped (Unicode-aware: Vietnamese letters are letters). That is the standard convention (ROUGE-1.5.5 and
  rouge-score drop everything but letters and digits; a comma matching a comma is not shared content, and keeping
  punctuation inflated every score by ~3 points on real reports); it stays within 0.5 of rouge-score given a
  Unicode word tokenizer (`\w+` after NFC and lower case). rouge-score's own default tokenizer keeps only
  [a-z0-9] and is wrong for Vietnamese. BLEU keeps punctuation, as sacrebleu does.
- METEOR: exact-match METEOR of Lavie & Agarwal (2007) with alpha=0.9, beta=3, gamma=0.5:
  Fmean = P*R / (alpha*P + (1-alpha)*R), penalty = gamma * (chunks/matches)**beta, score = Fmean*(1-penalty),
  averaged over pairs. Only the exact module: METEOR's stem/synonym/paraphrase modules are English resources
  (WordNet is not available offline here, and would not apply to Vietnamese). The alignment is NLTK's: each
  hypothesis token, right to left, takes the right-most unused identical reference token; so the value equals
  `nltk.translate.meteor_score.meteor_score` with an identity stemmer and an empty WordNet. It is not the
  METEOR 1.5 jar's value (which searches the alignment with fewest chunks and uses the extra modules).
- CIDEr-D (Vedantam et al.), exactly as pycocoevalcap's `Cider` (the coco-caption CIDEr-D): n = 1..4, TF-IDF
  with document frequency over the references of the evaluated corpus, idf = log(N) - log(max(1, df)),
  clipping min(hyp, ref) on TF-IDF, Gaussian length penalty with sigma = 6 (length = number of bigrams, as
  that code counts it), mean over orders, x10. We report 100 x that value (captioning papers' convention),
  so 100 here is pycocoevalcap's 1.0; it is not bounded by 100. Caveat: sigma = 6 was tuned for captions;
  whole reports whose lengths differ by more than ~20 tokens get a penalty near 0 (the reproduction's reports,
  ~200 tokens shorter than their references, score ~1e-22), so CIDEr-D is informative for VQA answers and
  sentence-level pairs, and on whole reports mostly measures length agreement.

CLI: `python -m jaxpetct.eval.metrics --predictions FILE.jsonl [--pred-key generated --ref-key reference]
[--bertscore-model DIR [--bertscore-layer N --bertscore-idf --bertscore-baseline CSV]]`; BERTScore
(`jaxpetct.eval.bertscore`) runs only from a local encoder folder and is otherwise skipped with a note on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections import Counter, defaultdict
from typing import Sequence

from jaxpetct.text.vietnamese import WordSegmentationUnavailable, tokenize
from jaxpetct.errors import UserError, one_line

Tokens = Sequence[str]
SMOOTH_METHODS = {"none": None, "floor": 0.1, "add-k": 1, "exp": None}


class PredictionFileError(UserError, ValueError):
    """A predictions/lesions file cannot be used; names the file, the 1-based line (0 = whole file) and why."""

    def __init__(self, path: str | pathlib.Path, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {reason}")


def _ngrams(tokens: Tokens, n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


# ----------------------------------------------------------------------------------------------- BLEU
def bleu_statistics(hyp: Tokens, ref: Tokens, max_order: int = 4) -> list[int]:
    """[hyp_len, ref_len, matches_1..N, totals_1..N] for one pair: corpus BLEU sums these."""
    matches, totals = [0] * max_order, [0] * max_order
    for n in range(1, max_order + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        totals[n - 1] = sum(h.values())
        matches[n - 1] = sum(min(c, r[g]) for g, c in h.items())
    return [len(hyp), len(ref), *matches, *totals]


def bleu_from_statistics(stats: Sequence[float], max_order: int, smooth: str = "exp") -> float:
    """Corpus BLEU (0-100) from summed statistics, with sacrebleu's smoothing semantics."""
    if smooth not in SMOOTH_METHODS:
        raise ValueError(f"smooth must be one of {sorted(SMOOTH_METHODS)}, got {smooth!r}")
    hyp_len, ref_len = stats[0], stats[1]
    matches = list(stats[2 : 2 + max_order])
    totals = list(stats[2 + max_order : 2 + 2 * max_order])
    bp = 1.0 if hyp_len >= ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0)
    if not any(matches):
        return 0.0
    k = SMOOTH_METHODS[smooth]
    log_sum, exp_div = 0.0, 1.0
    for n in range(max_order):
        m, t = matches[n], totals[n]
        if smooth == "add-k" and n > 0:
            m, t = m + k, t + k
        if t == 0:
            return 0.0  # no n-grams of this order at all: BLEU is 0 (sacrebleu's behaviour without effective order)
        if m > 0:
            p = m / t
        elif smooth == "exp":
            exp_div *= 2
            p = 1.0 / (exp_div * t)
        elif smooth == "floor":
            p = k / t
        else:
            return 0.0
        log_sum += math.log(p)
    return 100.0 * bp * math.exp(log_sum / max_order)


def corpus_bleu(hyps: Sequence[Tokens], refs: Sequence[Tokens], max_order: int = 4, smooth: str = "exp") -> float:
    stats = [0] * (2 + 2 * max_order)
    for h, r in zip(hyps, refs, strict=True):
        stats = [a + b for a, b in zip(stats, bleu_statistics(h, r, max_order))]
    return bleu_from_statistics(stats, max_order, smooth)


# ---------------------------------------------------------------------------------------------- ROUGE
def _f1(overlap: float, n_hyp: int, n_ref: int) -> float:
    p = overlap / max(n_hyp, 1)
    r = overlap / max(n_ref, 1)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def rouge_n(hyp: Tokens, ref: Tokens, n: int) -> float:
    """ROUGE-N F-measure of one pair (rouge-score's definition: clipped n-gram overlap)."""
    h, r = _ngrams(hyp, n), _ngrams(ref, n)
    overlap = sum(min(c, r[g]) for g, c in h.items())
    return _f1(overlap, sum(h.values()), sum(r.values()))


def lcs_length(a: Tokens, b: Tokens) -> int:
    """Longest common subsequence length, bit-parallel (Hyyro 2004): O(len(a) * len(b) / wordsize)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = defaultdict(int)
    for j, tok in enumerate(b):
        masks[tok] |= 1 << j
    full = (1 << len(b)) - 1
    v = full
    for tok in a:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - bin(v).count("1")


def rouge_l(hyp: Tokens, ref: Tokens) -> float:
    """ROUGE-L F-measure of one pair: LCS over the whole token sequences."""
    return _f1(lcs_length(hyp, ref), len(hyp), len(ref))


# --------------------------------------------------------------------------------------------- METEOR
def meteor(hyp: Tokens, ref: Tokens, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> float:
    """Exact-match METEOR of one pair in [0, 1] (alignment and formula as documented above)."""
    positions: dict[str, list[int]] = defaultdict(list)
    for j, tok in enumerate(ref):
        positions[tok].append(j)
    matches = []
    for i in range(len(hyp) - 1, -1, -1):
        pos = positions.get(hyp[i])
        if pos:
            matches.append((i, pos.pop()))
    if not matches or not hyp or not ref:
        return 0.0
    matches.sort()
    chunks = 1 + sum(
        1 for (i0, j0), (i1, j1) in zip(matches, matches[1:]) if not (i1 == i0 + 1 and j1 == j0 + 1)
    )
    p, r = len(matches) / len(hyp), len(matches) / len(ref)
    fmean = p * r / (alpha * p + (1 - alpha) * r)
    return fmean * (1 - gamma * (chunks / len(matches)) ** beta)


# -------------------------------------------------------------------------------------------- CIDEr-D
def cider_d(hyps: Sequence[Tokens], refs: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = 6.0) -> list[float]:
    """Per-item CIDEr-D on pycocoevalcap's scale (includes its x10); several references per item allowed."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    if not hyps:
        return []

    def counts(toks: Tokens) -> Counter:
        c: Counter = Counter()
        for k in range(1, n + 1):
            c.update(_ngrams(toks, k))
        return c

    ref_counts = [[counts(r) for r in rs] for rs in refs]
    df: Counter = Counter()
    for rcs in ref_counts:
        df.update({g for rc in rcs for g in rc})
    log_n = math.log(float(len(refs)))

    def vec(c: Counter):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in c.items():
            k = len(g) - 1
            w = float(tf) * (log_n - math.log(max(1.0, df[g])))
            v[k][g] = w
            norm[k] += w * w
            if k == 1:  # pycocoevalcap counts bigrams as "length"; kept for exact agreement
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for h, rcs in zip(hyps, ref_counts):
        vh, nh, lh = vec(counts(h))
        total = [0.0] * n
        for rc in rcs:
            vr, nr, lr = vec(rc)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        scores.append(10.0 * (sum(total) / n) / len(rcs))
    return scores


# ------------------------------------------------------------------------------------------- corpus API
def content_tokens(tokens: Tokens) -> list[str]:
    """The tokens ROUGE matches: those holding at least one letter or digit (any script)."""
    return [t for t in tokens if any(ch.isalnum() for ch in t)]


def compute_text_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    lowercase: bool = True,
    punctuation: str = "split",
    segment: bool = False,
    smooth: str = "exp",
    language: str = "vi",
) -> dict[str, float]:
    """All text metrics of a corpus on the 0-100 scale: bleu1..bleu4, rouge1, rouge2, rougeL, meteor, cider.
    `language` "en" tokenises by the WMT convention (text.english.tokenize_13a, lower-cased), "vi" as above."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no (prediction, reference) pairs to score")
    if language == "en":
        from jaxpetct.text.english import tokenize_13a

        hyps = [tokenize_13a(p, lowercase) for p in predictions]
        refs = [tokenize_13a(r, lowercase) for r in references]
    else:
        tok = dict(lowercase=lowercase, punctuation=punctuation, segment=segment)
        hyps = [tokenize(p, **tok) for p in predictions]
        refs = [tokenize(r, **tok) for r in references]
    out = {f"bleu{k}": corpus_bleu(hyps, refs, k, smooth) for k in range(1, 5)}
    m = len(hyps)
    words = [(content_tokens(h), content_tokens(r)) for h, r in zip(hyps, refs)]
    out["rouge1"] = 100.0 * sum(rouge_n(h, r, 1) for h, r in words) / m
    out["rouge2"] = 100.0 * sum(rouge_n(h, r, 2) for h, r in words) / m
    out["rougeL"] = 100.0 * sum(rouge_l(h, r) for h, r in words) / m
    out["meteor"] = 100.0 * sum(meteor(h, r) for h, r in zip(hyps, refs)) / m
    out["cider"] = 100.0 * sum(cider_d(hyps, [[r] for r in refs])) / m
    return out


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
    """Objects of a JSONL file (blank lines skipped); any unreadable line raises `PredictionFileError`."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise PredictionFileError(p, 0, "file not found")
    rows = []
    with p.open(encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PredictionFileError(p, no, f"not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise PredictionFileError(p, no, f"expected a JSON object, got {type(obj).__name__}")
            rows.append({**obj, "_line": no})  # "_line": 1-based line number, for error messages
    if not rows:
        raise PredictionFileError(p, 0, "no records")
    return rows


def read_prediction_pairs(path: str | pathlib.Path, pred_key: str = "generated", ref_key: str = "reference"):
    """(predictions, references, rows) from a predictions JSONL; a missing or non-string field names its line."""
    rows = read_jsonl(path)
    for row in rows:
        for key in (pred_key, ref_key):
            if key not in row:
                raise PredictionFileError(path, row["_line"], f"missing key {key!r}")
            if not isinstance(row[key], str):
                raise PredictionFileError(path, row["_line"], f"{key!r} must be a string")
    return [r[pred_key] for r in rows], [r[ref_key] for r in rows], rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxpetct.eval.metrics", description=__doc__.splitlines()[0])
    ap.add_argument("--predictions", required=True, help="JSONL with one prediction/reference pair per line")
    ap.add_argument("--pred-key", default="generated")
    ap.add_argument("--ref-key", default="reference")
    ap.add_argument("--smooth", default="exp", choices=sorted(SMOOTH_METHODS))
    ap.add_argument("--punctuation", default="split", choices=["split", "drop"])
    ap.add_argument("--keep-case", action="store_true", help="do not lower-case tokens")
    ap.add_argument("--segment", action="store_true", help="pyvi word segmentation before scoring")
    ap.add_argument("--bertscore-model", metavar="DIR", help="local RoBERTa-family encoder folder: adds bertscore")
    ap.add_argument("--bertscore-layer", type=int, help="encoder layer (default: see jaxpetct.eval.bertscore)")
    ap.add_argument("--bertscore-idf", action="store_true", help="IDF weights from the references")
    ap.add_argument("--bertscore-baseline", metavar="CSV", help="rescale with this baseline file (LAYER,P,R,F)")
    args = ap.parse_args(argv)
    try:
        preds, refs, _ = read_prediction_pairs(args.predictions, args.pred_key, args.ref_key)
        scores = compute_text_metrics(
            preds, refs, lowercase=not args.keep_case, punctuation=args.punctuation,
            segment=args.segment, smooth=args.smooth,
        )
        if args.bertscore_model:
            from jaxpetct.eval.bertscore import compute_bertscore  # JAX is imported only when asked for

            scores.update(compute_bertscore(preds, refs, args.bertscore_model, layer=args.bertscore_layer,
                                            idf=args.bertscore_idf, baseline=args.bertscore_baseline))
    except (UserError, FileNotFoundError, WordSegmentationUnavailable, ValueError) as e:
        print(one_line(e), file=sys.stderr)
        return 2
    if not args.bertscore_model:
        print("note: bertscore skipped: no --bertscore-model DIR given (nothing is downloaded)", file=sys.stderr)
    print(json.dumps(scores, indent=None, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
