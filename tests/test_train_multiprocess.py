"""Two processes on localhost (jax.distributed + gloo CPU collectives, one device each),
started the way a user starts them (``--coordinator``, ``--num-processes``,
``--process-id`` through the CLI's own config path): three steps on host-local halves of
the global batch give what one process computes on the whole batch, and the run banner
says so. Then a SIGTERM to one process only (a preemption notice) stops both at the same
step, through orbax's preemption sync point. Same tolerance and same exclusion
(final-conv bias, a zero-gradient direction) as tests/test_train_sharding.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np

from train_util import batch, setup, tiny

WORKER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from sonichu_jax.cli import build_parser
from sonichu_jax.commands.run_options import load_run_config
from sonichu_jax.train import distributed
from sonichu_jax.train.configlib import TeacherConfig

argv = ["train-teacher", "--config", "teacher_tiny", "--out", "unused",
        "--coordinator", sys.argv[2], "--num-processes", "2", "--process-id", sys.argv[3]]
config = load_run_config(build_parser().parse_args(argv), TeacherConfig).validate()
assert distributed.start(config.distributed)

import jax, numpy as np
from sonichu_jax.train import mesh as mesh_lib
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
    print(distributed.banner("train-teacher", mesh, 8, 3, None))
    print(distributed.shared_storage_note("/local/run"))
    print("RESULT" + json.dumps({"n": n, "devices": jax.device_count(), "losses": losses, "params": params}))

# Preemption: the test sends SIGTERM to process 1 only; both must stop at the same step.
import time
from sonichu_jax.train.checkpointing import Checkpointer
from sonichu_jax.train.preemption import StopRequest
ckpt = Checkpointer(sys.argv[4], config.checkpoint)
with StopRequest(ckpt.manager) as stop:
    print("READY", flush=True)
    for k in range(1, 20000):
        jax.block_until_ready(metrics["loss"] + k)  # a step's worth of host work
        time.sleep(0.005)
        signum = stop.requested(k, config.log.every_steps)
        if signum:
            print("STOPPED", k, signum, flush=True)
            break
ckpt.close()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_process():
    """The reference, in this process: one device, the whole batch."""
    cfg = tiny()
    state, step, mesh, _ = setup(cfg)
    losses = []
    for t in (0, 1, 0):
        state, metrics = step(state, batch(cfg, 8, t, seed=t))
        losses.append(float(metrics["loss"]))
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    return losses, {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def test_two_processes_match_one(tmp_path):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, tests_dir, address, str(i), str(tmp_path / "ck")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    losses, params = _one_process()
    before = []
    for p in procs:  # wait until both are in their stop-polling loop
        lines = []
        while not lines or not lines[-1].startswith("READY"):
            line = p.stdout.readline()
            assert line, p.stderr.read()[-3000:]
            lines.append(line.strip())
        before.append(lines)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    stopped = [next(l for l in out.splitlines() if l.startswith("STOPPED")) for out, _ in outs]
    assert stopped[0] == stopped[1] and stopped[0].endswith(f" {int(signal.SIGTERM)}"), stopped
    lines = before[0]
    two = json.loads(next(l for l in lines if l.startswith("RESULT"))[len("RESULT"):])
    assert (two["n"], two["devices"]) == (2, 2)
    banner = next(l for l in lines if l.startswith("train-teacher:"))
    assert "cpu" in banner and "2 devices, 2 processes" in banner and "8 global / 4 per host" in banner, banner
    assert any(l.startswith("note: 2 processes write to /local/run") for l in lines), lines
    np.testing.assert_allclose(two["losses"], losses, rtol=1e-5, atol=1e-6)
    bad = {}
    for key, value in params.items():
        if key.endswith("['final']['bias'].value"):
            continue
        diff = float(np.abs(np.asarray(two["params"][key]) - value).max())
        if diff > 1e-5:
            bad[key] = diff
    assert not bad, bad
