"""One-call GPU benchmark against the PyTorch peer: 0.5B full training, 7B LoRA (the paper's stage 3), greedy decode.

Cases (random weights and token batches: throughput does not depend on their values):
  a  Qwen2-0.5B shape, stage "full" (projector + decoder, AdamW), 8 x 1280 tokens of which 256 are visual,
     bf16 compute with float32 master weights, no remat.
  b  Mistral-7B shape, stage "lora": LoRA r64 alpha 16 dropout 0.05 on q,k,v,o,gate,up,down (+ the projector),
     8 x 2048 tokens, bf16 compute, remat, scanned layers; the frozen base stays float32 as in the paper configs
     (`--lora-param-dtype bfloat16` stores it in bf16, as PEFT runs usually do).
  c  Qwen2-0.5B shape greedy decode, 256 new tokens after a 320-token prompt, batch 1 and 16, bf16 weights:
     `eval.generate` (jitted prefill + `lax.while_loop` decode in one program); tokens/s counts generated tokens
     only, over the whole call (prefill included, as the peer's `generate` does); prefill is also timed alone.

The training cases run the project's own pieces (`build_vlm`, `loop.prepare_state`, `batch_sharding`/`to_global`,
`step.make_train_step`, `tasks.vlm_answer_loss`): the figure is what training gets, minus data loading. The
visual prefix comes from a tiny frozen CT-ViT whose grid is (T, 1, 1), so its projector emits exactly T visual
tokens; its cost is negligible next to the LLM's (it is still in the FLOPs). tokens/s counts every token of the
batch (visual ones included). MFU = model FLOPs (perf.count_flops, remat recomputation excluded) / (step time x
devices x dense bf16 peak), HFU the same with executed FLOPs. Peak memory is the device allocator's
`peak_bytes_in_use`; on backends without it (CPU), XLA's compiled memory analysis.

Off `--dry`, every case runs in its own Python process, so each starts with an empty device (7B LoRA after 0.5B
full) and its peak memory is its own. `--dry` runs the same three cases at tiny shapes on CPU in-process (the
test tests/benchmarks/test_bench_gpu.py keeps the script from rotting).

Through the project's device tool, in one call (sized for under 8 minutes on one 80 GB GPU, not yet measured
there; name kind nvidia-h200 to compare with the peer's H200 figures like for like):

    run(command="python benchmarks/bench_gpu.py --json $OUT/bench_gpu.json", timeout_s=540)

Knobs worth trying on a GPU: `--attention cudnn|xla` (default auto: cuDNN flash attention for bf16 training),
`--loss-chunk` (vocabulary chunk of the training loss; larger chunks mean fewer, bigger head matmuls),
`--remat-a` (trade compute for memory in case a), `--remat-policy dots` (keep the weight matmuls' outputs: ~25 % fewer
FLOPs in case b, more memory), `--xla-flags "--xla_gpu_enable_triton_gemm=false"` and
`--mem-fraction` (XLA_PYTHON_CLIENT_MEM_FRACTION of the children; JAX reserves 75 % by default).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# PyTorch peer on one H200, transformers 5 + peft (see the project brief): figure, label, our goal as a ratio.
PEERS = {
    "a": (84.6e3, "84.6 k eager (119.9 k torch.compile)", 1.5),
    "b": (7.5e3, "7.5 k, 22.9 % MFU, 26 GB", 2.0),
    "c1": (295.0, "295 (static cache)", 3.4),
    "c16": (4331.0, "4,331 (static cache)", 3.4),
}
CASES = ("a", "b", "c")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="a,b,c", help="comma-separated subset of a, b, c")
    p.add_argument("--dry", action="store_true", help="tiny shapes on CPU, in-process (seconds)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--in-process", action="store_true", help="run the cases here instead of one process each")
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
    p.add_argument("--loss-chunk", type=int, default=4096)
    p.add_argument("--remat-a", action="store_true", help="remat in case a too")
    p.add_argument("--remat-policy", default="nothing", choices=["nothing", "dots"],
                   help="what remat keeps: nothing (least memory) or the weight matmuls' outputs (fewer FLOPs)")
    p.add_argument("--lora-param-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="compute dtype")
    p.add_argument("--visual-tokens", type=int, default=256)
    p.add_argument("--prompt", type=int, default=320, help="case c prompt length")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=0, help="timed steps per training case (default 5 / 3)")
    p.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS (children, or here before JAX starts)")
    p.add_argument("--mem-fraction", default="0.92", help="XLA_PYTHON_CLIENT_MEM_FRACTION for the children")
    a = p.parse_args(argv)
    a.cases = [c for c in a.cases.split(",") if c]
    unknown = sorted(set(a.cases) - set(CASES))
    if unknown:
        p.error(f"unknown cases {unknown}; choose among {CASES}")
    return a


def shapes(a) -> dict:
    """Per-case sizes: the brief's, or tiny ones for --dry."""
    if a.dry:
        tiny = {"preset": "tiny", "vocab_size": 1024}
        return {"a": dict(decoder=tiny, batch=2, length=48, visual=8, steps=2),
                "b": dict(decoder=tiny, batch=2, length=48, visual=8, steps=2, rank=8),
                "c": dict(decoder=tiny, batches=(1, 4), prompt=16, new=8)}
    qwen, mistral = {"preset": "qwen2_0_5b"}, {"preset": "mistral_7b"}
    return {"a": dict(decoder=qwen, batch=8, length=1280, visual=a.visual_tokens, steps=a.steps or 5),
            "b": dict(decoder=mistral, batch=8, length=2048, visual=a.visual_tokens, steps=a.steps or 3, rank=64),
            "c": dict(decoder=qwen, batches=(1, 16), prompt=a.prompt, new=a.new_tokens)}


def peak_memory(compiled=None):
    """(bytes, source): the allocator's peak where the backend keeps one, else XLA's compiled estimate."""
    import jax

    from jaxpetct.train import perf

    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("peak_bytes_in_use"):
        return int(stats["peak_bytes_in_use"]), "allocator peak"
    return (perf.compiled_memory_bytes(compiled) if compiled is not None else None), "XLA compiled"


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn()` to completion, after one untimed warm-up call (compilation, first transfers)."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def train_batch(batch: int, length: int, visual: int, vocab: int, image_shape, rng) -> dict:
    """A VLM-contract batch: BOS, `visual` image slots, a 32-token prompt, then answer tokens (the loss)."""
    ids = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
    image_mask = np.zeros((batch, length), bool)
    image_mask[:, 1:1 + visual] = True
    loss_mask = np.zeros((batch, length), np.float32)
    loss_mask[:, min(length - 1, 1 + visual + 32):] = 1.0
    return {"images": rng.random((batch, *image_shape), dtype=np.float32), "input_ids": ids,
            "positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
            "attention_mask": np.ones((batch, length), bool), "image_mask": image_mask, "loss_mask": loss_mask}


def train_case(case: str, a) -> dict:
    import jax

    from jaxpetct.models.factory import build_vlm
    from jaxpetct.parallel.mesh import make_mesh
    from jaxpetct.train import perf
    from jaxpetct.train.loop import StageSpec, batch_sharding, prepare_state, to_global
    from jaxpetct.train.step import make_train_step
    from jaxpetct.train.tasks import vlm_answer_loss

    s = shapes(a)[case]
    lora = case == "b"
    remat = lora or a.remat_a
    param_dtype = a.lora_param_dtype if lora else "float32"
    dtype = a.dtype
    encoder = {"preset": "tiny", "channels": 2, "depth": s["visual"], "temporal_patch_size": 1, "height": 8,
               "width": 8, "patch_size": 8, "dtype": dtype}  # grid (T, 1, 1): one visual token per slab
    cfg = {"encoder": encoder, "projector": {"kind": "linear", "pool": 1, "dtype": dtype},
           "decoder": {**s["decoder"], "dtype": dtype, "param_dtype": param_dtype, "scan_layers": True,
                       "remat": remat, "remat_policy": a.remat_policy, "attention_impl": a.attention},
           "lora": {"rank": s.get("rank", 64), "alpha": 16.0, "dropout": 0.05}, "loss_chunk": a.loss_chunk}
    t0 = time.perf_counter()
    mesh = make_mesh({"data": 1}, jax.devices()[:1])  # one chip, like the peer
    model = build_vlm(cfg, seed=0, mesh=mesh, with_lora=lora)
    assert model.num_visual_tokens == s["visual"], model.num_visual_tokens
    image_shape, vocab = model.encoder.cfg.input_shape, model.decoder.cfg.vocab_size
    spec = StageSpec("lora" if lora else "full", steps=1000, peak_lr=1e-4, weight_decay=0.01)
    graphdef, state, tx, _, _ = prepare_state(model, spec, mesh)
    del model
    host = train_batch(s["batch"], s["length"], s["visual"], vocab, image_shape, np.random.default_rng(0))
    b_sh = batch_sharding(mesh, host)
    batch = to_global(host, b_sh)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    trainable = sum(x.size for x in jax.tree.leaves(state.params))
    build_s = time.perf_counter() - t0
    with jax.set_mesh(mesh):
        step_fn = make_train_step(graphdef, vlm_answer_loss, tx)
        flops = perf.count_flops(step_fn, state, batch)
        t0 = time.perf_counter()
        compiled = jax.jit(step_fn, in_shardings=(state_sh, b_sh), out_shardings=(state_sh, None),
                           donate_argnums=(0,)).lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        state, metrics = compiled(state, batch)  # warm-up, not timed
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(s["steps"]):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        step_s = (time.perf_counter() - t0) / s["steps"]
    devices = mesh.devices.size
    memory, memory_source = peak_memory(compiled)
    return {"case": case, "what": f"{s['decoder']['preset']} {'LoRA r%d' % s.get('rank', 64) if lora else 'full'}"
                                  f"{', remat' if remat else ''}", "batch": s["batch"], "length": s["length"],
            "visual_tokens": s["visual"], "trainable_params": int(trainable), "param_dtype": param_dtype,
            "step_s": step_s, "tokens_per_s": s["batch"] * s["length"] / step_s,
            "model_tflops_per_step": flops.model / 1e12, "executed_tflops_per_step": flops.executed / 1e12,
            "mfu": perf.mfu(flops.model, step_s, devices), "hfu": perf.mfu(flops.executed, step_s, devices),
            "peak_memory_bytes": memory, "memory_source": memory_source, "loss": float(metrics["loss"]),
            "build_s": build_s, "compile_s": compile_s, "steps": s["steps"]}


def decode_case(a) -> list[dict]:
    import jax
    from flax import nnx

    from jaxpetct.eval.generate import generate, prefill
    from jaxpetct.models.factory import build_decoder
    from jaxpetct.parallel.mesh import make_mesh
    from jaxpetct.train import perf

    s = shapes(a)["c"]
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    decoder = build_decoder({**s["decoder"], "dtype": a.dtype, "param_dtype": a.dtype,
                             "scan_layers": True, "attention_impl": a.attention}, seed=0, mesh=mesh)
    graphdef, state = nnx.split(decoder)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    vocab, new, prompt = decoder.cfg.vocab_size, s["new"], s["prompt"]
    del decoder
    rows = []
    for b, peer_key in zip(s["batches"], ("c1", "c16")):
        ids = jax.device_put(np.random.default_rng(b).integers(3, vocab, (b, prompt)).astype(np.int32))

        def run(st, i):
            return generate((graphdef, st), input_ids=i, max_new_tokens=new, eos_token_id=None).tokens

        with jax.set_mesh(mesh):
            flops = perf.count_flops(run, state, ids)
            t0 = time.perf_counter()
            compiled = jax.jit(run).lower(state, ids).compile()
            compile_s = time.perf_counter() - t0
            repeats = 1 if a.dry else 3
            prefill_s = median_seconds(lambda i=ids: prefill(graphdef, state, input_ids=i, max_len=prompt + new)[0],
                                       repeats)
            total_s = median_seconds(lambda c=compiled, i=ids: c(state, i), repeats)
        assert compiled(state, ids).shape == (b, new)
        decode_s = max(total_s - prefill_s, 1e-9)
        bw = perf.hbm_bandwidth_per_device()
        memory, memory_source = peak_memory(compiled)
        rows.append({"case": f"c{b}", "peer": peer_key, "what": f"{s['decoder']['preset']} greedy decode",
                     "batch": b, "length": prompt, "new_tokens": new, "prefill_s": prefill_s, "total_s": total_s,
                     "tokens_per_s": b * new / total_s, "decode_tokens_per_s": b * new / decode_s,
                     "model_tflops_per_step": flops.model / 1e12, "mfu": perf.mfu(flops.model, total_s),
                     # each decode step reads every weight once: the fraction of HBM bandwidth that alone uses
                     "weight_read_bw_util": (weight_bytes * (new - 1) / decode_s / bw) if bw else None,
                     "peak_memory_bytes": memory, "memory_source": memory_source, "compile_s": compile_s})
        del compiled
    return rows


def free_device(keep_caches: bool) -> None:
    """Drop the finished case's arrays (and, off --dry, its executables) before the next case allocates."""
    import jax

    gc.collect()
    if not keep_caches:
        jax.clear_caches()
        gc.collect()


def run_here(a) -> dict:
    import jax

    out = {}
    for case in a.cases:
        out[case] = decode_case(a) if case == "c" else train_case(case, a)
        free_device(keep_caches=a.dry)
    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "cases": out}


def child_argv(argv: list[str], case: str, json_path: str) -> list[str]:
    """This run's options for one case's child process: its own --cases and --json, run in-process."""
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x in ("--cases", "--json"):
            skip = True
        elif not (x.startswith(("--cases=", "--json=")) or x == "--in-process"):
            out.append(x)
    return [*out, "--in-process", "--cases", case, "--json", json_path]


def run_isolated(a, argv) -> dict:
    """Each case in a fresh interpreter: an empty device and its own allocator peak."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", a.mem_fraction)
    if a.xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + a.xla_flags).strip()
    merged: dict = {"cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases:
            path = os.path.join(tmp, f"{case}.json")
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), *child_argv(argv, case, path)],
                                  env=env, check=False)
            if proc.returncode or not os.path.exists(path):
                merged["cases"][case] = {"case": case, "error": f"exit status {proc.returncode}"}
                continue
            with open(path, encoding="utf-8") as f:
                child = json.load(f)
            merged.update({k: v for k, v in child.items() if k != "cases"})
            merged["cases"].update(child["cases"])
    return merged


def _rows(result: dict) -> list[dict]:
    rows = []
    for case in CASES:
        got = result["cases"].get(case)
        rows.extend(got if isinstance(got, list) else [got] if got else [])
    return rows


def table(result: dict) -> str:
    """Markdown: our figures, the peer's, and ours / peer where we ran on a GPU."""
    gpu = result.get("backend") == "gpu"
    pct = lambda x: "" if x is None else f"{100 * x:.1f} %"  # noqa: E731
    lines = [f"bench_gpu on {result.get('device', '?')} ({result.get('backend', '?')})",
             "| case | what | batch x len | step / prefill (s) | tokens/s | MFU | HFU | peak GiB | peer (PyTorch, "
             "H200) | ours / peer | goal |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in _rows(result):
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {r['error']} |||||||||")
            continue
        peer, label, goal = PEERS[r.get("peer", r["case"])]
        timing = f"{r['step_s']:.3f}" if "step_s" in r else f"{r['prefill_s']:.3f}"
        gib = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**30
        mem = "" if gib is None else f"{gib:.1f}" if gib >= 10 else f"{gib:.3g}"
        ratio = f"{r['tokens_per_s'] / peer:.2f}x" if gpu else ""
        lines.append(f"| {r['case']} | {r['what']} | {r['batch']} x {r['length']} | {timing} | "
                     f"{r['tokens_per_s']:,.0f} | {pct(r['mfu'])} | {pct(r.get('hfu'))} | {mem} | {label} | "
                     f"{ratio} | >= {goal}x |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.dry:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if a.dry or a.in_process:
        if a.xla_flags:  # effective only if no JAX backend has started in this process yet
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + a.xla_flags).strip()
        result = run_here(a)
    else:
        result = run_isolated(a, argv)
    result.update(dry=a.dry, knobs={k: getattr(a, k) for k in ("attention", "loss_chunk", "remat_a",
                                                                "remat_policy", "lora_param_dtype", "xla_flags")})
    print(table(result), flush=True)
    if a.json:
        from jaxpetct.atomic import write_text

        write_text(a.json, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
