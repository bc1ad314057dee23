"""Issue 21, "nothing lost, round two": each trial of the hostile re-test as a user meets it
(the CLI's main, or a subprocess where a signal or a process's global state is involved):
one line, the right exit code, and nothing the user had is replaced. Data-loss trials first.

Read-only and full disks: tests run as root in CI, where a chmod'ed folder does not stop a
write. The OS-error trials use a path below /proc (no file can be created there, root or
not) or replace the temporary-file call with one raising OSError(EROFS / ENOSPC); each test
says which."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import pytest

from conftest import numpy_model
from sonichu_jax.cli import main
from sonichu_jax.config import tiny_config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def one_line(capsys, argv, code, *words):
    """Run the CLI; exactly one non-empty stderr line, holding every word; that line."""
    assert main(argv) == code
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and "error:" in err[0], err
    assert all(w in err[0] for w in words), (words, err[0])
    return err[0]


def snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (links not followed) with its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny whole model as written by save_pretrained (config.json + flax_model.safetensors)."""
    folder = tmp_path_factory.mktemp("model") / "ckpt"
    numpy_model(tiny_config()).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture
def frames(tmp_path):
    """d/p.png and d/p_HC.png: the second is what an overlay of the first would be called."""
    folder = tmp_path / "d"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("p.png", "p_HC.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (48, 64), dtype=np.uint8))
    return folder


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from sonichu_jax.data.synthetic import write_synthetic_dataset

    return str(write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "syn", 4, tasks=("HC",), size=64))


# -- 1. an overlay never replaces an input ------------------------------------------------------
@pytest.mark.parametrize("where", ["d", "d/overlays", "."])
def test_predict_overlay_never_replaces_or_joins_the_inputs(model_dir, frames, capsys, where):
    before = snapshot(frames)
    overlay = os.path.normpath(os.path.join(frames.parent, where))
    one_line(capsys, ["predict", str(frames), "--task", "HC", "--model", model_dir, "--overlay", overlay],
             2, "overlay folder", "overlap", str(frames))
    assert snapshot(frames) == before


def test_predict_overlay_beside_the_inputs_still_works(model_dir, frames, tmp_path):
    before = snapshot(frames)
    assert main(["predict", str(frames), "--task", "HC", "--model", model_dir, "--quiet", "--no-tta",
                 "--overlay", str(tmp_path / "ov")]) == 0
    assert sorted(os.listdir(tmp_path / "ov")) == ["p_HC.png", "p_HC_HC.png"]
    assert snapshot(frames) == before


# -- 2. --resume on a run holding results but no checkpoint -------------------------------------
def _finished_run_without_checkpoints(folder) -> dict[str, bytes]:
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "flax_model.safetensors").write_bytes(b"earlier weights")
    (folder / "best").mkdir()
    (folder / "train_config.json").write_text("{}")
    (folder / "metrics.jsonl").write_text('{"step": 10, "kind": "train"}\n')
    return snapshot(folder)


def test_resume_without_a_checkpoint_is_refused_naming_what_the_run_holds(synthetic, tmp_path, capsys):
    run = tmp_path / "run"
    before = _finished_run_without_checkpoints(run)
    one_line(capsys, ["train-teacher", "--config", "teacher_tiny", "--data", synthetic, "--out", str(run),
                      "--resume"], 2, "cannot resume", "model, best, metrics.jsonl", "no intact checkpoint")
    assert snapshot(run) == before and not (run / "run.lock").exists()


def test_resume_whose_checkpoints_are_all_damaged_is_refused_too(tmp_path):
    """The same check after a restore found nothing intact (`_Run.start` calls it)."""
    from sonichu_jax.errors import InputError
    from sonichu_jax.train.run_dir import RunDir

    _finished_run_without_checkpoints(tmp_path)
    with pytest.raises(InputError, match="holds model, best, metrics.jsonl but no intact checkpoint"):
        RunDir(tmp_path).check_restart()
    (tmp_path / "metrics.jsonl").write_text("")
    for name in ("model", "best"):
        (tmp_path / name / "flax_model.safetensors").unlink(missing_ok=True)
        os.rmdir(tmp_path / name)
    RunDir(tmp_path).check_restart()  # nothing to lose: a restart from step 0 may go ahead


# -- 3. the run-directory lock ----------------------------------------------------------------------
def _lock(folder, pid: int, host: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-12-04 18:00:00 +0000"}
    (folder / "run.lock").write_text(json.dumps(holder))


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(synthetic, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "run"
        _lock(run, holder.pid)
        line = one_line(capsys, ["train-teacher", "--config", "teacher_tiny", "--data", synthetic, "--out", str(run)],
                        2, "in use by process", str(holder.pid), socket.gethostname(), "2026-12-04 18:00:00")
        assert "run.lock" in line
        assert json.loads((run / "run.lock").read_text())["pid"] == holder.pid  # the holder's lock stays
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_on_another_host_is_never_taken_over(synthetic, tmp_path, capsys):
    run = tmp_path / "run"
    _lock(run, 1, host="elsewhere-host")
    one_line(capsys, ["train-teacher", "--config", "teacher_tiny", "--data", synthetic, "--out", str(run)],
             2, "in use by process 1 on elsewhere-host")


def test_a_dead_process_lock_is_taken_over_with_a_note(synthetic, tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process now
    run = tmp_path / "run"
    _lock(run, gone.pid)
    # taken over, then refused for a reason of its own (nothing to resume): the note comes first
    assert main(["train-teacher", "--config", "teacher_tiny", "--data", synthetic, "--out", str(run),
                 "--resume"]) == 2
    captured = capsys.readouterr()
    assert f"note: taking over {run / 'run.lock'} from process {gone.pid}" in captured.out
    assert "no longer running" in captured.out and "holds no run" in captured.err
    assert not (run / "run.lock").exists()  # released on the way out


def test_the_lock_is_the_primary_process_s_and_released(tmp_path):
    from sonichu_jax.train.run_dir import RunDir

    run = RunDir(tmp_path / "new")
    run.lock(print)
    holder = json.loads((tmp_path / "new" / "run.lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
    run.unlock()
    assert not (tmp_path / "new").exists()  # created for the lock, left empty: removed
    # a lock naming this very process is a restarted container's earlier run: taken over
    _lock(tmp_path / "again", os.getpid())
    notes = []
    RunDir(tmp_path / "again").lock(notes.append)
    assert len(notes) == 1 and f"from process {os.getpid()}" in notes[0]
    (tmp_path / "file").write_text("x")
    RunDir(tmp_path / "file").lock(print)  # a file is left to `check` to refuse
    assert (tmp_path / "file").read_text() == "x"
    # the loop takes it on process 0 only (one lock per multi-host run)
    source = open(os.path.join(ROOT, "train", "loop.py")).read()
    assert "if self.primary:  # one lock per run, however many hosts\n            self.run_dir.lock(" in source


@pytest.mark.slow
def test_two_training_processes_on_one_directory(synthetic, tmp_path):
    """As the issue found it: two train-teacher processes on one --out. The second is
    refused while the first holds the directory (about 20 s)."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "sonichu_jax", "train-teacher", "--config", "teacher_tiny", "--data", synthetic,
            "--out", str(run), "--set", "log.progress=false"]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if (run / "run.lock").exists() or first.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        second = subprocess.run(argv + ["--set", "optim.lr=1e-2"], capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert f"in use by process {first.pid} on {socket.gethostname()}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait()


# -- 4. every output path gets --out's overlap checks -----------------------------------------------
@pytest.mark.parametrize("argv", [
    ["convert", "{src}", "--out", "{tmp}/o", "--report-json", "{src}/config.json"],
    ["convert", "{src}", "--out", "{tmp}/o", "--report-json", "{tmp}/o/config.json"],
    ["convert", "{src}/flax_model.safetensors", "--out", "{tmp}/o", "--report-json", "{src}/config.json"],
    ["inspect", "{src}", "--json", "{src}/config.json"],
    ["parity", "{src}", "--json", "{src}/config.json"],
    ["embed", "{frames}", "--model", "{src}", "--out", "{src}/features.npz"],
    ["evaluate", "--model", "{src}", "--data", "{tmp}/labels.jsonl", "--json", "{src}/config.json"],
    ["pseudo-label", "--model", "{src}", "--images", "{frames}", "--task", "HC", "--out", "{src}/p.jsonl"],
    ["predict", "{frames}/p.png", "--task", "HC", "--model", "{src}", "--out", "{src}/preds.json"],
    ["plan", "--config", "{tmp}/c.json", "--topology", "cpu:1", "--json", "{tmp}/c.json"],
])
def test_no_output_replaces_an_input_or_another_output(argv, model_dir, frames, tmp_path, capsys):
    (tmp_path / "c.json").write_text("{}")
    given = {"src": model_dir, "tmp": str(tmp_path), "frames": str(frames)}
    before = snapshot(model_dir), snapshot(frames)
    err = "".join(one_line(capsys, [a.format(**given) for a in argv], 2))
    assert "overlap" in err
    assert (snapshot(model_dir), snapshot(frames)) == before and not (tmp_path / "o").exists()


# -- 5. demo --force replaces only what the demo writes -------------------------------------------
def _demo(argv, stop_in: str, **env):
    """The demo in a fresh process (it sets JAX's compilation cache), with the stage
    ``stop_in`` replaced by one that stops as a user's signal would."""
    code = (
        "import sys, signal\n"
        "import sonichu_jax.train.recipe as recipe\n"
        "from sonichu_jax.train.loop import RunResult\n"
        f"stop = {stop_in!r}\n"
        "if stop == 'data':\n"
        "    def make_data(*a): raise KeyboardInterrupt\n"
        "    recipe.make_data = make_data\n"
        "else:\n"
        "    import sonichu_jax.train.pretrain as pretrain\n"
        "    pretrain.pretrain = lambda c, f, out, **k: RunResult(out, 3, False, signal.SIGTERM)\n"
        "from sonichu_jax.cli import main\n"
        f"sys.exit(main({argv!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, **env))


def test_demo_force_keeps_the_user_s_files(tmp_path):
    out = tmp_path / "demo"
    (out / "teachers" / "t1_labels").mkdir(parents=True)
    (out / "report.html").write_text("old report")
    (out / "mine.txt").write_text("the user's own file")
    (out / "my_runs").mkdir()
    (out / "my_runs" / "keep.json").write_text("{}")
    done = _demo(["demo", "--quick", "--force", "--out", str(out)], "data")
    assert done.returncode == 130, done.stderr
    assert sorted(os.listdir(out)) == ["mine.txt", "my_runs"]
    assert (out / "mine.txt").read_text() == "the user's own file" and (out / "my_runs" / "keep.json").exists()


def test_demo_without_force_and_demo_into_a_file(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("x")
    one_line(capsys, ["demo", "--quick", "--out", str(tmp_path / "demo")], 2, "already exists and is not empty")
    (tmp_path / "file").write_text("x")
    one_line(capsys, ["demo", "--quick", "--out", str(tmp_path / "file")], 2, "is an existing file, not a folder")
    assert (tmp_path / "file").read_text() == "x"


def test_sigterm_during_pretraining_stops_the_whole_demo(tmp_path):
    """Pretraining returns as a SIGTERM leaves it (checkpoint saved, signal recorded): the
    demo stops there with 143 instead of training teachers on a missing backbone."""
    out = tmp_path / "demo"
    done = _demo(["demo", "--quick", "--out", str(out)], "pretrain")
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    err = [l for l in done.stderr.splitlines() if "sonichu-jax demo" in l]
    assert err == ["sonichu-jax demo: error: stopped by signal 15 during pretraining; the demo's later stages did "
                   "not run"], done.stderr[-2000:]
    assert not (out / "teachers").exists()


# -- 6. exports replace links, never write through them ---------------------------------------------
def test_an_export_replaces_a_link_and_leaves_its_target_alone(tmp_path):
    from sonichu_jax.train.run_dir import export_to

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "flax_model.safetensors").write_bytes(b"someone else's weights")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(outside, run / "model")
    model = numpy_model(tiny_config())
    export_to(str(run), "model", model.save_pretrained)  # the exporter the teacher and student stages use
    assert (outside / "flax_model.safetensors").read_bytes() == b"someone else's weights"
    assert not os.path.islink(run / "model") and (run / "model" / "flax_model.safetensors").stat().st_size > 1000


# -- OS errors: one line, exit 1 -----------------------------------------------------------------------
def test_an_output_below_proc_is_one_line(model_dir, capsys):
    """Real, root or not: nothing can be created below /proc."""
    one_line(capsys, ["inspect", model_dir, "--json", "/proc/sonichu-h21/x.json"], 1, "/proc/sonichu-h21")


@pytest.fixture
def read_only(monkeypatch):
    """Every temporary file or folder a write starts with fails as on a read-only file
    system (EROFS); `full` switches it to a full disk (ENOSPC)."""
    state = {"errno": errno.EROFS}

    def refuse(*args, dir=None, **kwargs):
        raise OSError(state["errno"], os.strerror(state["errno"]), dir)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    return state


@pytest.mark.parametrize("error", [errno.EROFS, errno.ENOSPC])
@pytest.mark.parametrize("argv", [
    ["predict", "{frames}/p.png", "--task", "HC", "--model", "{src}", "--out", "{tmp}/out/preds.json", "--quiet"],
    ["predict", "{frames}/p.png", "--task", "HC", "--model", "{src}", "--overlay", "{tmp}/out", "--quiet"],
    ["inspect", "{src}", "--json", "{tmp}/out/i.json"],
    ["convert", "{src}", "--out", "{tmp}/out"],
    ["embed", "{frames}", "--model", "{src}", "--out", "{tmp}/out/f.npz", "--quiet"],
])
def test_read_only_or_full_outputs_are_one_line(argv, error, model_dir, frames, tmp_path, capsys, read_only):
    read_only["errno"] = error
    given = {"src": model_dir, "tmp": str(tmp_path), "frames": str(frames)}
    line = one_line(capsys, [a.format(**given) for a in argv], 1, os.strerror(error), str(tmp_path))
    assert "Errno" not in line


def test_a_checkpoint_save_that_fails_names_the_last_intact_one(tmp_path, capsys, monkeypatch):
    """The save of step 4 fails as on a full disk (the orbax save call raises ENOSPC)."""
    from sonichu_jax.data.synthetic import write_synthetic_dataset
    from sonichu_jax.train.checkpointing import Checkpointer

    data = str(write_synthetic_dataset(tmp_path / "syn", 4, tasks=("HC",), size=64))
    save = Checkpointer.save

    def fill_up(self, step, *args, **kwargs):
        if step >= 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(self.directory, str(step)))
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", fill_up)
    run = tmp_path / "run"
    one_line(capsys, ["train-teacher", "--config", "teacher_tiny", "--data", data, "--out", str(run), "--set",
                      "steps=4", "--set", "optim.warmup_steps=1", "--set", "checkpoint.every_steps=2", "--set",
                      "log.progress=false", "--set", "checkpoint.async_save=false"],
             1, "No space left on device", f"last intact checkpoint: step 2 in {run / 'checkpoints'}")
    assert not (run / "run.lock").exists()


# -- bad config files, bounded values, rename patterns: one line, exit 2 ---------------------------
@pytest.mark.parametrize("name, text, words", [
    ("c.txt", "steps = 3\n", ["c.txt is not a .py file defining get_config()"]),
    ("c.py", "x = 1\ndef get_config(:\n", ["c.py, line 2: SyntaxError"]),
    ("c.py", "import math\n\ndef get_config():\n    return math.sqrt(-1)\n", ["c.py, line 4: ValueError: math domain"]),
    ("c.py", "A = 1\n", ["c.py defines no get_config()"]),
    ("c.py", "def get_config():\n    return 3\n", ["get_config() must return a config dataclass, got int"]),
])
@pytest.mark.parametrize("command", ["plan", "train-teacher"])
def test_a_bad_config_file_is_one_line_naming_file_and_line(command, name, text, words, tmp_path, capsys):
    (tmp_path / name).write_text(text)
    argv = [command, "--config", str(tmp_path / name)]
    argv += ["--topology", "cpu:1"] if command == "plan" else ["--out", str(tmp_path / "run")]
    one_line(capsys, argv, 2, *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, words", [
    (["predict", "x.png", "--task", "HC", "--model", "nowhere", "--batch-size", "100000000"],
     ["batch size must be between 1 and 4096 images, got 100000000"]),
    (["embed", "x", "--model", "nowhere", "--out", "f.npz", "--batch-size", "0"],
     ["batch size must be between 1 and 4096 images, got 0"]),
    (["plan", "--config", "teacher_tiny", "--topology", "cpu:8192"], ["1 <= N <= 512", "'cpu:8192'"]),
    (["plan", "--config", "teacher_tiny", "--topology", "cpu:100000"], ["1 <= N <= 512", "'cpu:100000'"]),
    (["pseudo-label", "--model", "nowhere", "--images", "x", "--out", "p.jsonl", "--max-disagreement", "-1"],
     ["disagreement threshold must be >= 0 px, got -1.0"]),
])
def test_bounded_values_are_checked_before_any_work(argv, words, capsys):
    """Before the model is even looked for (``nowhere`` does not exist) or JAX started."""
    one_line(capsys, argv, 2, *words)


def test_a_catastrophic_rename_pattern_is_stopped(tmp_path, capsys):
    from safetensors.numpy import save_file

    path = tmp_path / "a.safetensors"
    save_file({"a" * 40 + ".b": np.zeros(2, np.float32)}, str(path))
    one_line(capsys, ["inspect", str(path), "--rename", "(a+)+$=x"], 2, "'(a+)+$' ran over 1 s", "nested repeats")


# -- silently wrong, misleading -------------------------------------------------------------------------
def test_a_mistyped_local_path_is_never_sent_to_the_hub(tmp_path, capsys, monkeypatch):
    import sonichu_jax.convert.files as files

    def no_network(name):
        raise AssertionError(f"{name} was looked up online")

    monkeypatch.setattr(files, "hub_directory", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    one_line(capsys, ["inspect", "models/nonexist"], 2, "checkpoint not found: models/nonexist",
             "models is a local folder", "not looked up on the Hugging Face Hub")
    for local in ("models/a/b", "./models/x", "/models/x", ".hidden/x"):
        one_line(capsys, ["inspect", local], 2, f"checkpoint not found: {local}")


def test_without_the_hub_extra_a_hub_name_is_first_not_found_locally(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails: the extra is not installed
    one_line(capsys, ["inspect", "owner/name"], 2, "owner/name not found locally", "pip install 'sonichu-jax[hub]'")


def test_overlapping_safetensors_offsets_are_refused(tmp_path, capsys):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "alias.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(24))
    one_line(capsys, ["inspect", str(path)], 2, "tensors a and b overlap (data_offsets)")


def test_flip_tta_on_a_weights_only_checkpoint_warns_once(model_dir, frames, tmp_path, capsys):
    from sonichu_jax import checkpoint
    from sonichu_jax.nn.sonichu import SonichuModel

    weights_only = tmp_path / "w"
    checkpoint.export_pytorch(SonichuModel.from_pretrained(model_dir), str(weights_only), layout="sonichu")
    os.unlink(weights_only / "config.json")  # a bare model.safetensors: no task table, no flip permutations
    argv = ["predict", str(frames / "p.png"), "--task", "HC", "--quiet"]
    assert main(argv + ["--model", str(weights_only)]) == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and "no flip permutation for HC" in warnings[0] and "--no-tta" in warnings[0]
    for quiet in (["--model", str(weights_only), "--no-tta"], ["--model", model_dir]):
        assert main(argv + quiet) == 0
        assert "warning:" not in capsys.readouterr().err


def test_report_data_says_how_many_records_were_skipped(tmp_path):
    from sonichu_jax.config import CARD_TASKS
    from sonichu_jax.data.synthetic import write_synthetic_dataset
    from sonichu_jax.report.scoring import evaluation_set

    data = write_synthetic_dataset(tmp_path / "syn", 4, tasks=("HC",), size=64)
    for name in sorted(os.listdir(os.path.join(data, "images", "HC")))[:2]:
        os.unlink(os.path.join(data, "images", "HC", name))
    evalset = evaluation_set([], [], CARD_TASKS, data=str(data))
    assert len(evalset.records) == 2
    assert evalset.description.endswith("less 2 records skipped (missing_image 2)")


@pytest.mark.parametrize("setup, argv, code, words", [
    ("flax_without_config", ["convert", "{tmp}/w", "--out", "{tmp}/o"], 2, ["{tmp}/w/config.json is missing", "flax-layout"]),
    ("weights_dir", ["inspect", "{tmp}/w.safetensors"], 2, ["w.safetensors is a folder, not a weights file"]),
    ("one_tensor", ["convert", "{tmp}/one.safetensors", "--out", "{tmp}/o"], 2,
     ["1 of 1 names known; but too few of its tensors for a model"]),
    ("", ["distill", "--config", "distill_tiny", "--teachers", "{tmp}/nonexist", "--data", "{tmp}",
          "--out", "{tmp}/s"], 2, ["teacher not found: {tmp}/nonexist"]),
    ("frames_file", ["pretrain", "--config", "ijepa_tiny", "--frames", "{tmp}/f.png", "--out", "{tmp}/p"], 2,
     ["frame folder {tmp}/f.png is a file, not a folder"]),
    ("zip_bomb", ["inspect", "{tmp}/bomb.pth"], 2, ["compressed entries", "torch.save never writes"]),
])
def test_smaller_messages(setup, argv, code, words, model_dir, tmp_path, capsys):
    import shutil

    if setup == "flax_without_config":
        (tmp_path / "w").mkdir()
        shutil.copy(os.path.join(model_dir, "flax_model.safetensors"), tmp_path / "w")
    elif setup == "weights_dir":
        (tmp_path / "w.safetensors").mkdir()
    elif setup == "one_tensor":
        from safetensors.numpy import save_file

        save_file({"backbone.patch_embed.proj.weight": np.zeros((4, 3, 2, 2), np.float32)},
                  str(tmp_path / "one.safetensors"))
    elif setup == "frames_file":
        (tmp_path / "f.png").write_bytes(b"")
    elif setup == "zip_bomb":
        import zipfile

        with zipfile.ZipFile(tmp_path / "bomb.pth", "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("bomb/data.pkl", b"\x80\x02}q\x00.")
            archive.writestr("bomb/data/0", bytes(50_000_000))  # 50 MB from about 50 KB
    one_line(capsys, [a.format(tmp=tmp_path) for a in argv], code, *[w.format(tmp=tmp_path) for w in words])


def test_make_synthetic_fills_a_linked_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    os.symlink(tmp_path / "empty", tmp_path / "link")
    assert main(["make-synthetic", str(tmp_path / "link"), "--n", "1", "--tasks", "HC", "--size", "64", "--quiet"]) == 0
    assert os.path.islink(tmp_path / "link") and (tmp_path / "empty" / "manifest.jsonl").is_file()


def test_report_of_a_finished_run_without_its_model(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"steps": 4, "model": {}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 4, "kind": "train", "loss": 1.0}) + "\n")
    assert main(["report", str(run), "--out", str(tmp_path / "r.html"), "--quiet"]) == 0
    assert "run: finished (4 steps) but its model/ is missing, so only its curves are shown" in capsys.readouterr().err
