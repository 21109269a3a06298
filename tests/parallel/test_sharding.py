"""Sharding over 8 virtual CPU devices: the (data, fsdp, tensor) = (2, 2, 2) mesh, the logical rules, and a
sharded decoder that computes what the single-device one computes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxpetct.eval.generate import generate
from jaxpetct.models.decoder_config import tiny
from jaxpetct.models.decoder import Decoder
from jaxpetct.models.hf_io import load_decoder
from jaxpetct.parallel.mesh import MeshConfig, MeshError, make_mesh
from jaxpetct.parallel.rules import ShardingRuleError, init_sharded, logical_to_spec
from tests.models.hf_tiny import forward, make_hf, padded_batch, save_hf

MESH_SHAPE = {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "tests/conftest.py should force 8 virtual CPU devices"
    return make_mesh(MESH_SHAPE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sharded_src")
    save_hf("mistral_window", directory, seed=7)
    return directory


@pytest.fixture(scope="module")
def checkpoint_default_init(tmp_path_factory):
    """transformers' default initializer_range (0.02): logits of O(1), the scale the 1e-5 bound is meant for.

    Sharding changes the order of float32 reductions, so the absolute error grows with the logits' magnitude.
    """
    directory = tmp_path_factory.mktemp("sharded_src_default_init")
    make_hf("mistral_window", seed=7, initializer_range=0.02)[0].save_pretrained(directory)
    return directory


def test_mesh_axes_and_rest_axis(mesh):
    assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.axis_sizes == (2, 2, 2)
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert make_mesh({"data": -1, "tensor": 2}).axis_sizes == (4, 1, 2)
    assert make_mesh().axis_sizes == (8, 1, 1)
    assert make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]).size == 1
    for bad in ({"data": 3}, {"data": -1, "fsdp": -1}, {"data": 2, "fsdp": 2, "tensor": 1}, {"pipeline": 2}):
        with pytest.raises(MeshError):
            make_mesh(bad)


def test_logical_rules_respect_divisibility_and_single_use():
    assert logical_to_spec(("embed", "mlp"), (64, 128), MESH_SHAPE) == P("fsdp", "tensor")
    assert logical_to_spec(("batch", "length", "act_embed"), (4, 9, 64), MESH_SHAPE) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(("batch", "length"), (2, 9), MESH_SHAPE) == P("data", None)  # 2 rows: data only
    assert logical_to_spec(("embed", "q_heads", "kv"), (896, 14, 64), {"data": 1, "fsdp": 2, "tensor": 4}) == P(
        "fsdp", None, None)  # Qwen2's 14 heads do not split 4 ways: replicated, not padded
    assert logical_to_spec(("embed", "embed"), (8, 8), MESH_SHAPE) == P("fsdp", None)
    with pytest.raises(ShardingRuleError, match="emdeb"):
        logical_to_spec(("emdeb",), (8,), MESH_SHAPE)


def _shard_shape(x):
    return x.addressable_shards[0].data.shape


@pytest.mark.parametrize("scan", [False, True])
def test_sharded_forward_equals_single_device_and_params_are_split(mesh, checkpoint_default_init, scan):
    single = load_decoder(checkpoint_default_init, scan_layers=scan)
    sharded = load_decoder(checkpoint_default_init, scan_layers=scan, mesh=mesh)
    lead = (None,) if scan else ()
    layer = sharded.layers if scan else sharded.layers[0]
    expect = {
        "gate": (layer.mlp.gate_proj.kernel[...], P(*lead, "fsdp", "tensor"), (32, 64)),
        "down": (layer.mlp.down_proj.kernel[...], P(*lead, "tensor", "fsdp"), (64, 32)),
        "q": (layer.self_attn.q_proj.kernel[...], P(*lead, "fsdp", "tensor", None), (32, 2, 16)),
        "k": (layer.self_attn.k_proj.kernel[...], P(*lead, "fsdp", "tensor", None), (32, 1, 16)),
        "o": (layer.self_attn.o_proj.kernel[...], P(*lead, "tensor", None, "fsdp"), (2, 16, 32)),
        "embed": (sharded.embed_tokens.embedding[...], P("tensor", "fsdp"), (128, 32)),
        "lm_head": (sharded.lm_head[...], P("fsdp", "tensor"), (32, 128)),
    }
    for name, (x, spec, shard) in expect.items():
        assert x.sharding.spec == spec, name
        lead_shape = (2,) if scan and name not in ("embed", "lm_head") else ()
        assert _shard_shape(x) == lead_shape + shard, name
        assert len({s.device for s in x.addressable_shards}) == 8
    assert sharded.norm.scale[...].sharding.is_fully_replicated

    ids, mask, positions = padded_batch(batch=4, length=16)
    ref = forward(single, ids, mask, positions)
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
    inputs = [jax.device_put(jnp.asarray(a), batch_sharding) for a in (ids, positions, mask)]

    with jax.set_mesh(mesh):
        out = nnx.jit(lambda m, i, p, k: m(i, positions=p, attention_mask=k)[0])(sharded, *inputs)
    assert out.sharding.spec[0] == ("data", "fsdp") and _shard_shape(out) == (1, 16, 128)
    err = np.abs(np.asarray(out) - ref).max()
    print(f"sharded vs single-device max |dlogits| = {err:.2e}")
    assert err <= 1e-5


def test_sharded_generation_and_init(mesh, checkpoint):
    ids, mask, _ = padded_batch(batch=4, length=8, seed=2)
    ref = generate(load_decoder(checkpoint), input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                   max_new_tokens=10)
    sharded = load_decoder(checkpoint, mesh=mesh, scan_layers=True)
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp"), None))
    with jax.set_mesh(mesh):
        out = generate(sharded, input_ids=jax.device_put(jnp.asarray(ids), batch_sharding),
                       attention_mask=jax.device_put(jnp.asarray(mask), batch_sharding), max_new_tokens=10)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))

    cfg = tiny(vocab_size=512, scan_layers=True)
    model = init_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
    kernel = model.layers.mlp.up_proj.kernel[...]
    assert kernel.sharding.spec == P(None, "fsdp", "tensor") and _shard_shape(kernel) == (2, 32, 96)
    eager = Decoder(cfg, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(kernel), np.asarray(eager.layers.mlp.up_proj.kernel[...]), rtol=1e-6)
