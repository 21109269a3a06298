"""Pods for real, on one machine: several `launch.py` processes on 127.0.0.1 joined by jax.distributed (CPU,
gloo), never mocks. Every stage of the default order (with the paper's LoRA dropout), eval and export across two processes
that must agree on every number; SIGKILL of both mid-stage and a rerun that continues bit for bit; and a
2 processes x 4 devices run that matches 1 process x 8 devices on the same (data 2, fsdp 4) mesh."""
import json

import numpy as np
import pytest

from jaxpetct.data.pipeline import open_source
from jaxpetct.data.records import as_text
from jaxpetct.train.writers import read_metrics
from tests.train.multiproc import launch_processes, summary_lines

pytestmark = pytest.mark.integration

STAGES = ("encoder_pretrain", "full", "align", "lora")  # the default order


def data_args(shared, workdir, batch_size):
    return [f"--workdir={workdir}", f"--config.data.manual_dir={shared}/cohort", f"--config.data.data_dir={shared}/tfds",
            "--config.data.synthetic.n=12", "--config.data.synthetic.size=tiny",  # the fixture's cohort: reused
            f"--config.data.batch_size={batch_size}", "--config.model.lora.rank=4",
            "--config.model.lora.dropout=0.05"]  # the paper's: its RNG is what crashed on two processes


def assert_ok(outcomes):
    for i, o in enumerate(outcomes):
        assert o.returncode == 0, f"process {i} failed:\n{o.stderr[-4000:]}"


@pytest.mark.slow
def test_two_processes_train_every_stage_evaluate_and_export(built, subprocess_env, tmp_path):
    shared, _ = built
    wd = tmp_path / "run"
    args = data_args(shared, wd, 2) + ["--config.eval.max_examples=5", "--config.eval.max_new_tokens=12",
                                       "--config.eval.batch_size=4", "--config.eval.probe_max_examples=8"]
    for stage in STAGES:
        args += [f"--config.stages.{stage}.steps=3", f"--config.stages.{stage}.save_every=2",
                 f"--config.stages.{stage}.log_every=1"]
    outcomes = launch_processes(args, subprocess_env, processes=2, devices=1)
    assert_ok(outcomes)
    lines = [summary_lines(o.stdout) for o in outcomes]
    assert lines[0] == lines[1], "the two hosts disagree"
    for stage in STAGES:
        assert any(line.startswith(f"stage {stage}: 3 steps loss=") and "val_loss=" in line for line in lines[0])
    assert any(line.startswith("validation loss:") for line in lines[0])

    # one log and one checkpoint tree per stage (process 0 writes logs; Orbax commits each step once)
    for stage in STAGES:
        logged = read_metrics(wd / stage / "metrics.jsonl")
        assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]
        steps = sorted(int(p.name) for p in (wd / stage / "checkpoints").iterdir() if p.name.isdigit())
        assert steps and steps[-1] == 3
        assert not [p for p in (wd / stage).iterdir() if p.name.startswith("checkpoints") and p.name != "checkpoints"]
    # predictions cover the first max_examples test regions exactly once, whatever process decoded each volume
    preds = [json.loads(line) for line in (wd / "eval" / "predictions.jsonl").read_text().splitlines()]
    test_src = open_source(json.loads((wd / "summary_all.json").read_text())["build"]["regions"]["dir"], "test")
    expected = [as_text(test_src[i]["id"]).replace("/", ":") for i in range(5)]
    assert [p["id"] for p in preds] == expected
    summary = json.loads((wd / "eval" / "summary.json").read_text())
    assert np.isfinite(summary["val_loss"]) and (wd / "eval" / "viewer" / "index.html").is_file()
    assert (wd / "export" / "llm" / "config.json").is_file() and (wd / "export" / "vision").is_dir()


def lora_args(shared, workdir, batch_size, steps=20):
    """The lora stage alone (from a random decoder: its dropout RNG is what used to crash on two processes)."""
    return data_args(shared, workdir, batch_size) + [
        "--mode=train", "--config.order=('lora',)", "--config.mesh.data=2", "--config.mesh.fsdp=4",
        f"--config.stages.lora.steps={steps}", "--config.stages.lora.save_every=5", "--config.stages.lora.log_every=1",
        "--config.stages.lora.eval_every=10", "--config.stages.lora.peak_lr=3e-3"]


def losses(workdir):
    return [r["loss"] for r in read_metrics(workdir / "lora" / "metrics.jsonl") if "loss" in r]


def val_losses(workdir):
    return [r["val_loss"] for r in read_metrics(workdir / "lora" / "metrics.jsonl") if "val_loss" in r]


@pytest.fixture(scope="module")
def two_by_four(built, subprocess_env, tmp_path_factory):
    """The reference: 2 processes x 4 virtual devices, mesh data 2 x fsdp 4, 4 rows per host (8 per step)."""
    shared, _ = built
    wd = tmp_path_factory.mktemp("lora_2x4")
    assert_ok(launch_processes(lora_args(shared, wd, 4), subprocess_env, processes=2, devices=4))
    return wd


@pytest.mark.slow
def test_two_processes_of_four_devices_match_one_process_of_eight(built, subprocess_env, two_by_four, tmp_path):
    shared, _ = built
    assert_ok(launch_processes(lora_args(shared, tmp_path, 8), subprocess_env, processes=1, devices=8))
    want, got = losses(tmp_path), losses(two_by_four)
    assert len(want) == len(got) == 20
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(val_losses(two_by_four), val_losses(tmp_path), rtol=0, atol=1e-4)
    assert len(val_losses(tmp_path)) == 2


@pytest.mark.slow
def test_sigkill_of_both_processes_then_rerun_continues_bit_for_bit(built, subprocess_env, two_by_four, tmp_path):
    shared, _ = built
    args = lora_args(shared, tmp_path, 4)

    def past_step_12():  # after the checkpoint of step 10 and the first validation: resumes in the middle
        path = tmp_path / "lora" / "metrics.jsonl"
        return path.is_file() and any(r["step"] >= 12 for r in read_metrics(path))

    killed = launch_processes(args, subprocess_env, processes=2, devices=4, kill_when=past_step_12)
    assert all(o.returncode is None for o in killed)
    assert not (tmp_path / "lora" / "done.json").exists()
    assert_ok(launch_processes(args, subprocess_env, processes=2, devices=4))
    assert losses(tmp_path) == losses(two_by_four)  # the same floats, step for step
    assert val_losses(tmp_path) == val_losses(two_by_four)
