"""Build paths and bad input: quarantine, Beam == plain, an interrupted build leaves nothing, one-line errors,
and a build + load in a fresh interpreter of an environment without TensorFlow."""
from __future__ import annotations

import glob
import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxpetct.data import build_paths
from jaxpetct.data.pipeline import dataset_dir
from jaxpetct.studies import deid
from tests.tfds_builder import cohort_fixtures as cf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    return env


def record_set(path: str, split: str) -> set:
    """The split's records as canonical bytes (proto map order is not canonical across processes)."""
    from array_record.python.array_record_module import ArrayRecordReader
    from tensorflow_datasets.proto import tf_example_pb2

    out = set()
    for f in sorted(glob.glob(os.path.join(path, f"vimed_pet-{split}.array_record-*"))):
        reader = ArrayRecordReader(f)
        out |= {tf_example_pb2.Example.FromString(r).SerializeToString(deterministic=True) for r in reader.read_all()}
        reader.close()
    return out


@pytest.fixture(scope="module")
def corrupted(cohort, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corrupt") / "manual")
    damaged = cf.corrupt_copy(cohort.root, root)
    return root, damaged


def test_quarantine_lists_bad_studies_and_the_rest_builds(corrupted, built, tmp_path):
    root, damaged = corrupted
    summary = cf.build(root, str(tmp_path), "regions")
    bad = {deid.pseudonymize(k, cf.SALT): k for k in damaged.values()}
    assert {q["study"] for q in summary.quarantined} == set(bad)
    by_study = {q["study"]: q for q in summary.quarantined}
    truncated = by_study[deid.pseudonymize(damaged["truncated"], cf.SALT)]
    assert "/CT/" in truncated["file"] and "NPZ" in truncated["reason"]
    missing = by_study[deid.pseudonymize(damaged["missing"], cf.SALT)]
    assert "/PET/" in missing["file"] and "missing" in missing["reason"]
    for damage, folder in (("surrogate_vi", "reports/"), ("surrogate_en", "reports_en/")):
        q = by_study[deid.pseudonymize(damaged[damage], cf.SALT)]
        assert f"/{folder}" in q["file"] and "lone surrogate (U+D800)" in q["reason"], q
    lost = {}
    for q in summary.quarantined:
        lost[q["split"]] = lost.get(q["split"], 0) + 3
    clean = built["regions"].examples
    assert summary.examples == {s: n - lost.get(s, 0) for s, n in clean.items() if n - lost.get(s, 0) > 0}
    with open(os.path.join(summary.dataset_dir, "quarantine.jsonl"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) == len(summary.quarantined)


def test_beam_path_builds_the_same_records_as_the_plain_path(corrupted, tmp_path):
    """DirectRunner, two worker processes; the corrupted cohort makes the quarantine part of the comparison."""
    root, _ = corrupted
    plain = cf.build(root, str(tmp_path / "plain"), "regions")
    beam = cf.build(root, str(tmp_path / "beam"), "regions", beam=True,
                    beam_options="runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing")
    assert (plain.path, beam.path) == ("plain", "beam")
    assert plain.examples == beam.examples
    for split in plain.examples:
        a, b = record_set(plain.dataset_dir, split), record_set(beam.dataset_dir, split)
        assert len(a) == plain.examples[split] and a == b, split
    assert plain.quarantined == beam.quarantined and len(plain.quarantined) == 4
    assert not glob.glob(os.path.join(beam.dataset_dir, "quarantine-part-*"))


KILL_SCRIPT = """
import sys, time
from jaxpetct.data import examples
real = examples.process
def slow(item, options):
    time.sleep(0.3)  # keep the build busy long enough to be killed mid-way
    yield from real(item, options)
examples.process = slow
import jaxpetct.data.build_paths as g
g.process = slow
from tests.tfds_builder import cohort_fixtures as cf
cf.build(sys.argv[1], sys.argv[2], "slices")
"""


def test_killed_build_leaves_no_dataset_visible(cohort, tmp_path):
    data = str(tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, cohort.root, data], env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        pattern = os.path.join(data, "vimed_pet", "*", "*incomplete*", "*.array_record*")
        while time.time() < deadline and not glob.glob(pattern):
            assert proc.poll() is None, "the build ended before it could be interrupted"
            time.sleep(0.05)
        assert glob.glob(pattern), "no partial records appeared"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    config_dir = glob.glob(os.path.join(data, "vimed_pet", "slices*"))[0]
    assert [d for d in os.listdir(config_dir) if "incomplete" in d]  # what was written stays hidden ...
    assert not any(d[:1].isdigit() and "incomplete" not in d for d in os.listdir(config_dir))  # ... no version dir
    with pytest.raises(FileNotFoundError):
        dataset_dir(data, os.path.basename(config_dir))
    summary = cf.build(cohort.root, data, "slices")  # a later build is not confused by the leftovers
    assert sum(summary.examples.values()) > 0 and not summary.reused


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxpetct.data", "build", *args], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_bad_manual_dir_gives_one_clear_line(cohort, tmp_path):
    out = _cli("--manual-dir", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "d"), "--no-progress")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: manual_dir {tmp_path / 'nowhere'} does not exist"]
    import shutil

    root = tmp_path / "no_manifest"
    shutil.copytree(cohort.root, root)
    os.remove(root / "metadata.csv")
    out = _cli("--manual-dir", str(root), "--data-dir", str(tmp_path / "d"), "--no-progress")
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(lines) == 1 and "metadata.csv is missing" in lines[0]
    assert not os.path.exists(tmp_path / "d" / "vimed_pet" / "regions" / "1.0.0")


def test_a_split_whose_studies_all_fail_gives_one_line(cohort, tmp_path):
    """Every validation study's report damaged: one line naming the split and a reason, exit 2, no traceback, and
    nothing published (TFDS cannot write an empty split)."""
    import json
    import shutil

    from jaxpetct.studies import release, splits

    root = tmp_path / "manual"
    shutil.copytree(cohort.root, root)
    with open(root / "metadata.csv", encoding="utf-8") as f:
        rows = [line.split(",") for line in f.read().splitlines()[1:] if line]
    damaged = 0
    for row in rows:
        year, month = release.parse_release_path(row[7])[:2]
        if splits.split_of(year, month) == splits.VALIDATION:
            report = {"Nhận định kết quả": "x\x00y", "Mô tả hình ảnh": {}}
            (root / row[7]).write_text(json.dumps(report), encoding="utf-8")
            damaged += 1
    assert damaged > 0
    out = _cli("--manual-dir", str(root), "--data-dir", str(tmp_path / "d"), "--no-progress")
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(errors) == 1 and f"split validation: every one of its {damaged} studies was quarantined" in errors[0]
    assert "NUL character" in errors[0]
    assert not os.path.exists(tmp_path / "d" / "vimed_pet" / "regions" / "1.0.0")
    listed = tmp_path / "d" / "vimed_pet" / "regions" / "quarantine.jsonl"  # named in the line, beside the dataset
    assert errors[0].endswith(f"all {damaged} quarantined studies: {listed}")
    assert len(build_paths.read_quarantine(str(listed.parent))) == damaged


@pytest.mark.integration
def test_beam_path_turns_an_empty_split_into_the_same_one_line(cohort, tmp_path):
    """TFDS's Beam writer raises its own ValueError (wrapped by Beam) for an empty split: the same one line comes
    out, and since the pipeline stopped before its quarantine parts were written, it says where to get them."""
    import json
    import shutil

    from jaxpetct.studies import release, splits

    root = tmp_path / "manual"
    shutil.copytree(cohort.root, root)
    with open(root / "metadata.csv", encoding="utf-8") as f:
        rows = [line.split(",") for line in f.read().splitlines()[1:] if line]
    for row in rows:
        if splits.split_of(*release.parse_release_path(row[7])[:2]) == splits.VALIDATION:
            (root / row[7]).write_text(json.dumps({"Nhận định kết quả": "\ud800", "Mô tả hình ảnh": {}}), "utf-8")
    with pytest.raises(build_paths.EmptySplitError, match=r"^split validation: every one of its studies .* the plain "
                                                          r"path \(without --beam\) writes every reason"):
        cf.build(str(root), str(tmp_path / "d"), "regions", beam=True,
                 beam_options="runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing")
    assert not os.path.exists(tmp_path / "d" / "vimed_pet" / "regions_16x32x32" / "1.0.0")


NO_TF_SCRIPT = """
import importlib.util, sys
assert importlib.util.find_spec("tensorflow") is None
from tests.tfds_builder import cohort_fixtures as cf
from jaxpetct.data import pipeline
s = cf.build(sys.argv[1], sys.argv[2], "regions")
cfg = pipeline.LoaderConfig(batch_size=2, buckets=(512,), text=pipeline.TextConfig(max_length=512))
batch = next(iter(pipeline.make_loader(sys.argv[2], s.config, "train", "mistral-v1", cfg, shard_index=0, shard_count=1)))
assert "tensorflow" not in sys.modules
print(s.examples["train"], batch["images"].shape, batch["input_ids"].shape)
print("quarantined:", s.quarantined)
"""


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="needs an environment without TensorFlow")
def test_build_and_load_in_a_fresh_interpreter_without_tensorflow(cohort, tmp_path):
    out = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, cohort.root, str(tmp_path)], env=_env(), cwd=REPO,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    *_, counts, quarantined = out.stdout.strip().splitlines()
    assert int(counts.split(" ", 1)[0]) == 3 * cohort.split_counts["train"], (quarantined, out.stderr[-3000:])
    assert "(2, 2, 32, 64, 64) (2, 512)" in out.stdout  # resized to the default encoder grid


def test_dicom_root_builds_without_phi(tmp_path):
    """A DICOM folder (with PHI canary tags and canary text in the report sidecars) builds like a release root."""
    from jaxpetct.data.pipeline import open_source
    from jaxpetct.data.records import as_text
    from jaxpetct.studies import synthetic

    summary = synthetic.write_cohort(str(tmp_path / "manual"), 3, seed=3, dicom=True, phi_canaries=True)
    built = cf.build(os.path.join(summary.root, "dicom"), str(tmp_path / "data"), "regions")
    assert built.quarantined == []
    assert built.examples == {s: 3 * n for s, n in summary.split_counts.items() if n}
    canaries = ("CANARY", "PIDCANARY", "ACCCANARY", "Ha Noi", "Benh vien")
    for split in built.examples:
        src = open_source(built.dataset_dir, split)
        for i in range(len(src)):
            rec = src[i]
            text = " ".join(as_text(v) for v in rec.values() if isinstance(v, bytes))
            assert not any(c.lower() in text.lower() for c in canaries)
            assert as_text(rec["source"]) == "dicom" and as_text(rec["findings"])
    # the corpus tokenizer learns from what the loader encodes of these records: its pieces carry no canary either
    from jaxpetct.data.corpus import conversation_texts
    from jaxpetct.data.inputs import TextConfig
    from jaxpetct.text import corpus_tokenizer

    records = [src[i] for split in built.examples for src in [open_source(built.dataset_dir, split)]
               for i in range(len(src))]
    corpus_tokenizer.train(list(conversation_texts(records, "report", TextConfig())), tmp_path / "tok", 512)
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
    pieces = " ".join(sp.id_to_piece(i) for i in range(sp.vocab_size())).replace("\u2581", " ").lower()
    assert not any(c.lower() in pieces for c in canaries)


def test_plain_build_spilling_to_disk_needs_no_tensorflow(cohort, built, tmp_path, monkeypatch):
    """Past 1 GiB per split TFDS's shuffler spills to bucket files via tf.io.gfile; shrink the threshold to 1 byte
    so every example spills, and the records must equal the in-memory build's, in the same order."""
    from array_record.python.array_record_module import ArrayRecordReader
    from tensorflow_datasets.core import shuffle

    assert importlib.util.find_spec("tensorflow") is None, "this test checks the TF-free environment"
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 1)
    spilled = cf.build(cohort.root, str(tmp_path), "regions")
    reference = built["regions"]
    assert spilled.examples == reference.examples

    def records(path, split):
        out = []
        for f in sorted(glob.glob(os.path.join(path, f"vimed_pet-{split}.array_record-*"))):
            reader = ArrayRecordReader(f)
            out += reader.read_all()
            reader.close()
        return out

    for split in reference.examples:
        assert records(spilled.dataset_dir, split) == records(reference.dataset_dir, split), split
