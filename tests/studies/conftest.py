"""Synthetic cohorts shared by the studies tests (written once per session, read-only afterwards)."""
import pytest

from jaxpetct.studies import synthetic


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """24 tiny studies in the release layout, seed 0 (the CLI's default cohort)."""
    root = tmp_path_factory.mktemp("cohort") / "release"
    synthetic.write_cohort(str(root), n=24, seed=0)
    return root


@pytest.fixture(scope="session")
def canary_cohort(tmp_path_factory):
    """3 studies with DICOM series and canary PHI in tags, folder names and report text."""
    root = tmp_path_factory.mktemp("phi") / "release"
    synthetic.write_cohort(str(root), n=3, seed=5, dicom=True, phi_canaries=True)
    return root
