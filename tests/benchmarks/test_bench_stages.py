"""bench_stages runs a stage of the default at its own shapes and reports a step time (so the script cannot rot)."""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_stages  # noqa: E402


def test_reports_the_encoder_stage_of_the_default(tmp_path):
    rows = bench_stages.main(["--stages", "encoder_pretrain", "--steps", "1", "--json", str(tmp_path / "s.json")])
    assert [r["stage"] for r in rows] == ["encoder_pretrain"] and rows[0]["step_s"] > 0
    assert json.loads((tmp_path / "s.json").read_text()) == rows
