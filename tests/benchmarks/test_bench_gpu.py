"""benchmarks/bench_gpu.py stays runnable: its --dry mode runs the three GPU cases at tiny shapes on the CPU."""
import importlib.util
import json
import math
import pathlib

import pytest

pytestmark = pytest.mark.integration

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about a minute on a loaded 2-core CPU: two train-step and four generation compiles
def test_dry_run_writes_all_three_cases(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--dry", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["dry"] is True and set(result["cases"]) == {"a", "b", "c"}
    a, b, c = (result["cases"][k] for k in "abc")
    for row in (a, b):
        assert row["tokens_per_s"] > 0 and math.isfinite(row["loss"]) and 0 < row["loss"] < 20
        assert row["steps"] >= 1 and row["peak_memory_bytes"] > 0
    # the FLOP counter behind MFU: no remat in case a, remat recomputation counted as executed only in case b
    assert a["executed_tflops_per_step"] == a["model_tflops_per_step"] > 0
    assert b["executed_tflops_per_step"] > b["model_tflops_per_step"] > 0
    assert b["trainable_params"] < a["trainable_params"]  # adapters + projector vs projector + whole decoder
    assert [r["peer"] for r in c] == ["c1", "c16"]
    for row in c:
        assert row["tokens_per_s"] > 0 and row["prefill_s"] > 0 and row["total_s"] > 0
        assert row["model_tflops_per_step"] > 0
    table = capsys.readouterr().out
    assert "84.6 k eager" in table and "4,331" in table and "| c4 |" in table


def test_child_processes_get_their_own_case_and_output(bench):
    argv = ["--cases", "a,b", "--json=/x.json", "--loss-chunk", "8192", "--in-process", "--attention", "xla"]
    assert bench.child_argv(argv, "b", "/tmp/b.json") == [
        "--loss-chunk", "8192", "--attention", "xla", "--in-process", "--cases", "b", "--json", "/tmp/b.json"]
    with pytest.raises(SystemExit):
        bench.parse(["--cases", "a,z"])
