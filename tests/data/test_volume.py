"""Volume ops against references we did not write: torch's interpolate, scipy's rotate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jaxpetct.data import volume
from jaxpetct.data.inputs import AugmentConfig, ImageConfig, model_images


@pytest.mark.parametrize("src,dst", [((7, 9, 11), (4, 13, 5)), ((56, 64, 64), (32, 64, 64)), ((5, 32, 32), (3, 64, 64)),
                                     ((1, 3, 3), (2, 2, 2)), ((30, 50, 50), (14, 48, 48))])
def test_resize_matches_torch_trilinear(src, dst):
    x = np.random.default_rng(0).normal(size=src).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=dst, mode="trilinear",
                                          align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(volume.resize(x, dst), ref, atol=1e-5)


def test_resize_2d_and_leading_axes_match_torch_bilinear():
    x = np.random.default_rng(1).normal(size=(3, 8, 10)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=(5, 17), mode="bilinear",
                                          align_corners=False)[0].numpy()
    np.testing.assert_allclose(volume.resize(x, (5, 17)), ref, atol=1e-5)  # the leading axis is carried along


def test_resize_keeps_linear_ramps_and_identity():
    ramp = np.arange(64, dtype=np.float32)[None, :, None] * np.ones((4, 1, 8), np.float32)
    np.testing.assert_array_equal(volume.resize(ramp, ramp.shape), ramp)
    down = volume.resize(ramp, (4, 32, 8))  # half-pixel centres: the mean of each pair of rows
    np.testing.assert_allclose(down[0, :, 0], np.arange(32) * 2 + 0.5)


def test_ct_window_and_pet_scaling():
    hu = np.array([-2000.0, -1000.0, 0.0, 1000.0, 3000.0])
    np.testing.assert_allclose(volume.ct_window(hu, "ctclip"), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(volume.ct_window(hu, "ctclip", "symmetric"), [-1, -1, 0, 1, 1])
    np.testing.assert_allclose(volume.ct_window(np.array([-160.0, 40.0, 240.0]), "soft"), [0, 0.5, 1])
    suv = np.array([-1.0, 0.0, 5.0, 10.0, 30.0])
    np.testing.assert_allclose(volume.pet_scaled(suv), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(volume.pet_scaled(suv, "log"), np.minimum(np.log1p([0, 0, 5, 10, 30]) / np.log1p(10), 1),
                               rtol=1e-6)
    assert volume.parse_channel("ct:40,400") == ("ct", (40.0, 400.0))
    with pytest.raises(ValueError):
        volume.parse_channel("mri")


def _record(depth=20):
    rng = np.random.default_rng(2)
    ct = rng.integers(-1000, 1500, size=(depth, 16, 16)).astype(np.int16)
    pet = rng.integers(0, 8000, size=(depth, 8, 8)).astype(np.uint16)
    return {"ct": ct, "pet": pet, "pet_scale": np.float32(0.002)}


def test_model_images_channels_and_augmentations_are_seeded():
    rec = _record()
    cfg = ImageConfig(shape=(8, 16, 16), channels=("pet", "ct", "ct:lung"))
    plain = model_images(rec, cfg, AugmentConfig(), None)
    assert plain.shape == (3, 8, 16, 16) and plain.dtype == np.float32
    np.testing.assert_allclose(plain[1], volume.ct_window(volume.resize(rec["ct"].astype(np.float32), (8, 16, 16))))
    aug = AugmentConfig(enabled=True, edge_drop=(3, 4), edge_drop_prob=1.0, rotate_prob=1.0, noise_prob=1.0)
    a = model_images(rec, cfg, aug, np.random.default_rng(5))
    b = model_images(rec, cfg, aug, np.random.default_rng(5))
    c = model_images(rec, cfg, aug, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, plain)
    off = model_images(rec, cfg, AugmentConfig(enabled=False), np.random.default_rng(5))
    np.testing.assert_array_equal(off, plain)  # off by default: the generator is not even consulted


def test_rotation_augmentation_is_scipy_rotate_in_plane():
    from scipy import ndimage

    rec = _record(depth=8)
    cfg = ImageConfig(shape=(8, 16, 16), channels=("ct",))
    aug = AugmentConfig(enabled=True, edge_drop_prob=0.0, rotate_prob=1.0, noise_prob=0.0, rotate_deg=15.0)
    rng = np.random.default_rng(11)
    out = model_images(rec, cfg, aug, rng)
    probe = np.random.default_rng(11)
    probe.random(), probe.random()  # the edge-drop and rotation coin flips
    angle = probe.uniform(-15.0, 15.0)
    ref = ndimage.rotate(volume.resize(rec["ct"].astype(np.float32), (8, 16, 16)), angle, axes=(-1, -2),
                         reshape=False, order=1, mode="nearest")
    np.testing.assert_allclose(out[0], volume.ct_window(ref), atol=1e-6)


def test_jittable_resize_matches_torch():
    import jax

    x = np.random.default_rng(3).normal(size=(2, 9, 20, 14)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=(5, 32, 7), mode="trilinear",
                                          align_corners=False)[0].numpy()
    out = jax.jit(lambda v: volume.resize_jax(v, (5, 32, 7)))(x)
    assert out.shape == (2, 5, 32, 7)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
