"""The run driver's checks, without training: values that parse but cannot run fail with
one line and exit 2 before anything is written or compiled; epochs become steps; a
resume's config comparison; damaged (non-finite) checkpoints are set aside; the metrics
file of a resumed run; JAX's distributed start without a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sonichu_jax.cli import main
from sonichu_jax.errors import ConfigError
from sonichu_jax.train.configlib import TeacherConfig, apply_overrides, load_config_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIGS = os.path.join(ROOT, "configs")


def _one_line(capsys, argv, *words, code=2):
    assert main(argv) == code
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and "error:" in err[0], err
    assert all(w in err[0] for w in words), (words, err[0])


@pytest.mark.parametrize("command, setting, words", [
    ("train-teacher", "steps=30", ["optim.warmup_steps=30", "30 steps"]),  # teacher_tiny warms up for 30
    ("train-teacher", "steps=0", ["steps must be >= 1, got 0"]),
    ("train-teacher", "steps=-5", ["steps must be >= 1, got -5"]),
    ("train-teacher", "data.val_fraction=1.5", ["data.val_fraction", "1.5"]),
    ("train-teacher", "checkpoint.every_steps=0", ["checkpoint.every_steps", "got 0"]),
    ("train-teacher", "log.every_steps=0", ["log.every_steps", "got 0"]),
    ("train-teacher", "data.batch_size=0", ["data.batch_size", "got 0"]),
    ("train-teacher", "epochs=0", ["epochs must be > 0"]),
    ("train-teacher", "distributed.process_id=3", ["distributed.coordinator"]),
    ("distill", "data.batch_size=0", ["data.batch_size", "got 0"]),
    ("pretrain", "log.every_steps=0", ["log.every_steps", "got 0"]),
    ("pretrain", "steps=0", ["steps must be >= 1"]),
    ("train-teacher", "log.profile_steps=300:401", ["log.profile_steps", "'300:401'", "within the run's 400 steps"]),
    ("pretrain", "log.profile_steps=8:4", ["log.profile_steps", "START < STOP"]),
])
def test_values_that_cannot_run_fail_before_anything(tmp_path, capsys, command, setting, words):
    out = tmp_path / "run"
    config = {"train-teacher": "teacher_tiny", "distill": "distill_tiny", "pretrain": "ijepa_tiny"}[command]
    argv = [command, "--config", config, "--out", str(out), "--set", setting]
    argv += ["--frames", str(tmp_path)] if command == "pretrain" else ["--data", str(tmp_path)]
    argv += ["--teachers", str(tmp_path)] if command == "distill" else []
    _one_line(capsys, argv, *words)
    assert not out.exists()


def test_a_batch_that_does_not_split_over_the_devices(tmp_path):
    """As the user meets it: a subprocess, four devices, a global batch of 6."""
    from sonichu_jax.data.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "syn", 8, tasks=("HC",), size=64)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "sonichu_jax", "train-teacher", "--config", "teacher_tiny", "--data",
                           str(data), "--out", str(out), "--set", "data.batch_size=6"],
                          env=env, capture_output=True, text=True, timeout=300)
    err = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "data.batch_size=6" in err[0] and "4 devices" in err[0] and not out.exists(), err


def test_epochs_become_steps_from_the_training_set():
    from sonichu_jax.train.ijepa_config import IJEPAConfig
    from sonichu_jax.train.schedule import resolve_schedule

    vitb = load_config_file(os.path.join(CONFIGS, "teacher_vitb.py"))
    resolved, per_epoch = resolve_schedule(vitb, 32_722)  # the card's training set, batch 64
    assert per_epoch == 511 and resolved.steps == 51_100 and resolved.optim.warmup_steps == 1533
    assert resolved.log.eval_every_steps == 5 * 511 and resolved.epochs == 100
    ijepa = load_config_file(os.path.join(CONFIGS, "ijepa_vitb.py"))
    resolved, per_epoch = resolve_schedule(ijepa, 160_486)  # the card's frames, batch 2048
    assert isinstance(resolved, IJEPAConfig) and per_epoch == 78 and resolved.steps == 300 * 78
    assert resolved.optim.warmup_steps == 40 * 78
    # --set in steps clears the epoch twin, so the last word counts
    short = apply_overrides(vitb, ["steps=200", "optim.warmup_steps=10"])
    assert short.epochs is None and short.optim.warmup_epochs is None
    assert resolve_schedule(short, 32_722)[0].steps == 200
    # a warm-up in epochs that is longer than a run in steps: found once resolved, said in both units
    mixed = apply_overrides(vitb, ["steps=1000"])
    with pytest.raises(ConfigError, match=r"warmup_steps=1533 must be below the run.s 1000 steps .*optim.warmup_epochs=3.* at 511 steps per epoch"):
        resolve_schedule(mixed, 32_722)


def test_resume_comparison():
    from sonichu_jax.train.configlib import to_dict
    from sonichu_jax.train.run_dir import check_resume

    saved = to_dict(apply_overrides(TeacherConfig(), ["steps=100", "data.source=/d"]))
    same = apply_overrides(TeacherConfig(), ["steps=100", "data.source=/d", "log.every_steps=7", "mesh.fsdp=2",
                                             "data.num_workers=4", "checkpoint.keep=9", "log.tensorboard=false",
                                             "log.profile_steps=10:20"])
    assert check_resume(saved, to_dict(same), "run") is None
    del saved["log"]["tensorboard"], saved["log"]["profile_steps"]  # a run saved before these existed
    assert check_resume(saved, to_dict(same), "run") is None
    longer = check_resume(saved, to_dict(apply_overrides(same, ["steps=150"])), "run")
    assert longer == "resuming with a longer schedule: 100 -> 150 steps; the schedules are recomputed for 150"
    with pytest.raises(ConfigError) as info:
        check_resume(saved, to_dict(apply_overrides(same, ["data.source=/other", "seed=3", "steps=50"])), "run")
    assert str(info.value) == ("cannot resume run with a different config: data.source: '/d' (saved) vs '/other' "
                               "(now); seed: 0 (saved) vs 3 (now); steps: 100 (saved) vs 50 (now)")
    # the compute options change how the step computes, not the train state
    compute = ["model.dtype=bfloat16", "model.attention=heads_major", "model.remat=block", "model.head_conv=conv"]
    assert check_resume(saved, to_dict(apply_overrides(same, compute)), "run") is None
    # a run saved before the loss section and the decoder existed resumes with their defaults, not another
    del saved["loss"], saved["model"]["decoder"]
    defaults = to_dict(TeacherConfig())
    assert check_resume(saved, to_dict(same), "run", defaults=defaults) is None
    with pytest.raises(ConfigError, match=r"loss.kind: 'l1' \(saved\) vs 'heatmap_mse' \(now\)"):
        check_resume(saved, to_dict(apply_overrides(same, ["loss.kind=heatmap_mse"])), "run", defaults=defaults)


def test_non_finite_checkpoint_is_damaged(tmp_path):
    """A checkpoint that reads back with NaN is set aside like an unreadable one."""
    import grain

    from sonichu_jax.train.checkpointing import Checkpointer
    from sonichu_jax.train.configlib import CheckpointConfig

    it = iter(grain.MapDataset.range(8).to_iter_dataset())
    ckpt = Checkpointer(tmp_path / "checkpoints", CheckpointConfig(keep=5, keep_best=False, async_save=False))
    ckpt.save(1, {"w": jnp.ones(3)}, it)
    ckpt.save(2, {"w": jnp.array([1.0, jnp.nan, 1.0])}, it)
    target = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}
    said = []
    state, step = ckpt.restore_latest(target, it, lambda s: bool(np.isfinite(np.asarray(s["w"])).all()), said.append)
    ckpt.close()
    assert step == 1 and np.asarray(state["w"]).tolist() == [1.0, 1.0, 1.0]
    assert len(said) == 1 and "step 2" in said[0] and "non-finite" in said[0], said
    assert (tmp_path / "damaged_checkpoints" / "2").is_dir() and not (tmp_path / "checkpoints" / "2").exists()


def test_truncated_checkpoint_is_set_aside_and_its_failed_reads_stay_quiet(tmp_path, caplog):
    """The reads orbax started on a truncated checkpoint fail unawaited; asyncio would log
    each one when it is collected. Those records are dropped; others are not."""
    import gc
    import logging

    import grain

    from sonichu_jax.train.checkpointing import Checkpointer
    from sonichu_jax.train.configlib import CheckpointConfig

    it = iter(grain.MapDataset.range(8).to_iter_dataset())
    ckpt = Checkpointer(tmp_path / "checkpoints", CheckpointConfig(keep=5, keep_best=False, async_save=False))
    state = {f"w{i}": jnp.full((4096,), float(i)) for i in range(8)}
    ckpt.save(1, state, it)
    ckpt.save(2, state, it)
    for path in (tmp_path / "checkpoints" / "2").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            os.truncate(path, path.stat().st_size // 2)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    said = []
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _, step = ckpt.restore_latest(target, it, lambda s: True, said.append)
        gc.collect()
        damaged = str(tmp_path / "checkpoints" / "2")
        logging.getLogger("asyncio").error("Future exception was never retrieved\nfuture: <Future %s>", damaged)
        logging.getLogger("asyncio").error("Future exception was never retrieved\nfuture: <Future elsewhere>")
    ckpt.close()
    assert step == 1 and len(said) == 1 and "step 2" in said[0], said
    logged = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert logged == ["Future exception was never retrieved\nfuture: <Future elsewhere>"], logged


@pytest.mark.parametrize("target", [{"w": (3,), "v": (2,)}, {"w": (4,)}], ids=["another tree", "another shape"])
def test_checkpoint_of_another_state_is_refused_not_set_aside(tmp_path, target):
    """A readable checkpoint that does not fit the state the run builds (an older version's
    train state, say) is an error naming it; setting it aside would restart from scratch."""
    import grain

    from sonichu_jax.errors import InputError
    from sonichu_jax.train.checkpointing import Checkpointer
    from sonichu_jax.train.configlib import CheckpointConfig

    it = iter(grain.MapDataset.range(8).to_iter_dataset())
    ckpt = Checkpointer(tmp_path / "checkpoints", CheckpointConfig(keep=5, keep_best=False, async_save=False))
    ckpt.save(1, {"w": jnp.ones(3)}, it)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {k: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=device) for k, shape in target.items()}
    with pytest.raises(InputError, match=r"cannot resume from the checkpoint at step 1 .*another train state"):
        ckpt.restore_latest(abstract, it, lambda s: True, print)
    ckpt.close()
    assert (tmp_path / "checkpoints" / "1").is_dir() and not (tmp_path / "damaged_checkpoints").exists()


def test_resumed_metrics_keep_each_step_once(tmp_path):
    from sonichu_jax.train.metrics_log import JsonlSink

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "kind": "train"}) + "\n" for s in (2, 4, 6, 8)) + '{"step": 1')
    sink = JsonlSink(str(path), keep_up_to=4)
    sink.train_window(6, {"loss": 1.0})
    sink.close()
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [2, 4, 6]
    JsonlSink(str(path), keep_up_to=None).close()  # resumed without any checkpoint: starts over
    assert path.read_text() == ""


def test_distributed_auto_without_a_cluster_is_one_process():
    from sonichu_jax.train import distributed
    from sonichu_jax.train.configlib import DistributedConfig

    assert distributed.start(DistributedConfig()) is False
    assert distributed.start(DistributedConfig(mode="off")) is False
    assert jax.process_count() == 1 and distributed.shared_storage_note("/local") is None


def test_a_failing_initialisation_leaves_nothing(tmp_path, capsys):
    """A wrong init.path is found when the fresh state is built: before any output."""
    from sonichu_jax.data.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "syn", 4, tasks=("HC",), size=64)
    out = tmp_path / "run"
    argv = ["train-teacher", "--config", "teacher_tiny", "--data", str(data), "--out", str(out),
            "--set", "init.kind=backbone", "--set", f"init.path={tmp_path / 'missing'}", "--set", "log.progress=false"]
    assert main(argv) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and "missing" in err[0], err
    assert not out.exists()
