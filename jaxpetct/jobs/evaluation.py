"""`--mode eval` and `--mode export`: score the final model, show it, ship it.

Evaluation writes `<workdir>/eval/{predictions.jsonl, metrics.json, summary.json, viewer/}`. With
`eval.blank_baseline` the same model is also scored on all-zero volumes (`eval/blank/`) and the teacher-forced
validation loss is computed both ways: if the model uses the image, the real volumes must do clearly better.
With `eval.lesion_probe` a linear probe (jaxpetct.eval.probe) says how much lesion signal the volumes hold and
how much the trained encoder keeps.
"""
from __future__ import annotations

import json
import logging
import os

import jax

from jaxpetct.atomic import write_text
from jaxpetct.errors import ConfigError
from jaxpetct.eval.runner import evaluate as run_eval
from jaxpetct.eval.vlm_generate import DecodingConfig
from jaxpetct.jobs import data as data_jobs
from jaxpetct.jobs import training
from jaxpetct.jobs.probe import lesion_probe
from jaxpetct.parallel.multihost import barrier, on_primary
from jaxpetct.text.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

_HEADLINE = ("bleu4", "rouge1", "rougeL", "meteor", "cider", "bertscore", "F1-T", "F1-TP", "F1-TF", "F1-TPF",
             "closed_accuracy")


def _headline(metrics: dict) -> dict:
    out = {}
    for task, m in metrics.get("tasks", metrics).items():
        if isinstance(m, dict):
            out[task] = {k: m[k] for k in _HEADLINE if k in m}
    return out


def _write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))


def evaluate(cfg, workdir: str, *, mesh=None, progress: bool = True) -> dict:
    model = training.final_model(cfg, workdir, mesh=mesh)
    io = training.model_io(model)
    tokenizer = load_tokenizer(data_jobs.tokenizer_spec(cfg, workdir))
    decoding = DecodingConfig(max_new_tokens=int(cfg.eval.max_new_tokens), temperature=float(cfg.eval.temperature),
                              top_k=int(cfg.eval.top_k), top_p=float(cfg.eval.top_p), seed=int(cfg.seed),
                              batch_size=int(cfg.eval.batch_size), length_buckets=tuple(cfg.data.buckets),
                              template=cfg.data.template)
    out = os.path.join(os.path.abspath(workdir), "eval")
    kw = dict(decoding=decoding, tasks=tuple(cfg.eval.tasks), mesh=mesh,
              bertscore_model=cfg.eval.bertscore_model or None, progress=progress,
              language=cfg.data.report_language)
    metrics = run_eval(model, tokenizer, data_jobs.eval_examples(cfg, workdir, io), out, **kw)
    summary = {"split": cfg.eval.split, "model": _headline(metrics)}
    if cfg.eval.blank_baseline:
        blank = run_eval(model, tokenizer, data_jobs.eval_examples(cfg, workdir, io, blank=True),
                         os.path.join(out, "blank"), **kw)
        summary["blank_images"] = _headline(blank)
        val = data_jobs.val_batches(cfg, workdir, io)
        if val is not None:
            summary["val_loss"] = training.loss_over(model, val, mesh=mesh)
            summary["val_loss_blank_images"] = training.loss_over(model, val, mesh=mesh, blank=True)
    if cfg.eval.lesion_probe:
        summary["lesion_probe"] = lesion_probe(cfg, workdir, model, mesh=mesh, progress=progress)
    if cfg.eval.viewer:
        summary["viewer"] = on_primary(lambda: write_viewer(cfg, workdir, out), "writing the viewer")
    if jax.process_index() == 0:
        _write_json(os.path.join(out, "summary.json"), summary)
    barrier("jaxpetct:eval-written")  # the files are complete before any process moves on
    return summary


def write_viewer(cfg, workdir: str, out: str) -> str:
    """HTML pages (PET MIP, CT slices, generated vs reference, lesion tables) for the evaluated studies."""
    from jaxpetct.eval.viewer import pages_from_predictions, write_viewer as write_pages
    from jaxpetct.studies.cohort import iter_studies, list_studies, study_id

    with open(os.path.join(out, "predictions.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    wanted = {r.get("study_id") for r in records}
    salt = data_jobs.salt_of(cfg)
    refs = [r for r in list_studies(data_jobs.manual_dir(cfg, workdir)) if study_id(r, salt) in wanted]
    walk = iter_studies(refs, salt=salt)
    pages = pages_from_predictions(records, walk, language=cfg.data.report_language)
    result = write_pages(pages, os.path.join(out, "viewer"))
    return result["index"]


def export(cfg, workdir: str, *, mesh=None) -> str:
    """HF safetensors LLM (LoRA merged) + CT-ViT/projector weights + tokenizer + loading notes."""
    from jaxpetct.eval.export import export_vlm
    from jaxpetct.predict.core import preprocess_of

    model = training.final_model(cfg, workdir, mesh=mesh)
    out = os.path.join(os.path.abspath(workdir), "export")
    dtype = None if cfg.export.dtype in ("", "float32") else cfg.export.dtype
    pre = preprocess_of(cfg, training.model_io(model).input_shape).to_json()
    export_vlm(model, out, tokenizer=data_jobs.tokenizer_spec(cfg, workdir), template=cfg.data.template, dtype=dtype, preprocess=pre)
    barrier("jaxpetct:export-written")  # every process gathers weights; process 0 writes; all return after
    return out


def predict(cfg, workdir: str, *, mesh=None, progress: bool = True) -> dict:
    """Reports for the studies at `predict.input` with the run's final weights, as `python -m jaxpetct.predict`
    gives them from the export (one process: prediction is for a handful of new studies, not a split)."""
    from jaxpetct.predict import Predictor, predict_path, preprocess_of

    if not cfg.predict.input:
        raise ConfigError("--mode predict needs --config.predict.input=<DICOM folder, release root, file or .zip>")
    if jax.process_count() > 1:
        raise ConfigError("--mode predict runs on one process; start launch.py without multi-host flags")
    model = training.final_model(cfg, workdir, mesh=mesh)
    pre = preprocess_of(cfg, training.model_io(model).input_shape)
    predictor = Predictor(model, load_tokenizer(data_jobs.tokenizer_spec(cfg, workdir)), pre, mesh=mesh)
    out = cfg.predict.out or os.path.join(os.path.abspath(workdir), "predict")
    summary = predict_path(predictor, cfg.predict.input, out, salt=cfg.salt or None, progress=progress)
    return {"out": out, **summary.to_json()}
