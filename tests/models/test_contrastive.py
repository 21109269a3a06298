"""CLIP / SigLIP losses against straightforward torch/numpy references; the VolumeTextCLIP head learns."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxpetct.models.contrastive import VolumeTextCLIP, clip_loss, l2_normalize, siglip_loss
from jaxpetct.models.ctvit import CTViT, CTViTConfig
from jaxpetct.models.text_encoder import RobertaConfig, RobertaEncoder

torch = pytest.importorskip("torch")


def _embeddings(n=6, e=16, seed=0):
    rng = np.random.default_rng(seed)
    img, txt = rng.normal(size=(n, e)).astype(np.float32), rng.normal(size=(n, e)).astype(np.float32)
    txt[: n // 2] += 2 * img[: n // 2]  # some real alignment so the loss is not at its random value
    return img / np.linalg.norm(img, axis=1, keepdims=True), txt / np.linalg.norm(txt, axis=1, keepdims=True)


def test_clip_loss_matches_torch_cross_entropy():
    img, txt = _embeddings()
    t = math.log(1 / 0.07)
    loss, metrics = clip_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(t))
    logits = torch.from_numpy(img) @ torch.from_numpy(txt).T * math.exp(t)
    labels = torch.arange(len(img))
    ce = torch.nn.functional.cross_entropy
    ref = 0.5 * (ce(logits, labels) + ce(logits.T, labels))
    assert abs(float(loss) - float(ref)) < 1e-5
    assert abs(float(metrics["logit_scale"]) - 1 / 0.07) < 1e-3
    # the scale is clamped at 100 like CLIP's
    _, m = clip_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(10.0))
    assert float(m["logit_scale"]) == 100.0


def test_siglip_loss_matches_numpy_definition():
    img, txt = _embeddings(seed=1)
    t, b = math.log(10.0), -10.0
    loss, _ = siglip_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(t), jnp.asarray(b))
    z = 2 * np.eye(len(img)) - 1
    logits = math.exp(t) * img.astype(np.float64) @ txt.astype(np.float64).T + b
    ref = -np.mean(np.sum(np.log(1 / (1 + np.exp(-z * logits))), axis=1))
    assert abs(float(loss) - ref) < 1e-4 * max(1.0, abs(ref))


def test_losses_prefer_matched_pairs():
    img, _ = _embeddings(seed=2)
    shuffled = img[::-1].copy()
    for fn, args in ((clip_loss, (jnp.asarray(2.0),)), (siglip_loss, (jnp.asarray(2.0), jnp.asarray(-1.0)))):
        good, _ = fn(jnp.asarray(img), jnp.asarray(img), *args)
        bad, _ = fn(jnp.asarray(img), jnp.asarray(shuffled), *args)
        assert float(good) < float(bad)


def test_l2_normalize():
    x = l2_normalize(jnp.asarray([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(np.asarray(x), [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize("loss,vision_pool,text_pool", [("clip", "ctclip", "cls"), ("siglip", "mean", "mean")])
def test_volume_text_clip_trains(loss, vision_pool, text_pool):
    vcfg = CTViTConfig.tiny()
    model = VolumeTextCLIP(CTViT(vcfg, rngs=nnx.Rngs(0)), RobertaEncoder(RobertaConfig.tiny(), rngs=nnx.Rngs(1)),
                           latent_dim=16, vision_pool=vision_pool, text_pool=text_pool, loss=loss, rngs=nnx.Rngs(2))
    n = 4
    images = jax.random.normal(jax.random.key(0), (n, *vcfg.input_shape))
    ids = jax.random.randint(jax.random.key(1), (n, 10), 3, 128).at[:, 0].set(0).at[1, 7:].set(1)
    mask = ids != 1
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        (value, metrics), grads = nnx.value_and_grad(lambda m: m(images, ids, mask), has_aux=True)(model)
        optimizer.update(model, grads)
        return value, grads

    first, grads = step(model, optimizer)
    for part in (grads.encoder, grads.text, grads.to_vision_latent, grads.to_text_latent):
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(part)) > 0
    assert float(jnp.abs(grads.log_scale[...])) > 0
    for _ in range(15):
        last, _ = step(model, optimizer)
    assert np.isfinite(float(last)) and float(last) < 0.8 * float(first), (float(first), float(last))
    emb = model.encode_volume(images)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, atol=1e-5)
