"""The Cosmos tokenizer's checkpoints: diffusers folders in and out (single file, sharded index, a pipeline's vae/
subfolder, bfloat16), NVIDIA's TorchScript parameter names, and parameters named for the sharding rules table."""
import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

from jaxpetct.models import cosmos
from jaxpetct.parallel.mesh import make_mesh
from jaxpetct.parallel.rules import LOGICAL_RULES, logical_axes_of, place_state
from tests.models.cosmos_tiny import params, random_vae, saved_tiny, torch_encode, video

diffusers = pytest.importorskip("diffusers", reason="diffusers (the test extra) is not installed: no reference")
torch = pytest.importorskip("torch", reason="torch (the test extra) is not installed: no reference")


@pytest.fixture(scope="module")
def haar(tmp_path_factory):
    return saved_tiny(tmp_path_factory.mktemp("cosmos") / "tiny")


def test_save_diffusers_round_trips_through_diffusers_and_back(haar, tmp_path):
    vae, ours, _ = haar
    out = cosmos.save_diffusers(ours, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    reloaded = diffusers.AutoencoderKLCosmos.from_pretrained(out).eval()
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(reloaded.config) == public(vae.config)
    ref_state = vae.state_dict()
    for name, tensor in reloaded.state_dict().items():  # ours -> diffusers: every tensor bit for bit
        assert torch.equal(tensor, ref_state[name]), name
    x = video((1, 9, 16, 16, 3), seed=11)
    np.testing.assert_array_equal(torch_encode(reloaded, x), torch_encode(vae, x))
    again = cosmos.load_diffusers(out)  # ours -> ours: bitwise
    assert again.cfg == ours.cfg
    mine, theirs = params(ours), params(again)
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)


def test_pipeline_vae_subfolder_and_sharded_indexes_both_ways(haar, tmp_path):
    vae, ours, _ = haar
    vae.save_pretrained(tmp_path / "pipe" / "vae", max_shard_size="40KB")
    assert (tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    loaded = cosmos.load_diffusers(tmp_path / "pipe")  # a pipeline folder: the tokenizer lives in vae/
    mine, theirs = params(ours), params(loaded)
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
    out = cosmos.save_diffusers(ours, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((out / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all(re.fullmatch(r"diffusion_pytorch_model-\d{5}-of-\d{5}\.safetensors", s)
                                   for s in shards)
    reloaded = diffusers.AutoencoderKLCosmos.from_pretrained(out)
    assert all(torch.equal(t, vae.state_dict()[n]) for n, t in reloaded.state_dict().items())
    with pytest.raises(cosmos.io.CheckpointError, match="no config.json"):
        cosmos.load_diffusers(tmp_path / "pipe" / "nothing")


def _original_name(name: str, up_levels: int) -> str:
    """diffusers name -> NVIDIA's cosmos_tokenizer module path (written from its EncoderFactorized /
    DecoderFactorized / CausalConv3d structure), the inverse the converter must undo."""
    name = re.sub(r"^encoder\.down_blocks\.(\d+)\.", r"encoder.down.\1.", name)
    name = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{up_levels - 1 - int(m[1])}.", name)
    for old, new in ((".mid_block.resnets.0.", ".mid.block_1."), (".mid_block.resnets.1.", ".mid.block_2."),
                     (".mid_block.attentions.0.", ".mid.attn_1.0."), (".mid_block.temp_attentions.0.", ".mid.attn_1.1."),
                     ("downsamplers.0.", "downsample."), ("upsamplers.0.", "upsample."),
                     (".to_out.0.", ".proj_out.conv3d."), (".conv_s.", ".0.conv3d."), (".conv_t.", ".1.conv3d."),
                     ("conv_shortcut.", "nin_shortcut.conv3d.")):
        name = name.replace(old, new)
    name = re.sub(r"\.resnets\.(\d+)\.", r".block.\1.", name)
    name = re.sub(r"\.attentions\.(\d+)\.", r".attn.\1.0.", name)
    name = re.sub(r"\.temp_attentions\.(\d+)\.", r".attn.\1.1.", name)
    name = re.sub(r"\.to_([qkv])\.", r".\1.conv3d.", name)
    return re.sub(r"(^|\.)(conv[123]|quant_conv|post_quant_conv)\.(weight|bias)$", r"\1\2.conv3d.\3", name)


CV8_EXAMPLES = [  # (original TorchScript name, diffusers name) for the real 3-level CV8x8x8 layout
    ("encoder.conv_in.0.conv3d.weight", "encoder.conv_in.conv_s.weight"),
    ("encoder.down.0.block.0.conv1.1.conv3d.bias", "encoder.down_blocks.0.resnets.0.conv1.conv_t.bias"),
    ("encoder.down.0.block.0.nin_shortcut.conv3d.weight", "encoder.down_blocks.0.resnets.0.conv_shortcut.weight"),
    ("encoder.down.1.block.1.norm2.norm.weight", "encoder.down_blocks.1.resnets.1.norm2.norm.weight"),
    ("encoder.down.0.downsample.conv2.conv3d.weight", "encoder.down_blocks.0.downsamplers.0.conv2.weight"),
    ("encoder.mid.attn_1.0.proj_out.conv3d.weight", "encoder.mid_block.attentions.0.to_out.0.weight"),
    ("encoder.mid.attn_1.1.k.conv3d.bias", "encoder.mid_block.temp_attentions.0.to_k.bias"),
    ("encoder.mid.block_2.conv2.0.conv3d.weight", "encoder.mid_block.resnets.1.conv2.conv_s.weight"),
    ("decoder.up.2.block.2.conv1.0.conv3d.weight", "decoder.up_blocks.0.resnets.2.conv1.conv_s.weight"),
    ("decoder.up.1.upsample.conv3.conv3d.bias", "decoder.up_blocks.1.upsamplers.0.conv3.bias"),
    ("decoder.norm_out.norm.bias", "decoder.norm_out.norm.bias"),
    ("quant_conv.conv3d.weight", "quant_conv.weight"), ("post_quant_conv.conv3d.bias", "post_quant_conv.bias"),
]


def test_torchscript_names_convert_to_diffusers():
    from diffusers import AutoencoderKLCosmos

    for original, expected in CV8_EXAMPLES:
        assert cosmos.torchscript.convert_key(original, up_levels=3) == expected
    with torch.device("meta"):  # the real CV8x8x8 key set, without allocating its weights
        real = AutoencoderKLCosmos().state_dict()
    originals = {_original_name(k, 3): k for k in real}
    assert {n for n, _ in CV8_EXAMPLES} <= originals.keys()
    buffers = {"encoder.patcher3d.wavelets": 0, "encoder.patcher3d._arange": 0, "decoder.unpatcher3d.wavelets": 0}
    assert cosmos.convert_torchscript_state_dict({**dict.fromkeys(originals), **buffers}).keys() == real.keys()

    cfg = cosmos.CosmosConfig.tiny(attention_resolutions=(16,))  # attention inside blocks too (attn.{j}.0 / .1)
    state = random_vae(cfg, seed=2).state_dict()
    original = {_original_name(k, len(cfg.decoder_plan())): v for k, v in state.items()}
    assert "encoder.down.0.attn.0.1.q.conv3d.weight" in original and "decoder.up.0.attn.1.0.v.conv3d.bias" in original
    converted = cosmos.convert_torchscript_state_dict({**original, "encoder.patcher3d.wavelets": torch.ones(2)})
    assert converted.keys() == state.keys() and all(converted[k] is state[k] for k in state)
    random_vae(cfg, seed=9).load_state_dict(converted, strict=True)
    ours = cosmos.from_state_dict(converted, cfg)
    for path, value in params(ours).items():
        name, kind = cosmos.diffusers_name(path)
        torch_layout = np.transpose(value, (4, 3, 0, 1, 2)) if kind == "conv" else value
        np.testing.assert_array_equal(torch_layout, state[name].numpy())


def test_parameters_are_named_for_the_rules_table_and_place_on_a_mesh(haar):
    _, ours, _ = haar
    known = {name for name, _ in LOGICAL_RULES}
    state = nnx.state(ours, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        axes = logical_axes_of(var)
        assert axes is not None and len(axes) == var.get_value().ndim and set(axes) <= known, path
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    placed = place_state(state, mesh)
    kernel = placed["encoder"]["conv_in"]["conv_s"]["kernel"]
    assert kernel.get_value().sharding.spec[-1] == "fsdp"  # output channels (8) split over fsdp
