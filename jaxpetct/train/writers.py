"""Metric sinks for long jobs: a JSONL file (greppable, diffable, what tests read) and TensorBoard.

Only process 0 writes, so a pod run produces one log rather than one per host. Each JSONL line is flushed as
it is written: a run killed by SIGKILL keeps every line up to its last completed step.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np


def _scalar(v: Any) -> Any:
    if isinstance(v, (str, bool)) or v is None:
        return v
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError(f"metric values must be scalars, got shape {a.shape}")
    x = a.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no NaN/Inf; keep them visible rather than crash the writer
    return x


class MetricWriter:
    """Writes `{"step": s, "stage": ..., **metrics}` lines to `<dir>/metrics.jsonl` and TensorBoard scalars."""

    def __init__(self, directory: str | os.PathLike, *, tensorboard: bool = True, stage: Optional[str] = None):
        self.directory = os.fspath(directory)
        self.stage = stage
        self._active = jax.process_index() == 0
        self._tb = None
        self._file = None
        if not self._active:
            return
        os.makedirs(self.directory, exist_ok=True)
        self._file = open(os.path.join(self.directory, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.directory, "tensorboard"), flush_secs=10)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self._active:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        if self.stage:
            record["stage"] = self.stage
        record.update({k: _scalar(v) for k, v in metrics.items()})
        assert self._file is not None
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            prefix = f"{self.stage}/" if self.stage else ""
            for k, v in record.items():
                if k not in ("step", "time", "stage") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(prefix + k, v, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str | os.PathLike, *, stage: Optional[str] = None) -> list[dict]:
    """Read metrics.jsonl; when a resumed run re-did steps, the last record of each (stage, step) wins."""
    by_key: dict[tuple, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if stage is not None and rec.get("stage") != stage:
                continue
            by_key[(rec.get("stage"), rec["step"], "eval" if any(k.startswith("val_") for k in rec) else "train")] = rec
    return sorted(by_key.values(), key=lambda r: (str(r.get("stage")), r["step"]))
