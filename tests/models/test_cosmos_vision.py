"""Cosmos as the VLM's second vision encoder: the CT-ViT interface (input shape, grid, out_dim, (B, C, D, H, W) in
[0, 1] -> (B, T', h, w, d)), the factory's presets and checks, diffusers weights in `hf_dir`, and the export."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpetct.errors import ConfigError
from jaxpetct.models import cosmos, factory
from jaxpetct.models.cosmos.layers import CausalConv3d
from jaxpetct.models.cosmos.vision import (CosmosAutoencoder, CosmosVisionConfig, CosmosVisionEncoder,
                                          random_weights)

TINY = dict(preset="cosmos_tiny", channels=2, depth=16, height=32, width=32)


def _model_cfg(**encoder):
    return dict(encoder={**TINY, **encoder}, projector=dict(kind="linear", pool=1, pool_op="mean", features="all"),
                decoder=dict(preset="tiny", vocab_size=256, num_layers=1), lora=dict(rank=0))


def _volumes(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32))


@nnx.jit
def _encode(encoder, images):
    return encoder(images)


def _params(module) -> dict:
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def test_paper_preset_gives_16_tokens_of_a_32x32x16_grid():
    cfg = factory.encoder_config(dict(preset="cosmos_cv8x8x8", hf_dir="/not/read", depth=120, height=256,
                                      width=256, dtype="bfloat16"))
    assert isinstance(cfg, CosmosVisionConfig) and cfg.input_shape == (2, 120, 256, 256)
    assert cfg.frames == 121 and cfg.grid == (16, 32, 32) and cfg.out_dim == 16 and not cfg.lesion_channel
    assert cosmos.latent_tokens(120, 256, 256)["tokens"] == 16 * 32 * 32
    assert cfg.tokenizer.compute_dtype == jnp.bfloat16 and cfg.tokenizer.encoder_block_out_channels[-1] == 512
    # 1 + 8k slices need no padding frame
    assert factory.encoder_config(dict(preset="cosmos_cv8x8x8", depth=17, height=64, width=64)).frames == 17


def test_slices_become_frames_with_the_last_slice_repeated():
    cfg = factory.encoder_config(TINY)
    encoder = CosmosVisionEncoder(cfg)
    random_weights(encoder.tokenizer, seed=0)
    images = _volumes((2, *cfg.input_shape))
    video = np.asarray(encoder.video(images))
    assert video.shape == (2, 17, 32, 32, 3) and cfg.frames == 17
    expected = np.asarray(cosmos.petct_to_rgb(jnp.moveaxis(images, 1, -1)))
    np.testing.assert_array_equal(video[:, :16], expected)
    np.testing.assert_array_equal(video[:, 16], expected[:, 15])  # the pad frame is the last slice again
    grid = _encode(encoder, images)
    assert grid.shape == (2, *cfg.grid, cfg.out_dim) == (2, 3, 4, 4, 4)
    direct = nnx.jit(lambda t, v: t.encode(v))(encoder.tokenizer, jnp.asarray(video))
    np.testing.assert_allclose(np.asarray(grid), np.asarray(direct), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(encoder.volume(jnp.asarray(video[:, :16]))),
                               np.asarray(jnp.moveaxis(images, 1, -1)), atol=1e-6)
    one = CosmosVisionEncoder(factory.encoder_config({**TINY, "channels": 1}))
    v1 = np.asarray(one.video(images[:, :1]))
    np.testing.assert_array_equal(v1[..., 0], v1[..., 2])
    np.testing.assert_allclose(v1[:, :16, ..., 1], 2 * np.asarray(images[:, 0]) - 1, atol=1e-6)
    with pytest.raises(ValueError, match=r"expects images \(B, 2, 16, 32, 32\)"):
        encoder(images[:, :, :8])


def test_random_weights_are_the_modules_own_init_drawn_on_the_host():
    """torch's default Conv3d init (what CosmosTokenizer(cfg, rngs) draws): same tree, shapes and dtypes, kernels and
    biases uniform within +-1/sqrt(fan in), norms 1 and 0; seeded; abstract weights (a plan) are left alone."""
    cfg = cosmos.CosmosConfig.tiny(param_dtype="bfloat16")
    own = nnx.eval_shape(lambda: cosmos.CosmosTokenizer(cfg, rngs=nnx.Rngs(0)))
    encoder = CosmosVisionEncoder(CosmosVisionConfig(tokenizer=cfg, depth=16, height=32, width=32))
    random_weights(encoder.tokenizer, seed=7)
    ours = _params(encoder.tokenizer)
    assert {k: (v.shape, v.dtype) for k, v in ours.items()} == {
        k: (v.shape, v.dtype) for k, v in nnx.to_flat_state(nnx.state(own, nnx.Param))}
    for _, conv in nnx.iter_modules(encoder.tokenizer):
        if isinstance(conv, CausalConv3d):
            kernel = np.asarray(conv.kernel.get_value(), np.float32)
            bound = 1 / np.sqrt(np.prod(kernel.shape[:4]))
            assert np.abs(kernel).max() <= bound * 1.004 and np.abs(kernel).max() > 0.8 * bound
            assert np.abs(np.asarray(conv.bias.get_value(), np.float32)).max() <= bound * 1.004
    norms = {k: v for k, v in ours.items() if k[-2].startswith("norm")}
    assert norms and all(np.all(v == (1 if k[-1] == "scale" else 0)) for k, v in norms.items())
    again = CosmosVisionEncoder(encoder.cfg)
    random_weights(again.tokenizer, seed=7)
    assert all(np.array_equal(ours[k], v) for k, v in _params(again.tokenizer).items())
    abstract = nnx.eval_shape(lambda: factory.build_cosmos_autoencoder(_model_cfg(), seed=0))
    assert isinstance(jax.tree.leaves(nnx.state(abstract))[0], jax.ShapeDtypeStruct)


def test_the_vlm_reads_the_cosmos_grid_and_keeps_it_frozen():
    vlm = factory.build_vlm(_model_cfg(), seed=0, with_lora=False)
    assert vlm.num_visual_tokens == 3 and vlm.projector.cfg.in_features == 4 * 4 * 4
    images = _volumes((1, 2, 16, 32, 32), seed=1)

    @nnx.jit
    def tokens_and_grad(m, x):
        return m.visual_tokens(x), jax.grad(lambda x: m.visual_tokens(x).astype(jnp.float32).sum())(x)

    tokens, grad = tokens_and_grad(vlm, images)
    assert np.abs(np.asarray(grad)).max() == 0  # stop_gradient: the frozen encoder spends no backward pass
    assert tokens.shape == (1, 3, vlm.decoder.cfg.hidden_size)


def test_paper_cosmos_rows_build_with_the_stated_shapes():
    from jaxpetct.paper import paper_config

    cfg = paper_config("mistral_7b", "OG", vision="cosmos")
    model = nnx.eval_shape(lambda: factory.build_vlm(cfg.model.to_dict(), seed=0))  # no allocation
    assert model.num_visual_tokens == 16 and model.encoder.cfg.input_shape == (2, 120, 256, 256)
    assert model.projector.cfg.in_features == 32 * 32 * 16
    assert cfg.order == ("tokenizer_finetune", "align", "lora") and cfg.data.record_shape == (140, 480, 480)
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model.encoder, nnx.Param)))
    assert 5e7 < n < 2e8  # CV8x8x8, encoder and decoder halves


@pytest.mark.parametrize("encoder, message", [
    (dict(preset="tiny", hf_dir="/x"), r"model\.encoder\.hf_dir: no such setting"),
    (dict(TINY, temporal_patch_size=4), r"model\.encoder\.temporal_patch_size: no such setting"),
    (dict(TINY, latent_chanels=4), r"model\.encoder\.latent_chanels: no such setting"),
    (dict(TINY, preset="cosmos_huge"), r"unknown Cosmos preset 'cosmos_huge'"),
    (dict(TINY, depth=16, height=36), r"36"),
])
def test_a_wrong_encoder_setting_is_one_config_error(encoder, message):
    with pytest.raises(ConfigError, match=message) as e:
        factory.check({"encoder": encoder})
        factory.encoder_config(encoder)
    assert "\n" not in str(e.value)


def test_stages_that_need_ct_vit_say_so_and_the_lesion_channel_is_refused_without_its_head():
    cfg = _model_cfg()
    with pytest.raises(ConfigError, match="tokenizer_finetune"):
        factory.build_clip(cfg)
    with pytest.raises(ConfigError, match="Cosmos encoder"):
        factory.build_cosmos_autoencoder({**cfg, "encoder": dict(preset="tiny", channels=2)})
    with pytest.raises(ValueError, match="Cosmos latents have none"):
        factory.build_vlm({**cfg, "projector": dict(features="lesion")})
    assert factory.encoder_trainable(cfg["encoder"]) == r"^encoder/(tokenizer/(encoder|quant_conv)|lesion_head)/"
    assert factory.encoder_trainable(dict(preset="tiny")) == r"^encoder/"


def test_slice_tokens_follow_the_causal_frames():
    cfg = factory.encoder_config(TINY)  # 16 slices -> 17 frames -> 3 latent frames (the first frame alone)
    assert cfg.grid[0] == 3 and cfg.slice_tokens == (0,) + (1,) * 8 + (2,) * 7


def test_the_lesion_channel_is_a_linear_readout_of_the_latent_trained_by_lesion_maps(tmp_path):
    from jaxpetct.eval.export import export_vlm, load_vision

    cfg = _model_cfg(lesion_channel=True)
    mapper = factory.build_lesion_mapper(cfg, pos_weight=5.0, seed=0)
    assert mapper.head is None and mapper.encoder.cfg.out_dim == 4 + 1
    images = _volumes((2, 2, 16, 32, 32), seed=5)
    tokens = _encode(mapper.encoder, images)
    latent = nnx.jit(lambda e, x: e.tokenizer.encode(e.video(x)))(mapper.encoder, images)
    head = mapper.encoder.lesion_head
    np.testing.assert_allclose(np.asarray(tokens[..., :4]), np.asarray(latent), rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(tokens[..., 4]), np.asarray(head(latent))[..., 0], rtol=1e-5, atol=1e-6)
    targets = jnp.zeros((2, 3, 4, 4)).at[0, 1, 2, 2].set(1.0)
    grads = nnx.jit(nnx.grad(lambda m: m.loss(images, targets)[0]))(mapper)
    norms = {}
    for k, v in nnx.to_flat_state(grads):
        norms[k[:3]] = max(norms.get(k[:3], 0.0), float(np.abs(np.asarray(v.get_value())).max()))
    assert norms[("encoder", "lesion_head", "kernel")] > 0 and norms[("encoder", "tokenizer", "encoder")] > 0
    assert norms[("encoder", "tokenizer", "decoder")] == 0  # the decode half is not on the path
    vlm_cfg = {**cfg, "projector": dict(kind="linear", pool=1, pool_op="mean", features="lesion")}
    vlm = factory.build_vlm(vlm_cfg, seed=0, with_lora=False)
    assert vlm.projector.cfg.in_features == 4 * 4
    out = export_vlm(vlm, tmp_path / "export")
    assert (out / "vision" / "cosmos_lesion_head.safetensors").is_file()
    encoder, _, _ = load_vision(out)
    np.testing.assert_array_equal(np.asarray(_encode(encoder, images)), np.asarray(_encode(vlm.encoder, images)))


def test_the_autoencoder_loss_is_the_papers_and_ignores_filler_rows():
    from jaxpetct.models.ssim3d import reconstruction_loss

    model = factory.build_cosmos_autoencoder(_model_cfg(), seed=3)
    images = _volumes((2, 2, 16, 32, 32), seed=2)
    loss = nnx.jit(lambda m, x, mask: m.loss(x, mask))
    total, count, extras = loss(model, images, jnp.ones(2))
    recon, target = nnx.jit(lambda m, x: m.encoder.reconstruct(x))(model, images)
    assert recon.shape == target.shape == (2, 16, 32, 32, 3)
    np.testing.assert_allclose(float(total / count), float(reconstruction_loss(recon, target)), rtol=1e-5)
    one, n1, _ = loss(model, images.at[1].set(0.0), jnp.asarray([1.0, 0.0]))
    first, _, _ = loss(model, jnp.concatenate([images[:1], images[:1]]), jnp.asarray([1.0, 0.0]))
    assert float(n1) == 1 and abs(float(one) - float(first)) < 1e-5
    assert set(extras) == {"l1", "ssim_rgb", "psnr", "ssim"} and 0 < float(extras["psnr"]) < 60


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    pytest.importorskip("diffusers", reason="diffusers (the test extra) is not installed: no reference")
    from tests.models.cosmos_tiny import saved_tiny

    _, model, folder = saved_tiny(tmp_path_factory.mktemp("cosmos") / "vae", seed=1)
    return model, folder


def test_hf_dir_weights_fill_the_encoder_of_every_model(diffusers_folder):
    loaded, folder = diffusers_folder
    cfg = _model_cfg(hf_dir=str(folder))
    for model in (factory.build_vlm(cfg, seed=0), factory.build_cosmos_autoencoder(cfg, seed=0)):
        ours = _params(model.encoder.tokenizer)
        assert ours.keys() == _params(loaded).keys()
        assert all(np.array_equal(ours[k], v) for k, v in _params(loaded).items())
    with pytest.raises(ConfigError, match="differs from preset 'cosmos_tiny' in latent_channels"):
        factory.build_cosmos_autoencoder(_model_cfg(hf_dir=str(folder), latent_channels=8))


def test_export_writes_a_diffusers_folder_and_load_vlm_reads_it_back(diffusers_folder, tmp_path):
    from jaxpetct.eval.export import export_vlm, load_vision, load_vlm

    _, folder = diffusers_folder
    vlm = factory.build_vlm(_model_cfg(hf_dir=str(folder)), seed=0, with_lora=False)
    out = export_vlm(vlm, tmp_path / "export")
    assert (out / "vision" / "cosmos" / "config.json").is_file() and not (out / "vision" / "ctvit.safetensors").exists()
    meta = json.loads((out / "vision" / "vision_config.json").read_text())
    assert meta["encoder_kind"] == "cosmos" and meta["input_shape"] == [2, 16, 32, 32]
    encoder, projector, _ = load_vision(out)
    assert isinstance(encoder, CosmosVisionEncoder) and encoder.cfg == vlm.encoder.cfg
    images = _volumes((1, 2, 16, 32, 32), seed=4)
    np.testing.assert_array_equal(np.asarray(_encode(encoder, images)), np.asarray(_encode(vlm.encoder, images)))
    again = load_vlm(out)
    tokens = nnx.jit(lambda m, x: m.visual_tokens(x))
    np.testing.assert_array_equal(np.asarray(tokens(again, images)), np.asarray(tokens(vlm, images)))
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKLCosmos.from_pretrained(out / "vision" / "cosmos")
    assert sum(p.numel() for p in vae.parameters()) == sum(v.size for v in _params(vlm.encoder.tokenizer).values())


def test_a_cosmos_autoencoder_is_its_encoder_path_for_path():
    model = factory.build_cosmos_autoencoder(_model_cfg(), seed=0)
    assert isinstance(model, CosmosAutoencoder)
    vlm = nnx.eval_shape(lambda: factory.build_vlm(_model_cfg(), seed=0))
    enc = {k for k in _params(vlm) if k[0] == "encoder"}
    assert enc == set(_params(model)) and any(k[:3] == ("encoder", "tokenizer", "decoder") for k in enc)
