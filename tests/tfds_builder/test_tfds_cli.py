"""The README's `tfds build tfds_builder/vimed_pet --manual_dir=... --data_dir=... --config=regions`, run as is.

TFDS's CLI front-end imports TensorFlow (and mlcroissant) at start-up, so this runs only where they are installed:
`make test` runs it with the `tfds` script of the layered .venv-tf. The TF-free build path is tested in
test_builder.py.
"""
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("tensorflow", reason="TFDS's `tfds build` front-end needs TensorFlow (not installed here)")
pytest.importorskip("mlcroissant", reason="TFDS's `tfds build` front-end imports mlcroissant")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tfds_build_cli_builds_the_regions_config(tmp_path):
    from jaxpetct.studies.synthetic import write_cohort

    tfds_script = os.path.join(os.path.dirname(sys.executable), "tfds")
    if not os.path.exists(tfds_script):
        tfds_script = shutil.which("tfds")
    assert tfds_script, "no tfds console script beside this interpreter"
    summary = write_cohort(str(tmp_path / "manual"), 6, seed=5)
    data_dir = tmp_path / "tfds"
    cmd = [tfds_script, "build", "tfds_builder/vimed_pet", f"--manual_dir={summary.root}", f"--data_dir={data_dir}",
           "--config=regions"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr[-3000:]
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(data_dir / "vimed_pet" / "regions" / "1.0.0"))
    counts = {k: v.num_examples for k, v in builder.info.splits.items()}
    expected = {k: 3 * v for k, v in dict(summary.split_counts).items() if v}
    for split, n in expected.items():
        assert counts[split] == n
    assert builder.info.file_format.value == "array_record"
