"""SSIM3D and PSNR against scikit-image on random 3-D volumes, plus the cases worked by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpetct.models import ssim3d as S

skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image (the test extra) is not installed")


def _pair(shape=(2, 13, 15, 17, 3), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, shape), -1, 1).astype(np.float32)  # correlated, so SSIM is far from 0 and 1
    return x, y


def _skimage(x, y, **kw):
    return np.array([skimage_metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                                           use_sample_covariance=False, data_range=2.0,
                                                           channel_axis=-1, **kw) for a, b in zip(x, y)])


def test_valid_border_equals_skimage_on_random_volumes():
    """skimage averages its map over the region 5 voxels in from every border; 'valid' computes exactly that."""
    x, y = _pair()
    ours = np.asarray(jax.jit(lambda a, b: S.ssim3d(a, b, data_range=2.0))(x, y))
    ref = _skimage(x, y)
    assert 0.2 < ref.min() and ref.max() < 0.9, ref
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    assert S.window_size(1.5) == 11 and S.gaussian_taps().shape == (11,)
    bright = np.random.default_rng(5).uniform(0.95, 1.0, (1, 12, 12, 12, 2)).astype(np.float32)  # far from 0,
    noisy = (bright + np.random.default_rng(6).normal(0, 0.002, bright.shape)).astype(np.float32)  # SSIM ~ 0.999
    np.testing.assert_allclose(np.asarray(S.ssim3d(bright, noisy, data_range=2.0)), _skimage(bright, noisy),
                               rtol=0, atol=5e-6)


def test_reflect_border_equals_the_mean_of_skimages_full_map():
    x, y = _pair((1, 12, 14, 16, 2), seed=1)
    _, full = skimage_metrics.structural_similarity(x[0], y[0], gaussian_weights=True, sigma=1.5,
                                                    use_sample_covariance=False, data_range=2.0, channel_axis=-1,
                                                    full=True)
    ours_map = np.asarray(S.ssim3d_map(x, y, data_range=2.0, border="reflect"))[0]
    np.testing.assert_allclose(ours_map, full, rtol=0, atol=5e-6)
    thin = _pair((1, 5, 12, 12, 3), seed=2)  # thinner than the window: only 'reflect' applies
    assert np.isfinite(np.asarray(S.ssim3d(*thin, data_range=2.0, border="reflect"))).all()
    with pytest.raises(ValueError, match="thinner"):
        S.ssim3d(*thin, data_range=2.0)


def test_identical_volumes_score_one_and_hand_worked_constants():
    x, _ = _pair((2, 11, 11, 11, 1))
    np.testing.assert_allclose(np.asarray(S.ssim3d(x, x, data_range=2.0)), 1.0, atol=1e-6)
    # constant volumes a and b: means a, b, no variance -> SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 L)^2
    a, b, L = 0.5, 0.2, 1.0
    va, vb = np.full((1, 11, 11, 11, 1), a, np.float32), np.full((1, 11, 11, 11, 1), b, np.float32)
    c1 = (0.01 * L) ** 2
    want = (2 * a * b + c1) / (a * a + b * b + c1)
    # float32: with no variance the (co)variance terms are rounding noise over C2 = 9e-4, hence 1e-4, not 1e-6
    np.testing.assert_allclose(np.asarray(S.ssim3d(va, vb, data_range=L)), want, rtol=1e-4)


def test_psnr_equals_skimage_and_is_exact_on_a_hand_case():
    x, y = _pair((2, 6, 8, 8, 3), seed=3)
    ref = [skimage_metrics.peak_signal_noise_ratio(a, b, data_range=2.0) for a, b in zip(x, y)]
    np.testing.assert_allclose(np.asarray(S.psnr(x, y, data_range=2.0)), ref, rtol=1e-5)
    zeros, tenths = np.zeros((1, 2, 2, 2, 1), np.float32), np.full((1, 2, 2, 2, 1), 0.1, np.float32)
    np.testing.assert_allclose(np.asarray(S.psnr(zeros, tenths, data_range=1.0)), 20.0, rtol=1e-5)  # MSE 0.01


def test_loss_is_differentiable_jittable_and_zero_at_the_target():
    x, y = _pair((1, 11, 12, 12, 3), seed=4)
    loss = jax.jit(lambda a, b: S.reconstruction_loss(a, b))
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    grad = jax.grad(lambda a: S.reconstruction_loss(a, jnp.asarray(x)))(jnp.asarray(y))
    assert grad.shape == y.shape and bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).max()) > 0
    grad_at_target = jax.grad(lambda a: S.ssim3d(a, jnp.asarray(x), data_range=2.0).sum())(jnp.asarray(x))
    assert bool(jnp.isfinite(grad_at_target).all())
    assert float(jnp.abs(grad_at_target).max()) < 1e-4  # SSIM is maximal at the target
