"""TensorBoard event files beside ``metrics.jsonl``: `TensorBoardSink`.

Every scalar of a metrics window and of a validation goes into ``<run>/tensorboard/``
through tensorboardX (no TensorFlow), under the tags of `TAGS` (an unknown metric, say of
a new stage, under ``train/<name>``), flushed at every window. A resumed run appends to
the same folder as ``metrics.jsonl`` does: first it drops from the earlier event files
every event beyond the step it resumed from (what a killed run wrote after its last
checkpoint, and a torn last record), then it writes a new file whose first event purges
those steps in a TensorBoard that already loaded them. So every step appears once.
"""

from __future__ import annotations

import struct
import sys
from typing import Callable, Iterator

from etils import epath

from sonichu_jax.fileio import atomic_path
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


def tag(key: str) -> str:
    return TAGS.get(key, f"train/{key}")


def _tensorboardx():
    """The tensorboardX package. Its writer module imports torch when torch is installed,
    only to accept torch tensors; we hand it floats, and a JAX training process should not
    load torch (seconds of import, a second set of CUDA libraries), so torch is hidden
    while tensorboardX is imported (unless the process already has it)."""
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


def read_records(data: bytes) -> Iterator[bytes]:
    """The records of a TFRecord file (8-byte length, its masked CRC-32C, the payload, its
    masked CRC-32C), up to the first torn or corrupt one."""
    masked_crc32c = _tensorboardx().record_writer.masked_crc32c
    pos = 0
    while pos + 12 <= len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        end = pos + 12 + length
        if struct.unpack("<I", data[pos + 8:pos + 12])[0] != masked_crc32c(header) or end + 4 > len(data):
            return
        payload = data[pos + 12:end]
        if struct.unpack("<I", data[end:end + 4])[0] != masked_crc32c(payload):
            return
        yield payload
        pos = end + 4


def _frame(payload: bytes) -> bytes:
    masked_crc32c = _tensorboardx().record_writer.masked_crc32c
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", masked_crc32c(header)) + payload + struct.pack("<I", masked_crc32c(payload))


def event_files(logdir: str) -> list[epath.Path]:
    folder = epath.Path(logdir)
    return sorted(p for p in folder.iterdir() if "tfevents" in p.name) if folder.is_dir() else []


def trim_event_files(logdir: str, keep_up_to: int | None) -> bool:
    """Drop every event of a step beyond ``keep_up_to`` from the event files in ``logdir``
    (None: remove the files; the run starts over). Whether there were any."""
    Event = _tensorboardx().proto.event_pb2.Event
    files = event_files(logdir)
    for path in files:
        old = path.read_bytes() if keep_up_to is not None else b""
        data = b"".join(_frame(r) for r in read_records(old) if Event.FromString(r).step <= keep_up_to)
        if not data:
            path.unlink()
        elif data != old:
            if "://" in str(path):
                path.write_bytes(data)
            else:
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    fh.write(data)
    return bool(files)


class TensorBoardSink(MetricsSink):
    """Scalars of every window and validation as TensorBoard events (see the module)."""

    def __init__(self, logdir: str, keep_up_to: int | None = None):
        """``keep_up_to``: the step a run resumes from (events of later steps go); None: a
        new run, or one that starts over."""
        SummaryWriter = _tensorboardx().SummaryWriter
        self.first = 0 if keep_up_to is None else keep_up_to + 1
        purge = self.first if trim_event_files(logdir, keep_up_to) else None
        # One new file per call of the run, named by its first step (two calls within the
        # same second would otherwise share the time-stamped name, and the second overwrite).
        self.writer = SummaryWriter(logdir, purge_step=purge, filename_suffix=f".step{self.first}")

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        if step < self.first:  # a finished run resumed validates its last step again: written already
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def train_window(self, step, metrics):
        self._write(step, {tag(k): v for k, v in metrics.items() if k not in NOT_LOGGED})

    def validation(self, step, report: MREReport):
        scalars = {"val/mre_weighted": report.weighted_px, "val/mre_unweighted": report.unweighted_px}
        scalars.update({f"val/mre/{t}": m.mre_px for t, m in report.tasks.items() if m.n})
        self._write(step, scalars)

    def close(self):
        self.writer.close()


def open_tensorboard(logdir: str, keep_up_to: int | None, say: Callable[[str], None]) -> list[MetricsSink]:
    """[the sink], or [] with a one-line note when event files cannot be written there
    (tensorboardX writes ``gs://`` through google-cloud-storage, an optional package)."""
    try:
        return [TensorBoardSink(logdir, keep_up_to)]
    except ImportError as exc:
        say(f"note: no TensorBoard event files in {logdir} ({exc})")
        return []
