"""`--mode train`: the configured stages in order, each starting from the previous stage's final weights.

Each stage lives in `<workdir>/<stage>/` (metrics.jsonl, tensorboard/, checkpoints/, weights/, done.json). A
stage with done.json is skipped, so re-running a killed `launch.py` continues where it stopped: inside an
unfinished stage the checkpoint restores state, RNG and data position exactly.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from typing import Iterable, Optional

import jax
import numpy as np
from flax import nnx

from jaxpetct.atomic import write_text
from jaxpetct.config import stage_settings
from jaxpetct.data.batching import EMPTY_ROW_VALUES, TOKEN_FIELDS
from jaxpetct.jobs import data as data_jobs
from jaxpetct.models.factory import build_vlm
from jaxpetct.parallel.batches import aligned, batch_sharding, to_global
from jaxpetct.parallel.multihost import on_primary
from jaxpetct.train.loop import StageSpec, model_arrays, run_stage
from jaxpetct.train.stages import kind_of, trainable_groups
from jaxpetct.train.tasks import vlm_answer_loss
from jaxpetct.train.weights import load_weights, save_weights

log = logging.getLogger(__name__)

def stage_dir(workdir: str, name: str) -> str:
    return os.path.join(os.path.abspath(workdir), name)


def weights_dir(workdir: str, name: str) -> str:
    return os.path.join(stage_dir(workdir, name), "weights")


def uses_lora(cfg, name: str) -> bool:
    """LoRA adapters exist from the first stage whose kind adds them (and in every later VLM stage and at
    evaluation); a stage not in `order` (evaluation, export) sees them if any stage of `order` adds them."""
    order = list(cfg.order)
    upto = order[: order.index(name) + 1] if name in order else order
    return any(kind_of(cfg, s).adds_lora for s in upto) and int(cfg.model.lora.rank) > 0


def vlm_stages(cfg) -> list[str]:
    """The stages of `order` that train the VLM (evaluation and export use the last one's weights)."""
    return [s for s in cfg.order if kind_of(cfg, s).vlm]


def model_io(model) -> data_jobs.ModelIO:
    enc = model.encoder.cfg  # the vision encoder (CT-ViT or Cosmos) is `encoder` in every stage's model
    text = getattr(getattr(model, "text", None), "cfg", None)  # CLIP's text tower (fairseq positions from pad + 1)
    positions = int(text.max_position_embeddings - text.pad_token_id - 1) if text is not None else 0
    return data_jobs.ModelIO(tuple(enc.input_shape), int(enc.grid[0]), tuple(enc.grid), positions,
                             tuple(enc.slice_tokens))


def build_stage_model(cfg, name: str, *, mesh=None):
    """The model stage `name` trains, as its kind builds it (train.stages)."""
    return kind_of(cfg, name).build(cfg, name, mesh, uses_lora(cfg, name))


def init_from(cfg, name: str) -> Optional[str]:
    settings = stage_settings(cfg, name)
    if settings.init_from:
        return settings.init_from
    order = list(cfg.order)
    i = order.index(name)
    return order[i - 1] if i > 0 else None


def load_previous(model, cfg, workdir: str, name: str) -> Optional[dict]:
    prev = init_from(cfg, name)
    if prev is None:
        return None
    if not kind_of(cfg, prev).vlm and kind_of(cfg, name).vlm:  # a pre-trained CT-ViT: only encoder/ carries over
        # (vision/: its name in runs saved before CT-ViT had one name everywhere)
        return load_weights(model, weights_dir(workdir, prev), prefix_map={"vision/": "encoder/"}, require="encoder/")
    return load_weights(model, weights_dir(workdir, prev), require="decoder/")


def stage_batch_size(cfg, name: str) -> int:
    """The optimizer step's batch on one host (x hosts = the global batch)."""
    return stage_settings(cfg, name).batch_size or int(cfg.data.batch_size)


def loader_batch_size(cfg, name: str) -> int:
    """Rows per loader batch on one host: the step's batch split into grad_accum_steps micro-batches."""
    batch, accum = stage_batch_size(cfg, name), stage_settings(cfg, name).grad_accum_steps
    if accum < 1 or batch % accum:
        raise data_jobs.ConfigError(f"stages.{name}: batch {batch} per host is not divisible by "
                                    f"grad_accum_steps={accum}")
    return batch // accum


def stage_spec(cfg, name: str, n_train: int) -> StageSpec:
    s = stage_settings(cfg, name)
    steps = s.steps
    if s.epochs:
        global_batch = stage_batch_size(cfg, name) * jax.process_count()
        steps = max(1, math.ceil(s.epochs * n_train / global_batch))
    if steps < 1:
        raise data_jobs.ConfigError(f"stages.{name}: give steps or epochs")
    if s.optimizer not in ("adamw", "adam"):
        raise data_jobs.ConfigError(f"stages.{name}.optimizer: 'adamw' or 'adam', got {s.optimizer!r}")
    fields = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
    return StageSpec(name=name, **{**fields, "steps": steps}, groups=trainable_groups(cfg, name))


def stage_task(cfg, name: str):
    """(loss function, data task override or None) of a stage, from its kind."""
    kind = kind_of(cfg, name)
    return kind.loss, kind.data_task


@functools.partial(jax.jit, static_argnames=("graphdef", "task", "extras"))
def _loss_sums(graphdef, state, batch, task, extras):
    loss_sum, count, aux = task(nnx.merge(graphdef, state), batch, train=False)
    return loss_sum, count, {k: aux[k] * count for k in extras}  # the task's means over its units, back to sums


def val_metrics(model, batches: Iterable[dict], *, mesh, task=vlm_answer_loss, blank: bool = False,
                extras: tuple[str, ...] = ()) -> dict:
    """{"val_loss": unit-weighted mean loss, "val_<extra>": the task's `extras` weighted alike} of `model` over a
    split's host batches (validation); `blank` zeroes the volumes.

    Every process passes its own shard of the split; the sums are taken over the global batches, so every host
    gets the same value (it decides the best checkpoint and what the run prints). NaN when the split is empty.
    """
    graphdef, state = nnx.split(model)
    total, count, sums = 0.0, 0.0, dict.fromkeys(extras, 0.0)
    with jax.set_mesh(mesh):
        for host in aligned((model_arrays(b) for b in batches), TOKEN_FIELDS, EMPTY_ROW_VALUES):
            if blank:
                host["images"] = np.zeros_like(host["images"])
            s, c, e = _loss_sums(graphdef, state, to_global(host, batch_sharding(mesh, host)), task, tuple(extras))
            total, count = total + float(s), count + float(c)
            sums = {k: sums[k] + float(e[k]) for k in sums}
    mean = (lambda v: v / count) if count > 0 else (lambda v: float("nan"))  # noqa: E731
    return {"val_loss": mean(total), **{f"val_{k}": mean(v) for k, v in sums.items()}}


def loss_over(model, batches: Iterable[dict], *, mesh, task=vlm_answer_loss, blank: bool = False) -> float:
    """Token-weighted mean loss of `model` over a split's host batches (`val_metrics`' val_loss)."""
    return val_metrics(model, batches, mesh=mesh, task=task, blank=blank)["val_loss"]


def _evaluator(cfg, workdir: str, io, name: str, mesh):
    """The stage's validation (`evaluate(model) -> {"val_loss", ...}`), or None when the split is empty."""
    kind = kind_of(cfg, name)
    val = data_jobs.val_batches(cfg, workdir, io, task=kind.data_task or "report")
    if val is None:
        return None
    # bound now: the closure must not see a later stage's split or loss
    return lambda m: val_metrics(m, val, mesh=mesh, task=kind.loss, extras=kind.val_extras)


def _stage_done(workdir: str, name: str) -> Optional[dict]:
    """The stage's done.json as process 0 sees it (a shared file system may show it late to other hosts)."""

    def read():
        path = os.path.join(stage_dir(workdir, name), "done.json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    return on_primary(read, f"reading stage {name}'s done.json")


def train(cfg, workdir: str, *, mesh, stages: Optional[list[str]] = None, progress: bool = True,
          stop_after: Optional[int] = None) -> dict:
    """Run the configured stages (or `stages`); returns {stage: summary}."""
    for s in cfg.order:
        kind_of(cfg, s)  # every stage of order resolves to a registered kind before anything runs
    summaries = {}
    order = list(cfg.order)
    for name in stages or order:
        done = _stage_done(workdir, name)
        if done is not None:
            summaries[name] = done
            log.info("stage %s already done (%s)", name, stage_dir(workdir, name))
            continue
        model = build_stage_model(cfg, name, mesh=mesh)
        loaded = load_previous(model, cfg, workdir, name)
        io = model_io(model)
        task_fn, data_task = stage_task(cfg, name)
        n_train = data_jobs.num_train_examples(cfg, workdir, task_override=data_task)
        spec = stage_spec(cfg, name, n_train)
        it = data_jobs.train_iterator(cfg, workdir, io, task_override=data_task, seed=int(cfg.seed),
                                      batch_size=loader_batch_size(cfg, name))
        evaluate = _evaluator(cfg, workdir, io, name, mesh)
        initial = evaluate(model) if evaluate is not None and kind_of(cfg, name).eval_before else None
        result = run_stage(model, task_fn, spec, train_iter=it, mesh=mesh, workdir=stage_dir(workdir, name),
                           seed=int(cfg.seed), evaluate=evaluate, progress=progress, stop_after=stop_after)
        if result.last_step < spec.steps:
            log.info("stage %s stopped at step %d of %d", name, result.last_step, spec.steps)
            summaries[name] = {"stopped_at": result.last_step}
            break
        save_weights(result.model, weights_dir(workdir, name))
        summary = {"stage": name, "steps": spec.steps, "train_examples": n_train,
                   "initialised_from": init_from(cfg, name), "loaded": len(loaded["loaded"]) if loaded else 0,
                   "final": result.metrics}
        if initial is not None:
            summary["initial"] = initial
        if jax.process_index() == 0:
            write_text(os.path.join(stage_dir(workdir, name), "done.json"), json.dumps(summary, indent=1))
        summaries[name] = summary
    return summaries


def final_model(cfg, workdir: str, *, mesh=None):
    """The VLM after the last VLM stage of `order`, with its weights loaded."""
    stages = vlm_stages(cfg)
    if not stages:
        raise data_jobs.ConfigError("no VLM stage in order: nothing to evaluate or export")
    last = stages[-1]
    model = build_vlm(cfg.model.to_dict(), seed=int(cfg.seed), mesh=mesh, with_lora=uses_lora(cfg, last))
    load_weights(model, weights_dir(workdir, last), require="decoder/")
    return model
