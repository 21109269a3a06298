"""Seconds per optimizer step of every stage of a config, at the config's own shapes (the tiny default by default).

Each stage's model is built as `launch.py` builds it (the stage registry), its train state split and placed, and
its jitted, donated step timed on one random host batch of the stage's record encoding (the longest length bucket,
`data.batch_size` rows). Data loading is left out: `bench_train.py --loop` measures what the loop adds.

    python benchmarks/bench_stages.py                   # encoder_pretrain, full, align, lora of the default
    python benchmarks/bench_stages.py --steps 10 --json out.json
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def random_batch(schema: dict, vocab: int, rng) -> dict:
    """Values of the right kind per field: volumes in [0, 1), token ids, all-on masks, ~5 % lesion tokens."""
    out = {}
    for k, (shape, dtype) in schema.items():
        if k in ("input_ids", "text_ids"):
            out[k] = rng.integers(3, vocab, size=shape).astype(dtype)
        elif k == "positions":
            out[k] = np.broadcast_to(np.arange(shape[1], dtype=dtype), shape).copy()
        elif k == "image_mask":
            out[k] = np.zeros(shape, dtype)
        elif k == "lesion_map":
            out[k] = (rng.random(shape) < 0.05).astype(dtype)
        elif np.dtype(dtype) == np.bool_ or k == "loss_mask":
            out[k] = np.ones(shape, dtype)
        else:
            out[k] = rng.random(shape, dtype=np.float32).astype(dtype)
    return out


def time_stage(cfg, name: str, steps: int, mesh) -> dict:
    from jaxpetct.jobs import training
    from jaxpetct.train.abstract import host_batch_schema
    from jaxpetct.train.loop import batch_sharding, prepare_state, to_global
    from jaxpetct.train.step import make_train_step

    model = training.build_stage_model(cfg, name, mesh=mesh)
    spec = training.stage_spec(cfg, name, n_train=1000)
    task, data_task = training.stage_task(cfg, name)
    length = max(int(b) for b in cfg.data.buckets)
    schema = host_batch_schema(model.encoder.cfg, data_task, int(cfg.data.batch_size), length)
    text_model = getattr(model, "decoder", None) or getattr(model, "text", None)  # VLM, or CLIP's text tower
    vocab = text_model.cfg.vocab_size if text_model is not None else 2  # lesion_map batches carry no token ids
    host = random_batch(schema, vocab, np.random.default_rng(0))
    if "image_mask" in host and hasattr(model, "num_visual_tokens"):
        host["image_mask"][:, 1:1 + model.num_visual_tokens] = True
    graphdef, state, tx, _, _ = prepare_state(model, spec, mesh)
    del model
    batch = to_global(host, batch_sharding(mesh, host))
    with jax.set_mesh(mesh):
        step = jax.jit(make_train_step(graphdef, task, tx), donate_argnums=(0,))
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        first = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
    return {"stage": name, "batch": int(cfg.data.batch_size), "length": length if data_task != "lesion_map" else 0,
            "step_s": float(np.median(times)), "compile_and_first_s": first}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default="", help="comma-separated (default: the config's order)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    from jaxpetct.config import base_config
    from jaxpetct.parallel.mesh import make_mesh

    cfg = base_config()
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    names = [s for s in a.stages.split(",") if s] or list(cfg.order)
    rows = [time_stage(cfg, name, a.steps, mesh) for name in names]
    print("| stage | batch x length | step (s, median) | compile + first step (s) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['batch']} x {r['length'] or 'volume'} | {r['step_s']:.3f} | "
              f"{r['compile_and_first_s']:.1f} |")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
