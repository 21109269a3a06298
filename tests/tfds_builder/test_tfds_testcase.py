"""TFDS's own conformance test (`tfds.testing.DatasetBuilderTestCase`) on dummy data from the synthetic cohort.

`tfds.testing` is built on `tf.test.TestCase` and reads the dataset back through `tf.data`, so it needs
TensorFlow (and TFDS 4.9 reads only TFRecord through `tf.data`, so this run writes TFRecord); the project itself
never does. Where TensorFlow is absent this module skips (the TF-free build and
read-back of every config is in test_builder.py); to run it, use an environment with tensorflow-cpu and dill,
e.g. a venv layered on the project's: see tfds_builder/vimed_pet/README.md.

Expected split sizes are computed from the cohort writer's own split counts and expert files, not from the builder.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

pytest.importorskip("tensorflow", reason="tfds.testing.DatasetBuilderTestCase needs TensorFlow (not installed here)")
pytest.importorskip("dill", reason="tfds.testing imports dill")

import tensorflow_datasets as tfds  # noqa: E402

from jaxpetct.studies import synthetic  # noqa: E402
from tfds_builder.vimed_pet import vimed_pet_dataset_builder as vimed_pet  # noqa: E402

N_STUDIES = 6


def _cohort() -> tuple[str, dict]:
    root = tempfile.mkdtemp(prefix="vimed_dummy_")
    summary = synthetic.write_cohort(os.path.join(root, "manual"), N_STUDIES, seed=3)
    counts = dict(summary.split_counts)
    expert = os.path.join(summary.root, "expert_lesions")
    counts["test_expert"] = len(os.listdir(expert)) if os.path.isdir(expert) else 0
    return summary.root, {k: v for k, v in counts.items() if v}


class _Base(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = vimed_pet.Builder
    OVERLAPPING_SPLITS = ["test_expert"]  # the expert set is a subset of the test months
    SKIP_CHECKSUMS = True  # nothing is downloaded: the data comes from --manual_dir
    PER_STUDY = 1

    @classmethod
    def setUpClass(cls):
        cls.EXAMPLE_DIR, counts = _cohort()
        cls.SPLITS = {k: v * cls.PER_STUDY for k, v in counts.items()}
        super().setUpClass()

    def _make_builder(self, config=None):
        """TFDS 4.9's `as_dataset` (what this test case reads with) has no ArrayRecord reader, so the conformance
        run writes TFRecord; the ArrayRecord output is read back without TensorFlow in test_builder.py."""
        return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION,
                                  file_format="tfrecord", progress=False)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(os.path.dirname(cls.EXAMPLE_DIR), ignore_errors=True)


class RegionsTest(_Base):
    BUILDER_CONFIG_NAMES_TO_TEST = ["regions"]
    PER_STUDY = 3  # head-neck, chest, abdomen-pelvis


class StudyTest(_Base):
    BUILDER_CONFIG_NAMES_TO_TEST = ["study"]
    PER_STUDY = 1


del _Base  # only the concrete cases are collected

if __name__ == "__main__":
    tfds.testing.test_main()
