"""Helpers for the evaluation tests: real-sample loaders and a subprocess runner for the three CLIs."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def generated_pairs(realdata) -> list[dict]:
    """The third-party reproduction's (generated, reference) reports: real model output to score."""
    return read_jsonl(realdata / "generated_reports_reproduction.jsonl")


@pytest.fixture
def run_cli():
    """Run `python -m <module> <args>` from the repository root; returns CompletedProcess (text mode)."""

    def run(module: str, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONIOENCODING="utf-8")
        return subprocess.run(
            [sys.executable, "-m", module, *map(str, args)], cwd=REPO_ROOT, env=env,
            capture_output=True, text=True, timeout=120,
        )

    return run


@pytest.fixture
def jsonl_file(tmp_path):
    """Write rows (dicts, or raw strings written as-is) to a fresh JSONL file under tmp_path."""
    counter = iter(range(10**6))

    def make(rows, name: str | None = None) -> pathlib.Path:
        path = tmp_path / (name or f"f{next(counter)}.jsonl")
        lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return make
