"""jaxpetct vs PyTorch: seconds per CPU training step of one Qwen2-style decoder, same shapes, same weights.

Why: the issue asks that jaxpetct's CPU training step be at least 1.1x as fast as torch eager and 1.0x as fast as
torch.compile when every weight trains (`full`), and 1.1x as fast as peft for LoRA (`lora`), on the same shapes
and the same weights. This script measures exactly that in one run:

- jaxpetct: the trainer's own jitted, donated step (`prepare_state` + `make_train_step`, the stage registry's
  parameter groups) over the decoder's final hidden states and the chunked cross entropy, as `VLM.loss` does;
- torch eager: `transformers.Qwen2ForCausalLM` (sdpa attention) loaded from `export_decoder` of the same jaxpetct
  model, HF's own `labels=` loss (-100 on positions without loss), `torch.optim.AdamW` (fused: HF Trainer's
  default optimizer on torch >= 2.8); torch.compile: the same with the model compiled (`torch.compile(model)`, as
  HF Trainer's `torch_compile=True`); a compile failure is recorded in the row, not raised;
- peft: `get_peft_model` on the same HF model, adapters' A copied from jaxpetct's (B is zero on both sides).

Both sides: AdamW lr 1e-4 (constant), betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on matrices only (the
trainer's rule: ndim >= 2), global-norm gradient clipping at 1.0 (the trainer's and HF Trainer's default); LoRA
rank 16, alpha 32, dropout 0 on q, k, v, o, gate, up, down. Each row reports `*_loss0`, the loss of each side's
first step at the shared initial weights (they agree to ~1e-6), and the median seconds per step after warm-up.
Masks: `all` (plain LM: every next token is a target) and `answer` (SFT-style: the first 64 % of each row is
prompt without loss, as the project's batches). torch uses `--threads` intra-op threads; XLA's CPU client keeps
its own thread pool over all cores (2 here), so both sides use the same cores. With `--scan-layers` the
trainer's ndim rule also decays the stacked norm scales and biases (torch does not): negligible for timing.
Run it on an otherwise idle machine: torch's OpenMP threads slow down many-fold when another process takes a core.

    python benchmarks/bench_torch.py --json runs/bench_torch.json     # the issue's shapes (a few minutes)
    python benchmarks/bench_torch.py --layers 1 --hidden 64 --intermediate 192 --heads 2 --kv-heads 1 \
        --vocab 512 --batch 2 --seq 32 --steps 2                       # seconds
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPT_FRACTION = 0.64  # `answer` mask: the share of each row that is prompt (no loss)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1536, help="MLP width (Qwen2's ratio is ~3x hidden)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=0, help="default: hidden / heads")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rows", default="full,lora", help="comma-separated: full, lora")
    p.add_argument("--mask", default="all,answer", help="comma-separated: all, answer")
    p.add_argument("--steps", type=int, default=5, help="timed steps per side (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first (compilation included)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--loss-chunk", type=int, default=256, help="tokens per block of jaxpetct's loss (model.loss_chunk)")
    p.add_argument("--scan-layers", action="store_true", help="jaxpetct: layers under one nnx.scan")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    a.rows, a.mask = [r for r in a.rows.split(",") if r], [m for m in a.mask.split(",") if m]
    if set(a.rows) - {"full", "lora"} or set(a.mask) - {"all", "answer"}:
        p.error("--rows takes full, lora; --mask takes all, answer")
    return a


def cpu_model() -> str:
    """The host CPU's model name: torch's MKL and XLA's kernels differ by vendor (MKL is slower on AMD)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        import platform

        return platform.processor() or "unknown"


def decoder_config(a):
    from jaxpetct.models.decoder_config import DecoderConfig

    return DecoderConfig(family="qwen2", vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_layers=a.layers, num_heads=a.heads, num_kv_heads=a.kv_heads,
                         head_dim=a.head_dim or a.hidden // a.heads, rope_theta=1e6, rms_norm_eps=1e-6,
                         max_position_embeddings=max(2048, a.seq), attention_bias=True, tie_word_embeddings=False,
                         scan_layers=a.scan_layers, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def host_batch(a, mask: str) -> dict:
    rng = np.random.default_rng(a.seed)
    loss_mask = np.ones((a.batch, a.seq), np.float32)
    if mask == "answer":
        loss_mask[:, :int(round(PROMPT_FRACTION * a.seq))] = 0.0
    return {"input_ids": rng.integers(3, a.vocab, size=(a.batch, a.seq)).astype(np.int32),
            "positions": np.tile(np.arange(a.seq, dtype=np.int32), (a.batch, 1)),
            "attention_mask": np.ones((a.batch, a.seq), bool), "loss_mask": loss_mask}


class CausalLM(nnx.Module):
    """The decoder under `decoder/`, so the stage registry's groups (`^decoder/`, LoRA's) pick what trains."""

    def __init__(self, decoder):
        self.decoder = decoder


def lm_task(chunk: int):
    """A Task (train/step.py): next-token cross entropy summed over the loss mask, as `VLM.loss` computes it."""
    from jaxpetct.models.losses import chunked_cross_entropy

    def task(model, batch: dict, *, train: bool):
        model.train() if train else model.eval()
        decoder = model.decoder
        hidden, _ = decoder(batch["input_ids"], positions=batch["positions"],
                            attention_mask=batch["attention_mask"], return_hidden=True)
        weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
        total = chunked_cross_entropy(hidden[:, :-1], decoder.head_weight(), batch["input_ids"][:, 1:], weights,
                                      chunk=chunk)
        return total, weights.sum(), {}

    return task


def timed(step, warmup: int, steps: int) -> dict:
    """Runs `step()` (returns the loss as a float, synchronised) warmup + steps times."""
    t0 = time.perf_counter()
    losses = [step()]
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        losses.append(step())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    return {"s": statistics.median(times), "first_s": first, "loss0": losses[0], "loss_last": losses[-1]}


def run_jaxpetct(lm: CausalLM, row: str, host: dict, a) -> dict:
    from jaxpetct.parallel.mesh import make_mesh
    from jaxpetct.train.loop import StageSpec, batch_sharding, prepare_state, to_global
    from jaxpetct.train.step import make_train_step

    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    spec = StageSpec(row, steps=1000, peak_lr=1e-4, warmup_fraction=0.0, final_lr_fraction=1.0, weight_decay=0.01,
                     clip_norm=1.0)
    graphdef, state, tx, _, _ = prepare_state(lm, spec, mesh, seed=a.seed)
    batch = to_global(host, batch_sharding(mesh, host))
    box = {"state": state}
    with jax.set_mesh(mesh):
        step_fn = jax.jit(make_train_step(graphdef, lm_task(a.loss_chunk), tx), donate_argnums=(0,))

        def step() -> float:
            box["state"], metrics = step_fn(box["state"], batch)
            return float(metrics["loss"])

        return timed(step, a.warmup, a.steps)


def torch_batch(host: dict) -> dict:
    import torch

    labels = np.where(host["loss_mask"] > 0, host["input_ids"], -100).astype(np.int64)
    return {"input_ids": torch.from_numpy(host["input_ids"].astype(np.int64)),
            "attention_mask": torch.from_numpy(host["attention_mask"].astype(np.int64)),
            "labels": torch.from_numpy(labels)}


def run_torch(hf_dir, host: dict, a, *, compile_model: bool = False, lora_a: dict | None = None) -> dict:
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model = transformers.Qwen2ForCausalLM.from_pretrained(hf_dir, attn_implementation="sdpa", dtype=torch.float32)
    if lora_a is not None:
        import peft

        cfg = peft.LoraConfig(r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=0.0,
                              target_modules=list(LORA_TARGETS), bias="none")
        model = peft.get_peft_model(model, cfg)
        copied = 0
        with torch.no_grad():
            for name, module in model.named_modules():
                key = name.removeprefix("base_model.model.")
                if key in lora_a and hasattr(module, "lora_A"):
                    module.lora_A["default"].weight.copy_(torch.from_numpy(lora_a[key]))
                    copied += 1
        if copied != len(lora_a):
            raise RuntimeError(f"copied {copied} of {len(lora_a)} LoRA A matrices into the peft model")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)
    forward = torch.compile(model) if compile_model else model
    batch = torch_batch(host)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    return timed(step, a.warmup, a.steps)


def lora_a_for_torch(decoder, rank: int) -> dict:
    """HF module name (model.layers.{i}.self_attn.q_proj) -> jaxpetct's adapter A in torch's (rank, in) layout."""
    from jaxpetct.models.lora import adapted_denses

    out = {}
    for path, dense in adapted_denses(decoder):
        a = np.asarray(dense.lora.lora_a[...], np.float32)
        sub = ".".join(map(str, path[-2:]))  # self_attn.q_proj
        if decoder.cfg.scan_layers:
            out.update({f"model.layers.{i}.{sub}": a[i].reshape(-1, rank).T.copy() for i in range(a.shape[0])})
        else:
            out[f"model.layers.{path[1]}.{sub}"] = a.reshape(-1, rank).T.copy()
    return out


def measure(row: str, mask: str, a) -> dict:
    import torch

    from jaxpetct.models.decoder import Decoder
    from jaxpetct.models.hf_io import export_decoder
    from jaxpetct.models.lora import LoRAConfig, apply_lora

    cfg = decoder_config(a)
    decoder = Decoder(cfg, rngs=nnx.Rngs(a.seed))
    host = host_batch(a, mask)
    out = {"row": row, "mask": mask, "layers": a.layers, "hidden": a.hidden, "intermediate": a.intermediate,
           "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": cfg.head_dim, "vocab": a.vocab, "batch": a.batch,
           "seq": a.seq, "dtype": "float32", "target_tokens": int(host["loss_mask"][:, 1:].sum()),
           "torch_threads": torch.get_num_threads(), "xla_device": jax.devices()[0].device_kind, "cpu": cpu_model(),
           "steps": a.steps, "warmup": a.warmup, "loss_chunk": a.loss_chunk, "scan_layers": a.scan_layers}
    lora_a = None
    if row == "lora":
        apply_lora(decoder, LoRAConfig(rank=a.lora_rank, alpha=a.lora_alpha, dropout=0.0), nnx.Rngs(a.seed + 1))
        lora_a = lora_a_for_torch(decoder, a.lora_rank)
        out.update(lora_rank=a.lora_rank, lora_alpha=a.lora_alpha)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = export_decoder(decoder, pathlib.Path(tmp) / "hf")  # before the step's donation consumes the weights
        sides = {"jaxpetct": lambda: run_jaxpetct(CausalLM(decoder), row, host, a)}
        if row == "full":
            sides["torch_eager"] = lambda: run_torch(hf_dir, host, a)
            if not a.no_compile:
                sides["torch_compile"] = lambda: run_torch(hf_dir, host, a, compile_model=True)
        else:
            sides["peft"] = lambda: run_torch(hf_dir, host, a, lora_a=lora_a)
        for side, run in sides.items():
            try:
                result = run()
            except Exception as e:  # only torch.compile may fail (no compiler, an unsupported op): say so
                if side != "torch_compile":
                    raise
                out[f"{side}_error"] = f"{type(e).__name__}: {e}"[:2000]
                continue
            out.update({f"{side}_{k}": v for k, v in result.items()})
            if side != "jaxpetct":
                out[f"speedup_vs_{side}"] = result["s"] / out["jaxpetct_s"]
    out["sides"] = [s for s in sides if f"{s}_s" in out]
    return out


def table(rows: list[dict]) -> str:
    f = lambda r, k: f"{r[k]:.3f}" if k in r else ("error" if k.replace("_s", "_error") in r else "")  # noqa: E731
    x = lambda r, k: f"{r[k]:.2f}x" if k in r else ""  # noqa: E731
    lines = ["| row | mask | jaxpetct s/step | torch eager s/step | torch.compile (full) / peft (lora) s/step | "
             "speed-up vs eager | vs compile / peft | loss0 jaxpetct / torch |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        other = "peft" if r["row"] == "lora" else "torch_compile"
        torch_loss0 = r.get("torch_eager_loss0", r.get("peft_loss0", float("nan")))
        lines.append(f"| {r['row']} | {r['mask']} | {f(r, 'jaxpetct_s')} | {f(r, 'torch_eager_s')} | "
                     f"{f(r, other + '_s')} | {x(r, 'speedup_vs_torch_eager')} | {x(r, 'speedup_vs_' + other)} | "
                     f"{r['jaxpetct_loss0']:.5f} / {torch_loss0:.5f} |")
    for r in rows:
        if "torch_compile_error" in r:
            lines.append(f"\ntorch.compile failed ({r['row']}, {r['mask']}): {r['torch_compile_error'][:300]}")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    import torch

    a = parse(argv)
    torch.set_num_threads(a.threads)
    rows = [measure(row, mask, a) for row in a.rows for mask in a.mask]
    print(f"{a.layers} layers, hidden {a.hidden}, MLP {a.intermediate}, {a.heads}/{a.kv_heads} heads, vocab "
          f"{a.vocab}, batch {a.batch} x {a.seq}, float32, loss blocks of {a.loss_chunk}, torch threads {a.threads}, "
          f"{cpu_model()}; speed-up = torch s / jaxpetct s")
    print(table(rows))
    if a.json:
        from jaxpetct.atomic import write_text

        write_text(a.json, json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
