"""RoBERTa text encoder: parity with transformers.RobertaModel through our safetensors loader (float32)."""
import json

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np
import pytest

from jaxpetct.models.safetensors_io import CheckpointError
from jaxpetct.models.text_encoder import RobertaConfig, RobertaEncoder, load_roberta, roberta_position_ids

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PAD = 1


@nnx.jit
def _forward(model, ids, mask=None):
    return model(ids, mask)


def _hf_model(tmp_path, **overrides):
    torch.manual_seed(0)
    kwargs = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=40, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=PAD,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kwargs.update(overrides)
    model = transformers.RobertaModel(transformers.RobertaConfig(**kwargs)).eval()
    with torch.no_grad():  # HF zero-inits biases and unit-inits norms: randomise them so they are really checked
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm.weight" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 97, size=(3, 12)).astype(np.int64)
    ids[:, 0] = 0  # <s>
    ids[1, 8:] = PAD  # right padding
    ids[2, :5] = PAD  # left padding
    ids[2, 5] = 0
    mask = (ids != PAD).astype(np.int64)
    return ids, mask


def test_roberta_matches_transformers_including_padded_rows(tmp_path):
    hf = _hf_model(tmp_path)
    ids, mask = _batch()
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    ours = load_roberta(tmp_path)
    hidden, pooled = _forward(ours, jnp.asarray(ids, jnp.int32), jnp.asarray(mask.astype(bool)))
    ref_hidden = ref.last_hidden_state.numpy()
    err = np.abs(np.asarray(hidden) - ref_hidden).max()  # every position, pads included
    print(f"RobertaModel parity: max |delta last_hidden_state| = {err:.2e}")
    assert err <= 1e-4, err
    assert np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max() <= 1e-4
    # and the padded rows were really different inputs (the check is not vacuous)
    assert np.abs(ref_hidden[1, :8] - ref_hidden[0, :8]).max() > 1e-2


def test_roberta_padding_does_not_change_real_tokens(tmp_path):
    _hf_model(tmp_path)
    model = load_roberta(tmp_path, add_pooling_layer=False)
    ids = jnp.asarray([[0, 5, 6, 7, 2]], jnp.int32)
    padded = jnp.asarray([[0, 5, 6, 7, 2, PAD, PAD]], jnp.int32)
    h1, pooled = _forward(model, ids)
    h2, _ = _forward(model, padded)
    assert pooled is None
    np.testing.assert_allclose(np.asarray(h1), np.asarray(h2[:, :5]), atol=1e-5)


def test_position_ids_follow_fairseq_offset():
    ids = jnp.asarray([[0, 9, 9, 1, 1], [1, 1, 0, 9, 2]])
    np.testing.assert_array_equal(np.asarray(roberta_position_ids(ids, 1)), [[2, 3, 4, 1, 1], [1, 1, 2, 3, 4]])


def test_loader_reads_prefixed_masked_lm_checkpoints_and_rejects_bad_dirs(tmp_path):
    torch.manual_seed(1)
    cfg = transformers.RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=20, pad_token_id=PAD)
    mlm = transformers.RobertaForMaskedLM(cfg).eval()  # stored as roberta.* + lm_head.*, no pooler (PhoBERT style)
    mlm.save_pretrained(tmp_path / "mlm", safe_serialization=True)
    ids = torch.tensor([[0, 4, 5, 6, 2]])
    with torch.no_grad():
        ref = mlm.roberta(input_ids=ids).last_hidden_state.numpy()
    with pytest.raises(CheckpointError, match="add_pooling_layer=False"):
        load_roberta(tmp_path / "mlm")
    hidden, _ = _forward(load_roberta(tmp_path / "mlm", add_pooling_layer=False), jnp.asarray(ids.numpy(), jnp.int32))
    assert np.abs(np.asarray(hidden) - ref).max() <= 1e-4

    with pytest.raises(CheckpointError, match="config.json"):
        load_roberta(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"vocab_size": 10}))
    with pytest.raises(CheckpointError, match="not a usable RoBERTa config"):
        load_roberta(bad)


def test_phobert_base_config_shapes():
    cfg = RobertaConfig.phobert_base()
    model = nnx.eval_shape(lambda: RobertaEncoder(cfg, rngs=nnx.Rngs(0)))
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert model.word_embeddings.embedding.shape == (64001, 768)
    assert model.position_embeddings.embedding.shape == (258, 768)
    assert len(model.layers) == 12
    assert 134e6 < n < 136e6  # PhoBERT-base: 135 M parameters


def test_sharded_checkpoint_loads_onto_a_mesh(tmp_path):
    """A multi-file (index) checkpoint, placed on a (data, fsdp, tensor) = (2, 2, 2) mesh: really split, same output."""
    from jaxpetct.parallel.mesh import MeshConfig, make_mesh

    hf = _hf_model(tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = load_roberta(tmp_path / "sharded", mesh=mesh)
    ffn_in = model.layers[0].ffn_in.kernel[...]  # ('embed', 'mlp') -> (fsdp, tensor)
    assert ffn_in.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert ffn_in.addressable_shards[0].data.shape == (16, 32)
    ids, mask = _batch()
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    hidden, _ = _forward(model, jnp.asarray(ids, jnp.int32), jnp.asarray(mask.astype(bool)))
    assert np.abs(np.asarray(hidden) - ref).max() <= 1e-4
