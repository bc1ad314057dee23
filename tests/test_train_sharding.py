"""8 fake CPU devices: the sharded step equals the single-device step on the same global
batch (data parallel, and data x fsdp), BatchNorm statistics included. The step is the
one a pod plan compiles: `abstract_run` lowered and compiled from abstract inputs only
(no array is allocated before the fresh state), then run.

Tolerance: float32 sums reduced in a different order (per-device partial sums, then an
all-reduce) differ in the last bits; after three AdamW steps parameters agree to 1e-5
absolute (measured up to ~3e-6; lr 5e-4, so one flipped update would show as >= 1e-4).

Excluded: each head's final-conv *bias*. Soft-argmax is invariant to adding a constant to
a heatmap, so that bias's true gradient is exactly zero and what it gets is rounding noise
(~1e-10), which Adam normalises into +-lr steps whose sign depends on the summation order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

WORKER = r"""
import json, sys
import jax, numpy as np
from flax import nnx
sys.path.insert(0, sys.argv[1])
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import DataConfig, OptimConfig, TeacherConfig
from sonichu_jax.train.plans.stages import abstract_run
from train_util import batch, flat, initial_weights, tiny

assert jax.device_count() == 8, jax.device_count()
cfg = tiny()
config = TeacherConfig(model=cfg, optim=OptimConfig(warmup_steps=1), data=DataConfig(batch_size=16), steps=100)
batches = [batch(cfg, 16, t, seed=t) for t in (0, 1, 0)]
model_graph, weights = initial_weights(cfg, 0)
out = {}
for name, mesh in {
    "one": mesh_lib.make_mesh(devices=jax.devices()[:1]),
    "data8": mesh_lib.make_mesh(),
    "data4_fsdp2": mesh_lib.make_mesh(data=4, fsdp=2),
}.items():
    live = len(jax.live_arrays())
    trainer = abstract_run(config, mesh)
    step = trainer.lower().compile()
    assert len(jax.live_arrays()) == live, "building or compiling the plan allocated arrays"
    state = trainer.init_state(lambda w: nnx.merge(model_graph, w), weights)
    losses = []
    for b in batches:
        state, metrics = step(state, mesh_lib.global_batch(mesh, b))
        losses.append(float(metrics["loss"]))
    shards = {len(x.sharding.device_set) for x in jax.tree.leaves(state.params)}
    out[name] = {"losses": losses, "params": {k: v.tolist() for k, v in flat(state.params).items()},
                 "rest": {k: v.tolist() for k, v in flat(state.rest).items()}, "devices": sorted(shards),
                 "fsdp_split": any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))}
print("RESULT" + json.dumps(out))
"""


def test_sharded_step_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", WORKER, tests_dir], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    ref = out["one"]
    assert ref["devices"] == [1]
    assert out["data8"]["devices"] == [8] and not out["data8"]["fsdp_split"]
    assert out["data4_fsdp2"]["fsdp_split"]  # parameters really are split over fsdp
    for name in ("data8", "data4_fsdp2"):
        run = out[name]
        np.testing.assert_allclose(run["losses"], ref["losses"], rtol=1e-5, atol=1e-6)
        bad = {}
        for part in ("params", "rest"):  # rest: BatchNorm running statistics
            for key, value in ref[part].items():
                if key.endswith("['final']['bias'].value"):
                    continue
                diff = float(np.abs(np.asarray(run[part][key]) - np.asarray(value)).max())
                if diff > 1e-5:
                    bad[f"{part} {key}"] = diff
        assert not bad, f"{name}: {bad}"
