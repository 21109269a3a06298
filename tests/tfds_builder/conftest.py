"""Session fixtures: the synthetic cohort and every config built from it (plain path)."""
from __future__ import annotations

import pytest

from tests.tfds_builder import cohort_fixtures as cf


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    return cf.write_cohort(str(tmp_path_factory.mktemp("cohort") / "manual"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def built(cohort, data_dir):
    """config kind -> BuildSummary of the plain build of the clean cohort."""
    return {kind: cf.build(cohort.root, data_dir, kind) for kind in cf.KINDS}
