"""Decoder training-step benchmark: forward+backward tokens/s and compiled memory, per config.

    python benchmarks/bench_models.py                       # tiny + Qwen2-0.5B shapes on whatever backend is up
    python benchmarks/bench_models.py --configs tiny --batch 8 --seq 256 --json out.json

The step is what a trainer runs: next-token cross entropy, `jax.value_and_grad` over every parameter, jitted
once; memory comes from the compiled executable's `memory_analysis()` (arguments + outputs + XLA temporaries),
not from process RSS. Parameters are created directly on the device(s) (`init_sharded`), the batch is split
over a data-parallel mesh of all local devices. On a GPU the compute dtype defaults to bfloat16 (and cuDNN
flash attention is used where supported); on CPU to float32.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from jaxpetct.models import decoder_config as cfglib  # noqa: E402
from jaxpetct.models.attention import resolve_implementation  # noqa: E402
from jaxpetct.models.decoder import Decoder  # noqa: E402
from jaxpetct.parallel.mesh import make_mesh  # noqa: E402
from jaxpetct.parallel.rules import init_sharded  # noqa: E402
from jaxpetct.atomic import write_text


def next_token_loss(logits: jax.Array, ids: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))


def make_step(graphdef):
    def step(state, ids):
        def loss_fn(state):
            logits, _ = nnx.merge(graphdef, state)(ids)
            return next_token_loss(logits, ids)

        return jax.value_and_grad(loss_fn)(state)

    return step


def bench(name: str, cfg, batch: int, seq: int, steps: int, mesh) -> dict:
    model = init_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
    graphdef, state = nnx.split(model)
    del model
    ids = jax.device_put(np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq)).astype(np.int32),
                         NamedSharding(mesh, P(("data", "fsdp"), None)))
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        compiled = jax.jit(make_step(graphdef)).lower(state, ids).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        loss, grads = compiled(state, ids)
        jax.block_until_ready(grads)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss, grads = compiled(state, ids)
            jax.block_until_ready((loss, grads))
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    n_params = sum(x.size for x in jax.tree.leaves(state))
    tokens = batch * seq
    row = {
        "config": name, "backend": jax.default_backend(), "devices": len(mesh.devices.flat),
        "params_m": round(n_params / 1e6, 1), "dtype": cfg.dtype, "attention": resolve_implementation(cfg),
        "remat": cfg.remat, "scan_layers": cfg.scan_layers, "batch": batch, "seq": seq,
        "step_ms": round(step_s * 1e3, 1), "tokens_per_s": round(tokens / step_s, 1),
        "tflops_per_s": round(6 * n_params * tokens / step_s / 1e12, 3), "compile_s": round(compile_s, 1),
        "loss": float(loss),
    }
    if mem is not None:
        gib = 1024 ** 3
        row.update(arguments_gib=round(mem.argument_size_in_bytes / gib, 3),
                   outputs_gib=round(mem.output_size_in_bytes / gib, 3),
                   temp_gib=round(mem.temp_size_in_bytes / gib, 3),
                   total_gib=round((mem.argument_size_in_bytes + mem.output_size_in_bytes
                                    + mem.temp_size_in_bytes - mem.alias_size_in_bytes) / gib, 3))
    return row


def markdown(rows: list[dict]) -> str:
    cols = ["config", "backend", "params_m", "dtype", "attention", "remat", "batch", "seq", "step_ms",
            "tokens_per_s", "tflops_per_s", "arguments_gib", "temp_gib", "total_gib", "compile_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,qwen2_0_5b", help="comma-separated presets")
    parser.add_argument("--batch", type=int, default=None, help="per step (default: 8 tiny / 1 CPU, 8 GPU)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per row (default 128 CPU, 1024 GPU)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16" if gpu else "float32")
    parser.add_argument("--no-remat", action="store_true", help="keep activations instead of recomputing")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    mesh = make_mesh({"data": -1}, jax.local_devices())
    rows = []
    for name in args.configs.split(","):
        big = name != "tiny"
        cfg = cfglib.preset(name, dtype=args.dtype, param_dtype="float32", scan_layers=True,
                            remat=big and not args.no_remat)
        batch = args.batch or (8 if gpu or not big else 1)
        batch = max(batch, len(mesh.devices.flat))
        seq = args.seq or (1024 if gpu else 128)
        rows.append(bench(name, cfg, batch, seq, args.steps, mesh))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    if args.json:
        write_text(args.json, json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
