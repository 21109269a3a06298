"""Clinical F1 of generated reports: F1-T (type), F1-TP (+position), F1-TF (+FDG), F1-TPF (all three).

Protocol (the paper's, with our published category tables so it runs offline and repeatably):
  1. Lesions are taken from each generated and each reference report: by our deterministic extractor
     (`jaxpetct.eval.lesions`) by default, or from externally extracted lesion files (JSONL lines
     {"patient_id", "lesions": [...]}, e.g. an LLM's, line-aligned with the predictions) so the paper's
     LLM-extraction protocol can be reproduced exactly.
  2. Each lesion is mapped to (type category, location group, FDG yes/no) by `jaxpetct.eval.lesion_vocab`
     (13 types + other, 6 location groups + other, uptake text or SUVmax).
  3. Per report and per criterion, predicted and reference lesions are matched one-to-one: a pair may match
     when their categories agree on the criterion's fields (T: type; TP: type and location group; TF: type and
     FDG; TPF: all three), and the matching is a maximum bipartite matching
     (`scipy.optimize.linear_sum_assignment` on the 0/1 compatibility matrix), so the count never depends on
     lesion order.
  4. Micro F1 over the corpus (the headline numbers): F1 = 2 * matched / (n_predicted + n_reference), i.e.
     precision = matched / n_predicted and recall = matched / n_reference, all summed over reports, x100.
     A corpus where neither side has any lesion scores 100 (nothing to find, nothing claimed).
     Macro F1 (mean over reports of the per-report F1, a report with no lesions on either side counting 100)
     is given too, because micro F1 is dominated by lesion-rich reports.

CLI: `python -m jaxpetct.eval.clinical --predictions FILE.jsonl [--pred-key generated --ref-key reference]
[--pred-lesions F --ref-lesions F]` prints a JSON object with F1-T, F1-TP, F1-TF, F1-TPF (and details).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from jaxpetct.eval.lesion_vocab import fdg_positive, location_group, type_category
from jaxpetct.eval.lesions import extract_lesions
from jaxpetct.eval.metrics import PredictionFileError, read_jsonl
from jaxpetct.text.lesion import Lesion
from jaxpetct.errors import UserError, one_line

CRITERIA: dict[str, tuple[str, ...]] = {
    "F1-T": ("type",),
    "F1-TP": ("type", "location"),
    "F1-TF": ("type", "fdg"),
    "F1-TPF": ("type", "location", "fdg"),
}


@dataclasses.dataclass(frozen=True)
class LesionKey:
    """The categorical view of a lesion that clinical F1 compares."""

    type: str
    location: str
    fdg: bool


def categorize(lesion: Lesion) -> LesionKey:
    return LesionKey(type_category(lesion.type), location_group(lesion.location), fdg_positive(lesion.uptake, lesion.suvmax))


def match_count(pred: Sequence[LesionKey], ref: Sequence[LesionKey], fields: Sequence[str]) -> int:
    """Size of a maximum one-to-one matching where a pair matches iff it agrees on every field."""
    if not pred or not ref:
        return 0
    ok = np.array([[all(getattr(p, f) == getattr(r, f) for f in fields) for r in ref] for p in pred], dtype=float)
    rows, cols = linear_sum_assignment(ok, maximize=True)
    return int(ok[rows, cols].sum())


def _f1(matched: int, n_pred: int, n_ref: int) -> float:
    return 100.0 if n_pred + n_ref == 0 else 200.0 * matched / (n_pred + n_ref)


def clinical_f1(pred_lesions: Sequence[Sequence[Lesion]], ref_lesions: Sequence[Sequence[Lesion]]) -> dict:
    """Micro F1-T/TP/TF/TPF over a corpus (0-100), plus precision, recall, macro F1 and counts."""
    if len(pred_lesions) != len(ref_lesions):
        raise ValueError(f"{len(pred_lesions)} predicted lesion lists but {len(ref_lesions)} reference lists")
    preds = [[categorize(x) for x in ls] for ls in pred_lesions]
    refs = [[categorize(x) for x in ls] for ls in ref_lesions]
    n_pred, n_ref = sum(map(len, preds)), sum(map(len, refs))
    out: dict = {}
    details: dict = {"n_reports": len(preds), "n_pred_lesions": n_pred, "n_ref_lesions": n_ref}
    for name, fields in CRITERIA.items():
        per_report = [match_count(p, r, fields) for p, r in zip(preds, refs)]
        matched = sum(per_report)
        out[name] = _f1(matched, n_pred, n_ref)
        details[name] = {
            "matched": matched,
            "precision": 100.0 * matched / n_pred if n_pred else (100.0 if not n_ref else 0.0),
            "recall": 100.0 * matched / n_ref if n_ref else (100.0 if not n_pred else 0.0),
            "macro_f1": float(np.mean([_f1(m, len(p), len(r)) for m, p, r in zip(per_report, preds, refs)]))
            if preds else 100.0,
        }
    out["details"] = details
    return out


def lesions_from_json(items, path, line: int) -> list[Lesion]:
    if not isinstance(items, list):
        raise PredictionFileError(path, line, f"'lesions' must be a list, got {type(items).__name__}")
    out = []
    for k, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise PredictionFileError(path, line, f"lesion {k} is {type(obj).__name__}, not an object")
        out.append(Lesion.from_json(obj))
    return out


def read_lesion_file(path: str | pathlib.Path) -> list[tuple[object, list[Lesion]]]:
    """[(patient_id, lesions)] from a JSONL like report_lesions_llm_extracted.jsonl, one line per report."""
    rows = read_jsonl(path)
    out = []
    for row in rows:
        if "lesions" not in row:
            raise PredictionFileError(path, row["_line"], "missing key 'lesions'")
        out.append((row.get("patient_id", row.get("id")), lesions_from_json(row["lesions"], path, row["_line"])))
    return out


def read_expert_file(path: str | pathlib.Path) -> list[Lesion]:
    """Lesions of one expert annotation file (a JSON list of lesion objects, keys spelt hoá or hóa)."""
    p = pathlib.Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PredictionFileError(p, 0, "file not found") from None
    except json.JSONDecodeError as e:
        raise PredictionFileError(p, e.lineno, f"not valid JSON ({e.msg})") from None
    return lesions_from_json(data, p, 0)


def _aligned(path: str, lesions, rows) -> list[list[Lesion]]:
    """External lesions line-aligned with the predictions; ids, where both sides have one, must agree."""
    if len(lesions) != len(rows):
        raise PredictionFileError(path, 0, f"{len(lesions)} lesion lines but {len(rows)} predictions")
    for (pid, _), row in zip(lesions, rows):
        rid = row.get("patient_id", row.get("id"))
        if pid is not None and rid is not None and str(pid) != str(rid):
            raise PredictionFileError(path, row["_line"], f"id {pid!r} does not match the predictions' {rid!r}")
    return [ls for _, ls in lesions]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxpetct.eval.clinical", description=__doc__.splitlines()[0])
    ap.add_argument("--predictions", required=True, help="JSONL with one prediction/reference pair per line")
    ap.add_argument("--pred-key", default="generated")
    ap.add_argument("--ref-key", default="reference")
    ap.add_argument("--pred-lesions", help="JSONL of externally extracted lesions for the predictions")
    ap.add_argument("--ref-lesions", help="JSONL of externally extracted lesions for the references")
    args = ap.parse_args(argv)
    try:
        need_pred, need_ref = args.pred_lesions is None, args.ref_lesions is None
        rows = read_jsonl(args.predictions)
        for row in rows:
            for key, needed in ((args.pred_key, need_pred), (args.ref_key, need_ref)):
                if needed and not isinstance(row.get(key), str):
                    why = "missing key" if key not in row else "non-string value for key"
                    raise PredictionFileError(args.predictions, row["_line"], f"{why} {key!r}")
        pred_l = (_aligned(args.pred_lesions, read_lesion_file(args.pred_lesions), rows) if not need_pred
                  else [extract_lesions(r[args.pred_key]) for r in rows])
        ref_l = (_aligned(args.ref_lesions, read_lesion_file(args.ref_lesions), rows) if not need_ref
                 else [extract_lesions(r[args.ref_key]) for r in rows])
    except (UserError, FileNotFoundError) as e:
        print(one_line(e), file=sys.stderr)
        return 2
    print(json.dumps(clinical_f1(pred_l, ref_l), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
