"""Training-step throughput of the real VLM train step: tokens/s, step time, MFU, compiled memory.

Runs the same pieces `launch.py` trains with (factory -> stage split -> optimizer -> jitted, sharded, donated
train step over a mesh of every local device) on random batches of the VLM batch contract, so the figure is
what a training run gets minus data loading.

    python benchmarks/bench_train.py                      # tiny default, CPU-sized
    python benchmarks/bench_train.py --loop --input-ms 50 # + the stage loop: what the host adds to each step
    python benchmarks/bench_train.py --decoder qwen2_0_5b --encoder paper --batch 8 --length 2048 --dtype bfloat16
    python benchmarks/bench_train.py --decoder mistral_7b --stage lora --batch 8 --length 2048 --dtype bfloat16 \
        --remat --json out.json      # the paper's stage-3 shape (LoRA r64 on all linears)

FLOPs come from `perf.count_flops`, which walks the step's jaxpr with loop bodies multiplied out (XLA's cost
analysis counts the layer scan and the loss's vocabulary scan once each): model TFLOPs per step (vision tower,
attention and the frozen parts' forward included, remat recomputation not) give MFU, executed TFLOPs (remat
included) give HFU, both over all devices x the device's dense bf16 peak; blank on CPUs (no peak).
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


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--decoder", default="tiny", help="decoder preset (tiny, qwen2_0_5b, mistral_7b, ...)")
    p.add_argument("--encoder", default="tiny", choices=["tiny", "paper"])
    p.add_argument("--stage", default="lora", choices=["align", "lora", "full"])
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--answer", type=int, default=0, help="answer tokens per row (default: 3/4 of the length)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--mesh", default="data=-1", help="e.g. data=1,fsdp=-1,tensor=1")
    p.add_argument("--loop", action="store_true",
                   help="also run the stage loop (run_stage) and report the host's time per step beside the device's")
    p.add_argument("--loop-steps", type=int, default=30)
    p.add_argument("--input-ms", type=float, default=0.0,
                   help="loader latency per batch in the loop run (a sleep in next(), like a Grain read)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


class TimedBatches:
    """An endless stream of one host batch that sleeps `input_ms` per batch and records when each was asked for."""

    def __init__(self, host: dict, input_ms: float):
        self.host, self.delay, self.asked, self.waited = host, input_ms / 1e3, [], 0.0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        t0 = time.perf_counter()
        self.asked.append(t0)
        if self.delay:
            time.sleep(self.delay)
        self.waited += time.perf_counter() - t0
        return self.host


def loop_figures(a, host: dict, device_step_s: float) -> dict:
    """Steady-state seconds per step of the real stage loop over `host` batches, and what the host adds.

    The step count of the loop run is `--loop-steps`; the first 5 (compilation, warm-up) are left out. Host
    overhead = loop step - device step: time the devices sit idle waiting for the host (batch reads, transfers,
    result reads, logging, the progress bar).
    """
    import tempfile

    from jaxpetct.models.factory import build_vlm
    from jaxpetct.parallel.mesh import make_mesh
    from jaxpetct.train.loop import StageSpec, run_stage
    from jaxpetct.train.tasks import vlm_answer_loss

    mesh = make_mesh({k: int(v) for k, v in (kv.split("=") for kv in a.mesh.split(","))})
    model = build_vlm(model_config(a), seed=0, mesh=mesh, with_lora=a.stage == "lora")
    spec = StageSpec(a.stage, steps=a.loop_steps, peak_lr=1e-4, save_every=10**6, log_every=10, best_metric="")
    batches = TimedBatches(host, a.input_ms)
    with tempfile.TemporaryDirectory() as workdir:
        run_stage(model, vlm_answer_loss, spec, train_iter=batches, mesh=mesh, workdir=workdir, progress=False)
    t = batches.asked[5:]
    loop_s = (t[-1] - t[0]) / (len(t) - 1)
    return {"loop_step_s": loop_s, "host_overhead_s": max(0.0, loop_s - device_step_s),
            "input_ms": a.input_ms, "loop_steps": a.loop_steps}


def model_config(a) -> dict:
    enc = {"preset": a.encoder, "channels": 2, "dtype": a.dtype}
    dec = {"preset": a.decoder, "dtype": a.dtype, "param_dtype": "float32", "scan_layers": True, "remat": a.remat}
    return {"encoder": enc, "decoder": dec, "projector": {"kind": "linear", "pool": 1 if a.encoder == "tiny" else 2,
                                                         "dtype": a.dtype},
            "lora": {"rank": a.lora_rank, "alpha": 16.0, "dropout": 0.05}}


def batch(input_shape, t: int, vocab: int, a, rng) -> dict:
    c, d, h, w = input_shape
    answer = a.answer or (3 * a.length) // 4
    ids = rng.integers(3, vocab, size=(a.batch, a.length)).astype(np.int32)
    image_mask = np.zeros((a.batch, a.length), bool)
    image_mask[:, 1:1 + t] = True
    loss_mask = np.zeros((a.batch, a.length), np.float32)
    loss_mask[:, a.length - answer:] = 1.0
    return {"images": rng.random((a.batch, c, d, h, w), dtype=np.float32), "input_ids": ids,
            "positions": np.tile(np.arange(a.length, dtype=np.int32), (a.batch, 1)),
            "attention_mask": np.ones((a.batch, a.length), bool), "image_mask": image_mask, "loss_mask": loss_mask}


def main(argv=None) -> dict:
    from jaxpetct.models.factory import build_vlm
    from jaxpetct.parallel.mesh import make_mesh
    from jaxpetct.train import perf
    from jaxpetct.train.loop import StageSpec, batch_sharding, prepare_state, to_global
    from jaxpetct.train.step import make_train_step
    from jaxpetct.train.tasks import vlm_answer_loss

    a = parse(argv)
    mesh = make_mesh({k: int(v) for k, v in (kv.split("=") for kv in a.mesh.split(","))})
    model = build_vlm(model_config(a), seed=0, mesh=mesh, with_lora=a.stage == "lora")
    shape, t, vocab = model.encoder.cfg.input_shape, model.num_visual_tokens, model.decoder.cfg.vocab_size
    spec = StageSpec(a.stage, steps=1000, peak_lr=1e-4)
    graphdef, state, tx, _, _ = prepare_state(model, spec, mesh)
    del model
    host = batch(shape, t, vocab, a, np.random.default_rng(0))
    b_sh = batch_sharding(mesh, host)
    glob = to_global(host, b_sh)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    with jax.set_mesh(mesh):
        step_fn = make_train_step(graphdef, vlm_answer_loss, tx)
        flops = perf.count_flops(step_fn, state, glob)  # traced before the state is donated
        step = jax.jit(step_fn, in_shardings=(state_sh, b_sh),
                       out_shardings=(state_sh, None), donate_argnums=(0,))
        t0 = time.perf_counter()
        compiled = step.lower(state, glob).compile()
        compile_s = time.perf_counter() - t0
        state, metrics = compiled(state, glob)  # warm-up
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(a.steps):
            state, metrics = compiled(state, glob)
        jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / a.steps
    devices = len(jax.devices())
    row = {"decoder": a.decoder, "encoder": a.encoder, "stage": a.stage, "dtype": a.dtype, "batch": a.batch,
           "length": a.length, "devices": devices, "device": jax.devices()[0].device_kind,
           "step_s": step_s, "tokens_per_s": a.batch * a.length / step_s, "compile_s": compile_s,
           "model_tflops_per_step": flops.model / 1e12, "executed_tflops_per_step": flops.executed / 1e12,
           "mfu": perf.mfu(flops.model, step_s, devices), "hfu": perf.mfu(flops.executed, step_s, devices),
           "memory_gib": (perf.compiled_memory_bytes(compiled) or 0) / 2**30, "loss": float(metrics["loss"])}
    if a.loop:
        del state, compiled
        row.update(loop_figures(a, host, step_s))
    pct = lambda x: "" if x is None else f"{100 * x:.1f} %"  # noqa: E731
    print("| decoder | encoder | stage | dtype | batch x len | device | step (s) | tokens/s | model TFLOP/step | "
          "MFU | HFU | memory (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.decoder} | {a.encoder} | {a.stage} | {a.dtype} | {a.batch}x{a.length} | {devices}x "
          f"{row['device']} | {step_s:.3f} | {row['tokens_per_s']:.0f} | {row['model_tflops_per_step']:.4g} | "
          f"{pct(row['mfu'])} | {pct(row['hfu'])} | {row['memory_gib']:.2f} |")
    if a.loop:
        print(f"\nstage loop ({a.loop_steps} steps, loader latency {a.input_ms:g} ms/batch): "
              f"{row['loop_step_s']:.3f} s/step vs the step alone {step_s:.3f} s: the host adds "
              f"{row['host_overhead_s']:.3f} s/step")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(row, f, indent=1)
    return row


if __name__ == "__main__":
    main()
