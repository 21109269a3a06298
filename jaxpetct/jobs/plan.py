"""`--mode plan`: compile a config's real programs ahead of time, with no weights, and say whether they fit.

For every stage of `order` the plan builds the stage's model as shapes only, the train state with the shardings
training gives it, and a loader batch at the config's largest shapes (per-host batch / grad_accum_steps x
`plan.processes` rows, the longest length bucket), then lowers and compiles the programs a step runs
(`train.stepper.Stepper`: the fused step, or with accumulation the first-micro-batch, accumulate and apply programs,
jitted with the shardings and donation training uses) for a virtual mesh of `plan.devices` CPU devices. The evaluation's
generation (prompt embeddings, then prefill + `lax.while_loop` decode) is compiled the same way. Nothing needs a
dataset, tokenizer or weight file, so a plan runs on a laptop before a pod is booked.

What each figure is:
  * params / optimizer bytes: exact, the bytes of device 0's shard of every leaf of the abstract state.
  * activation bytes: the compiled program's temporaries (`memory_analysis().temp_size_in_bytes`). XLA:CPU's
    buffer assignment stands in for the accelerator's: the same HLO after the same SPMD partitioning, but CPU
    fusion and scheduling differ, and attention runs as plain XLA (no cuDNN flash kernel), so on GPU this is an
    estimate, usually a conservative one.
  * per-device bytes: XLA's own total, arguments + outputs + temporaries - donated (aliased) buffers, of the
    step's largest program (`largest_program`; every program's figure is under `programs`); for generation the
    larger of its two programs, the decode program counted with the rest of the model resident.
  * fits: per-device bytes <= target memory x (1 - plan.margin); the margin covers the runtime's own reserve,
    fragmentation and the CPU/accelerator difference in buffer assignment.
  * FLOPs: perf.count_flops of the step's jaxpr, loops multiplied out (XLA's cost analysis undercounts scanned
    layers); "executed" includes remat recomputation, "model" does not. Both are for the whole global batch.
  * time lower bound: max(executed FLOPs / devices / peak, bytes moved per device / HBM bandwidth), with bytes
    moved = every weight byte read once per pass (forward, backward, and the remat recomputation unless its
    policy keeps the weight matmuls) of every micro-batch + the trainable weights and optimizer state read and
    written once + each micro-batch read once + its temporaries written and read once. Generation: the whole model read
    for the prompt, then the decoder's weights and the full KV cache read once per new token.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import jax
import numpy as np
from flax import nnx

from jaxpetct.atomic import write_text
from jaxpetct.data.batching import bucket_length
from jaxpetct.eval.generate import SamplingConfig, generate
from jaxpetct.jobs import training
from jaxpetct.jobs.data import ConfigError
from jaxpetct.models.factory import build_vlm
from jaxpetct.models.kvcache import CACHE_AXES
from jaxpetct.parallel.mesh import AXES, MeshError, make_mesh
from jaxpetct.parallel.rules import named_sharding, state_shardings
from jaxpetct.train import abstract, perf
from jaxpetct.train.stepper import Stepper

GIB = 2**30
# Config leaves naming files on disk: a plan builds from the presets' shapes and never reads them.
_WEIGHT_DIRS = (("model", "decoder", "hf_dir"), ("model", "text_encoder", "hf_dir"), ("model", "encoder", "hf_dir"))


def plan_devices(cfg) -> int:
    """`plan.devices`, or the product of the mesh sizes when every axis is fixed (the real job's device count)."""
    n = cfg.plan.devices
    if n > 0:
        return n
    sizes = [int(cfg.mesh[a]) for a in AXES]
    if any(s < 1 for s in sizes):
        raise ConfigError(f"mesh {dict(zip(AXES, sizes))} has a -1 axis: set --config.plan.devices to the device "
                          "count of the run being planned")
    return math.prod(sizes)


def use_virtual_devices(cfg) -> int:
    """Make JAX's CPU backend expose `plan_devices(cfg)` devices; must run before anything initialises a backend."""
    n = plan_devices(cfg)
    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX refuses once a backend runs
        raise ConfigError(f"plan needs {n} virtual CPU devices, but a JAX backend already started with "
                          f"{len(jax.devices())}: plan in a fresh process (launch.py --mode plan)") from None
    if len(jax.devices()) != n:  # e.g. XLA_FLAGS=--xla_force_host_platform_device_count won
        raise ConfigError(f"plan needs {n} virtual CPU devices but JAX runs with {len(jax.devices())}; "
                          "unset XLA_FLAGS' device count")
    return n


def target_spec(cfg) -> dict:
    """{name, memory_bytes, peak_flops, hbm_bandwidth, margin} of `plan.target` (perf's device table)."""
    name = str(cfg.plan.target).lower()
    try:
        spec = perf.device_spec(name)
    except KeyError:
        raise ConfigError(f"plan.target={cfg.plan.target!r} is not a known device; use one of "
                          f"{sorted(perf.DEVICE_SPECS)}") from None
    memory = float(cfg.plan.target_memory_gb)
    margin = float(cfg.plan.margin)
    if not 0.0 <= margin < 1.0:
        raise ConfigError(f"plan.margin={margin} must be in [0, 1)")
    return {"name": name, "memory_bytes": int(memory * 1e9) if memory > 0 else int(spec.memory_bytes),
            "peak_flops": float(spec.peak_bf16_flops), "hbm_bandwidth": float(spec.hbm_bandwidth), "margin": margin}


def offline_config(cfg):
    """A copy of `cfg` whose weight folders are blanked, so builders take the presets' shapes and read no file."""
    cfg = cfg.copy_and_resolve_references()
    with cfg.unlocked():
        for *parents, leaf in _WEIGHT_DIRS:
            node = cfg
            for key in parents:
                node = node.get(key) if node is not None else None
            if node is not None and node.get(leaf):
                node[leaf] = ""
    return cfg


def _mesh(cfg, n: int):
    try:
        return make_mesh(dict(cfg.mesh), jax.devices()[:n])
    except MeshError as e:
        raise ConfigError(str(e)) from None


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError("XLA returned no memory analysis for the compiled program")
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "temp", "alias")}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def _time_bound(flops: float, bytes_moved: float, devices: int, target: dict) -> float:
    return max(flops / devices / target["peak_flops"], bytes_moved / target["hbm_bandwidth"])


def _compile_step(stepper: Stepper, state, batch) -> tuple[dict, perf.FlopCount, float]:
    """({program: memory}, FLOPs of one optimizer step, compile seconds) of the programs the loop runs: the fused
    step, or the first micro-batch, every later one (x accumulation steps) and the update."""
    t0 = time.perf_counter()
    if stepper.accum == 1:
        lowered = {"fused": stepper.lower("fused", state, batch=batch)}
    else:
        lowered = {"first": stepper.lower("first", state, batch=batch)}
        acc = abstract.with_sharding(jax.eval_shape(lambda s, b: stepper.accumulate(s, None, b), state, batch),
                                     stepper.accumulator_shardings(state, batch))
        lowered["accumulate"] = stepper.lower("accumulate", state, batch=batch, acc=acc)
        lowered["apply"] = stepper.lower("apply", state, acc=acc)
    mems = {kind: _memory(low.compile()) for kind, (low, _) in lowered.items()}
    counts = {kind: f for kind, (_, f) in lowered.items()}
    if stepper.accum == 1:
        flops = counts["fused"]
    else:
        k, acc_f, apply_f = stepper.accum, counts["accumulate"], counts["apply"]
        flops = perf.FlopCount(executed=k * acc_f.executed + apply_f.executed, model=k * acc_f.model + apply_f.model,
                               unbounded_loops=acc_f.unbounded_loops)
    return mems, flops, time.perf_counter() - t0


def plan_stage(cfg, name: str, mesh, target: dict, *, processes: int) -> dict:
    """Compile one stage's train step at its largest shapes; the figures of the module docstring."""
    devices = mesh.devices.size
    model = nnx.eval_shape(lambda: training.build_stage_model(cfg, name))
    spec = training.stage_spec(cfg, name, n_train=1)  # the step count only shapes the schedule, not the program
    task_fn, data_task = training.stage_task(cfg, name)
    st = abstract.abstract_train_state(model, spec, mesh, seed=int(cfg.seed))
    rows = training.stage_batch_size(cfg, name)
    global_batch = rows * processes
    accum = spec.grad_accum_steps
    if rows % accum:
        raise ConfigError(f"stage {name}: per-host batch {rows} is not divisible by grad_accum_steps={accum}")
    length = text_length(cfg)
    encoder = model.encoder.cfg
    schema = abstract.host_batch_schema(encoder, data_task, rows // accum, length)  # one loader batch
    batch, _ = abstract.abstract_global_batch(schema, mesh, processes)
    mems, flops, compile_s = _compile_step(Stepper(st.graphdef, task_fn, st.tx, mesh, st.shardings, accum),
                                           st.state, batch)
    largest = max(mems, key=lambda k: mems[k]["total"])
    mem = mems[largest]  # the program that needs the most memory decides the fit
    params_b = abstract.shard_bytes((st.state.params, st.state.frozen))
    trainable_b = abstract.shard_bytes(st.state.params)
    opt_b = abstract.shard_bytes(st.state.opt_state)
    batch_b = abstract.shard_bytes(batch)
    decoder = getattr(model, "decoder", None)
    recompute = bool(decoder is not None and decoder.cfg.remat
                     and getattr(decoder.cfg, "remat_policy", "nothing") == "nothing")
    passes = 3 if recompute else 2  # forward, backward, and the remat forward unless weight matmuls are kept
    bytes_moved = passes * accum * params_b + 2 * (trainable_b + opt_b) + accum * (batch_b + 2 * mem["temp"])
    budget = target["memory_bytes"] * (1 - target["margin"])
    grid_only = data_task in ("lesion_map", "volume")  # no text: a step's tokens are the encoder's grid cells
    tokens = global_batch * (int(np.prod(encoder.grid)) if grid_only else length)
    return {
        "task": data_task or ("text_only" if name == "lm_pretrain" else "vlm_answer"),
        "global_batch": global_batch, "per_host_batch": rows, "processes": processes, "grad_accum_steps": accum,
        "micro_batch": global_batch // accum, "length": None if grid_only else length,
        "tokens_per_step": tokens,
        "per_device_bytes": mem["total"], "largest_program": largest,
        "programs": {k: {"per_device_bytes": m["total"], "activation_bytes": m["temp"]} for k, m in mems.items()},
        "params_bytes": params_b, "trainable_params_bytes": trainable_b,
        "optimizer_bytes": opt_b, "batch_bytes": batch_b, "activation_bytes": mem["temp"],
        "argument_bytes": mem["argument"], "output_bytes": mem["output"], "aliased_bytes": mem["alias"],
        "host_batch_bytes": sum(int(np.prod(shape)) * np.dtype(dt).itemsize for shape, dt in schema.values()),
        "fits": mem["total"] <= budget,
        "flops_per_step": float(flops.executed), "model_flops_per_step": float(flops.model),
        "flops_unbounded_loops": int(flops.unbounded_loops),
        "bytes_moved_per_device": int(bytes_moved),
        "step_time_lower_bound_s": _time_bound(float(flops.executed), bytes_moved, devices, target),
        "trainable_parameters": int(sum(x.size for x in jax.tree.leaves(st.state.params))),
        "compile_s": round(compile_s, 2),
    }


def text_length(cfg) -> int:
    """The longest token axis a batch can have: the bucket that holds data.max_length (what the loader pads to)."""
    try:
        return bucket_length(int(cfg.data.max_length), tuple(cfg.data.buckets))
    except ValueError as e:
        raise ConfigError(f"data.max_length / data.buckets: {e}") from None


def _prompt_inputs(model, rows: int, length: int, mesh) -> dict:
    """Generation inputs as VLMGenerator places them: rows over the rules table's 'batch', the rest replicated."""
    shapes = {"images": ((rows, *model.encoder.cfg.input_shape), np.float32), "input_ids": ((rows, length), np.int32),
              "attention_mask": ((rows, length), np.bool_), "image_mask": ((rows, length), np.bool_)}
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=named_sharding(("batch",) + (None,) * (len(shape) - 1),
                                                                            shape, mesh))
            for k, (shape, dtype) in shapes.items()}


def plan_generate(cfg, mesh, target: dict) -> dict:
    """Compile the evaluation's two programs (VLMGenerator): prompt embeddings, then prefill + while-loop decode.

    Rows are eval.batch_size rounded up to a multiple of the batch shards (as VLMGenerator does), the prompt is
    the largest length bucket; the decode loop is counted at its full eval.max_new_tokens.
    """
    devices = mesh.devices.size
    with_lora = training.uses_lora(cfg, training.vlm_stages(cfg)[-1])
    model = nnx.eval_shape(lambda: build_vlm(cfg.model.to_dict(), seed=int(cfg.seed), with_lora=with_lora))
    graphdef, state = nnx.split(model)
    state = abstract.with_sharding(state, state_shardings(state, mesh))
    dec_graphdef, dec_state = nnx.split(model.decoder)
    dec_state = abstract.with_sharding(dec_state, state_shardings(dec_state, mesh))
    shards = math.prod(dict(zip(mesh.axis_names, mesh.axis_sizes)).get(a, 1) for a in ("data", "fsdp"))
    rows = -(-int(cfg.eval.batch_size) // shards) * shards
    length, new = max(int(b) for b in cfg.data.buckets), int(cfg.eval.max_new_tokens)
    x = _prompt_inputs(model, rows, length, mesh)
    dcfg = model.decoder.cfg
    sampling = SamplingConfig(float(cfg.eval.temperature), int(cfg.eval.top_k), float(cfg.eval.top_p))
    eos = dcfg.eos_token_id if dcfg.eos_token_id is not None else 2

    def embed(st, images, ids, image_mask):  # the body of vlm_generate._prompt_embeds
        return nnx.merge(graphdef, st).prompt_embeds(images, ids, image_mask)

    def decode(st, embeds, mask):
        return generate((dec_graphdef, st), inputs_embeds=embeds, attention_mask=mask,
                        bidirectional_mask=mask if model.prefix_lm else None, max_new_tokens=new,
                        sampling=sampling, eos_token_id=eos, pad_token_id=0, seed=int(cfg.seed))

    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        first = jax.jit(embed).lower(state, x["images"], x["input_ids"], x["image_mask"]).compile()
        shape = jax.eval_shape(embed, state, x["images"], x["input_ids"], x["image_mask"])
        embeds = jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=first.output_shardings)
        second = jax.jit(decode).lower(dec_state, embeds, x["attention_mask"]).compile()
        compile_s = time.perf_counter() - t0
        f1 = perf.count_flops(embed, state, x["images"], x["input_ids"], x["image_mask"])
        f2 = perf.count_flops(decode, dec_state, embeds, x["attention_mask"])
    m1, m2 = _memory(first), _memory(second)
    params_b, dec_b = abstract.shard_bytes(state), abstract.shard_bytes(dec_state)
    cache_shape = (dcfg.num_layers, rows, length + new, dcfg.num_kv_heads, dcfg.head_dim)
    cache_sh = named_sharding(CACHE_AXES, cache_shape, mesh)
    cache_b = 2 * abstract.leaf_shard_bytes(jax.ShapeDtypeStruct(cache_shape, dcfg.compute_dtype, sharding=cache_sh))
    bytes_moved = params_b + new * (dec_b + cache_b) + abstract.shard_bytes(x)
    flops = float(f1.executed + f2.executed)
    # The programs run one after the other on a resident model: while decoding, CT-ViT and the projector stay put.
    total = max(m1["total"], m2["total"] + params_b - dec_b)
    return {
        "rows": rows, "prompt_length": length, "max_new_tokens": new, "tokens_per_step": rows * (length + new),
        "global_batch": rows, "per_device_bytes": total, "params_bytes": params_b, "optimizer_bytes": 0,
        "kv_cache_bytes": cache_b, "activation_bytes": max(m1["temp"], m2["temp"]),
        "fits": total <= target["memory_bytes"] * (1 - target["margin"]),
        "flops_per_step": flops, "model_flops_per_step": float(f1.model + f2.model),
        "flops_unbounded_loops": int(f1.unbounded_loops + f2.unbounded_loops),
        "bytes_moved_per_device": int(bytes_moved),
        "step_time_lower_bound_s": _time_bound(flops, bytes_moved, devices, target),
        "programs": {"prompt_embeds": m1, "generate": m2}, "compile_s": round(compile_s, 2),
    }


def plan(cfg, workdir: str, *, stages: Optional[list[str]] = None) -> dict:
    """Plan every stage of `order` (or `stages`) and the generation program; writes <workdir>/plan.json."""
    target = target_spec(cfg)
    processes = cfg.plan.processes
    n = plan_devices(cfg)
    if len(jax.devices()) < n:
        raise ConfigError(f"plan needs {n} devices, JAX has {len(jax.devices())} (call use_virtual_devices first)")
    mesh = _mesh(cfg, n)
    cfg = offline_config(cfg)
    names = list(stages or cfg.order)
    for name in names:
        training.kind_of(cfg, name)  # a registered kind for every stage, before anything compiles
    out = {"target": target, "config": cfg.name, "devices": n, "processes": processes,
           "mesh": dict(zip(mesh.axis_names, (int(s) for s in mesh.axis_sizes))), "stages": {}}
    for name in names:
        out["stages"][name] = plan_stage(cfg, name, mesh, target, processes=processes)
    out["generate"] = plan_generate(cfg, mesh, target) if training.vlm_stages(cfg) and cfg.plan.generate else None
    os.makedirs(workdir, exist_ok=True)
    write_text(os.path.join(workdir, "plan.json"), json.dumps(out, indent=1))
    return out


def _row(name: str, r: dict) -> str:
    shape = f"{r['global_batch']} x {r.get('length') or r.get('prompt_length') or '-'}"
    if "rows" in r:
        shape = f"{r['rows']} x ({r['prompt_length']} + {r['max_new_tokens']})"
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    return (f"| {name} | {shape} | {gib(r['per_device_bytes'])} | {gib(r['params_bytes'])} | "
            f"{gib(r['optimizer_bytes'])} | {gib(r['activation_bytes'])} | {'yes' if r['fits'] else 'NO'} | "
            f"{r['flops_per_step'] / 1e12:.1f} | {r['step_time_lower_bound_s']:.3g} | {r['compile_s']:.0f} |")


def format_table(result: dict) -> str:
    """The plan as a markdown table (per-device GiB, TFLOPs per step over all devices, lower-bound seconds)."""
    t = result["target"]
    mesh = " x ".join(f"{k} {v}" for k, v in result["mesh"].items())
    lines = [f"plan {result['config']}: {result['devices']} x {t['name']} ({t['memory_bytes'] / GIB:.1f} GiB each, "
             f"fits below {t['memory_bytes'] * (1 - t['margin']) / GIB:.1f} GiB = {100 * (1 - t['margin']):.0f} %), "
             f"mesh {mesh}, {result['processes']} process(es)",
             "| program | batch x length | GiB/device | params | optimizer | activations | fits | TFLOP/step | "
             "time bound (s) | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["stages"].items():
        lines.append(_row(name, r))
    if result.get("generate"):
        lines.append(_row("generate", result["generate"]))
    return "\n".join(lines)
