"""What a dataset build will do, decided once in the driver: studies per split, lesion lists, VQA pairs, pairs.

The plan is made from the cohort listing alone (no volume is read), and every `WorkItem` is picklable and carries
what one worker needs to produce its examples, so the plain loop and the Beam pipeline consume the same items and
therefore write the same records. Problems found while planning (bad manifest rows, studies with no date) become
quarantine records straight away; problems found while loading become quarantine records in the worker.

Lesion lists (for VQA generation, comparison texts and the `lesions` feature) come, in order of preference, from
`synthetic_truth.jsonl` (per lesion with its report section), `lesions.jsonl` ({"patient_id" or "key",
"lesions": [...]}, e.g. the release's LLM-extracted lists) or `expert_lesions/` (the expert test set).
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib
from typing import Optional

import numpy as np

from jaxpetct.data.records import RecordSpec
from jaxpetct.errors import UserError
from jaxpetct.studies import cohort, splits
from jaxpetct.studies.deid import scrub_text
from jaxpetct.studies.study import StudyError
from jaxpetct.text.report import checked_text
from jaxpetct.text.vqa import QAPair, VQAError, load_vqa_pairs

TEST_EXPERT = "test_expert"
SPLITS = (splits.TRAIN, splits.VALIDATION, splits.TEST, TEST_EXPERT)
TRUTH, LESIONS, VQA, EXPERT = "synthetic_truth.jsonl", "lesions.jsonl", "vqa.jsonl", "expert_lesions"


class CohortError(UserError, ValueError):
    """The manual dir as a whole cannot be built from; the message is one line naming the folder/file."""


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Everything a worker needs besides its item (picklable; part of the dataset's identity)."""

    spec: RecordSpec
    salt: str  # resolved by the builder (studies.deid.resolve_salt): never a silent default
    region_overlap_mm: float = 60.0  # 20 slices at the release's nominal 3 mm, the paper's overlap
    include_whole_body: bool = False  # also pair the whole volume with the musculoskeletal findings
    seed: int = 0  # VQA grouping, comparison pairing
    vqa_max_turns: int = 3
    vqa_max_pairs: Optional[int] = 8  # generated QA pairs per region/study
    comparison_pairs_per_study: int = 1


@dataclasses.dataclass(frozen=True)
class LesionList:
    all: tuple  # lesion JSON objects (paper schema)
    by_section: Optional[dict] = None  # report section -> tuple of lesion JSON; None when sections are unknown


@dataclasses.dataclass(frozen=True)
class WorkItem:
    split: str
    refs: tuple  # one StudyRef, or (prior, current) for a comparison
    lesions: tuple = ()  # LesionList or None per ref
    vqa: tuple = ()  # QAPairs from vqa.jsonl for refs[0]


@dataclasses.dataclass
class Plan:
    items: dict  # split -> list[WorkItem]
    quarantine: list  # dicts {split, study, file, reason}
    notes: list  # non-fatal facts about the plan (unmatched VQA pairs, studies without a VQA source, ...)
    studies: int = 0


def quarantine_record(split: str, study: str, file: str, reason: str) -> dict:
    return {"split": split, "study": study, "file": file, "reason": " ".join(str(reason).split())}


def _read_jsonl(path: str) -> list[tuple[int, object]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    out.append((n, json.loads(line)))
                except json.JSONDecodeError:
                    out.append((n, None))
    return out


def _key_resolver(refs):
    """patient_id -> study key: the key itself, or a release name that names exactly one study."""
    keys = {r.key for r in refs}
    names: dict[str, list[str]] = {}
    for r in refs:
        if r.release is not None and r.release.name:
            names.setdefault(r.release.name, []).append(r.key)

    def resolve(pid: str) -> Optional[str]:
        if pid in keys:
            return pid
        hits = names.get(pid, [])
        return hits[0] if len(hits) == 1 else None

    return resolve


def _scrubbed(obj):
    """Lesion JSON with every string scrubbed (free text written outside the reader, like the reports)."""
    if isinstance(obj, str):
        return scrub_text(checked_text(obj, "a lesion field"))
    if isinstance(obj, dict):
        return {k: _scrubbed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrubbed(v) for v in obj]
    return obj


def read_lesions(root: str, refs, notes: list) -> dict[str, LesionList]:
    """Lesion lists by study key from the first source present (see the module docstring)."""
    resolve = _key_resolver(refs)
    truth = os.path.join(root, TRUTH)
    out: dict[str, LesionList] = {}
    if os.path.isfile(truth):
        for n, rec in _read_jsonl(truth):
            if not isinstance(rec, dict) or not isinstance(rec.get("lesions"), list) or "key" not in rec:
                notes.append(f"{TRUTH}:{n}: not a truth record")
                continue
            try:  # exact synthetic truth, so checked but never scrubbed
                checked_text(json.dumps(rec, ensure_ascii=False), "the truth record")
            except ValueError as e:
                notes.append(f"{TRUTH}:{n}: lesion list left out: {e}")
                continue
            by_section: dict[str, list] = {}
            for les in rec["lesions"]:
                by_section.setdefault(les.get("section", ""), []).append(les["lesion"])
            out[rec["key"]] = LesionList(tuple(les["lesion"] for les in rec["lesions"]),
                                         {k: tuple(v) for k, v in by_section.items()})
        return out
    listed = os.path.join(root, LESIONS)
    if os.path.isfile(listed):
        for n, rec in _read_jsonl(listed):
            pid = rec.get("key", rec.get("patient_id")) if isinstance(rec, dict) else None
            key = resolve(pid) if isinstance(pid, str) else None
            if key is None or not isinstance(rec.get("lesions"), list):
                notes.append(f"{LESIONS}:{n}: names no single study or has no lesion list")
                continue
            try:
                out[key] = LesionList(tuple(_scrubbed(les) for les in rec["lesions"]))
            except ValueError as e:
                notes.append(f"{LESIONS}:{n}: lesion list left out: {e}")
        return out
    folder = os.path.join(root, EXPERT)
    if os.path.isdir(folder):
        by_release = {splits.release_key(r): r.key for r in refs if splits.release_key(r) is not None}
        for name in sorted(os.listdir(folder)):
            try:
                key = by_release.get(splits.parse_expert_name(name))
            except ValueError:
                continue  # read_expert_set reports badly named files
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    lesions = json.load(f)
            except (ValueError, OSError) as e:  # invalid UTF-8 or JSON: positions only, never content
                notes.append(f"{EXPERT}/{name}: lesion list left out: {type(e).__name__}: {e}")
                continue
            if key is not None and isinstance(lesions, list):
                try:
                    out[key] = LesionList(tuple(_scrubbed(les) for les in lesions))
                except ValueError as e:
                    notes.append(f"{EXPERT}/{name}: lesion list left out: {e}")
    return out


def read_vqa(root: str, refs, notes: list) -> dict[str, tuple[QAPair, ...]]:
    path = os.path.join(root, VQA)
    if not os.path.isfile(path):
        return {}
    try:  # patient ids naming no single study of the manifest come back as skipped lines
        pairs, skipped = load_vqa_pairs(path, key=_key_resolver(refs))
    except VQAError as e:
        raise CohortError(str(e)) from None
    notes += [f"{where}: {why}" for where, why in skipped]
    # free text from outside the reader: scrubbed like the reports are
    return {k: tuple(QAPair(scrub_text(qa.question), scrub_text(qa.answer)) for qa in v) for k, v in pairs.items()}


def _check_root(root: str) -> None:
    if not os.path.isdir(root):
        raise CohortError(f"manual_dir {root} does not exist")
    if cohort.is_release_root(root):
        return
    if any(n.startswith("PETCT") for n in os.listdir(root)):
        raise CohortError(f"manual_dir {root}: the manifest metadata.csv is missing (release folders are present)")


def _pairs(refs: list, n_pairs: int, seed: int, split: str) -> list[tuple]:
    """Each study paired with `n_pairs` other studies of its split, by a seeded permutation (never with itself)."""
    if len(refs) < 2 or n_pairs < 1:
        return []
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    out, seen = [], set()
    for _ in range(n_pairs):
        perm = rng.permutation(len(refs))
        for i, j in enumerate(perm):
            j = int(j) if j != i else (i + 1) % len(refs)
            if (i, j) not in seen:
                seen.add((i, j))
                out.append((refs[i], refs[j]))
    return out


def make_plan(root: str, options: BuildOptions) -> Plan:
    """The work of one build; CohortError when `root` is not a release root or a folder with DICOM studies."""
    root = os.path.abspath(os.fspath(root))
    _check_root(root)
    try:
        refs = cohort.list_studies(root)
    except StudyError as e:
        raise CohortError(f"manual_dir {root}: {e.file}: {e.reason}") from None
    if not refs:
        raise CohortError(f"manual_dir {root}: no metadata.csv and no CT/PET DICOM study found")
    notes: list[str] = [f"{s.file}: {s.reason}" for s in getattr(refs, "skipped", [])]
    quarantine = []
    grouped = splits.split_refs(refs)
    for ref in grouped.pop(splits.UNASSIGNED):
        reason = ref.problem or "no acquisition year/month: no temporal split"
        file = "metadata.csv" if ref.problem else "-"
        quarantine.append(quarantine_record("-", cohort.study_id(ref, options.salt), file, reason))
    if os.path.isdir(os.path.join(root, EXPERT)):
        keys, bad = splits.read_expert_set(os.path.join(root, EXPERT))
        notes += [f"{EXPERT}/{name}: {why}" for name, why in bad]
        found, missing = splits.expert_refs(grouped[splits.TEST] + grouped[splits.TRAIN] + grouped[splits.VALIDATION],
                                            keys)
        if missing:
            notes.append(f"{EXPERT}: {len(missing)} annotated studies are not in the manifest")
        grouped[TEST_EXPERT] = found
    lesions = read_lesions(root, refs, notes)
    vqa = read_vqa(root, refs, notes) if options.spec.kind == "vqa" else {}
    items: dict[str, list[WorkItem]] = {}
    for split in SPLITS:
        members = sorted(grouped.get(split, []), key=lambda r: r.key)
        kind = options.spec.kind
        if kind == "comparison":
            usable = [r for r in members if r.key in lesions]
            if len(usable) < len(members):
                notes.append(f"{split}: {len(members) - len(usable)} studies have no lesion list for comparison texts")
            work = [WorkItem(split, (a, b), (lesions[a.key], lesions[b.key]))
                    for a, b in _pairs(usable, options.comparison_pairs_per_study, options.seed, split)]
        elif kind == "vqa":
            work = [WorkItem(split, (r,), (lesions.get(r.key),), vqa.get(r.key, ()))
                    for r in members if r.key in vqa or r.key in lesions]
            if len(work) < len(members):
                notes.append(f"{split}: {len(members) - len(work)} studies have neither VQA pairs nor lesions")
        else:
            work = [WorkItem(split, (r,), (lesions.get(r.key),)) for r in members]
        if work:
            items[split] = work
    if not items:
        raise CohortError(f"manual_dir {root}: no study can be assigned to a split for config {options.spec.kind}")
    return Plan(items, quarantine, notes, studies=len(refs))
