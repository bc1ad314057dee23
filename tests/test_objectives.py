"""Objectives that see the model's outputs, the loss section and the decoders: the L1
default gives the numbers it gave before objectives saw heatmaps, heatmap MSE and the
argmax decoder match independent numpy implementations of mmpose's definitions, and a
bad loss.kind or a bad user objective is one line."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.errors import ConfigError
from sonichu_jax.nn.vitpose import argmax_decode, soft_argmax
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import LossConfig, OptimConfig, TeacherConfig
from sonichu_jax.train.objectives import L1, gaussian_heatmaps, heatmap_mse, make_objective
from sonichu_jax.train.supervised import build_trainer
from train_util import batch, flat, initial_weights, setup, tiny

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def numpy_gaussians(xy, h, w, sigma):
    """(B, K, 2) normalised -> (B, h, w, K), one pixel at a time."""
    b, k, _ = xy.shape
    out = np.zeros((b, h, w, k))
    for i in range(b):
        for j in range(k):
            cx, cy = xy[i, j, 0] * w - 0.5, xy[i, j, 1] * h - 0.5
            for r in range(h):
                for c in range(w):
                    out[i, r, c, j] = np.exp(-((c - cx) ** 2 + (r - cy) ** 2) / (2 * sigma**2))
    return out


def mmpose_mse(output, target, weights):
    """mmpose KeypointMSELoss(use_target_weight=True) on (B, K, H, W): the weighted
    squared error's mean over every element."""
    return float(np.mean((output - target) ** 2 * weights[:, :, None, None]))


def test_heatmap_mse_is_mmpose_keypoint_mse_over_the_tasks_keypoints():
    rng = np.random.default_rng(0)
    b, h, w, kmax, k = 3, 8, 6, 5, 3  # 3 of 5 keypoints are the task's; 2 are padding
    xy = rng.uniform(0.05, 0.95, size=(b, kmax, 2)).astype(np.float32)
    target = np.asarray(gaussian_heatmaps(xy, (h, w), 1.5))
    np.testing.assert_allclose(target, numpy_gaussians(xy, h, w, 1.5), atol=1e-6)
    out = rng.normal(size=(b, h, w, kmax)).astype(np.float32)
    weight = np.ones((b, kmax), np.float32)
    weight[1, 0] = 0.0
    weight[:, k:] = 0.0
    got = float(heatmap_mse(out, target, weight, np.int32(k)))
    as_mmpose = mmpose_mse(out[..., :k].transpose(0, 3, 1, 2), target[..., :k].transpose(0, 3, 1, 2), weight[:, :k])
    np.testing.assert_allclose(got, as_mmpose, rtol=1e-6)
    # A peak of 1 at the label's pixel centre.
    one = np.array([[[2.5 / w, 4.5 / h]]], np.float32)
    hm = np.asarray(gaussian_heatmaps(one, (h, w), 2.0))[0, :, :, 0]
    assert hm[4, 2] == pytest.approx(1.0) and hm.argmax() == 4 * w + 2


def numpy_argmax_decode(hm):
    """mmpose 0.x keypoints_from_heatmaps(post_process="default"), loop by loop, then
    into our normalised frame (heatmap pixel p centred at (p + 0.5) / w)."""
    b, h, w, k = hm.shape
    out = np.zeros((b, k, 2))
    for n in range(b):
        for j in range(k):
            m = hm[n, :, :, j]
            idx = int(np.argmax(m))
            py, px = idx // w, idx % w
            x, y = float(px), float(py)
            if 1 < px < w - 1 and 1 < py < h - 1:
                x += np.sign(m[py, px + 1] - m[py, px - 1]) * 0.25
                y += np.sign(m[py + 1, px] - m[py - 1, px]) * 0.25
            out[n, j] = (x + 0.5) / w, (y + 0.5) / h
    return out


def test_argmax_decoder_matches_mmpose_post_processing():
    rng = np.random.default_rng(1)
    hm = rng.normal(size=(4, 9, 7, 6)).astype(np.float32)
    hm[0, 0, 3, 0] = 9.0  # peaks on the border rows and columns: no shift
    hm[0, 4, 1, 1] = 9.0
    hm[0, 8, 6, 2] = 9.0
    hm[1, 4, 3, 0] = 9.0  # an interior peak with equal neighbours along x: no x shift
    hm[1, 4, 2, 0] = hm[1, 4, 4, 0] = 1.0
    got = np.asarray(argmax_decode(hm))
    np.testing.assert_allclose(got, numpy_argmax_decode(hm), atol=1e-7)
    assert got[1, 0, 0] == pytest.approx(3.5 / 7)


def test_l1_step_gives_the_numbers_of_the_step_before_objectives_saw_heatmaps():
    """Losses and weights after three steps, recorded with the previous step on this
    machine class (CPU, float32), plus the first loss from a plain forward pass in numpy."""
    cfg = tiny()
    graph, weights = initial_weights(cfg, 0)
    model = nnx.merge(graph, weights)
    model.train()
    b0 = batch(cfg, 4, 0, seed=0)
    hm = np.asarray(model.forward_heatmaps(b0["image"], "HC"))  # train mode, as the step
    coords = np.asarray(soft_argmax(hm))
    k = cfg.tasks[0].num_keypoints
    expected_first = np.abs(coords - b0["keypoints"][:, :k]).sum(-1).sum() / (2 * 4 * k)

    state, step, mesh, _ = setup(cfg)
    losses = []
    for i in range(3):
        state, m = step(state, mesh_lib.global_batch(mesh, batch(cfg, 4, i % 2, seed=i)))
        losses.append(float(m["loss"]))
    np.testing.assert_allclose(losses[0], expected_first, rtol=1e-5)
    np.testing.assert_allclose(losses, [0.16295994818210602, 0.14718708395957947, 0.11585718393325806], rtol=2e-5)
    total = sum(np.abs(v).astype(np.float64).sum() for v in flat(state.params).values())
    np.testing.assert_allclose(total, 4599.10337533708, rtol=1e-5)


class Recording(L1):
    """L1 plus heatmap MSE, recording what the step hands it."""

    needs_features = True

    def __init__(self, cfg):
        self.inner = make_objective(LossConfig(kind="l1+heatmap_mse", heatmap_weight=3.0), cfg)
        self.seen = []

    def loss(self, outputs, batch, targets):
        self.seen.append({k: v.shape for k, v in outputs.items()})
        return self.inner.loss(outputs, batch, targets)


def test_objective_sees_masked_heatmaps_and_features_in_one_program():
    cfg = tiny()
    objective = Recording(cfg)
    graph, weights = initial_weights(cfg, 0)
    model = nnx.merge(graph, weights)
    model.train()
    b1 = batch(cfg, 4, 1, seed=3)  # fetal_femur: 2 of Kmax=4 keypoints
    hm = np.asarray(model.forward_heatmaps(b1["image"], "fetal_femur"))
    gauss = numpy_gaussians(b1["keypoints"][:, :2], hm.shape[1], hm.shape[2], 2.0)
    expected_mse = np.mean((hm - gauss) ** 2)
    expected_l1 = np.abs(np.asarray(soft_argmax(hm)) - b1["keypoints"][:, :2]).mean()

    state, step, mesh, _ = setup(cfg, objective=objective)
    state, m = step(state, mesh_lib.global_batch(mesh, b1))
    state, _ = step(state, mesh_lib.global_batch(mesh, batch(cfg, 4, 0, seed=4)))
    assert len(objective.seen) == 1  # traced once for both tasks
    (h, w) = hm.shape[1:3]
    assert objective.seen[0] == {"coords": (4, 4, 2), "heatmaps": (4, h, w, 4), "features": (4, 4, 4, 32)}
    np.testing.assert_allclose(float(m["loss_heatmap"]), expected_mse, rtol=1e-4)
    np.testing.assert_allclose(float(m["loss_l1"]), expected_l1, rtol=1e-4)
    np.testing.assert_allclose(float(m["loss"]), expected_l1 + 3.0 * expected_mse, rtol=1e-4)


class PerSample(L1):
    def loss(self, outputs, batch, targets):
        return abs(outputs["coords"] - batch["keypoints"]).mean((1, 2)), {}


def test_an_objective_returning_a_vector_is_one_line():
    config = TeacherConfig(model=tiny(), optim=OptimConfig(warmup_steps=1), steps=10)
    trainer = build_trainer(config, mesh_lib.make_mesh(), objective=PerSample())
    with pytest.raises(ConfigError) as err:
        trainer.lower()
    assert str(err.value) == "objective PerSample returned a loss of shape (32,); it must be a scalar"


@pytest.mark.parametrize("kind, words", [
    ("mse", ["'mse'", "l1, heatmap_mse, l1+heatmap_mse"]),
    ("no_such_module:Loss", ["'no_such_module:Loss'", "does not resolve", "l1, heatmap_mse, l1+heatmap_mse"]),
    ("train_util:NoSuchLoss", ["'train_util:NoSuchLoss'", "does not resolve"]),
])
def test_bad_loss_kind_is_one_line_before_anything_runs(kind, words, tmp_path, capsys):
    from sonichu_jax.cli import main

    out = tmp_path / "run"
    code = main(["train-teacher", "--config", "teacher_tiny", "--data", str(tmp_path), "--out", str(out),
                 "--set", f"loss.kind={kind}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert all(w in err for w in words), err


def test_decoder_is_part_of_config_json_and_used_by_predict(tmp_path):
    from sonichu_jax.checkpoint import init_model

    cfg = tiny(decoder="argmax", image_size=(64, 64))
    model = init_model(cfg, seed=0)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.cfg.decoder == "argmax" and ModelConfig.load(tmp_path).decoder == "argmax"
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    hm = np.asarray(loaded.heatmaps(x, "HC"))
    np.testing.assert_allclose(np.asarray(loaded.predict(x, "HC", tta=False)), numpy_argmax_decode(hm), atol=1e-6)
    with pytest.raises(ConfigError, match="decoder"):
        tiny(decoder="dark")


def test_argmax_decoder_reads_the_gaussian_targets_back_within_a_quarter_pixel():
    """Targets and decoder share one frame: decoding a target map returns its label to
    within a quarter heatmap pixel (rounding to the peak, then the quarter shift)."""
    xy = np.random.default_rng(2).uniform(0.1, 0.9, size=(8, 5, 2)).astype(np.float32)
    got = np.asarray(argmax_decode(gaussian_heatmaps(xy, (32, 24), 2.0)))
    err = np.abs(got - xy) * np.array([24, 32])
    assert err.max() <= 0.25 + 1e-5, err.max()
