"""Seeded fuzz over corrupted release inputs: zero crashes, every bad study reported, every good study read.

Each round copies a clean synthetic release, corrupts several of its studies in different ways (truncated or
garbled NPZ and JSON, bad CSV rows, depth mismatch, wrong dtype/shape/key, pickles, missing files) and walks
it. A corruption that cannot change what is read (e.g. a flipped byte in a zip timestamp) may pass, but then
the study must read back exactly as the original: silently wrong data is a failure.
"""
import json
import os
import shutil

import numpy as np
import pytest

from jaxpetct.studies import cohort
from jaxpetct.studies.study import StudyError
from jaxpetct.text.report import FINDINGS_KEY, IMPRESSION_KEY

SALT = "fuzz"
N_STUDIES, ROUNDS, PER_ROUND = 10, 26, 8  # 208 corrupted studies


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    from jaxpetct.studies import synthetic

    root = tmp_path_factory.mktemp("fuzz") / "clean"
    synthetic.write_cohort(str(root), n=N_STUDIES, seed=3)
    refs = cohort.list_studies(str(root))
    studies = {r.key: cohort.load_study(r, salt=SALT) for r in refs}
    data = {k: (np.array(s.ct.data), np.array(s.pet.data), s.report, s.report_en) for k, s in studies.items()}
    return root, refs, data


def _strict_report(raw: bytes) -> bool:
    """Independent schema check of the clean files' canonical form (what a flip must not break silently)."""
    try:
        obj = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(obj, dict):
        return False
    keys_ok = set(obj) in ({IMPRESSION_KEY, FINDINGS_KEY}, {"Impression", "Findings"})
    if not keys_ok:
        return False
    imp, fin = (obj[IMPRESSION_KEY], obj[FINDINGS_KEY]) if IMPRESSION_KEY in obj else (obj["Impression"], obj["Findings"])
    return isinstance(imp, str) and isinstance(fin, dict) and all(isinstance(v, str) for v in fin.values())


def _mutate(kind: str, rng, root, ref, lines, row_index):
    """Apply one corruption; return the expectation: ("skip", file) | ("maybe", file) | ("row", line) | ("json", file, ok)."""
    rel = ref.release
    vol = rel.ct_path if rng.random() < 0.5 else rel.pet_path
    rep = rel.report_path if rng.random() < 0.5 else rel.report_en_path
    path, jpath = root / vol, root / rep
    raw = path.read_bytes()
    with np.load(root / rel.ct_path) as z:
        ct = z["data"]
    if kind == "npz_truncate":
        path.write_bytes(raw[: int(rng.integers(0, len(raw)))])
        return "skip", vol
    if kind in ("npz_flip", "npz_zero_block"):
        buf = bytearray(raw)
        if kind == "npz_flip":
            for pos in rng.integers(0, len(buf), int(rng.integers(1, 5))):
                buf[pos] ^= int(rng.integers(1, 256))
        else:
            pos = int(rng.integers(0, len(buf) - 64))
            buf[pos:pos + 64] = bytes(64)
        path.write_bytes(bytes(buf))
        return "maybe", vol
    if kind == "depth_mismatch":
        with np.load(root / rel.pet_path) as z:
            pet = z["data"]
        np.savez(root / rel.pet_path, data=pet[: -int(rng.integers(1, 4))])
        return "skip", rel.pet_path
    if kind == "dtype":
        np.savez(path, data=ct[:, ::2, ::2].astype(rng.choice([np.float32, np.int32, np.uint16, np.uint8]))
                 if vol == rel.pet_path else ct.astype(np.float32))
        return "skip", vol
    if kind == "ndim":
        np.savez(path, data=ct[0])
        return "skip", vol
    if kind == "wrong_key":
        np.savez(path, volume=ct)
        return "skip", vol
    if kind == "pickle":
        np.savez(path, data=np.array([{"data": 1}], dtype=object))
        return "skip", vol
    if kind == "inplane_ratio":
        np.savez(root / rel.pet_path, data=np.zeros((ct.shape[0], 31, 32), np.int16))
        return "skip", rel.pet_path
    if kind == "not_zip":
        with open(path, "wb") as f:
            np.save(f, ct)
        return "skip", vol
    if kind == "npz_missing":
        os.unlink(path)
        return "skip", vol
    if kind == "npz_empty":
        path.write_bytes(b"")
        return "skip", vol
    jraw = jpath.read_bytes()
    if kind == "json_truncate":
        jpath.write_bytes(jraw[: int(rng.integers(0, jraw.rindex(b"}")))])
        return "skip", rep
    if kind == "json_flip":
        buf = bytearray(jraw)
        for pos in rng.integers(0, len(buf), int(rng.integers(1, 4))):
            buf[pos] = int(rng.choice(list(b'{}[]:,"0aZ\\\xff')))
        jpath.write_bytes(bytes(buf))
        return "json", rep, _strict_report(bytes(buf))
    if kind in ("json_drop_key", "json_wrong_type", "json_array"):
        obj = json.loads(jraw)
        first = next(iter(obj))
        if kind == "json_drop_key":
            del obj[list(obj)[int(rng.integers(0, 2))]]
        elif kind == "json_wrong_type":
            obj[first] = [obj[first]]
        else:
            obj = [obj]
        jpath.write_text(json.dumps(obj, ensure_ascii=False), "utf-8")
        return "skip", rep
    if kind == "json_bad_utf8":
        pos = int(rng.integers(1, len(jraw)))
        jpath.write_bytes(jraw[:pos] + b"\xff\xfe" + jraw[pos:])
        return "skip", rep
    if kind == "json_missing":
        os.unlink(jpath)
        return "skip", rep
    line = lines[row_index]
    fields = line.split(",")
    if kind == "row_year":
        fields[4] = str(int(fields[4]) + int(rng.integers(1, 5)))
    elif kind == "row_drop_field":
        del fields[int(rng.integers(0, len(fields)))]
    elif kind == "row_height":
        fields[2] = rng.choice(["abc", "-1.6", "nan", "1,6", "inf"])
    elif kind == "row_sex":
        fields[1] = "X"
    elif kind == "row_nul":
        pos = int(rng.integers(0, len(line)))
        lines[row_index] = line[:pos] + "\x00" + line[pos:]
        return "row", row_index + 1
    elif kind == "row_cut":
        lines[row_index] = line[: int(rng.integers(1, len(line) - 12))]
        return "row", row_index + 1
    elif kind == "row_missing_study":
        n = rel.patient
        fields = [f.replace(f"patient_{n}.", f"patient_{n + 1000}.") for f in fields]
        lines[row_index] = ",".join(fields)
        return "moved", fields[6]  # now names another (absent) study, under that study's pseudonym
    lines[row_index] = ",".join(fields)
    return "row", row_index + 1


KINDS = ["npz_truncate", "npz_flip", "npz_zero_block", "depth_mismatch", "dtype", "ndim", "wrong_key", "pickle",
         "inplane_ratio", "not_zip", "npz_missing", "npz_empty", "json_truncate", "json_flip", "json_drop_key",
         "json_wrong_type", "json_array", "json_bad_utf8", "json_missing", "row_year", "row_drop_field",
         "row_height", "row_sex", "row_nul", "row_cut", "row_missing_study"]


def test_fuzz_release_inputs(clean, tmp_path):
    root0, refs0, original = clean
    rng = np.random.default_rng(20240611)
    outcomes = {"skipped": 0, "benign": 0}
    for rnd in range(ROUNDS):
        root = tmp_path / f"round{rnd}"
        shutil.copytree(root0, root)
        lines = (root / "metadata.csv").read_text("utf-8").split("\n")
        picked = rng.choice(N_STUDIES, PER_ROUND, replace=False)
        kinds = [KINDS[(rnd * PER_ROUND + i) % len(KINDS)] for i in range(PER_ROUND)]
        expect = {}
        for idx, kind in zip(picked, kinds):
            ref = refs0[int(idx)]
            expect[ref.key] = (kind, _mutate(kind, rng, root, ref, lines, int(idx) + 1))
        (root / "metadata.csv").write_text("\n".join(lines), "utf-8")
        refs = cohort.list_studies(str(root))  # never raises on row damage
        walk = cohort.iter_studies(refs, salt=SALT)
        read = {s.study_id: s for s in walk}
        skipped = {(s.study, s.file): s.reason for s in walk.skipped}
        assert len(read) + len(walk.skipped) == len(refs)
        by_id = {cohort.study_id(r, SALT): r for r in refs0}
        for key, (ct, pet, report, report_en) in original.items():
            sid = cohort.study_id(refs0[[r.key for r in refs0].index(key)], SALT)
            if key not in expect:  # untouched: must read, unchanged
                s = read[sid]
                assert np.array_equal(s.ct.data, ct) and np.array_equal(s.pet.data, pet)
                assert (s.report, s.report_en) == (report, report_en)
                continue
            kind, exp = expect[key]
            what = exp[0]
            if what in ("row", "moved"):
                hit = [r for (st, f), r in skipped.items() if (f == "metadata.csv" and r.startswith(f"row {exp[1]}:"))
                       or (what == "moved" and f == exp[1])]
                assert len(hit) == 1 and sid not in read, (kind, exp, skipped)
                outcomes["skipped"] += 1
                continue
            file = exp[1]
            was_skipped = (sid, file) in skipped
            if what == "skip" or (what == "json" and not exp[2]):
                assert was_skipped, (kind, file, skipped, sid in read)
            if was_skipped:
                assert sid not in read
                assert len(skipped[(sid, file)]) < 300 and "\n" not in skipped[(sid, file)]
                outcomes["skipped"] += 1
            else:  # a corruption that did not matter: the study must be exactly the original
                s = read[sid]
                assert np.array_equal(s.ct.data, ct) and np.array_equal(s.pet.data, pet), (kind, file)
                if what == "json":
                    assert s.report is not None
                else:
                    assert (s.report, s.report_en) == (report, report_en)
                outcomes["benign"] += 1
        assert set(by_id) >= set(read)
    total = outcomes["skipped"] + outcomes["benign"]
    print(f"\nfuzz: {total} corrupted studies over {ROUNDS} rounds: {outcomes['skipped']} reported, "
          f"{outcomes['benign']} harmless corruptions read back unchanged; 0 crashes")
    assert total == ROUNDS * PER_ROUND >= 200 and outcomes["skipped"] >= 0.9 * total


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage", "name;sex;height\n".encode(),
                                     "tên,giới\npatient_0,M\n".encode("utf-16")])
def test_unusable_manifest_is_one_clear_error(clean, tmp_path, content):
    root = tmp_path / "m"
    shutil.copytree(clean[0], root)
    (root / "metadata.csv").write_bytes(content)
    with pytest.raises(StudyError) as err:
        cohort.list_studies(str(root))
    assert err.value.file == "metadata.csv"
    (root / "encoding.json").write_text("{not json", "utf-8")
    with pytest.raises(StudyError) as err:
        cohort.list_studies(str(root))
    assert err.value.file == "encoding.json"
