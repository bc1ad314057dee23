"""The model's research API: inference in eval mode whatever the module's mode,
`from_pretrained(tasks=...)` keeping (and taking) flip permutations, lazy names in
``dir(sonichu_jax)``."""

from __future__ import annotations

import numpy as np
from flax import nnx

import sonichu_jax
from conftest import random_images
from sonichu_jax.checkpoint import model_from_arrays
from sonichu_jax.config import TaskSpec, tiny_config
from sonichu_jax.convert.shapes import model_shapes
from sonichu_jax.nn.sonichu import SonichuModel

CFG = tiny_config(tasks=(TaskSpec("HC", 4, (1, 0, 3, 2)), TaskSpec("FUGC", 2, (1, 0))))


def random_model(cfg, seed=0) -> SonichuModel:
    """Random values everywhere, BatchNorm statistics far from (0, 1) so that batch and
    running statistics give clearly different outputs."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, shape in model_shapes(cfg).items():
        value = 0.1 * rng.normal(size=shape)
        if key.endswith("/mean"):
            value = rng.normal(size=shape)
        elif key.endswith("/var"):
            value = rng.uniform(0.2, 3.0, size=shape)
        arrays[key] = value.astype(np.float32)
    return model_from_arrays(cfg, arrays)


def batch_norms(model):
    return [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]


def test_inference_runs_in_eval_mode_whatever_the_module_mode():
    model = random_model(CFG)
    model.train()
    norms = batch_norms(model)
    assert norms and not any(n.use_running_average for n in norms)
    stats = [np.asarray(n.mean[...]).copy() for n in norms]
    images = random_images(4, CFG, seed=1)
    image = images[2:3]
    alone = np.asarray(model.predict(image, "HC", tta=True))
    batch = np.asarray(model.predict(images, "HC", tta=True))
    np.testing.assert_allclose(alone[0], batch[2], atol=1e-5)
    hm_alone, hm_batch = np.asarray(model.heatmaps(image, "FUGC")), np.asarray(model.heatmaps(images, "FUGC"))
    np.testing.assert_allclose(hm_alone[0], hm_batch[2], atol=1e-5)
    reference = nnx.clone(model)
    reference.eval()
    np.testing.assert_allclose(hm_batch, np.asarray(reference.heatmaps(images, "FUGC")), atol=1e-6)
    # the train-mode forward pass (batch statistics) really differs: the test can fail
    reference.train()
    assert np.abs(np.asarray(reference.forward_heatmaps(images, "FUGC")) - hm_batch).max() > 1e-2
    np.testing.assert_allclose(np.asarray(model.embed(image, "none"))[0], np.asarray(model.embed(images, "none"))[2],
                               atol=1e-5)
    # the caller's module keeps its mode and its statistics
    assert not any(n.use_running_average for n in batch_norms(model))
    for n, before in zip(batch_norms(model), stats):
        np.testing.assert_array_equal(np.asarray(n.mean[...]), before)


def test_from_pretrained_tasks_keep_and_take_flip_permutations(tmp_path):
    full = random_model(CFG, seed=3)
    full.save_pretrained(tmp_path / "ckpt")
    images = random_images(3, CFG, seed=4)

    kept = SonichuModel.from_pretrained(tmp_path / "ckpt", tasks={"HC": 4, "NEW": 3})
    assert kept.cfg.task("HC").flip_perm == (1, 0, 3, 2) and kept.cfg.task("NEW").flip_perm is None
    np.testing.assert_allclose(np.asarray(kept.predict(images, "HC", tta=True)),
                               np.asarray(full.predict(images, "HC", tta=True)), atol=1e-6)

    new = SonichuModel.from_pretrained(tmp_path / "ckpt", tasks=["HC", TaskSpec("NEW", 3, (2, 1, 0))])
    assert new.cfg.task("HC").flip_perm == (1, 0, 3, 2)
    plain = np.asarray(new.predict(images, "NEW", tta=False))
    mirrored = np.array(new.predict(images[:, :, ::-1], "NEW", tta=False))
    mirrored[..., 0] = 1.0 - mirrored[..., 0]
    expected = 0.5 * (plain + mirrored[:, [2, 1, 0]])  # keypoint i of the image is keypoint perm[i] mirrored
    got = np.asarray(new.predict(images, "NEW", tta=True))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    unpermuted = 0.5 * (plain + mirrored)
    assert np.abs(got - unpermuted).max() > 1e-5  # a fresh head is nearly flat, yet the permutation shows


def test_dir_lists_the_lazy_names():
    names = dir(sonichu_jax)
    for name in ("SonichuModel", "SonichuPreprocessor", "ModelConfig", "TaskSpec", "tiny_config", "__version__"):
        assert name in names
    assert set(sonichu_jax.__all__) <= set(names)
