"""Batched prediction, soft-argmax conventions, TTA semantics and compile-once behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from sonichu_jax.checkpoint import init_model
from sonichu_jax.config import TaskSpec, card_config, tiny_config
from sonichu_jax.errors import InputError
from sonichu_jax.inference import iter_predictions, predict_pixels
from sonichu_jax.nn import sonichu as sonichu_module
from sonichu_jax.nn.vitpose import soft_argmax
from sonichu_jax.preprocess import SonichuPreprocessor


@pytest.fixture(scope="module")
def model():
    m = init_model(tiny_config(), seed=0)
    m.eval()
    return m


def test_card_model_has_124m_parameters():
    import jax
    from flax import nnx

    from sonichu_jax.checkpoint import abstract_model

    n = sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract_model(card_config()), nnx.Param)))
    assert 123.0e6 <= n <= 124.0e6, n


def test_soft_argmax_matches_numpy_and_pixel_centres():
    rng = np.random.default_rng(0)
    hm = rng.normal(size=(2, 5, 7, 3)).astype(np.float32) * 3
    got = np.asarray(soft_argmax(hm, beta=2.0))
    flat = np.exp(2.0 * hm.reshape(2, 35, 3))
    p = (flat / flat.sum(1, keepdims=True)).reshape(2, 5, 7, 3)
    xs, ys = (np.arange(7) + 0.5) / 7, (np.arange(5) + 0.5) / 5
    np.testing.assert_allclose(got[..., 0], np.einsum("bhwk,w->bk", p, xs), atol=1e-6)
    np.testing.assert_allclose(got[..., 1], np.einsum("bhwk,h->bk", p, ys), atol=1e-6)
    # a very peaked map at pixel (row 1, col 4) decodes to that pixel's centre
    peak = np.full((1, 5, 7, 1), -1e4, np.float32)
    peak[0, 1, 4, 0] = 0.0
    np.testing.assert_allclose(np.asarray(soft_argmax(peak)), [[[4.5 / 7, 1.5 / 5]]], atol=1e-6)


def test_tta_unflips_and_permutes():
    """On a mirror-symmetric image, TTA of a model with swapped flip pairs equals the
    average of the plain prediction and its mirrored, permuted copy."""
    cfg = tiny_config(tasks=(TaskSpec("HC", 4, (1, 0, 3, 2)),))
    m = init_model(cfg, seed=1)
    m.eval()
    x = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)
    plain = np.asarray(m.predict(x, "HC", tta=False))
    flipped = np.asarray(m.predict(x[:, :, ::-1], "HC", tta=False))
    expected = 0.5 * (plain + np.stack([1 - flipped[..., 0], flipped[..., 1]], -1)[:, [1, 0, 3, 2]])
    np.testing.assert_allclose(np.asarray(m.predict(x, "HC", tta=True)), expected, atol=1e-6)


def test_padding_does_not_change_results_and_compiles_once(model):
    prep = SonichuPreprocessor(size=(64, 64))
    images = list(np.random.default_rng(3).integers(0, 255, size=(5, 64, 64), dtype=np.uint8))
    x = np.stack([prep.preprocess_one(image)[0] for image in images])
    one_by_one = np.concatenate([np.asarray(model.predict(x[i : i + 1], "FA")) for i in range(5)])
    before = sonichu_module._jit_predict._cache_size()
    # batches of 4 and 1 (padded to 4)
    batched = np.stack([p.normalised for p in iter_predictions(model, prep, images, "FA", batch_size=4, progress=False)])
    assert sonichu_module._jit_predict._cache_size() - before == 1
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)


def test_pixels_scale_with_original_size(model):
    prep = SonichuPreprocessor(size=(64, 64))
    base = np.random.default_rng(4).integers(0, 255, size=(64, 64), dtype=np.uint8)
    stretched = np.repeat(base, 3, axis=1)  # same content, 3x wider: same normalised output
    a, b = predict_pixels(model, prep, [base, stretched], "HC", progress=False)
    np.testing.assert_allclose(b[:, 0], 3 * a[:, 0], rtol=1e-3)
    np.testing.assert_allclose(b[:, 1], a[:, 1], rtol=1e-3)


def test_unreadable_images_are_reported_not_fatal(model, tmp_path):
    good = np.zeros((20, 30), np.uint8)
    results = list(iter_predictions(model, SonichuPreprocessor(size=(64, 64)),
                                    [good, str(tmp_path / "missing.png"), good], "HC", progress=False))
    assert [r.error is None for r in results] == [True, False, True]
    assert "missing.png" in results[1].error
    with pytest.raises(InputError, match="missing.png"):
        predict_pixels(model, SonichuPreprocessor(size=(64, 64)), [good, str(tmp_path / "missing.png")], "HC",
                       progress=False)
