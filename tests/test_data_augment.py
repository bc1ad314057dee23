"""Augmentation: a dot drawn at a keypoint lands where the transformed keypoint says."""

import numpy as np
import pytest

from sonichu_jax.data.augment import AugmentConfig, augment_sample, random_affine, resize_sample

GEOMETRY_ONLY = AugmentConfig(
    scale=(0.7, 1.4), rotation_deg=45.0, translate=0.25, flip_prob=0.5, gamma=(1.0, 1.0),
    contrast=(1.0, 1.0), brightness=0.0, noise_prob=0.0, blur_prob=0.0,
)
SIGMA = 2.5  # dot radius in input pixels: wide enough for bilinear sampling to keep its centroid


def _dot(h, w, x, y):
    """A Gaussian dot centred at (x, y) in the continuous frame (pixel i centred at i + .5)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * SIGMA**2)).astype(np.float32)


def _centroid(img):
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]] + 0.5
    return np.array([(img * xs).sum(), (img * ys).sum()]) / img.sum()


@pytest.mark.parametrize("trial", range(25))
def test_dot_lands_on_transformed_keypoint(trial):
    rng = np.random.default_rng(trial)
    h, w = rng.integers(48, 97, 2)
    out_w, out_h = 64, 56
    perm = (2, 1, 0)
    m = 3 * SIGMA  # whole dots in the input, so a centroid is the dot's centre
    kps = np.stack([rng.uniform(m, w - m, 3), rng.uniform(m, h - m, 3)], axis=1).astype(np.float32)
    valid = np.ones(3, bool)
    seed = 1000 + trial
    _, flipped = random_affine(np.random.default_rng(seed), GEOMETRY_ONLY, (w, h), (out_w, out_h), True)
    for i, (x, y) in enumerate(kps):
        dot = _dot(h, w, x, y)
        out, out_kps, out_valid = augment_sample(
            dot, kps, valid, np.random.default_rng(seed), GEOMETRY_ONLY, (out_w, out_h), perm
        )
        j = perm[i] if flipped else i
        px, py = out_kps[j]
        inside = 0 <= px <= out_w and 0 <= py <= out_h
        assert bool(out_valid[j]) == inside  # masked iff outside, never clipped
        scale = np.sqrt(abs(np.linalg.det(np.diag([out_w / w, out_h / h])))) * 1.4
        margin = 3 * SIGMA * scale
        if margin <= px <= out_w - margin and margin <= py <= out_h - margin:
            assert np.linalg.norm(_centroid(out[..., 0] if out.ndim == 3 else out) - (px, py)) < 1.0
        if not inside:
            assert not np.isnan(out_kps[j]).any()
            assert (px < 0) or (px > out_w) or (py < 0) or (py > out_h)  # not clipped onto the edge


def test_flip_permutes_keypoints():
    config = AugmentConfig(
        scale=(1.0, 1.0), rotation_deg=0.0, translate=0.0, flip_prob=1.0, gamma=(1.0, 1.0),
        contrast=(1.0, 1.0), brightness=0.0, noise_prob=0.0, blur_prob=0.0,
    )
    img = np.zeros((20, 40), np.uint8)
    kps = np.array([[5.0, 4.0], [30.0, 6.0], [10.0, 15.0]], np.float32)
    _, out, ok = augment_sample(img, kps, np.ones(3, bool), np.random.default_rng(0), config, (40, 20), (1, 0, 2))
    # mirror x -> 40 - x, then keypoint i becomes keypoint perm[i]
    np.testing.assert_allclose(out, [[10.0, 6.0], [35.0, 4.0], [30.0, 15.0]], atol=1e-5)
    assert ok.all()
    # without a permutation the task is never flipped
    _, same, _ = augment_sample(img, kps, np.ones(3, bool), np.random.default_rng(0), config, (40, 20), None)
    np.testing.assert_allclose(same, kps, atol=1e-5)


def test_deterministic_given_generator_and_photometric_range():
    rng = np.random.default_rng(0)
    img = (rng.random((50, 70)) * 65535).astype(np.uint16)
    kps = np.array([[10.0, 10.0], [60.0, 40.0]], np.float32)
    a = augment_sample(img, kps, np.ones(2, bool), np.random.default_rng(5), AugmentConfig(), (32, 32), (1, 0))
    b = augment_sample(img, kps, np.ones(2, bool), np.random.default_rng(5), AugmentConfig(), (32, 32), (1, 0))
    c = augment_sample(img, kps, np.ones(2, bool), np.random.default_rng(6), AugmentConfig(), (32, 32), (1, 0))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.float32 and a[0].shape == (32, 32) and 0 <= a[0].min() and a[0].max() <= 1


def test_identity_config_is_plain_resize():
    rng = np.random.default_rng(1)
    img = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    kps = np.array([[0.0, 0.0], [60.0, 40.0], [15.0, 10.0]], np.float32)
    identity = AugmentConfig(scale=(1.0, 1.0), rotation_deg=0.0, translate=0.0, flip_prob=0.0, gamma=(1.0, 1.0),
                             contrast=(1.0, 1.0), brightness=0.0, noise_prob=0.0, blur_prob=0.0)
    out, out_kps, ok = augment_sample(img, kps, np.ones(3, bool), rng, identity, (30, 20), None)
    ref, ref_kps = resize_sample(img, kps, (30, 20))
    np.testing.assert_allclose(out_kps, [[0, 0], [30, 20], [7.5, 5]], atol=1e-5)
    np.testing.assert_allclose(ref_kps, out_kps, atol=1e-5)
    assert ok.all()  # points on the far edges are inside the continuous frame
    # same sampling grid; the warp works on uint8, so allow its rounding (half a level)
    np.testing.assert_allclose(out[1:-1, 1:-1], ref[1:-1, 1:-1], atol=0.51 / 255)


def test_uint8_lookup_table_matches_the_float_path():
    from sonichu_jax.data.augment import photometric

    img = (np.random.default_rng(2).random((30, 20)) * 255).astype(np.uint8)
    config = AugmentConfig(noise_prob=1.0, blur_prob=1.0)
    a = photometric(img, np.random.default_rng(9), config)
    b = photometric(img.astype(np.float32) / 255, np.random.default_rng(9), config)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
