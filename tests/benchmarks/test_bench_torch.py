"""bench_torch runs jaxpetct and PyTorch side by side at tiny shapes: every row reports, and with the same weights
the two sides' losses agree at step 0 (and after an AdamW update, which both sides compute alike)."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_torch  # noqa: E402

pytestmark = pytest.mark.integration

TINY = ["--layers", "1", "--hidden", "64", "--intermediate", "192", "--heads", "2", "--kv-heads", "1",
        "--vocab", "512", "--batch", "2", "--seq", "32", "--steps", "1", "--warmup", "1"]


def test_full_and_lora_rows_agree_with_torch_and_peft(tmp_path):
    out = tmp_path / "torch.json"
    rows = bench_torch.main(TINY + ["--no-compile", "--json", str(out)])
    assert json.loads(out.read_text()) == rows
    assert [(r["row"], r["mask"]) for r in rows] == [("full", "all"), ("full", "answer"), ("lora", "all"),
                                                    ("lora", "answer")]
    for r in rows:
        other = "torch_eager" if r["row"] == "full" else "peft"
        assert r["sides"] == ["jaxpetct", other] and r["torch_threads"] == 2
        assert r["jaxpetct_s"] > 0 and r[f"{other}_s"] > 0
        assert r[f"speedup_vs_{other}"] == pytest.approx(r[f"{other}_s"] / r["jaxpetct_s"])
        assert r["jaxpetct_loss0"] == pytest.approx(r[f"{other}_loss0"], rel=1e-4)
        assert r["jaxpetct_loss_last"] == pytest.approx(r[f"{other}_loss_last"], rel=1e-3)
        assert r["target_tokens"] == (2 * 31 if r["mask"] == "all" else 2 * 12)  # 64 % of 32 positions: prompt
    by = {(r["row"], r["mask"]): r for r in rows}
    for mask in ("all", "answer"):  # fresh adapters (B = 0) leave the model, hence the loss, unchanged
        assert by["lora", mask]["jaxpetct_loss0"] == pytest.approx(by["full", mask]["jaxpetct_loss0"], rel=1e-6)


@pytest.mark.slow  # torch.compile (inductor) takes most of a minute on a loaded 2-core CPU
def test_torch_compile_side_reports_a_time_or_its_error():
    (r,) = bench_torch.main(TINY + ["--rows", "full", "--mask", "all"])
    if "torch_compile_error" in r:
        assert r["sides"] == ["jaxpetct", "torch_eager"]
    else:
        assert r["sides"] == ["jaxpetct", "torch_eager", "torch_compile"] and r["torch_compile_s"] > 0
        assert r["torch_compile_loss0"] == pytest.approx(r["jaxpetct_loss0"], rel=1e-4)
        assert r["speedup_vs_torch_compile"] == pytest.approx(r["torch_compile_s"] / r["jaxpetct_s"])
