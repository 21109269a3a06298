"""bench_cosmos runs jaxpetct and diffusers side by side in its smallest mode: every row reports, and with the same
weights the two sides' latents agree."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

pytest.importorskip("diffusers", reason="diffusers (the test extra) is not installed: nothing to compare with")

import bench_cosmos  # noqa: E402

pytestmark = pytest.mark.integration  # runs the benchmark script end to end, as the other benchmark tests

SMALLEST = ["--config", "tiny", "--grids", "9x16x16", "--repeats", "1", "--warmup", "0"]


def test_tiny_rows_report_throughput_and_agree_with_diffusers(tmp_path):
    out = tmp_path / "cosmos.json"
    rows = bench_cosmos.main(SMALLEST + ["--json", str(out)])
    assert json.loads(out.read_text()) == rows
    assert [(r["grid"], r["latent"]) for r in rows] == [("9x16x16", [2, 2, 2, 4])]
    for r in rows:
        assert r["jaxpetct_s"] > 0 and r["diffusers_s"] > 0 and r["torch_threads"] == 2
        assert r["jaxpetct_volumes_per_s"] == pytest.approx(1 / r["jaxpetct_s"])
        assert r["speedup"] == pytest.approx(r["diffusers_s"] / r["jaxpetct_s"])
        assert r["max_rel_diff"] < 1e-4


def test_quick_keeps_the_first_grid_with_one_repeat():
    a = bench_cosmos.parse(["--quick", "--grids", "32x64x64,120x256x256"])
    assert a.grids == [(32, 64, 64)] and a.repeats == 1 and a.warmup == 0
    with pytest.raises(SystemExit):
        bench_cosmos.parse(["--grids", "32x64"])
