"""The jaxpr FLOP counter (train/perf.py) against hand counts, and against XLA where XLA is right.

References are independent of the counter: closed-form shape formulas, and for single dots and convolutions the
"ones" identity (evaluated on all-ones operands, every multiply-add adds exactly 1 to the output's sum, padding
and dilation holes add 0, so 2 x sum(output) is the FLOP count). The decoder tests are the ones that matter:
they pin the numbers MFU is computed from on the project's own scanned, rematerialised, chunked-loss step.
"""
import contextlib

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from jax import lax

from jaxpetct.models import decoder_config as cfglib
from jaxpetct.models.decoder import Decoder
from jaxpetct.models.losses import chunked_cross_entropy
from jaxpetct.train import perf


def ones_identity_flops(eqn) -> float:
    """2 x sum of the eqn evaluated on all-ones operands: its multiply-add count, by evaluation, not by formula."""
    ones = [jnp.ones(v.aval.shape, jnp.float32) for v in eqn.invars]
    params = dict(eqn.params, preferred_element_type=jnp.float32)
    out = eqn.primitive.bind(*ones, **params)
    return 2.0 * float(jnp.sum(out.astype(jnp.float32)))


def matmul_eqns(fn, *args):
    return [e for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns if e.primitive.name in ("dot_general",
                                                                                     "conv_general_dilated")]


# -- primitives and control flow ------------------------------------------------------------------------------------


def test_dot_and_batched_dot_general():
    a, b = jnp.ones((7, 5)), jnp.ones((5, 3))
    assert perf.count_flops(jnp.dot, a, b).executed == 2 * 7 * 5 * 3
    x, y = jnp.ones((4, 6, 2, 5)), jnp.ones((4, 5, 2, 3))  # batch (4, 2), M 6, K 5, N 3
    f = lambda x, y: jnp.einsum("bmhk,bkhn->bhmn", x, y)  # noqa: E731
    assert perf.count_flops(f, x, y).executed == 2 * (4 * 2) * 6 * 3 * 5
    (eqn,) = matmul_eqns(f, x, y)
    assert perf.count_flops(f, x, y).executed == ones_identity_flops(eqn)


def conv_program(x, w, w2):
    y = lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=8)  # depthwise
    y = lax.conv_general_dilated(y, w2, (2, 2), "SAME", rhs_dilation=(2, 1))
    return jnp.sum(y ** 2)


def test_conv_counts_real_taps_forward_and_in_its_transposes():
    x, w = jnp.ones((2, 3, 16, 16)), jnp.ones((8, 3, 3, 3))
    valid = lax.conv_general_dilated(x, w, (1, 1), "VALID")
    assert perf.count_flops(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "VALID"), x, w).executed == (
        2 * valid.size * 3 * 3 * 3)
    args = (jnp.ones((2, 8, 16, 16)), jnp.ones((8, 1, 3, 3)), jnp.ones((16, 8, 3, 3)))
    grad = jax.grad(conv_program, argnums=(0, 1, 2))
    eqns = matmul_eqns(grad, *args)
    kinds = {(e.params["feature_group_count"], e.params["batch_group_count"], max(e.params["lhs_dilation"]))
             for e in eqns}
    assert len(kinds) >= 3  # grouped, batch-grouped (depthwise weight gradient) and dilated (input gradient)
    assert perf.count_flops(grad, *args).executed == sum(ones_identity_flops(e) for e in eqns)


def test_scan_cond_and_loops_are_multiplied_out():
    x, w = jnp.ones((4, 8)), jnp.ones((8, 8))
    one = 2 * 4 * 8 * 8

    def scanned(x, w):
        return lax.scan(lambda h, _: (h @ w, None), x, None, length=6)[0]

    assert perf.count_flops(scanned, x, w).executed == 6 * one

    def branchy(p, x, w):
        return lax.cond(p, lambda x: x @ w, lambda x: (x @ w) @ w @ w, x)

    assert perf.count_flops(branchy, True, x, w).executed == 3 * one  # the costlier branch

    def fori(x, w):  # static bounds: JAX lowers this one to a scan
        return lax.fori_loop(0, 5, lambda i, h: h @ w, x)

    assert perf.count_flops(fori, x, w).executed == 5 * one

    def counter_loop(x, w):  # a while loop whose counter starts at 1, steps by 2 and stops before 8
        cond = lambda c: (c[0] < 8) & (jnp.sum(c[1]) < 1e30)  # noqa: E731
        return lax.while_loop(cond, lambda c: (c[0] + 2, c[1] @ w), (1, x))

    count = perf.count_flops(counter_loop, x, w)
    assert (count.executed, count.unbounded_loops) == (4 * one, 0)

    def traced_bound(n, x, w):
        return lax.fori_loop(0, n, lambda i, h: h @ w, x)

    count = perf.count_flops(traced_bound, 5, x, w)
    assert (count.executed, count.unbounded_loops) == (one, 1)  # unknown trips: body once, and said so


def test_shard_map_body_counts_once_per_shard():
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices (tests/conftest.py asks for 8 virtual CPUs)")
    mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:4])
    f = jax.shard_map(lambda a, w: a @ w, mesh=mesh, in_specs=(P("x"), P()), out_specs=P("x"))
    a = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(mesh, P("x")))
    w = jax.ShapeDtypeStruct((16, 4), jnp.float32, sharding=NamedSharding(mesh, P()))
    with jax.set_mesh(mesh):
        assert perf.count_flops(f, a, w).executed == 2 * 8 * 16 * 4  # 4 shards of 2 x 16 @ 16 x 4


@contextlib.contextmanager
def remat_implementation(name: str):
    if name == "remat2":
        yield
        return
    if not hasattr(jax.config, "jax_remat3"):
        pytest.skip("this JAX has no jax_remat3 switch")
    old = jax.config.jax_remat3
    jax.config.update("jax_remat3", True)
    try:
        yield
    finally:
        jax.config.update("jax_remat3", old)


@pytest.mark.parametrize("impl", ["remat2", "remat3"])
def test_checkpoint_recomputation_is_executed_but_not_model(impl):
    def layer(h, w):
        return jnp.tanh(jnp.tanh(h @ w[0]) @ w[1])

    def loss(ws, x, remat):
        f = jax.checkpoint(layer) if remat else layer
        return jnp.sum(lax.scan(lambda h, w: (f(h, w), None), x, ws)[0])

    ws, x = jnp.ones((3, 2, 8, 8)), jnp.ones((4, 8))
    one = 2 * 4 * 8 * 8
    with remat_implementation(impl):
        on = perf.count_flops(jax.value_and_grad(lambda w, x: loss(w, x, True)), ws, x)
        off = perf.count_flops(jax.value_and_grad(lambda w, x: loss(w, x, False)), ws, x)
    # forward 2 matmuls + backward 4 (dW and dx of each), per layer; remat recomputes both forward matmuls
    assert off.executed == off.model == 3 * 6 * one
    assert on.model == off.model and on.executed == 3 * 8 * one and on.unresolved_remat == 0


# -- the decoder step ------------------------------------------------------------------------------------------------


def small_decoder(remat: bool) -> cfglib.DecoderConfig:
    return cfglib.tiny(num_layers=4, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                       vocab_size=3000, scan_layers=True, remat=remat)


def decoder_hand_flops(cfg, batch: int, length: int, chunk: int, *, loss_rows: int) -> tuple[float, float]:
    """(model, remat recomputation) FLOPs of a step training every decoder weight, from shapes alone.

    Per layer forward: 2·T·(matmul weights) + attention's two (L x L) products 2·2·B·H·L²·D; the backward is
    twice that (input and weight gradients). The blocked loss runs the head 3 times (logits, hidden and weight
    gradients) over the rows padded to a whole number of `chunk`-token blocks. Remat recomputes
    each layer's forward except its last matmul (down_proj), whose output the backward does not need.
    """
    e, h, kv, d, i = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    tokens = batch * length
    weights = e * h * d + 2 * e * kv * d + h * d * e + 3 * e * i
    layer = 2 * tokens * weights + 2 * 2 * batch * h * length * length * d
    block = min(chunk, loss_rows)
    padded_rows = -(-loss_rows // block) * block
    head = 3 * 2 * padded_rows * e * cfg.vocab_size
    return 3 * cfg.num_layers * layer + head, cfg.num_layers * (layer - 2 * tokens * i * e)


def decoder_step(cfg, batch: int, length: int, chunk: int):
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))  # shapes only

    def step(params, ids):
        def loss(p):
            hidden, _ = nnx.merge(graphdef, p)(ids, return_hidden=True)
            weights = jnp.ones(ids[:, 1:].shape, jnp.float32)
            return chunked_cross_entropy(hidden[:, :-1], nnx.merge(graphdef, p).head_weight(), ids[:, 1:], weights,
                                         chunk=chunk)

        return jax.value_and_grad(loss)(params)

    return step, params, jax.ShapeDtypeStruct((batch, length), jnp.int32)


@pytest.mark.parametrize("remat", [False, True])
def test_decoder_step_matches_hand_count_and_xla_undercounts_it(remat):
    batch, length, chunk = 2, 64, 32  # 4 loss blocks: a loop XLA counts once
    cfg = small_decoder(remat)
    step, params, ids = decoder_step(cfg, batch, length, chunk)
    count = perf.count_flops(step, params, ids)
    model, recompute = decoder_hand_flops(cfg, batch, length, chunk, loss_rows=batch * (length - 1))
    assert count.model == pytest.approx(model, rel=0.05)
    assert count.executed - count.model == pytest.approx(recompute if remat else 0.0, rel=0.05, abs=1.0)
    if remat:
        assert count.executed > count.model * 1.05
        # XLA's cost analysis counts the layer scan's and the loss scan's bodies once each
        xla = perf.compiled_flops(jax.jit(step).lower(params, ids).compile())
        assert xla is not None and xla < 0.6 * count.model


@pytest.mark.parametrize("remat", [False, True])
def test_project_train_step_full_stage(remat):
    """The real step (build_vlm, the stage split and optimizer of train/loop, make_train_step) at shapes only:
    decoder by hand + projector (forward and weight gradient) + the frozen encoder's forward."""
    from jaxpetct.models.factory import build_vlm
    from jaxpetct.train.loop import StageSpec, split_trainable
    from jaxpetct.train.optimizer import Schedule, make_optimizer
    from jaxpetct.train.step import init_state, make_train_step
    from jaxpetct.train.tasks import vlm_answer_loss

    batch, length, chunk = 2, 48, 1024
    dcfg = small_decoder(remat)
    dec = {k: getattr(dcfg, k) for k in ("num_layers", "hidden_size", "intermediate_size", "num_heads",
                                          "num_kv_heads", "head_dim", "vocab_size", "scan_layers", "remat")}
    model = nnx.eval_shape(lambda: build_vlm({"encoder": {"preset": "tiny", "channels": 2},
                                              "decoder": {"preset": "tiny", **dec}, "loss_chunk": chunk},
                                             seed=0, with_lora=False))
    t, shape, proj_in = model.num_visual_tokens, model.encoder.cfg.input_shape, model.projector.cfg.in_features
    images = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    enc_graph, enc_state = nnx.split(model.encoder)
    encoder = perf.count_flops(lambda s, x: nnx.merge(enc_graph, s)(x), enc_state, images)  # loop-free, frozen
    spec = StageSpec("full", steps=10, peak_lr=1e-4)
    graphdef, params, frozen, group_of = split_trainable(model, spec.param_groups())
    tx = make_optimizer(params, group_of, spec.param_groups(), Schedule(1e-4, 10, 0.03, 0.0))
    state = jax.eval_shape(lambda p, f: init_state(p, f, tx, seed=0), params, frozen)
    host = {"images": images, "input_ids": jax.ShapeDtypeStruct((batch, length), jnp.int32),
            "positions": jax.ShapeDtypeStruct((batch, length), jnp.int32),
            "attention_mask": jax.ShapeDtypeStruct((batch, length), jnp.bool_),
            "image_mask": jax.ShapeDtypeStruct((batch, length), jnp.bool_),
            "loss_mask": jax.ShapeDtypeStruct((batch, length), jnp.float32)}
    count = perf.count_flops(make_train_step(graphdef, vlm_answer_loss, tx), state, host)
    decoder, recompute = decoder_hand_flops(dcfg, batch, length, chunk, loss_rows=batch * (length - 1))
    projector = 2 * 2 * batch * t * proj_in * dcfg.hidden_size
    assert encoder.executed > 0
    assert count.model == pytest.approx(decoder + projector + encoder.executed, rel=0.01)
    assert count.executed - count.model == pytest.approx(recompute if remat else 0.0, rel=0.01, abs=1.0)
    assert (count.unbounded_loops, count.unresolved_remat) == (0, 0)


def test_greedy_decode_loop_trip_count():
    """The evaluation's while-loop decode: counted at max_new_tokens - 1 trips (the first token is the prefill's)."""
    from jaxpetct.eval.generate import generate

    cfg = cfglib.tiny(num_layers=2, vocab_size=500, scan_layers=True)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    ids = jax.ShapeDtypeStruct((3, 10), jnp.int32)
    counts = {n: perf.count_flops(lambda s, i, n=n: generate((graphdef, s), input_ids=i, max_new_tokens=n).tokens,
                                  state, ids) for n in (4, 7)}
    assert counts[4].unbounded_loops == counts[7].unbounded_loops == 0
    per_token = (counts[7].executed - counts[4].executed) / 3
    e, kv, d = cfg.hidden_size, cfg.num_kv_heads, cfg.head_dim
    weights = cfg.num_layers * (e * cfg.num_heads * d * 2 + 2 * e * kv * d + 3 * e * cfg.intermediate_size)
    head = e * cfg.vocab_size
    assert per_token > 2 * 3 * (weights + head)  # every trip runs the whole decoder (+ attention over the cache)
    assert per_token < 2 * 3 * (weights + head) * 1.5


# -- MFU and the device table ----------------------------------------------------------------------------------------


class FakeDevice:
    def __init__(self, kind):
        self.device_kind = kind


@pytest.mark.parametrize("kind,name", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100_pcie"),
                                       ("NVIDIA H200", "h200"), ("TPU v5 lite", "tpu_v5e"), ("TPU v5p", "tpu_v5p"),
                                       ("TPU v6 lite", "tpu_v6e"), ("cpu", None)])
def test_device_table(kind, name):
    spec = perf.spec_for_device(FakeDevice(kind))
    assert spec == (perf.device_spec(name) if name else None)
    assert perf.peak_flops_per_device(FakeDevice(kind)) == (spec.peak_bf16_flops if spec else None)


def test_device_figures_and_mfu():
    h100, h200, v5p = perf.device_spec("h100"), perf.device_spec("H200"), perf.device_spec("tpu-v5p")
    assert (h100.peak_bf16_flops, h100.hbm_bandwidth, h100.memory_bytes) == (989e12, 3.35e12, 80e9)
    assert (h200.hbm_bandwidth, h200.memory_bytes, v5p.hbm_bandwidth) == (4.8e12, 141e9, 2.765e12)
    with pytest.raises(KeyError):
        perf.device_spec("tpu_v99")
    assert perf.mfu(4e15, 2.0, num_devices=4, peak=1e15) == pytest.approx(0.5)
    assert (perf.mfu(1e15, 1.0) is None) == (perf.peak_flops_per_device() is None)  # blank where no peak
    assert perf.mfu(0.0, 1.0, peak=1e15) is None and perf.mfu(1e12, 0.0, peak=1e15) is None


def test_optimizer_update_adds_no_matmuls():
    params = {"w": jnp.ones((16, 16))}
    tx = optax.adamw(1e-3)
    state = tx.init(params)
    assert perf.count_flops(lambda p, s: tx.update(p, s, p), params, state).executed == 0.0


def test_train_logs_and_bench_train_report_the_hand_counted_flops(tmp_path):
    """What a user reads — metrics.jsonl's model_tflops_per_step from a real stage, bench_train's JSON row — is the
    hand count (decoder by shapes + projector + frozen encoder forward) for a scanned, remat, chunked-loss decoder."""
    import json
    import sys

    import numpy as np

    from jaxpetct.models.factory import build_vlm
    from jaxpetct.parallel.mesh import make_mesh
    from jaxpetct.train.loop import StageSpec, run_stage
    from jaxpetct.train.tasks import vlm_answer_loss
    from jaxpetct.train.writers import read_metrics

    batch, length = 2, 48
    dcfg = small_decoder(remat=True)
    dec = {k: getattr(dcfg, k) for k in ("num_layers", "hidden_size", "intermediate_size", "num_heads",
                                          "num_kv_heads", "head_dim", "vocab_size", "scan_layers", "remat")}
    model_cfg = {"encoder": {"preset": "tiny", "channels": 2}, "decoder": {"preset": "tiny", **dec}, "loss_chunk": 1024}
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    model = build_vlm(model_cfg, seed=0, mesh=mesh, with_lora=False)
    t, shape, proj_in = model.num_visual_tokens, model.encoder.cfg.input_shape, model.projector.cfg.in_features
    enc_graph, enc_state = nnx.split(model.encoder)
    encoder = perf.count_flops(lambda s, x: nnx.merge(enc_graph, s)(x), enc_state,
                               jax.ShapeDtypeStruct((batch, *shape), jnp.float32)).executed
    decoder, _ = decoder_hand_flops(dcfg, batch, length, 1024, loss_rows=batch * (length - 1))
    hand = decoder + 2 * 2 * batch * t * proj_in * dcfg.hidden_size + encoder

    rng = np.random.default_rng(0)
    image_mask = np.zeros((batch, length), bool)
    image_mask[:, 1:1 + t] = True
    host = {"images": rng.random((batch, *shape), dtype=np.float32),
            "input_ids": rng.integers(3, dcfg.vocab_size, (batch, length)).astype(np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
            "attention_mask": np.ones((batch, length), bool), "image_mask": image_mask,
            "loss_mask": np.ones((batch, length), np.float32)}
    spec = StageSpec("full", steps=2, peak_lr=1e-4, log_every=1, save_every=10, best_metric=None,
                     async_checkpoints=False)
    run_stage(model, vlm_answer_loss, spec, train_iter=iter([host, host]), mesh=mesh, workdir=tmp_path, progress=False)
    logged = [r["model_tflops_per_step"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(logged) == 2 and all(x * 1e12 == pytest.approx(hand, rel=0.05) for x in logged)

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_train

    row = bench_train.main(["--stage", "full", "--batch", "2", "--length", "64", "--steps", "1",
                            "--json", str(tmp_path / "bench.json")])
    bench_cfg = cfglib.tiny(scan_layers=True)
    bench_model = nnx.eval_shape(lambda: build_vlm(bench_train.model_config(bench_train.parse([])), seed=0,
                                                   with_lora=False))
    enc_graph, enc_state = nnx.split(bench_model.encoder)
    enc = perf.count_flops(lambda s, x: nnx.merge(enc_graph, s)(x), enc_state,
                           jax.ShapeDtypeStruct((2, *bench_model.encoder.cfg.input_shape), jnp.float32)).executed
    # the blocked loss runs the head on every next-token position (the answer mask only weighs them)
    dec_flops, _ = decoder_hand_flops(bench_cfg, 2, 64, 4096, loss_rows=2 * 63)
    bench_hand = dec_flops + 2 * 2 * 2 * bench_model.num_visual_tokens * bench_model.projector.cfg.in_features * \
        bench_cfg.hidden_size + enc
    assert row["model_tflops_per_step"] * 1e12 == pytest.approx(bench_hand, rel=0.05)
    assert json.loads((tmp_path / "bench.json").read_text())["model_tflops_per_step"] == row["model_tflops_per_step"]


def test_remat_policy_dots_keeps_the_weight_matmuls():
    """remat_policy="dots" recomputes only attention's batched products, "nothing" the whole layer; the model FLOPs
    (and the gradients) do not change."""
    batch, length, chunk = 2, 64, 1024
    counts = {}
    for policy in ("nothing", "dots"):
        cfg = small_decoder(remat=True).replace(remat_policy=policy)
        step, params, ids = decoder_step(cfg, batch, length, chunk)
        counts[policy] = perf.count_flops(step, params, ids)
    cfg = small_decoder(remat=True)
    model, recompute_all = decoder_hand_flops(cfg, batch, length, chunk, loss_rows=batch * (length - 1))
    attention = cfg.num_layers * 2 * 2 * batch * cfg.num_heads * length * length * cfg.head_dim
    assert counts["nothing"].model == counts["dots"].model == pytest.approx(model, rel=0.05)
    assert counts["nothing"].recomputed == pytest.approx(recompute_all, rel=0.05)
    assert counts["dots"].recomputed == pytest.approx(attention, rel=0.05)
    with pytest.raises(cfglib.ConfigError, match="remat_policy"):
        small_decoder(remat=True).replace(remat_policy="some")
