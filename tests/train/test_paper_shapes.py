"""The paper's shapes actually run: 140x480x480 records -> CT-ViT -> 14 x (24x24x512) -> projector -> 4096-wide decoder.

Every other test uses the tiny grid. This one writes `paper`-size synthetic studies, builds the `regions_paper`
records from them (plain path), and pushes real loader batches (Mistral v1 tokenizer, report task, the paper's
length buckets) through one `align` and one `lora` step of the project's stage machinery (`prepare_state` +
`make_train_step`, jitted as `run_stage` jits them) and through report generation (the evaluation's prompt
encoding and left padding, `VLM.prompt_embeds`, `eval.generate.generate`: prefill + decode loop), with the paper
config's model: CT-ViT `paper` (2 channels, 140x480x480 -> 14 tokens of 24x24x512 = 294,912 features), the linear
projector without pooling (294,912 x 4,096 = 1.21 B parameters) and a decoder of Mistral-7B's shapes (hidden 4096,
32 heads over 8 KV heads, MLP 14336, vocabulary 32000), scanned layers, remat, bf16 compute, LoRA r 64 / alpha 16 /
dropout 0.05 on every linear.

What differs from `paper_config("mistral_7b")`, and why (a 24 GB, 2-core CI machine shared with another pytest
worker; the test keeps its own growth of the RSS under 9.5 GB; it measures and prints it, about 8.7 GB):
  * the decoder has 2 layers, not 32 (a 7B decoder alone is 14 GB in bf16); every shape of a layer is Mistral-7B's;
  * projector and decoder weights are stored in bf16 (the config: float32 master weights), so AdamW's moments are
    bf16 too (optax keeps them in the parameters' dtype);
  * batch 1, no gradient accumulation, in-process loading (the config: 256 / 128 in micro-batches, 8 workers),
    no warm-up (a 1-step schedule would otherwise have learning rate 0 and move nothing);
  * the two steps that run train the projector's bias (align) and LoRA + the projector's bias (lora), not its
    1.21 B-weight kernel. The real stages (kernel included) are compiled at these shapes too, and their memory
    printed: their AdamW state (kernel, two moments, gradient: 4 x 2.4 GB in bf16) plus XLA:CPU's float32
    temporaries for bf16 arithmetic on the gradient (~4.8 GB) come to ~16 GB, which no 24 GB machine shared with
    another worker can hold. The kernel's forward pass runs here; its gradient at this size is compiled and its
    memory bounded in tests/models/test_projector_memory.py;
  * generation runs VLMGenerator's two programs one by one (prompt embeddings, then decoding on the decoder), so
    that CT-ViT and the projector are released before decoding: XLA:CPU holds float32 copies of the bf16 decoder
    weights while decoding (~4.7 GB here), and VLMGenerator.generate, which keeps the whole VLM, peaks at ~11 GB.
"""
from __future__ import annotations

import dataclasses
import gc
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpetct.paper import paper_config
from jaxpetct.data import pipeline
from jaxpetct.data.build import build_dataset
from jaxpetct.data.inputs import AugmentConfig, model_images, tokenizer_for
from jaxpetct.data.records import as_text
from jaxpetct.eval.generate import generate
from jaxpetct.eval.vlm_generate import DecodingConfig, PromptRow, VLMGenerator
from jaxpetct.jobs import data as data_jobs
from jaxpetct.jobs import training
from jaxpetct.models.factory import build_vlm, lora_config
from jaxpetct.models.lora import apply_lora
from jaxpetct.parallel.mesh import make_mesh
from jaxpetct.parallel.rules import place_state
from jaxpetct.studies.synthetic import write_cohort
from jaxpetct.text.prompts import encode_conversation, report_messages
from jaxpetct.train.loop import (StageSpec, batch_sharding, model_arrays, prepare_state, split_trainable,
                                 to_global)
from jaxpetct.train.optimizer import Schedule, make_optimizer, path_str
from jaxpetct.train.stages import STAGES
from jaxpetct.train.step import init_state, make_train_step
from jaxpetct.train.tasks import vlm_answer_loss

pytestmark = pytest.mark.integration

PAPER_STUDIES = 2  # index 0 falls in a train month, index 1 in a validation month (seed 0)
GROWTH_GB = 9.5  # peak RSS above the RSS at the test's start (locally ~8.7 GB: 0.9 -> 9.6; margin for CI)
GENERATED = 8
BIAS = r"^projector/fc1/bias(/|$)"  # group patterns also see ".../value" (train.loop.split_trainable)


def rss_gb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in GB (VmRSS, VmHWM in KiB)."""
    with open("/proc/self/status") as f:
        kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
    return kib["VmRSS"] / 1e6, kib["VmHWM"] / 1e6


def reset_peak_rss() -> bool:
    """Restarts the peak-RSS count at the current RSS (Linux >= 4.0: `5` to clear_refs), so that the peak measured is
    this test's, not that of whatever ran before in the same pytest-xdist worker (whose freed heap glibc keeps)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def live_array_gb() -> float:
    """GB of device buffers alive (jax.live_arrays() lists an array that aliases a donated buffer next to the
    buffer's earlier array: count each buffer once)."""
    buffers = {}
    for x in jax.live_arrays():
        if not x.is_deleted():
            buffers[x.unsafe_buffer_pointer() if len(x.devices()) == 1 else id(x)] = x.nbytes
    return sum(buffers.values()) / 1e9


class Log:
    """Prints each phase's wall time and RSS (pytest -s shows them; a failure report shows them either way)."""

    def __init__(self):
        gc.collect()
        self.reset = reset_peak_rss()
        self.t0 = self.t = time.perf_counter()
        self.start_rss = rss_gb()[0]

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        cur, peak = rss_gb()
        live = live_array_gb()
        print(f"[paper shapes] {what}: {now - self.t:.1f} s (total {now - self.t0:.1f} s), "
              f"rss {cur:.2f} GB, peak {peak:.2f} GB, live arrays {live:.2f} GB", flush=True)
        self.t = now


def paper_test_config():
    """The model of the paper config, with only the deviations the module docstring lists."""
    cfg = paper_config("mistral_7b", "O")
    cfg.salt = data_jobs.DEMO_SALT  # synthetic studies
    cfg.model.decoder.num_layers = 2
    cfg.model.decoder.param_dtype = "bfloat16"
    cfg.model.projector.param_dtype = "bfloat16"
    cfg.data.worker_count = 0
    return cfg


def fingerprints(state) -> dict[str, tuple]:
    """(shape, dtype, CRC-32 of the bytes) of every array of an NNX state: any changed bit changes it, and no
    second copy of 4 GB of weights is kept to compare against (np.asarray of a CPU array is a view of its buffer).
    A jitted hash would not do: XLA:CPU materialises a uint32 copy of a bf16 array it reduces as integers."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        x = var.get_value()
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        a = np.ascontiguousarray(np.asarray(x))
        out[path_str(path)] = (a.shape, str(a.dtype), zlib.crc32(a.reshape(-1).view(np.uint8)))
    return out


@pytest.fixture(scope="module")
def paper_records(tmp_path_factory) -> str:
    """`paper`-size synthetic studies -> the regions_paper dataset (plain path); returns the dataset directory."""
    root = tmp_path_factory.mktemp("paper_shapes")
    write_cohort(str(root / "cohort"), PAPER_STUDIES, 0, size="paper")
    summary = build_dataset(str(root / "cohort"), str(root / "tfds"), "regions_paper", salt=data_jobs.DEMO_SALT,
                            progress=False)
    assert summary.examples["train"] == 3 and not summary.quarantined  # one study's three regions
    return summary.dataset_dir


def _one_step(holder: list, spec: StageSpec, batch: dict, mesh, log):
    """One step of `spec` the way run_stage runs it: prepare_state, then make_train_step jitted with the state's
    shardings and donated. Returns (trained model, metrics, fingerprints before and after, trainable names).

    The model comes in a list that is emptied: prepare_state's jit returns copies of the weights, and the originals
    must be freed before the step rather than after it (4 GB here)."""
    model = holder.pop()
    graphdef, state, tx, group_of, _ = prepare_state(model, spec, mesh)
    del model
    gc.collect()  # NNX module graphs hold reference cycles
    log(f"{spec.name}: state prepared")
    trainable = {path_str(p) for p, _ in nnx.to_flat_state(state.params)}
    before = {**fingerprints(state.params), **fingerprints(state.frozen)}
    step = make_train_step(graphdef, vlm_answer_loss, tx)  # grad_accum_steps is 1 here: one fused program
    b_sh = batch_sharding(mesh, batch)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    with jax.set_mesh(mesh):
        jitted = jax.jit(step, in_shardings=(state_sh, b_sh), out_shardings=(state_sh, None), donate_argnums=(0,))
        state, metrics = jitted(state, to_global(batch, b_sh))
    metrics = jax.device_get(metrics)
    log(f"{spec.name}: step run")
    after = {**fingerprints(state.params), **fingerprints(state.frozen)}
    return nnx.merge(graphdef, state.params, state.frozen), metrics, before, after, trainable


def _compiled_stage_memory(model, name: str, spec: StageSpec, batch: dict, mesh) -> dict:
    """The paper's own stage (its registered groups: the whole projector trains) compiled at these shapes, never run:
    the state is abstract (prepare_state's construction under eval_shape), so nothing is allocated."""
    groups = STAGES[name].groups
    graphdef, params, frozen, group_of = split_trainable(model, groups)
    schedule = Schedule(spec.peak_lr, spec.steps, spec.warmup_fraction, spec.final_lr_fraction)
    tx = make_optimizer(params, group_of, groups, schedule, weight_decay=spec.weight_decay, clip_norm=spec.clip_norm)
    state = jax.eval_shape(lambda p, f: init_state(p, f, tx, seed=0), params, frozen)
    del params, frozen
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state_sh = jax.tree.map(lambda _: replicated, state)
    b_sh = batch_sharding(mesh, batch)
    step = make_train_step(graphdef, vlm_answer_loss, tx)
    with jax.set_mesh(mesh):
        compiled = jax.jit(step, in_shardings=(state_sh, b_sh), out_shardings=(state_sh, None),
                           donate_argnums=(0,)).lower(state, batch).compile()
    trained = {path_str(p): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(state.params)}
    memory = compiled.memory_analysis()
    return {"trained": trained, "arguments_gb": round(memory.argument_size_in_bytes / 1e9, 2),
            "temporaries_gb": round(memory.temp_size_in_bytes / 1e9, 2)}


def _moved(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if before[k] != after[k]}


@pytest.mark.slow
def test_paper_shapes_train_align_and_lora_steps_and_generate(paper_records):
    log = Log()
    cfg = paper_test_config()
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])

    # The align model (no adapters yet), built by the factory as `launch.py` builds it.
    model = build_vlm(cfg.model.to_dict(), seed=int(cfg.seed), mesh=mesh, with_lora=False)
    jax.block_until_ready(nnx.state(model))
    log("model built")
    io = training.model_io(model)
    assert io.input_shape == (2, 140, 480, 480) and io.grid == (14, 24, 24) and io.num_visual_tokens == 14
    assert model.encoder.cfg.out_dim == 512 and model.projector.cfg.in_features == 24 * 24 * 512 == 294_912
    assert model.projector.fc1.kernel[...].shape == (294_912, 4096)
    assert model.projector.fc1.kernel[...].dtype == jnp.bfloat16
    d = model.decoder.cfg
    assert (d.hidden_size, d.num_heads, d.num_kv_heads, d.head_dim, d.intermediate_size, d.vocab_size) == (
        4096, 32, 8, 128, 14336, 32000)
    assert d.num_layers == 2 and d.scan_layers and d.remat and d.compute_dtype == jnp.bfloat16

    # Real loader batches: regions_paper train records, the paper's tokenizer, template and length buckets.
    loader = data_jobs.loader_config(cfg, io, train=True, seed=0, batch_size=1)
    loader = dataclasses.replace(loader, read_threads=1, read_buffer=1)  # one 258 MB example read ahead, not 4
    assert loader.buckets == (512, 1024, 2048) and loader.text.max_length == 2048
    batches = iter(pipeline.make_dataset(pipeline.open_source(paper_records, "train"), cfg.data.tokenizer, loader,
                                         shard_index=0, shard_count=1))
    align_batch, lora_batch = model_arrays(next(batches)), model_arrays(next(batches))
    del batches
    for b in (align_batch, lora_batch):
        assert b["images"].shape == (1, 2, 140, 480, 480) and b["input_ids"].shape == (1, 512)
        assert b["image_mask"].sum() == 14 and b["loss_mask"].sum() > 0
    log("two batches loaded")

    # The paper's stages, as compiled programs (kernel trained): they build at these shapes; memory printed.
    specs = {name: dataclasses.replace(training.stage_spec(cfg, name, 3), steps=1, warmup_fraction=0.0,
                                       grad_accum_steps=1) for name in ("align", "lora")}
    paper_align = _compiled_stage_memory(model, "align", specs["align"], align_batch, mesh)
    print("[paper shapes] the paper's align step (projector kernel trained), compiled:", paper_align)
    assert paper_align["trained"] == {"projector/fc1/kernel": (294_912, 4096), "projector/fc1/bias": (4096,)}
    log("paper align step compiled")

    # align: one step; only the projector's bias may move (module docstring: the kernel's AdamW state is ~16 GB).
    bias_only = lambda name: tuple(  # noqa: E731
        dataclasses.replace(g, pattern=BIAS) if g.name == "projector" else g for g in STAGES[name].groups)
    holder = [model]
    del model
    model, metrics, before, after, trainable = _one_step(
        holder, dataclasses.replace(specs["align"], groups=bias_only("align")), align_batch, mesh, log)
    print("[paper shapes] align metrics:", metrics)
    assert trainable == {"projector/fc1/bias"}
    assert int(metrics["finite"]) == 1 and np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert int(metrics["tokens"]) == int(align_batch["loss_mask"][:, 1:].sum())
    assert _moved(before, after) == {"projector/fc1/bias"}
    log("align step")

    # lora: adapters on every linear of the trained model (what build_vlm(with_lora=True) + load_weights(align)
    # gives), then one step; only adapters and the projector's bias may move.
    lcfg = lora_config(cfg.model.lora)
    apply_lora(model.decoder, lcfg, nnx.Rngs(params=int(cfg.seed) + 3, dropout=int(cfg.seed) + 4))  # as build_vlm
    nnx.update(model, place_state(nnx.state(model), mesh))
    assert (lcfg.rank, lcfg.alpha, lcfg.dropout, set(lcfg.targets)) == (
        64, 16.0, 0.05, {"q", "k", "v", "o", "gate", "up", "down"})
    holder = [model]
    del model
    model, metrics, before, after, trainable = _one_step(
        holder, dataclasses.replace(specs["lora"], groups=bias_only("lora")), lora_batch, mesh, log)
    print("[paper shapes] lora metrics:", metrics)
    adapters = {k for k in trainable if "/lora/lora_" in k}
    assert len(adapters) == 2 * 7 and trainable == adapters | {"projector/fc1/bias"}
    assert int(metrics["finite"]) == 1 and np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    moved = _moved(before, after)
    # B starts at zero, so A's first gradient is zero: B of every adapted linear and the bias move, A may not.
    assert {k for k in adapters if k.endswith("lora_b")} | {"projector/fc1/bias"} <= moved <= trainable, sorted(moved)
    log("lora step")

    # Report generation for one region, as VLMGenerator.generate does it in two programs: prompt embeddings (CT-ViT
    # -> projector -> spliced into the eval's left-padded prompt), then eval.generate.generate (prefill + while-loop
    # decode with the KV cache) on the decoder; one by one, to release CT-ViT and the projector first (docstring).
    del align_batch, lora_batch
    gc.collect()
    tokenizer = tokenizer_for(cfg.data.tokenizer)
    record = pipeline.open_source(paper_records, "validation")[0]
    image = model_images(record, loader.image, AugmentConfig(), None)  # as jobs.data.eval_examples decodes it
    enc = encode_conversation(report_messages(None, as_text(record["region"])), tokenizer, cfg.data.template,
                              num_image_tokens=io.num_visual_tokens, prompt_only=True)
    decoding = DecodingConfig(max_new_tokens=GENERATED, batch_size=1, length_buckets=tuple(cfg.data.buckets),
                              template=cfg.data.template)  # as jobs/evaluation.py makes it
    generator = VLMGenerator(model, tokenizer, decoding, mesh=mesh)
    host = generator.arrays([PromptRow(enc.input_ids, enc.image_mask, image)])
    assert host["input_ids"].shape == (1, 512) and host["image_mask"].sum() == 14
    vlm_graph = generator.graphdef
    embed = jax.jit(lambda state, images, ids, image_mask: nnx.merge(vlm_graph, state).prompt_embeds(
        images, ids, image_mask))
    with jax.set_mesh(mesh):
        x = {k: jnp.asarray(v) for k, v in host.items()}
        embeds = embed(generator.state, x["images"], x["input_ids"], x["image_mask"])
        assert embeds.shape == (1, 512, 4096) and embeds.dtype == jnp.bfloat16
        decoder, eos = generator.decoder, generator.eos
        del generator, model, x, image, embed
        gc.collect()
        log("prompt embedded")
        out = generate(decoder, inputs_embeds=embeds, attention_mask=jnp.asarray(host["attention_mask"]),
                       max_new_tokens=GENERATED, sampling=decoding.sampling, eos_token_id=eos,
                       pad_token_id=tokenizer.pad_id, seed=0)
    tokens, length = np.asarray(out.tokens)[0], int(np.asarray(out.lengths)[0])
    print("[paper shapes] generated:", tokens.tolist(), repr(tokenizer.decode(tokens[:length].tolist())))
    assert tokens.shape == (GENERATED,) and np.all((tokens >= 0) & (tokens < 32000))
    assert length == GENERATED or (0 < length < GENERATED and tokens[length - 1] in eos)  # 8 tokens, or an EOS
    log("generated")

    now, peak = rss_gb()
    print(f"[paper shapes] peak RSS {peak:.2f} GB from {log.start_rss:.2f} GB at the start, "
          f"wall {time.perf_counter() - log.t0:.0f} s")
    if log.reset:  # without a reset the peak may be an earlier test's
        assert peak - log.start_rss < GROWTH_GB, (
            f"this test took the RSS from {log.start_rss:.2f} to {peak:.2f} GB (the CI machine is shared: keep "
            f"its growth under {GROWTH_GB} GB)")
