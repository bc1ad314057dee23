"""TensorBoard event files and the profiler window: the quick demo's runs (teachers with
validation, the student, I-JEPA) wrote event files whose scalars and steps are those of
their metrics.jsonl, read back without TensorBoard; a resumed run's earlier files lose
what lies beyond its checkpoint; profiler windows that cannot be traced are refused, and a
trace that cannot start is a note.
(A run with event files off and a profile window: test_train_teacher's SIGTERM test; a
killed and resumed run's events: the same test.)"""

from __future__ import annotations

import pytest
from train_util import assert_events_equal_jsonl, event_scalars

from sonichu_jax.errors import ConfigError
from sonichu_jax.train.configlib import apply_overrides, load_config_file

TRAIN = {"train/loss", "schedule/lr", "norm/grad", "norm/param", "norm/update", "speed/img_per_s"}
VAL = {"val/mre_weighted", "val/mre_unweighted", "val/mre/HC", "val/mre/fetal_femur"}


def test_teacher_and_student_events_equal_their_jsonl(quick_demo):
    teacher = assert_events_equal_jsonl(quick_demo.out / "teachers" / "R1")
    assert teacher == TRAIN | VAL
    student = assert_events_equal_jsonl(quick_demo.out / "student")
    assert student == TRAIN | VAL | {"train/loss_real", "train/loss_teacher"}
    steps = sorted({step for tag, step, _ in event_scalars(quick_demo.out / "student" / "tensorboard")
                    if tag == "val/mre_weighted"})
    assert steps == [20, 40, 60]  # the demo validates a few times per run: a curve, not a point


def test_ijepa_events_equal_its_jsonl(quick_demo):
    tags = assert_events_equal_jsonl(quick_demo.out / "ijepa")
    assert tags == (TRAIN - {"norm/update"}) | {"schedule/weight_decay", "schedule/ema_momentum", "ijepa/target_std",
                                                "ijepa/pred_std", "ijepa/context_tokens", "ijepa/target_tokens",
                                                "ijepa/frames_skipped"}


def test_resume_purges_later_events_of_earlier_files(tmp_path):
    """What a killed run wrote after its checkpoint at step 4 (steps 6 and 8, a torn last
    record) is purged, as TensorBoard reads the files, when it resumes from 4; resuming
    with no checkpoint starts over."""
    from sonichu_jax.train.tensorboard import TensorBoardSink, event_files

    sink = TensorBoardSink(str(tmp_path))
    for step in (2, 4, 6, 8):
        sink.train_window(step, {"loss": float(step), "finite": 1.0})
    sink.close()
    (old,) = event_files(str(tmp_path))
    with open(old, "ab") as fh:
        fh.write(b"\x20\x00\x00\x00\x00\x00\x00\x00torn")
    resumed = TensorBoardSink(str(tmp_path), keep_up_to=4)
    resumed.train_window(6, {"loss": 60.0})
    resumed.close()
    assert event_scalars(tmp_path) == [("train/loss", 2, 2.0), ("train/loss", 4, 4.0), ("train/loss", 6, 60.0)]
    assert len(event_files(str(tmp_path))) == 2
    TensorBoardSink(str(tmp_path), keep_up_to=None).close()
    assert event_scalars(tmp_path) == []


@pytest.mark.parametrize("window, words", [
    ("5:5", "1 <= START < STOP"), ("0:3", "1 <= START < STOP"), ("3:2", "1 <= START < STOP"),
    ("3", "START:STOP (two step numbers)"), ("a:b", "START:STOP (two step numbers)"),
])
def test_profile_window_must_be_start_before_stop(window, words):
    from sonichu_jax.train.ijepa_config import IJEPAConfig

    config = apply_overrides(IJEPAConfig(), [f"log.profile_steps={window}"])
    with pytest.raises(ConfigError, match=f"log.profile_steps .*{window!r}"):
        config.validate()
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        config.validate()


def test_profile_window_in_epochs_is_checked_in_steps():
    """A run in epochs has its steps once the data is counted: checked then, before
    anything is written."""
    from sonichu_jax.train.schedule import resolve_schedule

    vitb = apply_overrides(load_config_file("teacher_vitb"), ["log.profile_steps=51000:51101"])
    vitb.validate()  # 100 epochs: the length is not known yet
    with pytest.raises(ConfigError, match=r"log.profile_steps must be within the run's 51100 steps.*at 511 steps per"):
        resolve_schedule(vitb, 32_722)
    assert resolve_schedule(apply_overrides(vitb, ["log.profile_steps=51000:51100"]), 32_722)[0].steps == 51_100


def test_writing_events_does_not_load_torch(tmp_path):
    """tensorboardX's writer imports torch when it is installed; a training process must
    not load it (the library never imports torch)."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    code = ("import sys; from sonichu_jax.train.tensorboard import TensorBoardSink; "
            f"s = TensorBoardSink({str(tmp_path)!r}); s.train_window(1, {{'loss': 1.0}}); s.close(); "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
    assert event_scalars(tmp_path) == [("train/loss", 1, 1.0)]


def test_a_trace_that_cannot_start_is_a_note(tmp_path):
    """A profile already running in the process (a user's own) makes start_trace raise; the
    window says so once and the run goes on untraced."""
    import jax

    from sonichu_jax.train.profiler import ProfileWindow

    notes = []
    window = ProfileWindow((2, 3), str(tmp_path / "ours"), notes.append)
    jax.profiler.start_trace(str(tmp_path / "theirs"))
    try:
        for step in (1, 2, 3, 4):
            window.before_step(step)
            window.after_step(step, jax.numpy.zeros(()))
    finally:
        jax.profiler.stop_trace()
    window.close()
    assert len(notes) == 1 and "no profile of steps 2:3" in notes[0], notes
    assert not (tmp_path / "ours").exists()
