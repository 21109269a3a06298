"""The embedded synthetic cohort: N studies in exactly the release layout, deterministic by seed.

Each study is an analytic phantom (phantom.py) with lesions at anatomical sites; its Vietnamese report and
English translation are written from those lesions (synthetic_reports.py), so what the text says is visible
in the volumes. Written per cohort root:

    metadata.csv, encoding.json (PET int16 = SUVbw x 1000, real spacing), PETCT<year>/THANG <m>/{CT,PET}/*.npz,
    .../reports/*.json, .../reports_en/*.json, synthetic_truth.jsonl (lesions per study, paper schema + voxel
    centres + region), expert_lesions/ (test-split studies with lesions, named like the paper's expert set),
    and with `dicom=True` dicom/study_XXXX/ series carrying PHI canary tags.

The whole cohort is built in a temporary sibling folder and renamed into place: a crash leaves no half cohort.
Identical seeds give byte-identical files (NPZ members carry fixed timestamps).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from jaxpetct.studies.synthetic_phi import canary_patient, phi_header  # noqa: F401 (public here)
from jaxpetct.studies import npz, phantom, release, splits
from jaxpetct.studies.deid import pseudonymize
from jaxpetct.studies.synthetic_reports import SITES, LesionFact, write_reports
from jaxpetct.text.report import report_to_json
from jaxpetct.atomic import open_atomic
from jaxpetct.threads import ordered_map

TRUTH = "synthetic_truth.jsonl"
SCAN_FRACTION = 0.60  # vertex to mid-thigh, as a fraction of height
PET_SCALE = 1000.0  # PET int16 = round(SUVbw * 1000)


@dataclasses.dataclass(frozen=True)
class SizeSpec:
    slice_mm: float
    ct_matrix: int  # CT is (D, m, m), PET (D, m/2, m/2)
    fov_mm: float = 500.0
    min_lesion_mm: int = 8


# tiny: fastest, lesions of 1-2 PET voxels; small: the embedded default, sized so a CPU-sized model can see lesions
# and a 600-study cohort stays small on disk: 8 mm PET voxels over a 450 mm field of view (wide enough for the
# phantom's largest trunk; the 64x64 records get 7 mm pixels), and 10 mm slices, about the records' own z spacing
# (a ~330 mm region becomes 32 slices); paper: the release's sizes.
SIZES = {"tiny": SizeSpec(slice_mm=18.0, ct_matrix=64, min_lesion_mm=14),
         "small": SizeSpec(slice_mm=10.0, ct_matrix=112, fov_mm=450.0, min_lesion_mm=14),
         "paper": SizeSpec(slice_mm=4.0, ct_matrix=512, min_lesion_mm=8)}

_TRAIN = ((2017, 8), (2017, 9), (2018, 3), (2018, 7), (2019, 5), (2019, 6), (2023, 3), (2023, 6))
_VALIDATION = ((2017, 11), (2018, 10), (2019, 11), (2023, 10))
_TEST = ((2017, 12), (2018, 11), (2018, 12), (2019, 12), (2023, 11), (2023, 12))
# kind -> (type choices, diameter range mm, SUVmax range or None for non-avid, CT HU)
_KINDS = {
    "lung": ((("Nốt mờ", 0.85), ("Khối mờ", 0.15)), (12, 34), (1.5, 16.0), 35.0),
    "node": ((("Hạch", 1.0),), (12, 26), (2.2, 14.0), 48.0),
    "liver": ((("Tổn thương giảm tỉ trọng", 0.65), ("Nang", 0.35)), (14, 40), (3.6, 15.0), 28.0),
    "bone": ((("Tổn thương tiêu xương", 0.5), ("Tổn thương đặc xương", 0.5)), (12, 24), (3.0, 12.0), None),
}


@dataclasses.dataclass(frozen=True)
class StudySpec:
    index: int
    name: str
    year: int
    month: int
    day: int
    sex: str
    age: int
    height_m: float
    weight_kg: float
    depth: int
    uptake: dict
    lesions: tuple[phantom.PlacedLesion, ...]
    facts: tuple[LesionFact, ...]
    variants: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"PETCT{self.year}/THANG {self.month}/day_{self.day}_patient_{self.index}"

    def rel(self, folder: str) -> str:
        ext = "npz" if folder in ("CT", "PET") else "json"
        return f"PETCT{self.year}/THANG {self.month}/{folder}/day_{self.day}_patient_{self.index}.{ext}"


def grids(size: SizeSpec, depth: int) -> tuple[phantom.Grid, phantom.Grid]:
    m = size.ct_matrix
    s = size.fov_mm / m
    return (phantom.Grid.centred((depth, m, m), (size.slice_mm, s, s)),
            phantom.Grid.centred((depth, m // 2, m // 2), (size.slice_mm, 2 * s, 2 * s)))


def _site_centre(site: str, anat: phantom.Anatomy, rng: np.random.Generator) -> tuple[float, float, float]:
    """A candidate lesion centre (t, y, x) mm for `site`, before snapping to the PET grid."""
    H, f = anat.height_mm, anat.scale
    if site.startswith("lung_"):
        side = "lung_r" if site[5] == "r" else "lung_l"
        (ct, cy, cx), (at, ay, ax) = anat.organ(side).shape.centre, anat.organ(side).shape.semi
        lo, hi = {"u": (-0.85, -0.15), "m": (-0.2, 0.25), "l": (0.15, 0.85)}[site[6]]
        if site == "lung_lll":
            lo = -0.05
        return ct + at * rng.uniform(lo, hi), cy + ay * rng.uniform(-0.5, 0.5), cx + ax * rng.uniform(-0.4, 0.4)
    if site.startswith("liver_"):
        (ct, cy, cx), (at, ay, ax) = anat.organ("liver").shape.centre, anat.organ("liver").shape.semi
        u = rng.uniform(-0.55, -0.1) if site == "liver_r" else rng.uniform(0.25, 0.55)
        return ct + at * rng.uniform(-0.4, 0.4), cy + ay * rng.uniform(-0.4, 0.4), cx + ax * u
    if site.startswith("bone_D") or site.startswith("bone_L"):
        k = int(site[6:])
        t = 0.19 * H + (k - 1) * 0.0114 * H if site[5] == "D" else 0.33 * H + (k - 1) * 0.025 * H
        (cy, cx) = anat.organ("spine").shape.centre
        return t, cy, cx
    if site.startswith("bone_ilium"):
        (ct, cy, cx) = anat.organ("ilium_r" if site.endswith("r") else "ilium_l").shape.centre
        return ct, cy, cx
    side = -1.0 if site.endswith("_r") else 1.0
    fixed = {"node_neck_r": (0.155, -5.0, 38.0), "node_neck_l": (0.155, -5.0, 38.0),
             "node_axilla_r": (0.215, 0.0, 0.80 * 165.0 * f), "node_axilla_l": (0.215, 0.0, 0.80 * 165.0 * f),
             "node_paratracheal": (0.215, -20.0, -12.0), "node_subcarinal": (0.232, 15.0, 0.0),
             "node_paraaortic": (0.40, 25.0, 22.0), "node_iliac_r": (0.455, -10.0, 55.0),
             "node_iliac_l": (0.455, -10.0, 55.0), "node_inguinal_r": (0.52, -45.0, 60.0),
             "node_inguinal_l": (0.52, -45.0, 60.0)}[site]
    x = fixed[2] * side if site.endswith(("_r", "_l")) else fixed[2]
    return fixed[0] * H + rng.uniform(-5, 5), fixed[1] + rng.uniform(-4, 4), x + rng.uniform(-4, 4)


_AVOID = ("heart", "bladder", "kidney_r", "kidney_l", "brain", "liver")  # hot organs a lesion must not touch


def _fits(site: str, shape: phantom.Ellipsoid, anat: phantom.Anatomy, placed) -> bool:
    r = max(shape.semi)
    t, y, x = shape.centre
    pt = (np.array([t]), np.array([y]), np.array([x]))
    host = {"lung_r": "lung_r", "lung_l": "lung_l", "liver": "liver"}
    key = "lung_r" if site.startswith("lung_r") else "lung_l" if site.startswith("lung_l") else (
        "liver" if site.startswith("liver") else None)
    if key is not None and anat.organ(host[key]).shape.shrunk(r).norm2(*pt)[0] > 1.0:
        return False
    for name in _AVOID:
        if name == key:
            continue
        organ = anat.organ(name).shape
        grown = type(organ)(organ.centre, tuple(a + r + 4.0 for a in organ.semi))
        if grown.norm2(*pt)[0] <= 1.0:
            return False
    for other in placed:
        gap = math.dist(shape.centre, other.shape.centre)
        if gap < r + max(other.shape.semi) + 10.0:
            return False
    return True


def make_spec(seed: int, index: int, size: SizeSpec) -> StudySpec:
    """Everything about study `index` of a cohort, drawn from its own generator (seed, index)."""
    rng = np.random.default_rng([seed, index])
    pools = (_TRAIN, _VALIDATION, _TEST)
    pool = pools[index] if index < 3 else pools[int(rng.choice(3, p=(0.6, 0.15, 0.25)))]
    year, month = pool[int(rng.integers(len(pool)))]
    sex = "M" if rng.random() < 0.6 else "F"
    height = float(np.clip(rng.normal(1.65 if sex == "M" else 1.55, 0.06), 1.45, 1.90).round(2))
    weight = float((np.clip(rng.normal(22.0, 3.0), 16.0, 32.0) * height * height).round(1))
    depth = int(round(SCAN_FRACTION * height * 1000.0 / size.slice_mm))
    uptake = {"brain": float(rng.uniform(6.5, 10.0)), "heart": float(rng.uniform(1.8, 6.0)),
              "liver": float(rng.uniform(1.9, 2.6)), "bladder": float(rng.uniform(8.0, 25.0))}
    anat = phantom.make_anatomy(height, weight, depth * size.slice_mm, uptake)
    _, pet_grid = grids(size, depth)
    n_lesions = int(rng.choice(5, p=(0.2, 0.3, 0.25, 0.15, 0.1)))
    kinds, kind_p = ("lung", "node", "liver", "bone"), (0.3, 0.35, 0.15, 0.2)
    used: set[str] = set()
    placed: list[phantom.PlacedLesion] = []
    facts: list[LesionFact] = []
    for _ in range(4 * n_lesions):
        if len(placed) == n_lesions:
            break
        kind = kinds[int(rng.choice(4, p=kind_p))]
        free = [s for s in SITES if SITES[s].kind == kind and s not in used
                and not (kind in ("lung", "liver") and any(u[:6] == s[:6] for u in used))]
        if not free:  # one lesion per lung / liver keeps reports unambiguous
            continue
        site = free[int(rng.integers(len(free)))]
        used.add(site)
        types, (dmin, dmax), suv_range, hu = _KINDS[kind]
        names, probs = zip(*types)
        ltype = str(rng.choice(names, p=probs))
        a = int(rng.integers(max(dmin, size.min_lesion_mm), max(dmax, size.min_lesion_mm + 2) + 1))
        b = int(max(size.min_lesion_mm, round(a * rng.uniform(0.75, 1.0))))
        avid = ltype != "Nang"
        suv = round(float(rng.uniform(*suv_range)), 1) if avid else None
        if kind == "bone":
            hu = 120.0 if ltype == "Tổn thương tiêu xương" else 1000.0
        elif ltype == "Nang":
            hu = 5.0
        for _ in range(30):
            k, j, i = pet_grid.index_of(*_site_centre(site, anat, rng))
            k = min(max(k, 0), depth - 1)
            centre = pet_grid.centre_of(k, j, i)
            shape = phantom.Ellipsoid(centre, ((a + b) / 4.0, b / 2.0, a / 2.0))
            if _fits(site, shape, anat, placed):
                placed.append(phantom.PlacedLesion(site, shape, hu, suv, halo_hu=-90.0 if kind == "node" else None))
                facts.append(LesionFact(site, ltype, (a, b), suv))
                break
    order = sorted(range(len(placed)), key=lambda n: placed[n].shape.centre[0])  # report head to feet
    variants = tuple(int(v) for v in rng.integers(0, 3, size=len(order)))
    return StudySpec(index, f"patient_{index}", year, month, int(rng.integers(1, 29)), sex,
                     int(rng.integers(30, 81)), height, weight, depth, uptake,
                     tuple(placed[n] for n in order), tuple(facts[n] for n in order), variants)


def render(spec: StudySpec, size: SizeSpec) -> tuple[np.ndarray, np.ndarray]:
    """(CT int16 HU, PET int16 SUVbw x 1000) volumes of a study."""
    rng = np.random.default_rng([spec.index, 7919])
    ct_grid, pet_grid = grids(size, spec.depth)
    anat = phantom.make_anatomy(spec.height_m, spec.weight_kg, spec.depth * size.slice_mm, spec.uptake)
    ct = phantom.render_anatomy(anat, ct_grid, "hu")
    noise = rng.standard_normal(ct.shape, dtype=np.float32)
    noise *= np.float32(8.0)
    ct += noise
    del noise
    phantom.render_lesions(ct, ct_grid, spec.lesions, "hu")
    pet = phantom.render_anatomy(anat, pet_grid, "suv")
    gain = rng.standard_normal(pet.shape, dtype=np.float32)
    gain *= np.float32(0.04)
    gain += np.float32(1.0)
    pet *= np.clip(gain, 0.9, 1.1, out=gain)
    phantom.render_lesions(pet, pet_grid, spec.lesions, "suv")
    np.rint(ct, out=ct)
    ct16 = np.clip(ct, -1024, 3071, out=ct).astype(np.int16)
    pet64 = np.rint(pet.astype(np.float64) * PET_SCALE)
    pet16 = np.clip(pet64, 0, 32767, out=pet64).astype(np.int16)
    ct16[:, ~_in_fov(ct_grid)] = -1024  # outside the reconstruction circle a scanner writes its padding value
    pet16[:, ~_in_fov(pet_grid)] = 0
    return ct16, pet16


def _in_fov(grid: phantom.Grid) -> np.ndarray:
    """(H, W) True inside the circle inscribed in the transaxial field of view (what a scanner reconstructs)."""
    _, h, w = grid.shape
    y = grid.y0 + np.arange(h) * grid.spacing[1]
    x = grid.x0 + np.arange(w) * grid.spacing[2]
    radius = min(h * grid.spacing[1], w * grid.spacing[2]) / 2
    return y[:, None] ** 2 + x[None, :] ** 2 <= radius ** 2


def truth_record(spec: StudySpec, size: SizeSpec) -> dict:
    ct_grid, pet_grid = grids(size, spec.depth)
    lesions = []
    for les, fact in zip(spec.lesions, spec.facts):
        site = SITES[fact.site]
        pet_idx = pet_grid.index_of(*les.shape.centre)
        lesions.append({"lesion": fact.to_lesion().to_json(), "site": fact.site, "kind": site.kind,
                        "region": site.region, "section": site.section, "centre_mm": list(les.shape.centre),
                        "semi_axes_mm": list(les.shape.semi), "pet_voxel": list(pet_idx),
                        "ct_voxel": [pet_idx[0], 2 * pet_idx[1], 2 * pet_idx[2]],
                        "suvmax": fact.suvmax, "hu": les.hu, "diameters_mm": list(fact.diameters_mm)})
    return {"key": spec.key, "name": spec.name, "height_m": spec.height_m, "depth": spec.depth,
            "slice_mm": size.slice_mm, "lesions": lesions}


def encoding_for(size: SizeSpec) -> release.ReleaseEncoding:
    ct_grid, pet_grid = grids(size, 1)
    return release.ReleaseEncoding(
        release.ModalityEncoding("HU", 1.0, 0.0, ct_grid.spacing),
        release.ModalityEncoding("SUVbw", 1.0 / PET_SCALE, 0.0, pet_grid.spacing), "head_first")


def _write_text(path: str, text: str) -> None:
    with open_atomic(path, "w", newline="") as f:
        f.write(text)


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def _write_dicom(root: str, spec: StudySpec, size: SizeSpec, ct16, pet16, reports, phi_paths: bool) -> None:
    """dicom/study_XXXX/: CT and PET series with canary PHI tags, plus the reports as sidecar JSON."""
    from jaxpetct.studies import dicom_writer
    from jaxpetct.studies.study import Volume

    ct_grid, pet_grid = grids(size, spec.depth)
    direction = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0))  # head first: slices run toward -z
    z0 = -0.5 * size.slice_mm  # the vertex at z = 0

    def vol(data, grid, units):
        return Volume(data, grid.spacing, units, (grid.x0, grid.y0, z0), direction, True)

    injection = dt.datetime(spec.year, spec.month, spec.day, 8, 0) + dt.timedelta(minutes=int(spec.index % 90))
    acq = dicom_writer.PetAcquisition(injected_dose_bq=round(3.7e6 * spec.weight_kg, -3), injection=injection,
                                      series=injection + dt.timedelta(minutes=60))
    layout = dicom_writer.Layout(shuffle_names=spec.index % 2 == 1, nest_depth=spec.index % 3,
                                 reverse_instances=spec.index % 4 == 2, phi_in_paths=phi_paths and spec.index % 2 == 0)
    folder = os.path.join(root, "dicom", f"study_{spec.index:04d}")
    _write_text(os.path.join(folder, "report.json"), _json(report_to_json(reports[0])))
    _write_text(os.path.join(folder, "report_en.json"), _json(report_to_json(reports[1], english=True)))
    dicom_writer.write_dicom_study(folder,
                                   vol(ct16.astype(np.float32), ct_grid, "HU"),
                                   vol(pet16.astype(np.float32) / PET_SCALE, pet_grid, "SUVbw"),
                                   patient=canary_patient(spec), acquisition=acq, layout=layout, seed=spec.index)


@dataclasses.dataclass(frozen=True)
class CohortSummary:
    root: str
    n: int
    split_counts: dict
    lesions: int


def write_cohort(out: str, n: int = 24, seed: int = 0, *, size: str = "tiny", dicom: bool = False,
                 phi_canaries: bool = False, compress: bool = False, overwrite: bool = False,
                 salt: Optional[str] = None) -> CohortSummary:
    """Write the cohort to `out` (which must not exist, or be empty, unless `overwrite`).

    With `salt`, each truth record also carries the `study_id` that ingestion with that salt will give the
    study (otherwise use `truth_by_study_id`); the salt itself is never written.
    """
    if size not in SIZES or n < 1:
        raise ValueError(f"size must be one of {sorted(SIZES)} (got {size!r}) and n >= 1 (got {n})")
    out = os.path.abspath(out)
    if os.path.exists(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True to replace it)")
    spec_size, parent = SIZES[size], os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        rows, truths, counts, total = [], [], {}, 0
        for spec, vols in _rendered(tmp, seed, n, spec_size, compress=compress, keep=dicom):
            vi, en = write_reports(spec.facts, spec.variants, phi_header(spec) if phi_canaries else "")
            _write_text(os.path.join(tmp, spec.rel("reports")), _json(report_to_json(vi)))
            _write_text(os.path.join(tmp, spec.rel("reports_en")), _json(report_to_json(en, english=True)))
            if dicom:
                _write_dicom(tmp, spec, spec_size, *vols, (vi, en), phi_canaries)
            truth = truth_record(spec, spec_size)
            if salt:
                truth["study_id"] = pseudonymize(spec.key, salt)
            truths.append(json.dumps(truth, ensure_ascii=False))
            split = splits.split_of(spec.year, spec.month)
            counts[split] = counts.get(split, 0) + 1
            total += len(spec.facts)
            if split == splits.TEST and spec.facts:
                key = splits.ReleaseKey(spec.year, spec.month, spec.day, spec.index)
                _write_text(os.path.join(tmp, "expert_lesions", splits.expert_name(key)),
                            _json([f.to_lesion().to_json() for f in spec.facts]))
            rows.append([spec.name, spec.sex, f"{spec.height_m:g}", f"{spec.weight_kg:g}", str(spec.year),
                         spec.rel("PET"), spec.rel("CT"), spec.rel("reports"), spec.rel("reports_en")])
        _write_text(os.path.join(tmp, release.ENCODING), _json(release.encoding_to_json(encoding_for(spec_size))))
        _write_text(os.path.join(tmp, TRUTH), "\n".join(truths) + "\n")
        lines = [",".join(release.COLUMNS)] + [",".join(r) for r in rows]
        _write_text(os.path.join(tmp, release.MANIFEST), "\n".join(lines) + "\n")  # last: marks a complete root
        trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
        if os.path.exists(out):
            os.replace(out, os.path.join(trash, "old"))
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CohortSummary(out, n, counts, total)


def _rendered(tmp: str, seed: int, n: int, size: SizeSpec, *, compress: bool, keep: bool):
    """(spec, (ct16, pet16) if `keep`) per study in order; volumes written by 2 threads (numpy, zlib free the GIL)."""
    def volumes(index: int):
        spec = make_spec(seed, index, size)
        ct16, pet16 = render(spec, size)
        npz.write_npz(os.path.join(tmp, spec.rel("CT")), {"data": ct16}, compress=compress)
        npz.write_npz(os.path.join(tmp, spec.rel("PET")), {"data": pet16}, compress=compress)
        return spec, ((ct16, pet16) if keep else None)

    return ordered_map(volumes, range(n))


def read_truth(root: str) -> dict[str, dict]:
    """synthetic_truth.jsonl by release key."""
    with open(os.path.join(root, TRUTH), encoding="utf-8") as f:
        return {rec["key"]: rec for rec in (json.loads(line) for line in f if line.strip())}


def truth_by_study_id(root: str, salt: str) -> dict[str, dict]:
    return {pseudonymize(key, salt): rec for key, rec in read_truth(root).items()}


