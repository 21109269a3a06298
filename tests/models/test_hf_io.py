"""HF safetensors in and out: sharded indexes, bf16 checkpoints, config round trips, export loaded by transformers."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxpetct.models import decoder_config as cfglib
from jaxpetct.models.decoder_config import ConfigError, DecoderConfig
from jaxpetct.models.hf_io import export_decoder, load_decoder
from jaxpetct.models.safetensors_io import CheckpointError, SafetensorsCheckpoint
from tests.models.hf_tiny import forward, hf_logits, make_hf, padded_batch, save_hf


def _ours(model, ids, mask, positions):
    return forward(model, ids, mask, positions)


def _tokenizer_dir(path):
    """A tiny word-level tokenizer saved the way a hub repo ships one."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 256)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>")
    fast.save_pretrained(path)
    return path


@pytest.mark.parametrize("variant,scan", [("llama3_rope", False), ("mistral_window", True), ("qwen2_tied", False)])
def test_export_loads_in_transformers_with_equal_logits(tmp_path, variant, scan):
    src = tmp_path / "src"
    save_hf(variant, src, seed=2)
    model = load_decoder(src, scan_layers=scan)
    tok_dir = _tokenizer_dir(tmp_path / "tok")
    out = export_decoder(model, tmp_path / "export", tokenizer_dir=tok_dir)
    assert (out / "config.json").is_file() and (out / "generation_config.json").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert not list(tmp_path.glob(".export*")), "temporary export directory left behind"

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == {"llama3_rope": "LlamaForCausalLM", "mistral_window": "MistralForCausalLM",
                                       "qwen2_tied": "Qwen2ForCausalLM"}[variant]
    ids, mask, positions = padded_batch()
    err = np.abs(hf_logits(reloaded, ids, mask, positions) - _ours(model, ids, mask, positions))[mask].max()
    assert err <= 1e-4, err
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (tok_dir / name).read_bytes()
    assert transformers.PreTrainedTokenizerFast.from_pretrained(out)("w5 w7")["input_ids"] == [5, 7]
    assert DecoderConfig.from_hf(json.loads((out / "config.json").read_text()), scan_layers=scan) == model.cfg


def test_sharded_index_and_bf16_checkpoints_load(tmp_path):
    hf, _ = make_hf("llama", seed=3)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    ids, mask, positions = padded_batch()
    ref = hf_logits(hf, ids, mask, positions)
    for scan in (False, True):
        got = _ours(load_decoder(tmp_path / "sharded", scan_layers=scan), ids, mask, positions)
        assert np.abs(got - ref)[mask].max() <= 1e-4

    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = load_decoder(tmp_path / "bf16", param_dtype="float32")
    # The reference widens the same bf16 tensors to float32 (a `.to()` round trip would also round RoPE buffers).
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).eval()
    ref32 = hf_logits(ref_model, ids, mask, positions)
    assert np.abs(_ours(model, ids, mask, positions) - ref32)[mask].max() <= 1e-4
    assert model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.float32


def test_large_export_is_sharded_with_an_index(tmp_path):
    save_hf("qwen2_tied", tmp_path / "src", seed=4)
    model = load_decoder(tmp_path / "src")
    out = export_decoder(model, tmp_path / "export", max_shard_bytes=60_000, dtype="bfloat16")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    ckpt = SafetensorsCheckpoint(out)
    assert "lm_head.weight" not in ckpt  # tied
    assert ckpt.read("model.layers.1.self_attn.q_proj.bias").dtype == jnp.bfloat16
    reloaded = load_decoder(out, param_dtype="float32")
    ids, mask, positions = padded_batch()
    a, b = _ours(model, ids, mask, positions), _ours(reloaded, ids, mask, positions)
    assert np.abs(a - b)[mask].max() < 0.5  # bf16 rounding of the weights only
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_bad_checkpoints_raise_typed_errors_naming_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_decoder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_decoder(tmp_path / "empty")
    save_hf("llama", tmp_path / "ok", seed=5)
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type 'gpt2'"):
        load_decoder(tmp_path / "gpt")
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))
    (tmp_path / "big" / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"mlp.*shape \(128, 64\)|shape"):
        load_decoder(tmp_path / "big")
    (tmp_path / "ok" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing"):
        load_decoder(tmp_path / "ok")


def test_configs_round_trip_through_transformers_classes():
    for name in cfglib.PRESETS:
        cfg = cfglib.preset(name)
        hf_dict = cfg.to_hf()
        klass = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                 "qwen2": transformers.Qwen2Config}[cfg.family]
        hf_cfg = klass.from_dict(hf_dict)
        assert DecoderConfig.from_hf(hf_cfg.to_dict()) == cfg, name
        assert hash(cfg) == hash(DecoderConfig.from_hf(hf_dict))
    assert abs(cfglib.qwen2_0_5b().num_params() - 494_032_768) < 1e6  # Qwen2.5-0.5B's published size
    assert abs(cfglib.llama2_7b().num_params() - 6_738_415_616) < 1e6
    legacy = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
              "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 5e5,
              "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192}}
    cfg = DecoderConfig.from_hf(legacy)
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling["rope_type"] == "llama3" and cfg.num_kv_heads == 2
    for bad, message in ((dict(hidden_act="gelu"), "hidden_act"), (dict(mlp_bias=True), "mlp_bias"),
                         (dict(rope_scaling={"type": "yarn", "factor": 2.0}), "yarn")):
        with pytest.raises(ConfigError, match=message):
            DecoderConfig.from_hf({**legacy, **bad})
    mixed = {**legacy, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8,
             "max_window_layers": 1, "num_hidden_layers": 2}
    with pytest.raises(ConfigError, match="mix of sliding"):
        DecoderConfig.from_hf(mixed)
