"""Two processes on localhost (jax.distributed + gloo CPU collectives, one device each):
three steps on host-local halves of the global batch give what one process computes on
the whole batch. Same tolerance and same exclusion (final-conv bias, a zero-gradient
direction) as tests/test_train_sharding.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

WORKER = r"""
import json, os, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from sonichu_jax.train import mesh as mesh_lib
mesh_lib.maybe_initialize_distributed()
from train_util import batch, setup, tiny

cfg = tiny()
n, i = jax.process_count(), jax.process_index()
mesh = mesh_lib.make_mesh()
state, step, mesh, _ = setup(cfg, mesh=mesh)
losses = []
for t in (0, 1, 0):
    full = batch(cfg, 8, t, seed=t)
    rows = slice(i * 8 // n, (i + 1) * 8 // n)  # this process's share of the global batch
    state, metrics = step(state, mesh_lib.global_batch(mesh, {k: v[rows] for k, v in full.items()}))
    losses.append(float(np.asarray(metrics["loss"].addressable_data(0))))
leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
params = {jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)).tolist() for p, x in leaves}
if i == 0:
    print("RESULT" + json.dumps({"n": n, "devices": jax.device_count(), "losses": losses, "params": params}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tests_dir, env, count):
    procs = []
    for i in range(count):
        e = dict(env)
        if count > 1:
            e.update(SONICHU_NUM_PROCESSES=str(count), SONICHU_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, tests_dir], env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    line = next(l for l in outs[0][0].splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_two_processes_match_one():
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    one = _run(tests_dir, env, 1)
    two = _run(tests_dir, dict(env, SONICHU_COORDINATOR=f"127.0.0.1:{_free_port()}"), 2)
    assert (one["n"], one["devices"]) == (1, 1) and (two["n"], two["devices"]) == (2, 2)
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    bad = {}
    for key, value in one["params"].items():
        if key.endswith("['final']['bias'].value"):
            continue
        diff = float(np.abs(np.asarray(two["params"][key]) - np.asarray(value)).max())
        if diff > 1e-5:
            bad[key] = diff
    assert not bad, bad
