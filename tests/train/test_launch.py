"""launch.py end to end on a shrunk default: every mode runs, writes what the README says, and fails cleanly."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch(args, env, timeout=900):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), "--noprogress", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_launch_all_modes_on_the_synthetic_cohort(built, subprocess_env, tmp_path):
    shared, _ = built
    wd = tmp_path / "run"
    args = [f"--workdir={wd}", f"--config.data.manual_dir={shared}/cohort", f"--config.data.data_dir={shared}/tfds",
            "--config.data.batch_size=4", "--config.model.lora.rank=4", "--config.eval.max_examples=3",
            "--config.eval.max_new_tokens=16", "--config.eval.batch_size=4",
            "--config.data.synthetic.n=12", "--config.data.synthetic.size=tiny"]  # the fixture's cohort: reused
    stages = ("encoder_pretrain", "full", "align", "lora")  # the default order
    for stage in stages:
        args += [f"--config.stages.{stage}.steps=3", f"--config.stages.{stage}.save_every=3"]
    done = launch(args, subprocess_env)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert "validation loss:" in out and "export:" in out
    for stage in stages:
        assert (wd / stage / "done.json").is_file() and (wd / stage / "metrics.jsonl").is_file()
        assert any((wd / stage / "tensorboard").iterdir())
    summary = json.loads((wd / "eval" / "summary.json").read_text())
    assert {"model", "blank_images", "val_loss", "val_loss_blank_images", "viewer", "lesion_probe"} <= set(summary)
    assert set(summary["lesion_probe"]) == {"input_pet", "encoder"}
    for rows in summary["lesion_probe"].values():
        assert rows and all("accuracy" in r or "skipped" in r for r in rows.values())
    preds = [json.loads(line) for line in (wd / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all({"id", "task", "prompt", "reference", "generated"} <= set(p) for p in preds)
    assert (wd / "export" / "llm" / "config.json").is_file() and (wd / "export" / "vision").is_dir()
    assert (wd / "eval" / "viewer" / "index.html").is_file()
    _predict_matches_eval(wd, shared, preds, args, subprocess_env)
    # Re-running finds every stage done and trains nothing again.
    again = launch(args + ["--mode=train"], subprocess_env)
    assert again.returncode == 0 and "stage lora: 3 steps" in again.stdout


def _predict_matches_eval(wd, shared, preds, args, env):
    """A test-split study predicted from the export (python -m jaxpetct.predict) and from the run (--mode predict)
    gets, region by region, the text that --mode eval generated for it."""
    from jaxpetct.studies import cohort
    from jaxpetct.studies.deid import resolve_salt
    from jaxpetct.text.prompts import region_section

    salt = resolve_salt(None, synthetic=True)
    study = preds[0]["study_id"]
    [ref] = [r for r in cohort.list_studies(f"{shared}/cohort") if cohort.study_id(r, salt) == study]
    expected = {region_section(p["region"]): p["generated"] for p in preds if p["study_id"] == study}
    cli = subprocess.run([sys.executable, "-m", "jaxpetct.predict", "--model", str(wd / "export"), "--study",
                          f"{shared}/cohort", "--patient", ref.key, "--out", str(wd / "p_export"), "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert cli.returncode == 0, cli.stderr[-3000:]
    run = launch(args + ["--mode=predict", f"--config.predict.input={shared}/cohort"], env)
    assert run.returncode == 0 and "predict: 12 studies" in run.stdout, run.stderr[-3000:]
    for out in (wd / "p_export", wd / "predict"):
        report = json.loads((out / study / "report.json").read_text("utf-8"))["Mô tả hình ảnh"]
        assert {s: report[s] for s in expected} == expected


def test_launch_reports_a_wrong_manual_dir_in_one_line(subprocess_env, tmp_path):
    done = launch([f"--workdir={tmp_path}", "--mode=build", f"--config.data.manual_dir={tmp_path}/nowhere"],
                  subprocess_env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "nowhere" in done.stderr
    assert "Traceback" not in done.stderr


def test_real_data_refuses_the_public_demo_salt(subprocess_env, tmp_path):
    (tmp_path / "release").mkdir()
    env = {k: v for k, v in subprocess_env.items() if k != "JAXPETCT_SALT"}
    done = launch([f"--workdir={tmp_path}", "--mode=build", "--config.data.source=release",
                   f"--config.data.manual_dir={tmp_path}/release"], env, timeout=300)
    assert done.returncode == 2 and "salt" in done.stderr.splitlines()[-1]


def test_a_rewritten_synthetic_cohort_rebuilds_its_datasets(tmp_path):
    """Changing data.synthetic.n rewrites the cohort; the datasets built from the old one must not be reused."""
    from jaxpetct.config import base_config
    from jaxpetct.data.records import as_text
    from jaxpetct.jobs import data as data_jobs

    cfg = base_config()
    cfg.data.synthetic.update(n=4, size="tiny")
    cfg.data.record_shape = (8, 16, 16)
    data_jobs.synth(cfg, str(tmp_path))
    first = data_jobs.build(cfg, str(tmp_path), progress=False, names=["regions"])["regions"]
    assert data_jobs.build(cfg, str(tmp_path), progress=False, names=["regions"])["regions"].reused
    cfg.data.synthetic.n = 6
    data_jobs.synth(cfg, str(tmp_path))
    second = data_jobs.build(cfg, str(tmp_path), progress=False, names=["regions"])["regions"]
    assert not second.reused and second.studies_listed == 6 and first.studies_listed == 4
    table = data_jobs.lesion_table(cfg, str(tmp_path))
    src = data_jobs.pipeline.open_source(second.dataset_dir, "train")
    assert all(as_text(src[i]["study_id"]) in table for i in range(len(src)))


@pytest.mark.parametrize("args, names", [
    (["--config.mesh.fsdp=3"], "not divisible by 3"),  # a mesh the devices cannot form (1 CPU device here)
    (["--config.stages.lora.nosuch=1"], "--config.stages.lora.nosuch"),  # a setting no stage has
    (["--config.stages.nosuch.steps=1"], "--config.stages.nosuch.steps"),  # a stage no config has
    (["--config.data.batch_size=abc"], "--config.data.batch_size=abc"),  # a value of the wrong type
    (["--config=configs/nosuch.py"], "configs/nosuch.py"),  # a config file that is not there
])
def test_user_errors_are_one_line_and_exit_2(subprocess_env, tmp_path, args, names):
    done = launch([f"--workdir={tmp_path}", "--mode=train", *args], subprocess_env, timeout=300)
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith(("I1", "W1"))]  # absl INFO
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], lines
    assert "Traceback" not in done.stderr


def test_a_config_file_with_an_undeclared_key_is_one_line(subprocess_env, tmp_path):
    """ml_collections accepts any key a config file sets; the typed sections (jaxpetct/config.py) do not."""
    typo = tmp_path / "typo.py"
    typo.write_text("from jaxpetct.config import base_config\n\n\ndef get_config(arg=None):\n"
                    "    c = base_config()\n    c.stages.lora.stpes = 10\n    return c\n")
    done = launch([f"--workdir={tmp_path}", "--mode=train", f"--config={typo}"], subprocess_env, timeout=300)
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith(("I1", "W1"))]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: stages.lora.stpes: no such setting"), lines


def test_train_does_not_build_it_says_how(subprocess_env, tmp_path):
    """Only --mode build / all write datasets; train on a fresh workdir names the missing dataset and the command."""
    done = launch([f"--workdir={tmp_path}", "--mode=train", "--config.data.synthetic.n=4"], subprocess_env, timeout=300)
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith(("I1", "W1"))]
    assert done.returncode == 2 and len(lines) == 1 and "--mode build" in lines[0], lines
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "cohort").exists()
