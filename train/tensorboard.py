"""TensorBoard event files beside ``metrics.jsonl`` through tensorboardX; a resumed run's
new file starts with ``purge_step`` (docs/training.md, "TensorBoard event files").
"""

from __future__ import annotations

import sys
from typing import Callable

from etils import epath

from sonichu_jax.evaluation import MREReport
from sonichu_jax.train.metrics_log import MetricsSink

# metrics.jsonl key -> tag, grouped by kind. ``finite`` (the NaN guard's verdict) is left
# out: a window is only reported when every step in it was finite.
TAGS = {
    "loss": "train/loss", "loss_real": "train/loss_real", "loss_teacher": "train/loss_teacher",
    "lr": "schedule/lr", "wd": "schedule/weight_decay", "momentum": "schedule/ema_momentum",
    "grad_norm": "norm/grad", "param_norm": "norm/param", "update_norm": "norm/update",
    "img_per_s": "speed/img_per_s",
    "target_std": "ijepa/target_std", "pred_std": "ijepa/pred_std",
    "context_len": "ijepa/context_tokens", "target_len": "ijepa/target_tokens", "frames_skipped": "ijepa/frames_skipped",
}
NOT_LOGGED = ("finite",)


def _tensorboardx():
    """tensorboardX, imported with torch hidden: its writer imports torch only to accept
    tensors, and a JAX training process should not load torch."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes ``import torch`` raise ImportError
    try:
        import tensorboardX
        import tensorboardX.proto.event_pb2
        import tensorboardX.record_writer
    finally:
        if hide:
            del sys.modules["torch"]
    return tensorboardX


def event_files(logdir: str) -> list[epath.Path]:
    folder = epath.Path(logdir)
    return sorted(p for p in folder.iterdir() if "tfevents" in p.name) if folder.is_dir() else []


class TensorBoardSink(MetricsSink):
    """Scalars of every window and validation as TensorBoard events (see the module)."""

    def __init__(self, logdir: str, keep_up_to: int | None = None):
        """``keep_up_to``: the step a run resumes from (later events purged); None: all are."""
        SummaryWriter = _tensorboardx().SummaryWriter
        self.first = 0 if keep_up_to is None else keep_up_to + 1
        earlier = len(event_files(logdir))
        # One new file per call of the run, numbered: files are read in name order, and two
        # calls within the same second would otherwise share the time-stamped name.
        self.writer = SummaryWriter(logdir, purge_step=self.first if earlier else None,
                                    filename_suffix=f".{earlier:04d}")

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        if step < self.first:  # a finished run resumed validates its last step again: written already
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def train_window(self, step, metrics):
        self._write(step, {TAGS.get(k, f"train/{k}"): v for k, v in metrics.items() if k not in NOT_LOGGED})

    def validation(self, step, report: MREReport):
        scalars = {"val/mre_weighted": report.weighted_px, "val/mre_unweighted": report.unweighted_px}
        scalars.update({f"val/mre/{t}": m.mre_px for t, m in report.tasks.items() if m.n})
        self._write(step, scalars)

    def close(self):
        self.writer.close()


def open_tensorboard(logdir: str, keep_up_to: int | None, say: Callable[[str], None]) -> list[MetricsSink]:
    """[the sink], or [] with a note when event files cannot be written there (``gs://``
    needs google-cloud-storage)."""
    try:
        return [TensorBoardSink(logdir, keep_up_to)]
    except ImportError as exc:
        say(f"note: no TensorBoard event files in {logdir} ({exc})")
        return []
