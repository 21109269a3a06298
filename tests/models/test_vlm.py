"""VLM: visual tokens land at image_mask positions, answer-only loss vs torch, prefix-LM visibility, batch contract."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpetct.models import decoder_config as dcfg
from jaxpetct.models.ctvit import CTViT, CTViTConfig
from jaxpetct.models.decoder import Decoder
from jaxpetct.models.projector import Projector, ProjectorConfig
from jaxpetct.models.vlm import (VLM, BatchContractError, answer_loss, prefix_mask_from_loss_mask,
                                 splice_visual_tokens, validate_batch)

torch = pytest.importorskip("torch")

L = 12
IMG = 7  # placeholder id; never looked up as text


def _vlm(prefix_lm=False, freeze_encoder=True, kind="linear"):
    enc_cfg = CTViTConfig.tiny()
    dec_cfg = dcfg.tiny(vocab_size=64, num_layers=2)
    encoder = CTViT(enc_cfg, rngs=nnx.Rngs(0))
    projector = Projector(ProjectorConfig.for_encoder(enc_cfg, dec_cfg.hidden_size, kind=kind), rngs=nnx.Rngs(1))
    return VLM(encoder, projector, Decoder(dec_cfg, rngs=nnx.Rngs(2)), prefix_lm=prefix_lm,
               freeze_encoder=freeze_encoder)


def _batch(enc_cfg, seed=0):
    """Row 0: no padding, image at 1..4; row 1: 3 left pads, image at 4..7. T = 4 for the tiny encoder."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, 64, size=(2, L)).astype(np.int32)
    attention = np.ones((2, L), bool)
    attention[1, :3] = False
    ids[1, :3] = 0
    image = np.zeros((2, L), bool)
    image[0, 1:5] = True
    image[1, 4:8] = True
    ids[image] = IMG
    loss = np.zeros((2, L), np.float32)
    loss[0, 8:] = 1.0
    loss[1, 10:] = 1.0
    positions = np.maximum(np.cumsum(attention, axis=1) - 1, 0).astype(np.int32)
    images = rng.normal(size=(2, *enc_cfg.input_shape)).astype(np.float32)
    return dict(images=images, input_ids=ids, positions=positions, attention_mask=attention, image_mask=image,
                loss_mask=loss)


@nnx.jit
def _logits(model, batch):
    return model(batch["images"], batch["input_ids"], positions=batch["positions"],
                 attention_mask=batch["attention_mask"], image_mask=batch["image_mask"], loss_mask=batch["loss_mask"])


def test_visual_tokens_land_exactly_at_image_mask_positions():
    model = _vlm()
    batch = _batch(model.encoder.cfg)
    validate_batch(batch, model.num_visual_tokens)
    embeds, visual = nnx.jit(lambda m, b: (m.prompt_embeds(b["images"], b["input_ids"], b["image_mask"]),
                                           m.visual_tokens(b["images"])))(model, batch)
    embeds, visual = np.asarray(embeds), np.asarray(visual)
    table = np.asarray(model.decoder.embed_tokens.embedding[...])
    assert visual.shape == (2, 4, 64)
    for b in range(2):
        k = 0
        for i in range(L):
            if batch["image_mask"][b, i]:
                np.testing.assert_array_equal(embeds[b, i], visual[b, k])
                k += 1
            else:
                np.testing.assert_array_equal(embeds[b, i], table[batch["input_ids"][b, i]])
        assert k == 4
    # the decoder really runs on those embeddings
    manual = np.where(batch["image_mask"][..., None], 0, table[batch["input_ids"]])
    for b in range(2):
        manual[b, batch["image_mask"][b]] = visual[b]
    ref, _ = nnx.jit(lambda d, e, p, a: d(inputs_embeds=e, positions=p, attention_mask=a))(
        model.decoder, manual, batch["positions"], batch["attention_mask"])
    np.testing.assert_allclose(np.asarray(_logits(model, batch)), np.asarray(ref), atol=1e-5)


def test_splice_is_order_preserving_and_pure():
    embeds = jnp.zeros((1, 6, 2))
    visual = jnp.asarray([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    mask = jnp.asarray([[False, True, False, True, True, False]])
    out = jax.jit(splice_visual_tokens)(embeds, visual, mask)
    np.testing.assert_array_equal(np.asarray(out[0, :, 0]), [0, 1, 0, 2, 3, 0])


def test_answer_loss_matches_torch_cross_entropy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 6, 11)).astype(np.float32)
    ids = rng.integers(0, 11, size=(2, 6))
    mask = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 0, 0, 1, 0]], np.float32)
    loss, count = answer_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask))
    labels = torch.from_numpy(np.where(mask[:, 1:] > 0, ids[:, 1:], -100))
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits[:, :-1]).reshape(-1, 11), labels.reshape(-1),
                                            ignore_index=-100)
    assert float(count) == 5.0
    assert abs(float(loss) - float(ref)) < 1e-5
    # a target at position 0 has no predictor and is ignored
    mask0 = mask.copy()
    mask0[0, 0] = 1.0
    loss0, count0 = answer_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask0))
    assert float(count0) == 5.0 and abs(float(loss0) - float(loss)) < 1e-7
    # gradient accumulation: summed (mean * count) over halves / total count == loss of the whole batch
    parts = [answer_loss(jnp.asarray(logits[i:i + 1]), jnp.asarray(ids[i:i + 1]), jnp.asarray(mask[i:i + 1]))
             for i in range(2)]
    accumulated = sum(float(m) * float(c) for m, c in parts) / sum(float(c) for _, c in parts)
    assert abs(accumulated - float(loss)) < 1e-5


def test_prefix_lm_visibility():
    causal, prefix = _vlm(prefix_lm=False), _vlm(prefix_lm=True)
    batch = _batch(causal.encoder.cfg)
    prefix_mask = np.asarray(prefix_mask_from_loss_mask(jnp.asarray(batch["attention_mask"]),
                                                        jnp.asarray(batch["loss_mask"])))
    np.testing.assert_array_equal(prefix_mask[0], np.arange(L) < 8)
    np.testing.assert_array_equal(prefix_mask[1], (np.arange(L) >= 3) & (np.arange(L) < 10))

    def changed(model, position):
        other = {k: v.copy() for k, v in batch.items()}
        other["input_ids"][:, position] = 11 + (other["input_ids"][:, position] - 9) % 50
        return np.abs(np.asarray(_logits(model, batch)) - np.asarray(_logits(model, other))).max(axis=-1)

    # a late prompt token (row 0 position 6, inside the prefix) reaches earlier prefix positions only with prefix-LM
    d_causal, d_prefix = changed(causal, 6), changed(prefix, 6)
    assert d_causal[0, :6].max() == 0.0
    assert d_prefix[0, :6].min() > 1e-6
    # an answer token (row 0 position 9) is never visible to the prefix or to earlier answer tokens
    d_prefix = changed(prefix, 9)
    assert d_prefix[0, :9].max() == 0.0 and d_prefix[0, 9:].min() > 1e-6
    # prefix-LM needs to know where the prefix ends
    with pytest.raises(ValueError, match="prefix_mask"):
        prefix(jnp.asarray(batch["images"]), jnp.asarray(batch["input_ids"]), positions=jnp.asarray(batch["positions"]),
               attention_mask=jnp.asarray(batch["attention_mask"]), image_mask=jnp.asarray(batch["image_mask"]))


def test_loss_gradients_train_projector_and_decoder_not_frozen_encoder():
    model = _vlm(kind="mlp")
    batch = {k: jnp.asarray(v) for k, v in _batch(model.encoder.cfg).items()}

    @nnx.jit
    def grads(model):
        return nnx.grad(lambda m: m.loss(batch)[0])(model)

    g = grads(model)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g.encoder))
    for part in (g.projector, g.decoder):
        assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(part)) > 0
    loss, count = nnx.jit(lambda m: m.loss(batch))(model)
    assert float(count) == 4 + 2 and np.isfinite(float(loss))


def test_left_padding_does_not_change_real_token_logits():
    model = _vlm()
    batch = _batch(model.encoder.cfg)
    padded = _logits(model, batch)
    # row 1 without its 3 left pads, as a batch of its own (same length by right-trimming the others)
    single = {k: v[1:2].copy() for k, v in batch.items()}
    for k in ("input_ids", "positions", "attention_mask", "image_mask", "loss_mask"):
        single[k] = np.concatenate([single[k][:, 3:], single[k][:, :3]], axis=1)  # pads moved to the right
    single["positions"] = np.maximum(np.cumsum(single["attention_mask"], axis=1) - 1, 0).astype(np.int32)
    unpadded = _logits(model, {k: np.concatenate([batch[k][:1], v]) for k, v in single.items()})
    np.testing.assert_allclose(np.asarray(padded[1, 3:]), np.asarray(unpadded[1, :L - 3]), atol=1e-5)


def test_batch_contract_errors_name_the_problem():
    model = _vlm()
    good = _batch(model.encoder.cfg)
    bad = dict(good, image_mask=good["image_mask"].copy())
    bad["image_mask"][1, 8] = True
    with pytest.raises(BatchContractError, match=r"rows \[1\] have \[5\] image positions, expected exactly 4"):
        validate_batch(bad, 4)
    bad = dict(good, loss_mask=good["loss_mask"].copy())
    bad["loss_mask"][0, 2] = 1.0
    with pytest.raises(BatchContractError, match="loss_mask: rows \\[0\\]"):
        validate_batch(bad, 4)
    with pytest.raises(BatchContractError, match="images"):
        validate_batch(dict(good, images=good["images"][:, 0]), 4)
    with pytest.raises(ValueError, match="hidden size"):
        enc = CTViT(CTViTConfig.tiny(), rngs=nnx.Rngs(0))
        VLM(enc, Projector(ProjectorConfig.for_encoder(enc.cfg, 32), rngs=nnx.Rngs(0)), model.decoder)


# Logical names the vision side introduces, with the mapping proposed for jaxpetct.parallel.rules.LOGICAL_RULES
# (added here only while the shared table lacks them).
PROPOSED_VISION_RULES = (("vis_patch", None), ("vis_embed", "fsdp"), ("vis_mlp", "tensor"), ("vis_heads", "tensor"),
                         ("vis_proj", ("fsdp", "tensor")))


def test_sharded_forward_on_8_devices_equals_single_device():
    from jaxpetct.parallel.mesh import MeshConfig, make_mesh
    from jaxpetct.parallel.rules import LOGICAL_RULES, init_sharded

    known = dict(LOGICAL_RULES)
    rules = LOGICAL_RULES + tuple(r for r in PROPOSED_VISION_RULES if r[0] not in known)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    batch = _batch(CTViTConfig.tiny())
    batch = {k: np.concatenate([v, v[::-1]]) for k, v in batch.items()}  # 4 rows: divisible by data x fsdp
    single = _logits(_vlm(prefix_lm=True), batch)
    model = init_sharded(lambda: _vlm(prefix_lm=True), mesh, rules)
    kernel = model.encoder.spatial_blocks[0].ff.proj_in.kernel[...]  # ('vis_embed', 'vis_mlp')
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1] // 2)
    proj = model.projector.fc1.kernel[...]  # ('vis_proj', 'embed') -> rows over fsdp x tensor
    assert proj.addressable_shards[0].data.shape == (proj.shape[0] // 4, proj.shape[1])
    with jax.set_mesh(mesh):
        sharded = _logits(model, batch)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), atol=1e-5)


def test_greedy_generation_from_prompt_embeds_matches_the_training_forward():
    """prompt_embeds -> KV-cache prefill/decode (eval.generate) agrees with the teacher-forced VLM forward, with the
    documented prefix-LM rule (whole prompt bidirectional at prefill, prefix_mask = the prompt in training)."""
    from jaxpetct.eval.generate import generate

    model = _vlm(prefix_lm=True)
    batch = _batch(model.encoder.cfg)
    prompt_len, new = 8, 4  # row 0: 8 real prompt tokens; row 1: 3 pads + 5 real
    prompt = {k: v[:, :prompt_len] for k, v in batch.items()}
    embeds = nnx.jit(lambda m, b: m.prompt_embeds(b["images"], b["input_ids"], b["image_mask"]))(
        model, dict(prompt, images=batch["images"]))
    out = generate(model.decoder, inputs_embeds=embeds, attention_mask=jnp.asarray(prompt["attention_mask"]),
                   bidirectional_mask=jnp.asarray(prompt["attention_mask"]), max_new_tokens=new)
    tokens = np.asarray(out.tokens)
    full_ids = np.concatenate([prompt["input_ids"], tokens], axis=1)
    attention = np.concatenate([prompt["attention_mask"], np.ones((2, new), bool)], axis=1)
    full = dict(images=batch["images"], input_ids=full_ids, attention_mask=attention,
                positions=np.maximum(np.cumsum(attention, axis=1) - 1, 0).astype(np.int32),
                image_mask=np.concatenate([prompt["image_mask"], np.zeros((2, new), bool)], axis=1),
                prefix_mask=np.concatenate([prompt["attention_mask"], np.zeros((2, new), bool)], axis=1))
    logits = nnx.jit(lambda m, b: m(b["images"], b["input_ids"], positions=b["positions"],
                                    attention_mask=b["attention_mask"], image_mask=b["image_mask"],
                                    prefix_mask=b["prefix_mask"]))(model, full)
    forced = np.asarray(jnp.argmax(logits[:, prompt_len - 1:-1], axis=-1))
    np.testing.assert_array_equal(forced, tokens)
