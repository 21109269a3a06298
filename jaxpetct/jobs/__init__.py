"""The modes of `launch.py`, one function each: synth -> build -> train -> eval -> export (or all of them).

These are the I/O edges of the library: they read a config and a work directory and call the pure pieces of
each stage (studies, data, models, train, eval). Nothing in jaxpetct imports this package.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time

from typing import Iterator, Optional

import jax

from jaxpetct.atomic import write_text
from jaxpetct.errors import ConfigError, UserError  # noqa: F401 (ConfigError: public here too)
from jaxpetct.jobs.data import build, require_data, synth
from jaxpetct.jobs.evaluation import evaluate, export, predict
from jaxpetct.jobs.training import train
from jaxpetct.parallel.multihost import PrimaryFailed, on_primary

log = logging.getLogger(__name__)

MODES = ("synth", "build", "train", "eval", "export", "predict", "all")
# What launch.py prints as one line, no traceback: errors in the user's input or config (errors.UserError), a
# path that is not there, and PrimaryFailed (what process 0 did for everyone failed; its traceback is on process 0).
USER_ERRORS = (UserError, FileNotFoundError, PrimaryFailed)


def resolve_config(cfg):
    """The config every mode runs: checked against its typed sections (jaxpetct/config.py) and the model factory
    (an unknown key or a wrongly typed value is a one-line ConfigError), with every setting a section leaves out
    filled from its one default."""
    from jaxpetct.config import to_configdict, typed
    from jaxpetct.models.factory import check

    resolved = to_configdict(typed(cfg))
    check(resolved.model)
    _check_language(resolved)
    return resolved


def _check_language(cfg) -> None:
    """English reports exist as report pairs only: the G paraphraser, comparison texts and VQA are Vietnamese."""
    lang = cfg.data.report_language
    if lang not in ("vi", "en"):
        raise ConfigError(f"data.report_language={lang!r}; use 'vi' or 'en'")
    if lang != "en":
        return
    other = [task for _, task, _ in cfg.data.train_mix if task != "report"] + [t for t in cfg.eval.tasks if t != "report"]
    if other or float(cfg.data.paraphrase_prob) > 0:
        raise ConfigError("data.report_language='en' trains and evaluates report generation only: set data.train_mix "
                          "to report tasks, eval.tasks=('report',) and data.paraphrase_prob=0 (G paraphrases, "
                          f"comparisons and VQA are Vietnamese; found {sorted(set(other)) or 'paraphrase_prob > 0'})")


def make_run_mesh(cfg):
    from jaxpetct.parallel.mesh import make_mesh

    return make_mesh(dict(cfg.mesh))


def save_config(cfg, workdir: str) -> None:
    """The resolved config beside the run, so a result can always be traced to what produced it."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    write_text(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=1))


def _synth_on_primary(cfg, workdir: str):
    return on_primary(lambda: synth(cfg, workdir), "writing the synthetic cohort")


def _build_on_primary(cfg, workdir: str, progress: bool) -> dict:
    def make():
        return {k: {"dir": v.dataset_dir, "examples": v.examples, "quarantined": len(v.quarantined)}
                for k, v in build(cfg, workdir, progress=progress).items()}

    return on_primary(make, "building the datasets")


@contextlib.contextmanager
def compile_once() -> Iterator[None]:
    """Identical XLA programs compile once per run. Every stage, the evaluation and the export build and initialise
    the same VLM (7 s of compilation each for the tiny default on 2 cores; its weights are then loaded), and stages
    share the frozen encoder's and validation's programs. JAX's persistent cache does this by program fingerprint;
    without a cache of the user's own (JAX_COMPILATION_CACHE_DIR) it lives in a temporary folder for the run."""
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir:
        yield
        return
    folder, min_secs = tempfile.mkdtemp(prefix="jaxpetct-xla-"), jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)
        compilation_cache.reset_cache()
        shutil.rmtree(folder, ignore_errors=True)


def run(mode: str, cfg, workdir: str, *, progress: bool = True, stages: Optional[list[str]] = None) -> dict:
    """Run one mode (or "all") and return a JSON-able summary of what it did (the same on every process).

    Every process of a multi-host job runs this; what writes shared files (cohort, datasets, summaries, viewer,
    export) happens on process 0 while the others wait. `stages` trains only those stages (mode "train").
    """
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {MODES}")
    with compile_once():
        return _run(mode, cfg, workdir, progress=progress, stages=stages)


def _run(mode: str, cfg, workdir: str, *, progress: bool, stages: Optional[list[str]]) -> dict:
    save_config(cfg, workdir)
    summary: dict = {}
    steps = ("synth", "build", "train", "eval", "export") if mode == "all" else (mode,)
    mesh = make_run_mesh(cfg) if any(s in ("train", "eval", "export", "predict") for s in steps) else None
    if mode in ("train", "eval"):  # only --mode build (or all) builds: these open what exists, or say what to run
        require_data(cfg, workdir)
    for step in steps:
        t0 = time.perf_counter()
        if step == "synth":
            summary["synth"] = _synth_on_primary(cfg, workdir)
        elif step == "build":
            summary["build"] = _build_on_primary(cfg, workdir, progress)
        elif step == "train":
            summary["train"] = train(cfg, workdir, mesh=mesh, stages=stages, progress=progress)
        elif step == "eval":
            summary["eval"] = evaluate(cfg, workdir, mesh=mesh, progress=progress)
        elif step == "export":
            summary["export"] = export(cfg, workdir, mesh=mesh)
        elif step == "predict":
            summary["predict"] = predict(cfg, workdir, mesh=mesh, progress=progress)
        summary.setdefault("seconds", {})[step] = round(time.perf_counter() - t0, 1)
        log.info("%s done in %.1f s", step, summary["seconds"][step])
    if jax.process_index() == 0:
        write_text(os.path.join(workdir, f"summary_{mode}.json"),
                   json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    return summary


def describe(summary: dict, workdir: str) -> str:
    """A few human lines about a finished run (the full record is summary_<mode>.json in the workdir)."""
    lines = [f"run directory: {workdir}"]
    if summary.get("synth"):
        n = summary["synth"].get("n")
        lines.append(f"cohort: {summary['synth']['root']}" + (f" ({n} synthetic studies)" if n else " (existing)"))
    for name, b in (summary.get("build") or {}).items():
        lines.append(f"dataset {name}: {b['examples']} examples, {b['quarantined']} quarantined -> {b['dir']}")
    for name, s in (summary.get("train") or {}).items():
        final = s.get("final", {}) if isinstance(s, dict) else {}
        keys = ("loss", "val_loss", "val_psnr", "val_ssim")  # PSNR, SSIM: tokenizer_finetune's reconstructions
        bits = [f"{k}={final[k]:.4f}" for k in keys if isinstance(final.get(k), (int, float))]
        start = s.get("initial", {}) if isinstance(s, dict) else {}
        bits += [f"(start {k}={start[k]:.4f})" for k in keys if isinstance(start.get(k), (int, float))]
        lines.append(f"stage {name}: {s.get('steps', s.get('stopped_at'))} steps " + " ".join(bits))
    ev = summary.get("eval")
    if ev:
        for label in ("model", "blank_images"):
            for task, m in (ev.get(label) or {}).items():
                lines.append(f"eval {label} [{task}]: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()))
        if "val_loss" in ev:
            lines.append(f"validation loss: {ev['val_loss']:.4f} with the volumes, "
                         f"{ev['val_loss_blank_images']:.4f} with blank volumes")
        for name, rows in (ev.get("lesion_probe") or {}).items():
            if not isinstance(rows, dict):
                continue
            bits = [f"{region} acc {r['accuracy']:.2f}/maj {r['majority_accuracy']:.2f} AUROC {r['auroc']:.2f}"
                    for region, r in rows.items() if isinstance(r, dict) and "accuracy" in r]
            if bits:
                lines.append(f"lesion probe ({name}): " + "; ".join(bits))
        if ev.get("viewer"):
            lines.append(f"viewer: {ev['viewer']}")
    if summary.get("export"):
        lines.append(f"export: {summary['export']}")
    if summary.get("predict"):
        p = summary["predict"]
        lines.append(f"predict: {len(p['predicted'])} studies -> {p['out']}" + (f", {len(p['failed'])} failed "
                     f"(see predict_summary.json)" if p["failed"] else ""))
    if summary.get("seconds"):
        lines.append("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["seconds"].items()))
    return "\n".join(lines)
