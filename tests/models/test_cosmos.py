"""The Cosmos tokenizer against diffusers' AutoencoderKLCosmos (torch, CPU, float32) on tiny random configs: encode
and decode parity at the causal frame counts and batch 2, both patch types, and the shape arithmetic
(checkpoints in and out: test_cosmos_io.py; a bf16 training step: test_cosmos_training.py)."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxpetct.models import cosmos
from tests.models.cosmos_tiny import random_vae, rel, saved_tiny, torch_decode, torch_encode, video

diffusers = pytest.importorskip("diffusers", reason="diffusers (the test extra) is not installed: no reference")
torch = pytest.importorskip("torch", reason="torch (the test extra) is not installed: no reference")

# encode x and decode diffusers' latent in one program: one compilation per shape instead of two (~20 % less)
BOTH = nnx.jit(lambda m, x, z: (m.encode(x), m.decode(z)))
ERRORS: dict = {}  # max relative errors measured, printed at the end of the module (pytest -s)


@pytest.fixture(scope="module")
def haar(tmp_path_factory):
    yield saved_tiny(tmp_path_factory.mktemp("cosmos") / "tiny")
    print("\nmax relative error vs diffusers:", json.dumps(ERRORS, indent=1))


@pytest.mark.parametrize("frames", [1, 9, 17])  # the causal counts 1 + 8k: the first frame alone, then groups of 8
def test_encode_and_decode_match_diffusers(haar, frames):
    vae, ours, _ = haar
    x = video((2, frames, 16, 16, 3), seed=frames)
    z_ref = torch_encode(vae, x)
    y_ref = torch_decode(vae, z_ref)
    z, y = BOTH(ours, x, z_ref)
    assert z.shape == z_ref.shape == (2, *ours.cfg.latent_shape(frames, 16, 16))
    assert y.shape == y_ref.shape == (2, *ours.cfg.decoded_shape(*z_ref.shape[1:4]))
    ERRORS[f"haar T={frames} encode"], ERRORS[f"haar T={frames} decode"] = rel(z, z_ref), rel(y, y_ref)
    assert rel(z, z_ref) <= 1e-4 and rel(y, y_ref) <= 1e-4, ERRORS
    assert y.shape[1] == frames  # the causal counts come back whole


def test_other_frame_counts_encode_like_diffusers(haar):
    """6 frames: 6 + 3 = 9 is odd, so the Haar levels reflect-pad time (decode has no such path: its latent,
    2 frames, is T=9's)."""
    vae, ours, _ = haar
    x = video((1, 6, 16, 16, 3), seed=6)
    z_ref = torch_encode(vae, x)
    z = nnx.jit(lambda m, x: m.encode(x))(ours, x)
    assert z.shape == z_ref.shape == (1, *ours.cfg.latent_shape(6, 16, 16)) == (1, 2, 2, 2, 4)
    ERRORS["haar T=6 encode"] = rel(z, z_ref)
    assert rel(z, z_ref) <= 1e-4


def test_rearrange_patching_with_space_heavier_compression_matches_diffusers(tmp_path):
    """patch_type 'rearrange', 4x temporal and 16x spatial: no temporal resampling, two spatial stages, the
    decoder's other upsampling rule (space from block 0), and attention inside the middle down and up blocks."""
    cfg = cosmos.CosmosConfig.tiny(patch_type="rearrange", temporal_compression_ratio=4,
                                   spatial_compression_ratio=16, attention_resolutions=(8,))
    assert [p.attention for p in cfg.encoder_plan()] == [False, True, False] == [p.attention for p in
                                                                                cfg.decoder_plan()]
    vae = random_vae(cfg, seed=1)
    vae.save_pretrained(tmp_path)
    ours = cosmos.load_diffusers(tmp_path)
    x = video((1, 5, 32, 32, 3), seed=5)
    z_ref = torch_encode(vae, x)
    z, y = BOTH(ours, x, z_ref)
    y_ref = torch_decode(vae, z_ref)
    assert z.shape == (1, 2, 2, 2, 4) and y.shape == y_ref.shape == (1, 5, 32, 32, 3)
    ERRORS["rearrange encode"], ERRORS["rearrange decode"] = rel(z, z_ref), rel(y, y_ref)
    assert rel(z, z_ref) <= 1e-4 and rel(y, y_ref) <= 1e-4


def test_config_shapes_and_petct_mapping():
    cfg = cosmos.CosmosConfig.cv8x8x8()
    assert cosmos.CosmosConfig.from_diffusers(cfg.to_diffusers()) == cfg
    with pytest.raises(cosmos.config.ConfigError, match="does not know"):
        cosmos.CosmosConfig.from_diffusers({**cfg.to_diffusers(), "use_quant_conv": False})
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cosmos.CosmosTokenizer(cfg, rngs=nnx.Rngs(0))))
    z = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode(x), state,
                       jax.ShapeDtypeStruct((1, 120, 256, 256, 3), np.float32))  # abstract: no weights, no FLOPs
    assert z.shape == (1, 16, 32, 32, 16) == (1, *cfg.latent_shape(120, 256, 256))
    decoded = jax.eval_shape(lambda s, z: nnx.merge(graphdef, s).decode(z), state, z)
    assert decoded.shape == (1, 121, 256, 256, 3) == (1, *cfg.decoded_shape(16, 32, 32))
    assert cosmos.latent_tokens(120, 256, 256) == {"grid": (16, 32, 32), "channels": 16, "tokens": 16384}
    assert [cosmos.causal_frames(n) for n in (1, 2, 9, 120, 121)] == [1, 9, 9, 121, 121]
    with pytest.raises(ValueError, match="multiples of 8"):
        cfg.latent_shape(9, 20, 24)
    petct = np.random.default_rng(0).uniform(0, 1, (1, 3, 4, 4, 2)).astype(np.float32)
    rgb = np.asarray(cosmos.petct_to_rgb(petct))
    np.testing.assert_allclose(rgb, np.stack([petct[..., 0], petct[..., 1], petct[..., 0]], -1) * 2 - 1, atol=1e-7)
    np.testing.assert_allclose(np.asarray(cosmos.rgb_to_petct(rgb)), petct, atol=1e-6)
