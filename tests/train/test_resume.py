"""Exact resume: launch.py killed with SIGKILL at random steps and restarted gives the uninterrupted losses."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from jaxpetct.train.writers import read_metrics

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 14


def launch_cmd(shared, workdir):
    return [sys.executable, os.path.join(REPO, "launch.py"), "--mode=train", f"--workdir={workdir}", "--noprogress",
            f"--config.data.manual_dir={shared}/cohort", f"--config.data.data_dir={shared}/tfds",
            "--config.data.synthetic.n=12", "--config.data.synthetic.size=tiny",  # the fixture's cohort, reused
            "--config.data.batch_size=2", "--config.model.lora.rank=4", "--config.order=('full',)",
            f"--config.stages.full.steps={STEPS}", "--config.stages.full.save_every=2",
            "--config.stages.full.log_every=1", "--config.stages.full.peak_lr=3e-3"]


def steps_logged(workdir) -> int:
    path = os.path.join(workdir, "full", "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return max((json.loads(line)["step"] for line in f if line.strip()), default=0)


def run_until(cmd, env, workdir, kill_at=None, timeout=600):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while proc.poll() is None:
        if kill_at is not None and steps_logged(workdir) >= kill_at:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "killed"
        if time.time() > deadline:
            proc.kill()
            pytest.fail("launch.py did not finish in time")
        time.sleep(0.05)
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
    return "finished"


@pytest.mark.slow
def test_sigkill_at_two_random_steps_then_resume_is_bitwise_identical(built, subprocess_env, tmp_path):
    shared, _ = built
    reference = tmp_path / "uninterrupted"
    assert run_until(launch_cmd(shared, reference), subprocess_env, str(reference)) == "finished"
    want = [r["loss"] for r in read_metrics(reference / "full" / "metrics.jsonl")]
    assert len(want) == STEPS

    kill_points = sorted(random.Random(1234).sample(range(2, STEPS), 2))  # 2 processes x 1 kill: test_multiprocess
    interrupted = tmp_path / "interrupted"
    outcomes = []
    for k in kill_points:
        outcomes.append(run_until(launch_cmd(shared, interrupted), subprocess_env, str(interrupted), kill_at=k))
    outcomes.append(run_until(launch_cmd(shared, interrupted), subprocess_env, str(interrupted)))
    print("kill points", kill_points, "outcomes", outcomes)
    assert outcomes == ["killed"] * 2 + ["finished"]
    got = [r["loss"] for r in read_metrics(interrupted / "full" / "metrics.jsonl")]
    assert got == want  # bitwise: the same floats, step for step
