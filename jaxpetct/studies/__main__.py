"""Check data before building: `python -m jaxpetct.studies inspect PATH [--json]`, and write the synthetic cohort.

    python -m jaxpetct.studies inspect DICOM_FOLDER [--json]
    python -m jaxpetct.studies inspect RELEASE_ROOT --patient NAME [--json]
    python -m jaxpetct.studies synth OUT [--n 24] [--seed 0] [--size tiny|small|paper] [--dicom] [--phi-canaries]

`--patient` takes the manifest name ("patient_12"), or the study key ("PETCT2017/THANG 8/day_1_patient_12")
when a name repeats across years. Unreadable input exits with status 2 and one line naming the file; nothing
identifying is printed (the study id is a salted pseudonym; the salt comes from --salt or $JAXPETCT_SALT, and real
data without one is refused; a synthetic cohort falls back to the public demo salt).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import numpy as np

from jaxpetct.studies import cohort, physics, regions
from jaxpetct.studies.study import Study, StudyError
from jaxpetct.text.report import IMPRESSION_KEY, SECTIONS
from jaxpetct.errors import UserError, one_line
from jaxpetct.studies.deid import is_synthetic_cohort, resolve_salt

# Unusual but not refused (the refusals are physics.BOUNDS, applied while the study is read): a CT padded oddly or
# holding metal, a PET hotter than SUV 100 or with negative values.
HU_RANGE, USUAL_SUV_MAX = physics.USUAL["hu"], physics.USUAL["suv_max"]


class InspectError(UserError):
    """A one-line, non-identifying reason to stop."""


def _pick_release(refs: list, patient: Optional[str]) -> cohort.StudyRef:
    if not patient:
        raise InspectError("a release root needs --patient NAME (a manifest name or a study key)")
    hits = [r for r in refs if patient in (r.key, r.release.name, r.release.ct_path, r.release.pet_path)
            or r.key.endswith("/" + patient)]
    if not hits:
        raise InspectError(f"metadata.csv: no study named {patient!r}")
    if len(hits) > 1:
        keys = ", ".join(r.key for r in hits[:6])
        raise InspectError(f"metadata.csv: {patient!r} names {len(hits)} studies; pass one key: {keys}")
    return hits[0]


def _pick_dicom(refs: list) -> cohort.StudyRef:
    if not refs:
        reasons = {s.reason for s in getattr(refs, "skipped", [])}
        hint = f" ({len(refs.skipped)} files skipped, e.g. {sorted(reasons)[0]})" if reasons else ""
        raise InspectError(f"no metadata.csv and no CT/PET DICOM study found{hint}")
    if len(refs) > 1:
        raise InspectError(f"{len(refs)} DICOM studies found: point at the folder of one study")
    return refs[0]


def _finite_range(data) -> tuple[Optional[float], Optional[float]]:
    arr = np.asarray(data)
    if arr.size == 0:
        return None, None
    return float(np.nanmin(arr)), float(np.nanmax(arr))


def summarize(study: Study, problems: list[str], config: regions.RegionConfig = regions.RegionConfig()) -> dict:
    """The inspect record of a loaded study; adds what looks wrong (but did not stop loading) to `problems`."""
    hu_min, hu_max = _finite_range(study.ct.data)
    pet_min, pet_max = _finite_range(study.pet.data)
    if study.ct.units != "HU":
        problems.append(f"CT units are {study.ct.units}, not HU")
    elif hu_min is not None and (hu_min < HU_RANGE[0] or hu_max > HU_RANGE[1]):
        problems.append(f"CT values span {hu_min:g}..{hu_max:g} HU, outside the usual {HU_RANGE[0]:g}..{HU_RANGE[1]:g}")
    for name, vol in (("CT", study.ct), ("PET", study.pet)):
        if not vol.geometry_known:
            problems.append(f"{name} geometry is nominal (spacing {list(vol.spacing_mm)} mm assumed, not measured)")
    suv_max = pet_max if study.pet.units == "SUVbw" else None
    if study.pet.units != "SUVbw":
        problems.append(f"PET units are {study.pet.units}: no SUV can be given")
    elif suv_max is not None and (suv_max > USUAL_SUV_MAX or pet_min < -1e-3 or suv_max <= 0):
        problems.append(f"PET SUV spans {pet_min:g}..{suv_max:g}: implausible")
    try:
        split = regions.split_study(study, config)
        region_json = split.to_json()
        problems.extend(split.notes)
    except ValueError as e:
        region_json = {}
        problems.append(f"no region split: {e}")
    sections: list[str] = []
    if study.report is None:
        problems.append("no report")
    else:
        if study.report.impression.strip():
            sections.append(IMPRESSION_KEY)
        sections += [s for s in SECTIONS if study.report.findings.get(s, "").strip()]
        missing = [s for s in SECTIONS if s not in sections]
        if missing:
            problems.append(f"report sections empty: {', '.join(missing)}")
    if study.report_en is None:
        problems.append("no English report")
    return {
        "study_id": study.study_id,
        "source": study.source,
        "ct": {"shape": list(study.ct.shape), "spacing_mm": list(study.ct.spacing_mm), "hu_min": hu_min,
               "hu_max": hu_max, "geometry_known": study.ct.geometry_known},
        "pet": {"shape": list(study.pet.shape), "spacing_mm": list(study.pet.spacing_mm), "suv_max": suv_max,
                "units": study.pet.units, "max": pet_max},
        "metadata": {"sex": study.metadata.sex, "height_m": study.metadata.height_m,
                     "weight_kg": study.metadata.weight_kg, "year": study.metadata.year,
                     "month": study.metadata.month},
        "regions": region_json,
        "report_sections": sections,
        "problems": problems,
    }


def inspect(path: str, patient: Optional[str], salt: Optional[str]) -> dict:
    refs = cohort.list_studies(path)
    ref = _pick_release(refs, patient) if cohort.is_release_root(path) else _pick_dicom(refs)
    problems = [f"{s.file}: {s.reason}" for s in getattr(refs, "skipped", [])][:20]
    salt = resolve_salt(salt, synthetic=is_synthetic_cohort(path))  # a study was found: now it is read
    study, notes = cohort.load_study_with_notes(ref, salt=salt)
    return summarize(study, problems + list(notes))


def _human(rec: dict) -> str:
    ct, pet = rec["ct"], rec["pet"]
    lines = [f"study {rec['study_id']} ({rec['source']})",
             f"  CT  {ct['shape']} spacing {ct['spacing_mm']} mm, HU {ct['hu_min']:g}..{ct['hu_max']:g}",
             f"  PET {pet['shape']} spacing {pet['spacing_mm']} mm, units {pet['units']}"
             + (f", SUVmax {pet['suv_max']:.2f}" if pet["suv_max"] is not None else "")]
    for name, r in rec["regions"].items():
        lines.append(f"  {name:15s} slices {r['slices'][0]}-{r['slices'][1]} -> {r['section']}")
    lines.append(f"  report sections: {', '.join(rec['report_sections']) or 'none'}")
    lines += [f"  problem: {p}" for p in rec["problems"]] or ["  no problems"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxpetct.studies", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="check one study (DICOM folder, or release root + --patient)")
    ins.add_argument("path")
    ins.add_argument("--patient", help="manifest name or study key, for a release root")
    ins.add_argument("--json", action="store_true", help="print one JSON object")
    ins.add_argument("--salt", default=None, help="pseudonym salt (else $JAXPETCT_SALT; required for real data)")
    syn = sub.add_parser("synth", help="write the synthetic cohort in the release layout")
    syn.add_argument("out")
    syn.add_argument("--n", type=int, default=24)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--size", choices=("tiny", "small", "paper"), default="tiny")
    syn.add_argument("--dicom", action="store_true", help="also write DICOM series (with PHI canary tags)")
    syn.add_argument("--phi-canaries", action="store_true", help="plant canary PHI in the Vietnamese report text")
    syn.add_argument("--compress", action="store_true", help="deflate NPZ members (slower, no memory-mapping)")
    syn.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "synth":
            from jaxpetct.studies import synthetic

            s = synthetic.write_cohort(args.out, args.n, args.seed, size=args.size, dicom=args.dicom,
                                       phi_canaries=args.phi_canaries, compress=args.compress,
                                       overwrite=args.overwrite)
            print(json.dumps({"root": s.root, "studies": s.n, "splits": s.split_counts, "lesions": s.lesions}))
            return 0
        rec = inspect(args.path, args.patient, args.salt)
    except StudyError as e:
        print(" ".join(f"error: {e.file}: {e.reason} (study {e.study})".split()), file=sys.stderr)
        return 2
    except (UserError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(one_line(e), file=sys.stderr)
        return 2
    print(json.dumps(rec, ensure_ascii=False) if args.json else _human(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
