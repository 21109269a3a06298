"""`launch.py --mode plan`: the real programs compiled for a virtual mesh, with figures checked independently.

The plan runs as a subprocess (its device count must be set before JAX starts, as launch.py does), on a shrunk
default over 4 virtual devices (data 2 x fsdp 2). Its byte counts are checked against a hand computation from the
abstract shapes and the rules table, and against the concrete state that training's own `prepare_state` builds on
the same mesh; its FLOPs against `perf.count_flops` of the concrete step.
"""
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH = {"data": 2, "fsdp": 2, "tensor": 1}

TINY = '''
from jaxpetct.config import base_config

def get_config(arg=None):
    c = base_config()
    c.name = "plan_tiny"
    c.order = ("align", "lora")
    c.data.batch_size = 4
    c.data.max_length, c.data.buckets = 64, (32, 64)
    c.model.encoder = dict(preset="tiny", channels=2, patch_input_norm=False, lesion_channel=True)
    c.model.projector.pool = 4
    c.model.lora.rank = 4
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 1
    c.stages.align.grad_accum_steps = 2
    c.eval.batch_size, c.eval.max_new_tokens = 3, 8
    return c
'''


def load_config(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def plan(args, env, timeout=900):
    return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), "--mode=plan", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, subprocess_env):
    """(config file, plan.json of the align stage) of the shrunk default."""
    root = tmp_path_factory.mktemp("plan")
    config = root / "plan_tiny.py"
    config.write_text(TINY)
    done = plan([f"--config={config}", f"--workdir={root / 'run'}", "--stage=align"], subprocess_env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "| align |" in done.stdout and "| generate |" in done.stdout
    return config, json.loads((root / "run" / "plan.json").read_text())


def _hand_shard_bytes(model, mesh_shape) -> int:
    """Device 0's bytes of every variable: the rules table's spec for its logical axes, each dimension divided by
    the mesh axes it is split over (keys count their two uint32 words)."""
    from jaxpetct.parallel.rules import logical_axes_of, logical_to_spec

    total = 0
    for var in jax.tree.leaves(nnx.state(model), is_leaf=lambda x: isinstance(x, nnx.Variable)):
        value = var.get_value()
        axes = logical_axes_of(var)
        spec = tuple(logical_to_spec(axes, value.shape, mesh_shape)) if axes else ()
        shard = list(value.shape)
        for dim, entry in enumerate(spec):
            for axis in (entry,) if isinstance(entry, str) else (entry or ()):
                shard[dim] //= mesh_shape[axis]
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            total += math.prod(shard) * 8
        else:
            total += math.prod(shard) * np.dtype(value.dtype).itemsize
    return total


def test_plan_json_has_every_figure(tiny):
    _, result = tiny
    assert result["config"] == "plan_tiny" and result["devices"] == 4 and result["mesh"] == MESH
    assert set(result["target"]) == {"name", "memory_bytes", "peak_flops", "hbm_bandwidth", "margin"}
    assert result["target"]["name"] == "h100" and result["target"]["memory_bytes"] == 80e9
    keys = {"per_device_bytes", "params_bytes", "optimizer_bytes", "activation_bytes", "flops_per_step",
            "model_flops_per_step", "step_time_lower_bound_s", "fits", "global_batch", "tokens_per_step", "compile_s"}
    stage = result["stages"]["align"]
    assert keys <= set(stage) and keys <= set(result["generate"])
    assert list(result["stages"]) == ["align"]
    assert stage["global_batch"] == 4 and stage["micro_batch"] == 2 and stage["tokens_per_step"] == 4 * 64
    assert stage["fits"] and result["generate"]["fits"]
    assert 0 < stage["params_bytes"] < stage["per_device_bytes"] and stage["activation_bytes"] > 0
    assert result["generate"]["rows"] == 4  # eval.batch_size 3 rounded up to the 4 batch shards
    assert result["generate"]["prompt_length"] == 64 and result["generate"]["max_new_tokens"] == 8


def test_params_and_optimizer_bytes_are_the_shards_training_places(tiny):
    """Hand count from shapes + rules, and the concrete state of `prepare_state` on the same 4-device mesh."""
    from jaxpetct.jobs.training import build_stage_model, stage_spec
    from jaxpetct.parallel.mesh import make_mesh
    from jaxpetct.train.loop import prepare_state

    config, result = tiny
    cfg = load_config(config)
    stage = result["stages"]["align"]
    abstract_model = nnx.eval_shape(lambda: build_stage_model(cfg, "align"))
    hand = _hand_shard_bytes(abstract_model, MESH)
    unsharded = _hand_shard_bytes(abstract_model, {"data": 1, "fsdp": 1, "tensor": 1})
    assert stage["params_bytes"] == hand < unsharded  # fsdp 2 splits the embed-sharded weights in half

    mesh = make_mesh(MESH, jax.devices()[:4])
    model = build_stage_model(cfg, "align", mesh=mesh)
    _, state, _, _, _ = prepare_state(model, stage_spec(cfg, "align", 1), mesh)
    device0 = lambda tree: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree)  # noqa: E731
                               if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
    keys = lambda tree: 8 * sum(x.size for x in jax.tree.leaves(tree)  # noqa: E731
                                if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
    assert stage["params_bytes"] == device0((state.params, state.frozen)) + keys(state.frozen)
    assert stage["optimizer_bytes"] == device0(state.opt_state)


def test_flops_agree_with_perf_on_the_concrete_step(tiny):
    from jaxpetct.jobs.training import build_stage_model, stage_spec, stage_task
    from jaxpetct.parallel.mesh import make_mesh
    from jaxpetct.train import perf
    from jaxpetct.train.loop import prepare_state
    from jaxpetct.train.step import make_accumulate_step, make_apply_step

    config, result = tiny
    cfg = load_config(config)
    mesh = make_mesh(MESH, jax.devices()[:4])
    model = build_stage_model(cfg, "align", mesh=mesh)
    graphdef, state, tx, _, _ = prepare_state(model, stage_spec(cfg, "align", 1), mesh)
    c, d, h, w = model.encoder.cfg.input_shape
    batch = {"images": jnp.zeros((4, c, d, h, w)), "input_ids": jnp.ones((4, 64), jnp.int32),
             "positions": jnp.tile(jnp.arange(64, dtype=jnp.int32), (4, 1)),
             "attention_mask": jnp.ones((4, 64), bool), "image_mask": jnp.zeros((4, 64), bool),
             "loss_mask": jnp.ones((4, 64), jnp.float32)}
    # grad_accum_steps = 2: a step is two loader batches of 2 rows through accumulate, then the update
    accumulate, apply = make_accumulate_step(graphdef, stage_task(cfg, "align")[0]), make_apply_step(tx)
    micro = {k: v[:2] for k, v in batch.items()}
    with jax.set_mesh(mesh):
        one = perf.count_flops(lambda s, b: accumulate(s, None, b), state, micro)
        update = perf.count_flops(apply, state, jax.eval_shape(lambda s, b: accumulate(s, None, b), state, micro))
    stage = result["stages"]["align"]
    assert one.executed > 0 and stage["grad_accum_steps"] == 2 and stage["micro_batch"] == 2
    assert stage["flops_per_step"] == pytest.approx(2 * one.executed + update.executed, rel=1e-9)
    assert stage["model_flops_per_step"] == pytest.approx(2 * one.model + update.model, rel=1e-9)
    assert set(stage["programs"]) == {"first", "accumulate", "apply"}
    bound = stage["flops_per_step"] / 4 / result["target"]["peak_flops"]
    assert stage["step_time_lower_bound_s"] >= bound > 0


def test_a_tiny_target_memory_does_not_fit(tiny, subprocess_env, tmp_path):
    config, result = tiny
    done = plan([f"--config={config}", f"--workdir={tmp_path}", "--stage=align", "--config.plan.generate=False",
                 "--config.plan.target_memory_gb=0.001"], subprocess_env)
    assert done.returncode == 0, done.stderr[-4000:]
    small = json.loads((tmp_path / "plan.json").read_text())
    assert small["target"]["memory_bytes"] == 1_000_000 and small["generate"] is None
    assert small["stages"]["align"]["fits"] is False and "| NO |" in done.stdout
    assert small["stages"]["align"]["per_device_bytes"] == result["stages"]["align"]["per_device_bytes"]


@pytest.mark.parametrize("override, message", [
    ("--config.plan.devices=2 --config.plan.target=a200", "plan.target='a200' is not a known device"),
    ("--config.mesh.data=-1", "set --config.plan.devices"),
])
def test_bad_plan_settings_fail_in_one_line(subprocess_env, tmp_path, override, message):
    done = plan([f"--workdir={tmp_path}", *override.split()], subprocess_env, timeout=300)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in done.stderr
    assert not (tmp_path / "plan.json").exists()


SHIPPED = sorted(p for d in ("paper", "pods") for p in (pathlib.Path(REPO) / "configs" / d).glob("*.py"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_configs_plan_the_papers_batches_on_a_known_target(path):
    """No compile: every shipped config names a known target and a device count its mesh resolves over, and its
    align / lora steps are the paper's global batches, split into micro-batches every batch shard gets rows of."""
    from jaxpetct.jobs import plan as plan_job
    from jaxpetct.jobs.training import stage_batch_size
    from jaxpetct.parallel.mesh import MeshConfig
    from jaxpetct.train import perf

    cfg = load_config(path)
    assert perf.device_spec(cfg.plan.target).memory_bytes > 0
    data, fsdp, _ = MeshConfig.from_mapping(cfg.mesh.to_dict()).resolve(plan_job.plan_devices(cfg))
    for name, paper_batch in (("align", 256), ("lora", 128)):
        if name in cfg.order:
            global_batch = stage_batch_size(cfg, name) * int(cfg.plan.processes)
            micro, rest = divmod(global_batch, int(cfg.stages[name].grad_accum_steps))
            assert global_batch == paper_batch and rest == 0 and micro % (data * fsdp) == 0, (name, global_batch)


@pytest.mark.slow
def test_the_8_gpu_pod_config_fits_its_h100s(subprocess_env, tmp_path):
    done = plan([f"--config={REPO}/configs/pods/gpu_1x8_h100.py", f"--workdir={tmp_path}"], subprocess_env,
                timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "plan.json").read_text())
    assert result["devices"] == 8 and result["target"]["name"] == "h100"
    for name, global_batch in (("align", 256), ("lora", 128)):
        stage = result["stages"][name]
        assert stage["global_batch"] == global_batch and stage["tokens_per_step"] == global_batch * 2048
        assert stage["per_device_bytes"] > 1e9 and stage["fits"], (name, stage)
    assert result["generate"]["per_device_bytes"] > 1e9
