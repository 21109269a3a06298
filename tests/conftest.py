"""Shared test set-up.

Unit tests check one function against a reference (the pure train step, a model against HF, a metric against
sacrebleu); integration tests run the path end to end (a cohort, built records, training, `launch.py`, real
processes) and carry the `integration` marker: `pytest -m "not integration"` is the quick loop while editing, CI
runs both. A test is integration when it uses a fixture that builds a cohort or datasets (below) or its file says
`pytestmark = pytest.mark.integration`.

Eight virtual CPU devices are requested before JAX is imported anywhere, so sharding tests can build a
(data, fsdp, tensor) = (2, 2, 2) mesh in-process; unsharded code still runs on device 0.
"""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REALDATA = REPO_ROOT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> pathlib.Path:
    """The read-only ViMed-PET text samples beside the checkout; tests skip when a clone lacks them."""
    if not REALDATA.is_dir():
        pytest.skip(f"real ViMed-PET samples not found at {REALDATA} (they live beside the checkout, never in it)")
    return REALDATA


# Fixtures that write a cohort, build datasets or set up subprocess runs.
INTEGRATION_FIXTURES = {"built", "cohort", "data_dir", "subprocess_env", "tiny_cohort", "canary_cohort"}


def pytest_collection_modifyitems(items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
