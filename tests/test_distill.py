"""Distillation: the in-step teacher median, frozen teachers, the loss terms, sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from train_util import batch, flat, initial_weights, setup, tiny
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import OptimConfig, TeacherConfig
from sonichu_jax.train.distill import Distillation, DistillSettings, stack_teachers, teacher_shardings
from sonichu_jax.train.supervised import build_trainer


def _teachers(cfg, seeds=(1, 2, 3)):
    models = []
    for seed in seeds:
        graphdef, state = initial_weights(cfg, seed)
        model = nnx.merge(graphdef, state)
        model.eval()
        models.append(model)
    return models


@pytest.fixture(scope="module")
def cfg():
    return tiny()


def test_median_target_equals_numpy_median_of_teacher_predictions(cfg):
    models = _teachers(cfg)
    graphdef, params, rest = stack_teachers(models)
    objective = Distillation(graphdef, cfg, DistillSettings())
    for task_index in (0, 1):
        b = batch(cfg, 4, task_index, seed=task_index)
        target = np.asarray(jax.jit(objective.targets)(b, {"params": params, "rest": rest}))
        task = cfg.task_names[task_index]
        preds = np.stack([np.asarray(m.predict(b["image"], task, tta=False)) for m in models])
        k = cfg.tasks[task_index].num_keypoints
        np.testing.assert_allclose(target[:, :k], np.median(preds, axis=0), atol=1e-6)
        # the median differs from the mean here, so the test can tell them apart
        assert np.abs(np.median(preds, 0) - preds.mean(0)).max() > 1e-4


def test_loss_terms_match_numpy():
    cfg = tiny()
    objective = Distillation(stack_teachers(_teachers(cfg, (1,)))[0], cfg, DistillSettings(teacher_weight=0.5))
    rng = np.random.default_rng(0)
    b = batch(cfg, 4, 1)  # fetal_femur: 2 of Kmax=4 keypoints
    b["has_label"] = np.array([1, 1, 0, 1], np.float32)
    b["is_pseudo"] = np.array([0, 1, 0, 0], np.float32)  # pseudo-labels are not real labels
    pred = rng.uniform(size=(4, 4, 2)).astype(np.float32)
    target = rng.uniform(size=(4, 4, 2)).astype(np.float32)
    total, parts = objective.loss({"coords": pred}, b, target)
    real = np.array([1, 0, 0, 1], bool)
    expected_real = np.abs(pred - b["keypoints"])[real][:, :2].mean()
    expected_teacher = np.abs(pred - target)[:, :2].mean()  # every sample, the task's keypoints only
    np.testing.assert_allclose(float(parts["loss_real"]), expected_real, rtol=1e-6)
    np.testing.assert_allclose(float(parts["loss_teacher"]), expected_teacher, rtol=1e-6)
    np.testing.assert_allclose(float(total), expected_real + 0.5 * expected_teacher, rtol=1e-6)


def test_teachers_stay_frozen_and_have_no_optimiser_state(cfg):
    graphdef, params, rest = stack_teachers(_teachers(cfg))
    mesh = mesh_lib.make_mesh()
    aux = {"params": params, "rest": rest}
    shardings = teacher_shardings(mesh, aux)
    aux = jax.device_put(aux, shardings)
    before = flat(aux)
    objective = Distillation(graphdef, cfg, DistillSettings())
    state, step, mesh, _ = setup(cfg, objective=objective, aux=(aux,))
    plain = build_trainer(TeacherConfig(model=cfg, optim=OptimConfig(warmup_steps=1), steps=100), mesh).state
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(plain.opt_state)
    b = batch(cfg, 8, 0)
    b["has_label"][:] = 0.0  # unlabelled: only the teachers teach
    losses = []
    for _ in range(4):
        state, metrics = step(state, mesh_lib.global_batch(mesh, b), aux)
        losses.append(float(metrics["loss_teacher"]))
    assert float(metrics["loss_real"]) == 0.0
    assert losses[-1] < losses[0]
    after = flat(aux)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


WORKER = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from flax import nnx
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import DataConfig, OptimConfig
from sonichu_jax.train.distill import DistillConfig, stack_teachers, teacher_shardings
from sonichu_jax.train.plans.stages import abstract_run
from train_util import batch, flat, initial_weights, tiny

cfg = tiny()
config = DistillConfig(model=cfg, optim=OptimConfig(warmup_steps=1), data=DataConfig(batch_size=16), steps=100)
models = []
for seed in (1, 2, 3):
    m = nnx.merge(*initial_weights(cfg, seed)); m.eval(); models.append(m)
graphdef, params, rest = stack_teachers(models)
model_graph, weights = initial_weights(cfg, 0)
out = {}
for name, mesh in {"one": mesh_lib.make_mesh(devices=jax.devices()[:1]), "data4_fsdp2": mesh_lib.make_mesh(data=4, fsdp=2)}.items():
    # what a pod plan compiles: abstract student and teachers, nothing allocated
    live = len(jax.live_arrays())
    trainer = abstract_run(config, mesh, teachers=3)
    step = trainer.lower().compile()
    assert len(jax.live_arrays()) == live, "building or compiling the plan allocated arrays"
    state = trainer.init_state(lambda w: nnx.merge(model_graph, w), weights)
    aux = {"params": params, "rest": rest}
    aux = jax.device_put(aux, teacher_shardings(mesh, aux))
    losses = []
    for t in (0, 1):
        state, metrics = step(state, mesh_lib.global_batch(mesh, batch(cfg, 16, t, seed=t)), aux)
        losses.append(float(metrics["loss"]))
    out[name] = {"losses": losses, "params": {k: v.tolist() for k, v in flat(state.params).items()},
                 "split": any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(aux))}
print("RESULT" + json.dumps(out))
"""


def test_sharded_distillation_step_matches_single_device():
    """8 fake devices (data 4 x fsdp 2, teachers sharded like the student) vs 1 device.
    Tolerance as in test_train_sharding: 1e-5 absolute after two steps; the final-conv
    biases (zero true gradient under soft-argmax) are excluded for the same reason."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", WORKER, tests_dir], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    one, many = out["one"], out["data4_fsdp2"]
    assert many["split"], "teachers were not sharded over fsdp"
    np.testing.assert_allclose(many["losses"], one["losses"], rtol=1e-5)
    for key, value in one["params"].items():
        if "final" in key and "bias" in key:
            continue
        np.testing.assert_allclose(np.array(many["params"][key]), np.array(value), atol=1e-5, err_msg=key)
