"""The teacher train step: compiled once, per-task heads, optimiser rules, NaN guard."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jax.numpy as jnp
from flax import nnx

from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import OptimConfig
from sonichu_jax.train.optim import GroupedAdamW, backbone_layer_id, decays, layer_scale
from sonichu_jax.train.state import split_model, trainable_groups
from train_util import batch, flat, setup, tiny


@pytest.fixture(scope="module")
def counted():
    """A step whose Python body counts how often JAX traces it."""
    traces = []

    def wrap(fn):
        def counted_fn(state, b):
            traces.append(1)
            return fn(state, b)

        return counted_fn

    cfg = tiny()
    state, step, mesh, _ = setup(cfg, wrap=wrap)
    # The step donates its state: tests take it from here and put the new one back.
    return {"cfg": cfg, "state": state, "step": step, "mesh": mesh, "traces": traces}


def test_compiles_once_for_all_tasks_and_gates_other_heads(counted):
    cfg, state, step, mesh, traces = (counted[k] for k in ("cfg", "state", "step", "mesh", "traces"))
    before = flat(state.params)
    before_rest = flat(state.rest)
    before_opt = flat(state.opt_state["heads"]["fetal_femur"])
    # Two batches of task 0 (HC): the fetal_femur head must not move at all (no decay,
    # no momentum, Adam count unchanged), as PyTorch leaves a parameter without a grad.
    for i in range(2):
        state, metrics = step(state, mesh_lib.global_batch(mesh, batch(cfg, 4, 0, seed=i)))
    after = flat(state.params)
    for key in before:
        moved = not np.array_equal(before[key], after[key])
        assert moved == ("fetal_femur" not in key), key
    for key, value in flat(state.rest).items():  # BatchNorm stats: only HC's head
        if "norms" in key:
            assert (not np.array_equal(before_rest[key], value)) == ("'HC'" in key), key
    for key, value in flat(state.opt_state["heads"]["fetal_femur"]).items():
        np.testing.assert_array_equal(before_opt[key], value)
    for i in range(4):  # alternate tasks: still the one compiled program
        state, metrics = step(state, mesh_lib.global_batch(mesh, batch(cfg, 4, i % 2, seed=10 + i)))
    jax.block_until_ready(metrics)
    counted["state"] = state
    assert len(traces) == 1
    assert int(state.step) == 6
    counts = {t: int(np.asarray(state.opt_state["heads"][t][0].count)) for t in ("HC", "fetal_femur")}
    assert counts == {"HC": 4, "fetal_femur": 2}
    assert set(metrics) >= {"loss", "grad_norm", "param_norm", "update_norm", "lr", "finite"}


def test_nan_batch_leaves_state_unchanged(counted):
    cfg, state, step, mesh = (counted[k] for k in ("cfg", "state", "step", "mesh"))
    good = flat(state.params)
    bad = batch(cfg, 4, 0)
    bad["image"][0, 0, 0, 0] = np.nan
    new_state, metrics = step(state, mesh_lib.global_batch(mesh, bad))
    counted["state"] = new_state
    assert float(metrics["finite"]) == 0.0 and not np.isfinite(float(metrics["loss"]))
    for key, value in flat(new_state.params).items():
        np.testing.assert_array_equal(good[key], value)


def test_masked_keypoints_do_not_contribute(counted):
    cfg, state, step, mesh = (counted[k] for k in ("cfg", "state", "step", "mesh"))
    b = batch(cfg, 4, 0)
    b2 = {k: v.copy() for k, v in b.items()}
    b2["valid"][:, 1] = 0.0
    b2["keypoints"][:, 1] = 123.0  # garbage under the mask
    b3 = {k: v.copy() for k, v in b.items()}
    b3["valid"][:, 1] = 0.0
    _, m2 = step(jax.tree.map(lambda x: x.copy(), state), mesh_lib.global_batch(mesh, b2))
    counted["state"], m3 = step(state, mesh_lib.global_batch(mesh, b3))
    assert float(m2["loss"]) == float(m3["loss"])


def test_frozen_backbone_does_not_move():
    cfg = tiny()
    state, step, mesh, opt = setup(cfg, OptimConfig(warmup_steps=1, freeze_backbone=True))
    assert ("backbone",) not in opt.groups and "backbone" not in state.opt_state
    before, head_before = flat(state.params["backbone"]), flat(state.params["heads"]["HC"])
    state, _ = step(state, mesh_lib.global_batch(mesh, batch(cfg, 4, 0)))
    state, _ = step(state, mesh_lib.global_batch(mesh, batch(cfg, 4, 0)))
    for key, value in flat(state.params["backbone"]).items():
        np.testing.assert_array_equal(before[key], value)
    assert any(not np.array_equal(head_before[k], v) for k, v in flat(state.params["heads"]["HC"]).items())


def test_layer_decay_and_weight_decay_rules():
    depth = 12
    # ViTPose (docs/training.md): embeddings layer 0, block i -> i + 1, the rest depth + 1.
    assert backbone_layer_id(("patch_embed", "proj", "kernel"), depth) == 0
    assert backbone_layer_id(("blocks", 3, "attn", "qkv", "kernel"), depth) == 4
    assert backbone_layer_id(("norm", "scale"), depth) == depth + 1
    assert layer_scale(depth + 1, depth, 0.75) == 1.0
    assert layer_scale(0, depth, 0.75) == pytest.approx(0.75**13)
    assert decays(("blocks", 0, "mlp", "fc1", "kernel"), 2)
    assert decays(("final", "kernel"), 4)
    assert not decays(("blocks", 0, "mlp", "fc1", "bias"), 1)
    assert not decays(("norm", "scale"), 1)
    assert not decays(("pos_embed",), 3)


def test_layer_decay_scales_backbone_updates():
    """The update of a backbone parameter is scaled by decay**(num_layers - id - 1): on the
    first Adam step (direction = sign of the gradient) the ratio is exact."""
    cfg = tiny()
    model = nnx.eval_shape(lambda: SonichuModel(cfg, rngs=nnx.Rngs(0)))
    _, params, _ = split_model(model)
    params = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), params)
    grads = jax.tree.map(lambda x: jnp.full(x.shape, 0.1, x.dtype), params)
    groups = trainable_groups(cfg, False)
    moves = {}
    for decay in (1.0, 0.5):
        opt = GroupedAdamW(OptimConfig(warmup_steps=0, layer_decay=decay, weight_decay=0.0), cfg, 10, groups, params)
        new, _, _ = jax.jit(lambda g, s, p: opt.update(g, s, p, jnp.asarray(0), {}))(grads, opt.init(params), params)
        moves[decay] = {k: np.abs(v - 1.0).max() for k, v in flat(new["backbone"]).items()}
    ratio = {k: moves[0.5][k] / moves[1.0][k] for k in moves[1.0]}
    # rel 2e-3: the moves are ~1e-4 measured on parameters equal to 1.0 in float32.
    assert ratio["['backbone']['patch_embed']['proj']['kernel'].value"] == pytest.approx(0.5 ** (cfg.depth + 1), rel=2e-3)
    assert ratio["['backbone']['blocks'][0]['mlp']['fc1']['kernel'].value"] == pytest.approx(0.5**cfg.depth, rel=2e-3)
    assert ratio["['backbone']['norm']['scale'].value"] == pytest.approx(1.0, rel=2e-3)
