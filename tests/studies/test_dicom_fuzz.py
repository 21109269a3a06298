"""Seeded fuzz: 252 studies in one folder, 228 of them damaged in 19 ways (truncated files, garbage bytes,
deleted tags, duplicated positions, gaps, tilts, wrong units, values outside the physics gate...).

Properties: nothing but StudyError ever escapes (zero crashes); every damaged study is reported, by a StudyError
naming its pseudonym (with the expected reason where the damage determines it) or by its damaged file in the
skipped list; header garbage that happens to be harmless must read back equal to the truth; every good study
is read and equals what was written.
"""
import collections

import numpy as np

from jaxpetct.studies.dicom import read_dicom_folder
from jaxpetct.studies.dicom_writer import Layout, write_dicom_study
from jaxpetct.studies.resample import resample_to_grid

from tests.studies import test_dicom_support as sup

N_DAMAGED = 228  # 12 of each of the 19 damaging kinds
N_GOOD = 24


def _equals_truth(study, ct, pet) -> bool:
    if study.ct.shape != ct.shape or not np.array_equal(study.ct.data, ct.data):
        return False
    if not np.allclose(study.ct.origin_mm, ct.origin_mm, atol=1e-6):
        return False
    expected = resample_to_grid(pet, ct).data
    return bool(np.abs(study.pet.data - expected).max() <= sup.pet_quantum(pet).max() + 1e-5)


def _key(rel: str) -> tuple[str, str]:
    """Export folder and file name: what identifies a file once the reader scrubbed patient-named folders."""
    parts = rel.split("/")
    return parts[0], parts[-1]


def test_fuzz_corrupted_dicom_studies(tmp_path):
    rng = np.random.default_rng(20250917)
    damaging, good = list(sup.BAD) + list(sup.MAYBE), list(sup.GOOD)
    plan = [damaging[i % len(damaging)] for i in range(N_DAMAGED)] + [good[i % len(good)] for i in range(N_GOOD)]
    rng.shuffle(plan)
    truths = [(sup.ct_volume(shape=(4, 6, 6), seed=s), sup.pet_volume(shape=(3, 5, 5), seed=s + 50,
                                                                        direction=d), )
              for s, d in ((0, sup.IDENTITY), (1, sup.IDENTITY))]
    truths.append((sup.ct_volume(shape=(4, 6, 6), direction=sup.rotation(2), seed=2),
                   sup.pet_volume(shape=(3, 5, 5), direction=sup.rotation(2), seed=52)))
    expected = {}
    for i, kind in enumerate(plan):
        ct, pet = truths[i % len(truths)]
        layout = Layout(shuffle_names=bool(rng.random() < 0.5), nest_depth=int(rng.integers(0, 3)),
                        reverse_instances=bool(rng.random() < 0.5), reverse_slices=bool(rng.random() < 0.3),
                        phi_in_paths=bool(rng.random() < 0.3))
        written = write_dicom_study(tmp_path / f"export{i:03d}", ct, pet, layout=layout, seed=1000 + i)
        corrupt = {**{k: v[0] for k, v in sup.BAD.items()}, **sup.MAYBE, **sup.GOOD}[kind]
        touched = corrupt(written, rng)
        expected[sup.pseudonym(written.study_uid)] = (kind, {_key(p.relative_to(tmp_path).as_posix())
                                                             for p in touched}, ct, pet)

    result = read_dicom_folder(tmp_path, salt=sup.SALT)  # anything but StudyError would fail the test here

    errors = {e.study: e for e in result.errors}
    studies = {s.study_id: s for s in result.studies}
    skipped = {_key(s.file) for s in result.skipped}
    assert len(errors) == len(result.errors) and len(studies) == len(result.studies)
    assert set(studies) <= set(expected)
    # Garbage in a StudyInstanceUID makes a file look like a study of its own: it is reported, never read.
    strays = set(errors) - set(expected)
    tally = collections.defaultdict(collections.Counter)
    n_damaged = 0
    for sid, (kind, touched, ct, pet) in expected.items():
        if kind in sup.GOOD:
            assert sid in studies and sid not in errors, (kind, errors.get(sid))
            assert _equals_truth(studies[sid], ct, pet), kind
            tally[kind]["read, equal to truth"] += 1
            continue
        n_damaged += 1
        # A damaged StudyInstanceUID turns its file into a stray study: its error names the file.
        reported_by_error = sid in errors or any(_key(errors[s].file) in touched for s in strays)
        reported_by_skip = bool(touched & skipped)
        if kind in sup.BAD and sup.BAD[kind][1] is not None:
            assert reported_by_error and sup.reason_matches(errors[sid].reason, sup.BAD[kind][1]), (kind, errors.get(sid))
            assert sid not in studies
        elif kind in sup.BAD:
            assert reported_by_error or reported_by_skip, kind
        else:  # header garbage: reported, or harmless
            harmless = sid in studies and _equals_truth(studies[sid], ct, pet)
            assert reported_by_error or reported_by_skip or harmless, kind
            tally[kind]["harmless, equal to truth"] += harmless and not (reported_by_error or reported_by_skip)
        tally[kind]["StudyError"] += reported_by_error
        tally[kind]["damaged file skipped, study not failed"] += reported_by_skip and not reported_by_error
    for err in result.errors:  # every message is relative, names a file and holds no planted identifier
        assert err.file and not err.file.startswith("/") and err.reason
        assert "canary" not in str(err).lower() and str(tmp_path) not in str(err)
    assert n_damaged >= 200
    print(f"\n{len(plan)} studies, {n_damaged} damaged: {len(result.errors)} StudyErrors, "
          f"{len(result.skipped)} skipped files, {len(result.studies)} read, {len(strays)} stray one-file studies "
          "(from garbage in a StudyInstanceUID) reported")
    for kind in sorted(tally):
        print(f"  {kind:20s} {dict(tally[kind])}")
