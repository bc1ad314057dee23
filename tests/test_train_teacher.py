"""The teacher loop end to end on synthetic data: it learns (schedule in epochs), it
writes pseudo-labels; a run killed by a real SIGTERM, then by kill -9, resumes to
bit-identical weights with every metrics step once; existing runs are never overwritten,
a resume checks the config, damaged checkpoints are set aside, and a diverging run stops
with a last good checkpoint that really is finite."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sonichu_jax.data.synthetic import write_synthetic_dataset
from sonichu_jax.train.configlib import PseudoLabelSet, apply_overrides, load_config_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TINY = os.path.join(ROOT, "configs", "teacher_tiny.py")


@pytest.fixture(scope="module")
def femur_data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "femur", 80, tasks=("fetal_femur",), size=64)


# 80 records, 12 validate (15 %): 68 train at batch 8 = 8 steps per epoch, 15 epochs = 120 steps
FIXTURE_SETS = ["model.deconv_filters=16", "data.batch_size=8", "epochs=15", "log.eval_every_steps=0",
                "log.progress=false", "checkpoint.every_steps=60"]


@pytest.fixture(scope="module")
def trained(femur_data, tmp_path_factory):
    from sonichu_jax.train.supervised import train_teacher

    config = apply_overrides(load_config_file(TINY), FIXTURE_SETS)
    out = tmp_path_factory.mktemp("run")
    result = train_teacher(config, femur_data, out)
    return result, out


def test_tiny_teacher_learns(trained, femur_data):
    """Measured (2-core CPU): untrained 12.82 px -> 4.11 px after 120 steps (32 %)."""
    result, out = trained
    val = [json.loads(l) for l in open(out / "metrics.jsonl") if '"val"' in l]
    untrained, final = val[0]["val_mre"], val[-1]["val_mre"]
    print(f"validation MRE: untrained {untrained:.2f} px, after {result.step} steps {final:.2f} px")
    assert val[0]["step"] == 0 and result.step == 120 and not result.interrupted
    assert result.validation_step == 120 and val[-1]["step"] == 120 and result.exit_code == 0
    assert final < 0.4 * untrained
    resolved = json.load(open(out / "train_config.json"))
    assert resolved["steps"] == 120 and resolved["epochs"] == 15 and resolved["model"]["deconv_filters"] == 16
    assert resolved["data"]["source"] == os.path.abspath(femur_data)
    assert sorted(os.listdir(out / "checkpoints")) == ["120", "60"]
    assert os.path.isfile(out / "model" / "config.json") and os.path.isfile(out / "best" / "config.json")
    train_lines = [json.loads(l) for l in open(out / "metrics.jsonl") if '"train"' in l]
    assert {"loss", "lr", "grad_norm", "param_norm", "update_norm", "img_per_s"} <= set(train_lines[-1])


def test_pseudo_labels_from_the_teacher(trained, femur_data, tmp_path):
    from sonichu_jax.data.sources import load_manifest, load_source
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.train.pseudo_label import select_pseudo_records, write_pseudo_labels

    _, out = trained
    model = SonichuModel.from_pretrained(out / "model")
    records = list(load_source(femur_data, tasks=model.cfg.tasks, log=None))[:20]
    path = tmp_path / "pseudo.jsonl"
    counts = write_pseudo_labels(model, records, path, batch_size=8)
    assert counts == {"written": 20, "rejected": 0}
    pseudo = list(load_manifest(str(path), tasks=model.cfg.tasks))
    assert all(r.is_pseudo and r.confidence is not None and r.task == "fetal_femur" for r in pseudo)
    conf = sorted(r.confidence for r in pseudo)
    # A trained teacher's labels are close to the truth (64 px images).
    err = [np.linalg.norm(p.keypoints - r.keypoints, axis=-1).mean() for p, r in zip(pseudo, records)]
    assert np.median(err) < 6.0
    # Threshold at the median: about half are rejected.
    strict = write_pseudo_labels(model, records, tmp_path / "strict.jsonl", batch_size=8,
                                 max_disagreement_px=conf[9])
    assert strict["written"] + strict["rejected"] == 20 and 8 <= strict["written"] <= 12
    # Selection: a cap keeps the most confident, a weight of 1.5 adds a seeded half again.
    capped = select_pseudo_records(PseudoLabelSet(str(path), caps=(("fetal_femur", 5),)), pseudo, model.cfg.tasks, 0)
    assert sorted(r.confidence for r in capped) == conf[:5]
    weighted = select_pseudo_records(PseudoLabelSet(str(path), weight=1.5), pseudo, model.cfg.tasks, 0)
    assert len(weighted) == 30


def _main(argv, capsys):
    """The CLI in this process: (exit code, stdout, stderr)."""
    from sonichu_jax.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _teacher_argv(out, data, *sets, resume=False):
    argv = ["train-teacher", "--config", TINY, "--data", str(data), "--out", str(out)]
    argv += [a for s in (*FIXTURE_SETS, *sets) for a in ("--set", s)]
    return argv + (["--resume"] if resume else [])


def _one_line_error(code, err, *words):
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("WARNING:absl")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), (words, lines[0])


def _snapshot(out):
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def test_existing_runs_are_refused_and_resume_needs_a_run(trained, femur_data, tmp_path, capsys):
    """11.2: a run directory whose checkpoints were moved away still holds a run: refused,
    untouched. Resuming a directory that does not exist, or holds no run, is an error.
    The same for pretrain and distill."""
    _, run = trained
    moved = tmp_path / "moved"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("checkpoints"))
    before = _snapshot(moved)
    code, _, err = _main(_teacher_argv(moved, femur_data), capsys)
    _one_line_error(code, err, str(moved), "already holds a run", "train_config.json", "model", "best")
    assert _snapshot(moved) == before
    ijepa = os.path.join(ROOT, "configs", "ijepa_tiny.py")
    code, _, err = _main(["pretrain", "--config", ijepa, "--frames", str(femur_data), "--out", str(moved)], capsys)
    _one_line_error(code, err, "already holds a run")
    distill = ["distill", "--config", os.path.join(ROOT, "configs", "distill_tiny.py"), "--teachers", str(run),
               "--data", str(femur_data)]
    code, _, err = _main(distill + ["--out", str(moved)], capsys)
    _one_line_error(code, err, "already holds a run")
    assert _snapshot(moved) == before
    typo = tmp_path / "tpyo"
    for argv in (_teacher_argv(typo, femur_data, resume=True), distill + ["--out", str(typo), "--resume"],
                 ["pretrain", "--config", ijepa, "--frames", str(femur_data), "--out", str(typo), "--resume"]):
        code, _, err = _main(argv, capsys)
        _one_line_error(code, err, str(typo), "does not exist")
    assert not typo.exists()
    (tmp_path / "empty").mkdir()
    code, _, err = _main(_teacher_argv(tmp_path / "empty", femur_data, resume=True), capsys)
    _one_line_error(code, err, "holds no run")
    assert not os.listdir(tmp_path / "empty")


@pytest.mark.parametrize("change, words", [
    ("optim.lr=1e-3", ["optim.lr: 0.002 (saved) vs 0.001 (now)"]),
    ("data.batch_size=4", ["data.batch_size: 8 (saved) vs 4 (now)"]),
    ("epochs=10", ["steps: 120 (saved) vs 80 (now)"]),
    ("model.depth=3", ["model.depth: 2 (saved) vs 3 (now)"]),
])
def test_resume_refuses_a_different_config(trained, femur_data, capsys, change, words):
    """11.4: one line naming each differing key with both values, exit 2, the run untouched."""
    _, run = trained
    before = _snapshot(run)
    code, _, err = _main(_teacher_argv(run, femur_data, change, resume=True), capsys)
    _one_line_error(code, err, "cannot resume", *words)
    assert _snapshot(run) == before


def test_damaged_checkpoint_is_set_aside(trained, femur_data, tmp_path, capsys):
    """11.5: the latest checkpoint truncated: the resumed run names it (step and path), moves
    it aside and continues from the newest intact one, to the very weights of the straight
    run; each step appears once in metrics.jsonl."""
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    data_files = [p for p in (copy / "checkpoints" / "120").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for path in data_files:
        os.truncate(path, path.stat().st_size // 2)
    code, out, err = _main(_teacher_argv(copy, femur_data, resume=True), capsys)
    assert code == 0, err[-3000:]
    damaged = f"checkpoint at step 120 ({copy / 'checkpoints' / '120'}) is damaged"
    assert damaged in out and "resumed from step 60" in out, out
    assert (copy / "damaged_checkpoints" / "120").is_dir() and "120" in os.listdir(copy / "checkpoints")
    steps = [json.loads(l)["step"] for l in open(copy / "metrics.jsonl") if '"train"' in l]
    assert steps == sorted(set(steps)) and steps[-1] == 120, steps
    a, b = _weights(run), _weights(copy)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_longer_schedule_resumes_and_says_so(trained, femur_data, tmp_path, capsys):
    """11.4: more epochs (more steps) are allowed: said in one line, and the saved config
    follows; so are other compute options, whose state is the same. (``stop_after=0``:
    the resume is checked and the checkpoint restored, nothing is trained or compiled.)"""
    from sonichu_jax.train.supervised import train_teacher

    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    compute = ["model.dtype=bfloat16", "model.attention=heads_major", "model.remat=block", "model.head_conv=conv"]
    config = apply_overrides(load_config_file(TINY), FIXTURE_SETS + ["epochs=16"] + compute)
    result = train_teacher(config, femur_data, copy, resume=True, stop_after=0)
    out = capsys.readouterr().out
    assert "resuming with a longer schedule: 120 -> 128 steps; the schedules are recomputed for 128" in out, out
    assert result.step == 120 and not result.finished and result.exit_code == 0
    saved = json.load(open(copy / "train_config.json"))
    assert saved["steps"] == 128 and (saved["model"]["attention"], saved["model"]["remat"]) == ("heads_major", "block")
    assert "resumed from step 120" in out


def test_resuming_a_finished_run_reports_without_logging_twice(trained, femur_data, tmp_path, capsys):
    """A finished run resumed trains nothing: its result reports the MRE measured again at
    the last step (the same weights, so the same number), and metrics.jsonl keeps one
    validation line per step."""
    from sonichu_jax.train.supervised import train_teacher

    first, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = apply_overrides(load_config_file(TINY), FIXTURE_SETS)
    result = train_teacher(config, femur_data, copy, resume=True)
    assert "resumed from step 120" in capsys.readouterr().out
    assert result.finished and result.step == result.validation_step == 120
    np.testing.assert_allclose(result.val_mre, first.val_mre, rtol=1e-6)
    val_steps = [json.loads(l)["step"] for l in open(copy / "metrics.jsonl") if '"val"' in l]
    assert val_steps == sorted(set(val_steps)) and val_steps[-1] == 120, val_steps


def test_nan_guard_names_a_finite_checkpoint(femur_data, tmp_path, capsys):
    """11.3: with lr=1e30 the parameters overflow while loss and gradients are still
    finite; the guard must catch that, save nothing non-finite, and name as last good a
    checkpoint that restores finite (parameters, optimiser state and their norms)."""
    from train_util import assert_finite_checkpoint

    out = tmp_path / "nan"
    code, _, err = _main(_cli(out, femur_data, "optim.lr=1e30", "checkpoint.every_steps=1", "steps=12")[3:], capsys)
    assert code == 1 and "non-finite" in err and "Traceback" not in err, err
    named = err.split("Last good checkpoint: ")[1]
    assert named.startswith("step "), err
    step = int(named.split()[1])
    saved = sorted(int(d) for d in os.listdir(out / "checkpoints") if d.isdigit())
    assert saved and max(saved) == step, (saved, err)
    assert_finite_checkpoint(out / "checkpoints", step)


def _cli(out, data, *overrides):
    sets = [
        "model.image_size=(32, 32)", "model.deconv_filters=8", "data.batch_size=4", "data.val_fraction=0.0",
        "steps=24", "log.every_steps=2", "log.progress=false", "checkpoint.every_steps=10",
        "optim.warmup_steps=4", *overrides,
    ]
    cmd = [sys.executable, "-m", "sonichu_jax.cli", "train-teacher", "--config", TINY, "--data", str(data),
           "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _weights(out):
    from safetensors.numpy import load_file

    return load_file(str(out / "model" / "flax_model.safetensors"))


def _wait_for_step(metrics, step, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run exited early: {proc.stderr.read()[-2000:]}")
        if metrics.exists():
            steps = [json.loads(l)["step"] for l in open(metrics) if l.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the run")


def _write_orphan_events(folder, steps):
    """Events of ``steps`` in a file of their own, and a torn record at the end of the run's file."""
    from tensorboardX import SummaryWriter

    (run_file,) = folder.glob("events.out.tfevents.*")
    writer = SummaryWriter(str(folder), filename_suffix=".orphans")
    for step in steps:
        writer.add_scalar("train/loss", 1.0, step)
    writer.close()
    with open(run_file, "ab") as fh:
        fh.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x01\x02")


def test_sigterm_then_resume_is_bit_exact_and_logs_each_step_once(femur_data, tmp_path):
    """Bit-exact on CPU: the same compiled program on the same inputs in the same order.
    SIGTERM: the step's checkpoint is saved and the exit code is 143. Then the state kill -9
    leaves behind (complete metrics lines and TensorBoard events beyond the last
    checkpoint, a torn last line and record) is made deterministically (a real kill -9
    races the tiny run): the resume drops them, so every step is logged once, in
    metrics.jsonl and in the event files alike. The straight run
    writes no event files (log.tensorboard=false) and a profiler trace of steps 3 to 5,
    which leaves its weights as they are."""
    from train_util import assert_events_equal_jsonl

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    ref_out, cut_out = tmp_path / "ref", tmp_path / "cut"
    ref_cli = _cli(ref_out, femur_data, "log.tensorboard=false", "log.profile_steps=3:5")
    ref = subprocess.Popen(ref_cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cut = subprocess.Popen(_cli(cut_out, femur_data), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(cut_out / "metrics.jsonl", 6, cut)
    cut.send_signal(signal.SIGTERM)
    assert cut.wait(timeout=300) == 128 + signal.SIGTERM, cut.stderr.read()[-2000:]
    saved = sorted(int(d) for d in os.listdir(cut_out / "checkpoints") if d.isdigit())
    assert saved and 6 <= saved[-1] < 24, saved
    assert not (cut_out / "model").exists()  # not finished: no export
    with open(cut_out / "metrics.jsonl", "a") as fh:  # what a run killed after its checkpoint leaves
        for step in range(saved[-1] + 2, saved[-1] + 7, 2):
            fh.write(json.dumps({"step": step, "kind": "train", "loss": 1.0}) + "\n")
        fh.write('{"step": ' + str(saved[-1] + 8))
    _write_orphan_events(cut_out / "tensorboard", range(saved[-1] + 2, saved[-1] + 7, 2))
    resumed = subprocess.run(_cli(cut_out, femur_data) + ["--resume"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]
    rows = [json.loads(l) for l in open(cut_out / "metrics.jsonl") if '"train"' in l]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 24, steps  # (the stop may end a window early)
    assert all("grad_norm" in r for r in rows), rows  # the killed run's lines are gone
    assert "train/loss" in assert_events_equal_jsonl(cut_out)  # ... and its events
    assert not (ref_out / "tensorboard").exists()
    traces = list((ref_out / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0, traces
    a, b = _weights(ref_out), _weights(cut_out)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
