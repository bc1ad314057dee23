"""docs/examples/own_module.py runs as a user would run it (its own process, 2 fake CPU
devices): our ViT inside a user's module is sharded by its partition metadata with the
standard Flax calls, and three sharded AdamW steps equal the one-device steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "own_module.py")


def test_own_module_example_shards_over_two_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, EXAMPLE], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    # fc1 (64, 256) split on its larger dimension: each device holds half of it
    assert out["fc1_spec"] == "P(None, 'fsdp')" and out["fc1_shape"] == [64, 256]
    assert out["fc1_shard_shape"] == [64, 128]
    assert out["head_spec"] == "P('fsdp',)"  # the user's own annotation is honoured too
    # float32 sums in another order: agreement to ~1e-6 (measured 2e-7 on the outputs)
    assert abs(out["losses"][-1] - out["one_device_losses"][-1]) < 1e-5
    assert out["max_output_difference"] < 1e-5
    assert out["losses"][-1] < out["losses"][0]  # it trains
