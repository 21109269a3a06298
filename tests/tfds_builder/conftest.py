"""Session fixtures: the synthetic cohort and every config built from it (plain path)."""
from tests.tfds_builder.cohort_fixtures import built, cohort, data_dir  # noqa: F401
