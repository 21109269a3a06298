"""Lesion-centre maps: which encoder tokens of a region record hold a lesion centre (dense encoder supervision).

The paper's CT-ViT arrives pre-trained (CT-CLIP on CT-RATE, then CLIP on ViMed-PET). Where no such weights exist
(the CPU demo, a new modality) a small encoder trained on reports alone does not learn to see focal lesions:
the report says *that* a lesion exists, not *where* (docs/results.md, "Does the model see lesions?"). Lesion centres
-- the synthetic cohort's ground truth, or a hospital's annotations -- say where, and per-token supervision
from them gives an encoder whose features mark lesions, the way `lm_pretrain` stands in for a pretrained LLM.

Lesion table: JSON lines, one per study, ``{"key": <release folder name> | "study_id": <pseudonym>,
"lesions": [{"ct_voxel": [k, j, i]}, ...]}`` with (slice, row, column) indices on the study's CT grid.
`synthetic_truth.jsonl` of a synthetic cohort is such a table. Keys are pseudonymised with the run's salt on
reading, as at ingest, and nothing else of a line is kept (the synthetic truth also holds a fake patient name).

A lesion centre at CT voxel (k, j, i) of a region record cut from CT slices [a, b) falls in token
(floor((k - a) / (b - a) * T), floor(j / H_ct * h), floor(i / W_ct * w)) of the encoder's (T, h, w) grid: the
record's volume is the slab [a, b) resized to the encoder input, so fractions of the slab map to fractions of
the grid. Centres outside the slab are not in view.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from jaxpetct.data import records
from jaxpetct.errors import UserError

Centres = tuple[tuple[int, int, int], ...]


class LesionTableError(UserError, ValueError):
    """A lesion table that cannot be read; the message names the file, the line and the reason."""


def read_lesion_table(path: str, salt: str) -> dict[str, Centres]:
    """{pseudonymous study_id: lesion centres (k, j, i) on the CT grid} from a lesion table (module docstring)."""
    from jaxpetct.studies.deid import pseudonymize

    if not os.path.isfile(path):
        raise LesionTableError(f"{path}: no lesion table there (encoder_pretrain with objective 'lesion_map' needs "
                               f"data.lesion_table, or a synthetic cohort's synthetic_truth.jsonl)")
    table: dict[str, Centres] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                row = json.loads(line)
                if "study_id" in row:
                    sid = str(row["study_id"])
                elif "key" in row:
                    sid = pseudonymize(str(row["key"]), salt)
                else:
                    raise LesionTableError(f"{where}: needs 'key' (release folder) or 'study_id'")
                centres = []
                for les in row.get("lesions", []):
                    k, j, i = (int(v) for v in les["ct_voxel"])
                    centres.append((k, j, i))
            except LesionTableError:
                raise
            except (ValueError, KeyError, TypeError) as e:
                raise LesionTableError(f"{where}: {type(e).__name__}: {e} (expected "
                                       f'{{"key": ..., "lesions": [{{"ct_voxel": [k, j, i]}}]}})') from None
            if sid in table:
                raise LesionTableError(f"{where}: study listed twice")
            table[sid] = tuple(centres)
    return table


def lesion_map(record: Mapping, centres: Sequence[tuple[int, int, int]], grid: tuple[int, int, int],
               slice_tokens: Sequence[int] = ()) -> np.ndarray:
    """(T, h, w) float32: 1 on tokens that hold a lesion centre of this region record, 0 elsewhere. A centre's
    token along T is its share of the slab (T tokens over equal slabs, CT-ViT's), or with `slice_tokens` (one entry
    per slice of the encoder's input, e.g. Cosmos' causal frames: the first slice alone) that of its input slice."""
    t, h, w = grid
    a, b = (int(v) for v in np.asarray(record["slice_range"]).tolist())
    shape = [int(v) for v in np.asarray(record["source_shape"]).tolist()]
    if b <= a or len(shape) != 3:
        rid = records.as_text(record.get("id", b"?"))
        raise ValueError(f"record {rid}: slice_range {[a, b]} / source_shape {shape} cannot place lesion centres")
    out = np.zeros((t, h, w), np.float32)
    for k, j, i in centres:
        if a <= k < b and 0 <= j < shape[1] and 0 <= i < shape[2]:
            z = (slice_tokens[(k - a) * len(slice_tokens) // (b - a)] if len(slice_tokens)
                 else (k - a) * t // (b - a))
            out[int(z), int(j * h // shape[1]), int(i * w // shape[2])] = 1.0
    return out
