"""Flax model vs the independent PyTorch reference, loaded from PyTorch-layout safetensors.

Tolerances (float32, CPU): heatmaps relative L2 <= 1e-5, normalised coordinates
max |difference| <= 2e-5, with and without TTA. Weights are drawn so heatmaps are peaked
(softmax maximum > 0.1), and BatchNorm runs in eval mode with non-trivial statistics.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import random_images, write_reference_checkpoint
from sonichu_jax.config import TaskSpec, tiny_config

torch = pytest.importorskip("torch")

from sonichu_jax.nn.sonichu import SonichuModel  # noqa: E402

HEATMAP_TOL = 1e-5
COORD_TOL = 2e-5

VARIANTS = {
    # the card's architecture, shrunk: fixed sin-cos table, one classic head per task
    "per_task_sincos": dict(),
    "shared_trunk_learned": dict(head_sharing="shared_trunk", pos_embed="learned"),
    # the official ViTPose quirks: padded patch conv, class slot folded, simple head, 4:3 input
    "simple_folded_padded": dict(head_kind="simple", pos_embed="learned_cls_folded", patch_padding=2,
                                 image_size=(64, 48), layer_norm_eps=1e-5),
    "flip_permuted": dict(tasks=(TaskSpec("HC", 4, (1, 0, 3, 2)), TaskSpec("PLAX", 22, tuple(range(21, -1, -1))))),
}


def _softmax_max(heatmaps):
    flat = heatmaps.reshape(heatmaps.shape[0], -1, heatmaps.shape[-1])
    flat = np.exp(flat - flat.max(axis=1, keepdims=True))
    return float((flat / flat.sum(axis=1, keepdims=True)).max())


def _reference_outputs(torch_model, images, tasks):
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    out = {}
    with torch.no_grad():
        for task in tasks:
            out[task] = (
                torch_model.heatmaps(x, task).permute(0, 2, 3, 1).numpy(),
                {tta: torch_model.predict(x, task, tta=tta).numpy() for tta in (False, True)},
            )
    return out


@functools.partial(jax.jit, static_argnums=(0, 3))
def _all_tasks(graphdef, state, images, tasks):
    """Every task's heatmaps and coordinates (plain and TTA) in one program: the methods
    behind `heatmaps` and `predict`, compiled once instead of three times per task."""
    model = nnx.merge(graphdef, state)
    return {
        t: (model.forward_heatmaps(images, t), {tta: model.forward_predict(images, t, tta) for tta in (False, True)})
        for t in tasks
    }


def _check_tasks(jax_model, torch_model, images, tasks):
    expected = _reference_outputs(torch_model, images, tasks)
    got = jax.device_get(_all_tasks(*nnx.split(jax_model), images, tuple(tasks)))
    for task in tasks:
        hm_ref, coords_ref = expected[task]
        hm, coords = got[task]
        assert hm.shape == hm_ref.shape
        assert hm.dtype == np.float32
        assert _softmax_max(hm_ref) > 0.1, f"{task}: heatmaps too flat to expose errors"
        rel = np.linalg.norm(hm - hm_ref) / np.linalg.norm(hm_ref)
        assert rel <= HEATMAP_TOL, f"{task}: heatmap relative L2 {rel:.2e}"
        for tta, ref in coords_ref.items():
            assert coords[tta].shape == (len(images), jax_model.cfg.task(task).num_keypoints, 2)
            diff = np.abs(coords[tta] - ref).max()
            assert diff <= COORD_TOL, f"{task} tta={tta}: max |d| {diff:.2e}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parity_with_pytorch_reference(variant, torch_ref, tmp_path):
    cfg = tiny_config(**VARIANTS[variant])
    torch_model = write_reference_checkpoint(torch_ref, cfg, tmp_path, seed=3)
    jax_model = SonichuModel.from_pretrained(tmp_path)
    images = random_images(3, cfg, seed=1)
    # every task for the card's layout; two tasks (4 and 22 keypoints) for the variants
    tasks = cfg.task_names if variant == "per_task_sincos" else cfg.task_names[:1] + ("PLAX",)
    _check_tasks(jax_model, torch_model, images, list(dict.fromkeys(tasks)))


def test_public_methods_match_reference(torch_ref, tmp_path):
    """`heatmaps` and `predict` themselves, the jitted entry points users call."""
    cfg = tiny_config()
    torch_model = write_reference_checkpoint(torch_ref, cfg, tmp_path, seed=3)
    jax_model = SonichuModel.from_pretrained(tmp_path)
    images = random_images(2, cfg, seed=2)
    hm_ref, coords_ref = _reference_outputs(torch_model, images, ["FA"])["FA"]
    hm = np.asarray(jax_model.heatmaps(images, "FA"))
    assert np.linalg.norm(hm - hm_ref) / np.linalg.norm(hm_ref) <= HEATMAP_TOL
    assert np.abs(np.asarray(jax_model.predict(images, "FA", tta=True)) - coords_ref[True]).max() <= COORD_TOL


def test_batchnorm_statistics_matter(torch_ref, tmp_path):
    """Guards the test itself: the running statistics visibly change the output, so a
    loader that dropped them would fail the parity test above."""
    cfg = tiny_config()
    write_reference_checkpoint(torch_ref, cfg, tmp_path, seed=3)
    model = SonichuModel.from_pretrained(tmp_path)
    images = random_images(2, cfg)
    before = np.asarray(model.heatmaps(images, "HC"))
    norm = model.heads["HC"].trunk.norms[0]
    norm.mean[...] = np.zeros_like(norm.mean[...])
    norm.var[...] = np.ones_like(norm.var[...])
    after = np.asarray(model.heatmaps(images, "HC"))
    assert np.linalg.norm(after - before) / np.linalg.norm(before) > 1e-2


def test_bfloat16_compute_stays_close(torch_ref, tmp_path):
    cfg = tiny_config()
    torch_model = write_reference_checkpoint(torch_ref, cfg, tmp_path, seed=5)
    model = SonichuModel.from_pretrained(tmp_path, dtype="bfloat16")
    images = random_images(2, cfg)
    with torch.no_grad():
        ref = torch_model.predict(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), "HC", tta=True).numpy()
    got = np.asarray(model.predict(images, "HC", tta=True))
    assert got.dtype == np.float32  # soft-argmax runs in float32 whatever the compute dtype
    assert np.abs(got - ref).max() < 2e-2
    assert all(v.get_value().dtype == np.float32 for _, v in nnx.to_flat_state(nnx.state(model)))


@pytest.mark.parametrize("shape", [(2, 16, 16, 8, 5), (1, 7, 3, 4, 6)])
def test_subpixel_deconv_equals_pytorch_conv_transpose(shape):
    """The sub-pixel form of the 4x4 stride-2 transposed conv, on non-square odd grids."""
    from sonichu_jax.convert.transforms import DECONV
    from sonichu_jax.nn.vitpose import Deconv4x4

    b, h, w, cin, cout = shape
    rng = np.random.default_rng(h * w)
    weight = rng.normal(size=(cin, cout, 4, 4)).astype(np.float32)
    x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
    layer = Deconv4x4(cin, cout, np.float32, rngs=nnx.Rngs(0))
    layer.kernel[...] = DECONV.forward((weight,), None)[0]
    ref = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(weight), stride=2, padding=1
    ).permute(0, 2, 3, 1).numpy()
    got = np.asarray(layer(x))
    assert got.shape == (b, 2 * h, 2 * w, cout)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5)
