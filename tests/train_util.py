"""Helpers shared by the train tests: a tiny model's sharded state, compiled step, batches."""

from __future__ import annotations

import functools
import glob
import json
import os
import struct

import jax
import numpy as np
from flax import nnx

from sonichu_jax.config import tiny_config
from sonichu_jax.data.synthetic import synthetic_tasks
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import OptimConfig, TeacherConfig
from sonichu_jax.train.step import max_keypoints
from sonichu_jax.train.supervised import build_trainer

TASKS = synthetic_tasks(("HC", "fetal_femur"))

# Settings over configs/ijepa_tiny.py of the I-JEPA run that test_ijepa_sharding trains on
# 8 fake devices (data 4 x fsdp 2) and test_plan plans on cpu:8: one program, compiled once
# per session (the persistent compilation cache conftest.py sets up is shared with the
# tests' subprocesses).
IJEPA_8_DEVICES = ["model.depth=1", "predictor.depth=1", "data.batch_size=8", "optim.warmup_steps=1",
                   "optim.start_lr=1e-3", "mesh.fsdp=2"]


def tiny(**changes):
    """Smaller than tiny_config (32x32 input, 4x4 tokens): the tests check the machinery,
    and XLA's CPU backward of the transposed convolutions dominates otherwise."""
    base = dict(tasks=TASKS, image_size=(32, 32), width=32, deconv_filters=16)
    base.update(changes)
    return tiny_config(**base)


@functools.lru_cache(maxsize=4)
def initial_weights(cfg, seed=0):
    """(graphdef, state) of a freshly initialised model, made once per configuration and
    with the rbg PRNG: threefry initialisers take XLA on CPU three times longer to compile."""
    return nnx.split(SonichuModel(cfg, rngs=nnx.Rngs(jax.random.key(seed, impl="rbg"))))


def setup(cfg, optim=OptimConfig(warmup_steps=1), mesh=None, seed=0, total_steps=100, wrap=None,
          objective=None, aux=()):
    """(state, compiled step, mesh, optimizer) from the trainer's builder; ``wrap`` wraps
    the step function (tests count traces with it); ``objective`` and ``aux`` make a
    distillation step."""
    mesh = mesh or mesh_lib.make_mesh()
    config = TeacherConfig(model=cfg, optim=optim, steps=total_steps, seed=seed)
    trainer = build_trainer(config, mesh, objective=objective, aux=aux, wrap=wrap)
    model_graph, weights = initial_weights(cfg, seed)
    state = trainer.init_state(lambda w: nnx.merge(model_graph, w), weights)
    return state, trainer.step, mesh, trainer.optimizer


def batch(cfg, size, task_index, seed=0):
    rng = np.random.default_rng([seed, task_index])
    k = max_keypoints(cfg)
    kt = cfg.tasks[task_index].num_keypoints
    valid = np.zeros((size, k), np.float32)
    valid[:, :kt] = 1.0
    return {
        "image": rng.normal(size=(size, *cfg.image_size, 3)).astype(np.float32),
        "keypoints": (rng.uniform(0.2, 0.8, size=(size, k, 2)) * valid[..., None]).astype(np.float32),
        "valid": valid,
        "task_id": np.full((size,), task_index, np.int32),
        "has_label": np.ones((size,), np.float32),
        "is_pseudo": np.zeros((size,), np.float32),
    }


def flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def assert_finite_checkpoint(directory, step) -> None:
    """The checkpoint restores finite: every element, and the parameters' global norm as
    the train step computes it (float32), which overflows long before the elements do."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(directory) as manager:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    for leaf in jax.tree.leaves(state):
        assert np.isfinite(np.asarray(leaf, np.float64)).all()
    square_sum = np.float32(0.0)
    for leaf in jax.tree.leaves(state["params"]):
        square_sum += np.square(np.asarray(leaf, np.float32)).sum(dtype=np.float32)
    assert np.isfinite(np.sqrt(square_sum)), f"parameter norm overflows in checkpoint {step}"


# -- TensorBoard event files, read independently of the library ----------------------------
# The tags each metrics.jsonl field is written under: the stable names the docs promise.
JSONL_TAGS = {
    "loss": "train/loss", "loss_real": "train/loss_real", "loss_teacher": "train/loss_teacher",
    "lr": "schedule/lr", "wd": "schedule/weight_decay", "momentum": "schedule/ema_momentum",
    "grad_norm": "norm/grad", "param_norm": "norm/param", "update_norm": "norm/update",
    "img_per_s": "speed/img_per_s", "target_std": "ijepa/target_std", "pred_std": "ijepa/pred_std",
    "context_len": "ijepa/context_tokens", "target_len": "ijepa/target_tokens", "frames_skipped": "ijepa/frames_skipped",
    "val_mre": "val/mre_weighted", "val_mre_unweighted": "val/mre_unweighted",
}


def event_scalars(folder) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the event files of ``folder``, in file order,
    as TensorBoard reads them: a torn last record is skipped, and a session-start event
    (tensorboardX's purge_step) drops what earlier files hold from its step on
    (`_MaybePurgeOrphanedData` in tensorboard's event_accumulator.py). The files are
    TFRecords: 8-byte length, 4-byte CRC, the Event payload, 4-byte CRC."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    out = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        data, pos = open(path, "rb").read(), 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            if pos + 16 + length > len(data):
                break
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                out = [row for row in out if row[1] < event.step]
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
            pos += 16 + length
    return out


def jsonl_scalars(path) -> dict[tuple[str, int], float]:
    """{(tag, step): value} of every scalar in metrics.jsonl, under the tags above."""
    out = {}
    for line in open(path):
        record = json.loads(line)
        for key, value in record.items():
            if key in JSONL_TAGS:
                out[JSONL_TAGS[key], record["step"]] = value
        for task, value in record.get("per_task", {}).items():
            out[f"val/mre/{task}", record["step"]] = value
    return out


def assert_events_equal_jsonl(run_dir) -> set[str]:
    """Every scalar of metrics.jsonl is in the event files under its tag and step, once,
    with its value in float32 (the events' type); returns the tags."""
    events = event_scalars(os.path.join(run_dir, "tensorboard"))
    keys = [(tag, step) for tag, step, _ in events]
    assert len(keys) == len(set(keys)), "a (tag, step) written twice"
    expected = jsonl_scalars(os.path.join(run_dir, "metrics.jsonl"))
    assert set(keys) == set(expected), set(keys) ^ set(expected)
    for tag, step, value in events:
        np.testing.assert_allclose(value, np.float32(expected[tag, step]), rtol=1e-7, err_msg=f"{tag} at {step}")
    return {tag for tag, _ in keys}
