"""Metrics out of the hot loop (`MetricsBuffer`: one fetch per window) and the sinks a
run reports to (`MetricsSink`: `JsonlSink`, `ConsoleSink`, `TensorBoardSink`).
"""

from __future__ import annotations

import json
import math
import time

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from sonichu_jax.evaluation import MREReport, format_table
from sonichu_jax.fileio import atomic_path


class MetricsBuffer(list):
    """(step, device metrics) of the steps since the last `flush`."""

    def add(self, step: int, metrics: dict) -> None:
        self.append((step, metrics))

    def flush(self) -> list[tuple[int, dict[str, float]]]:
        """(step, {name: float}) for every buffered step, oldest first: one fetch."""
        fetched = jax.device_get([m for _, m in self])
        rows = [(s, {k: float(np.asarray(v)) for k, v in m.items()}) for (s, _), m in zip(self, fetched)]
        self.clear()
        return rows


def summarize(rows: list[tuple[int, dict[str, float]]], last: tuple[str, ...] = ("lr",)) -> dict[str, float]:
    """Mean of each metric over a window; the ``last`` ones (schedules) at the window's end."""
    out = {k: float(np.mean([m[k] for _, m in rows])) for k in rows[0][1]}
    out.update({k: rows[-1][1][k] for k in last})
    return out


class MetricsSink:
    """Receives what a run reports; every method may be left as is (does nothing)."""

    def step(self, step: int) -> None:
        """After every train step, on the host, without waiting for the device."""

    def train_window(self, step: int, metrics: dict[str, float]) -> None:
        """The mean metrics of the window of steps that ends at ``step``."""

    def validation(self, step: int, report: MREReport) -> None:
        """A validation of the weights after ``step`` steps."""

    def close(self) -> None:
        pass


def _clean(value):
    return value if not isinstance(value, float) or math.isfinite(value) else str(value)


class JsonlSink(MetricsSink):
    """``metrics.jsonl``, flushed line by line; a resumed run first drops the lines beyond
    ``keep_up_to`` (None: starts empty), so every step appears once. ``gs://`` cannot
    append: the file is rewritten whole at every line."""

    def __init__(self, path: str, keep_up_to: int | None = None):
        self.path = epath.Path(path)
        self.lines: list[str] = []
        if self.path.exists() and keep_up_to is not None:
            self.lines = [line for line in self.path.read_text().splitlines() if _step_of(line, keep_up_to)]
        self._rewrite()
        self._fh = None if "://" in str(path) else open(path, "a")

    def _rewrite(self) -> None:
        text = "".join(line + "\n" for line in self.lines)
        if "://" in str(self.path):
            self.path.write_text(text)
            return
        with atomic_path(self.path) as tmp, open(tmp, "w") as fh:
            fh.write(text)

    def write(self, **record) -> None:
        record.setdefault("time", round(time.time(), 3))
        line = json.dumps({k: _clean(v) for k, v in record.items()})
        self.lines.append(line)
        if self._fh is None:
            self._rewrite()
            return
        self._fh.write(line + "\n")
        self._fh.flush()

    def train_window(self, step, metrics):
        self.write(step=step, kind="train", **metrics)

    def validation(self, step, report):
        self.write(step=step, kind="val", val_mre=report.weighted_px, val_mre_unweighted=report.unweighted_px,
                   per_task={t: m.mre_px for t, m in report.tasks.items() if m.n})

    def close(self):
        if self._fh is not None:
            self._fh.close()


def _step_of(line: str, limit: int) -> bool:
    """Whether ``line`` is a complete record of a step up to ``limit``."""
    try:
        return int(json.loads(line)["step"]) <= limit
    except (ValueError, KeyError, TypeError):
        return False


class ConsoleSink(MetricsSink):
    """The progress bar (``postfix`` keys of each window) and the validation tables."""

    def __init__(self, name: str, total: int, initial: int, postfix: tuple[str, ...], progress: bool):
        self.postfix = postfix
        self.bar = None
        if progress:
            self.bar = tqdm(total=total, initial=initial, desc=name, unit="step")

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def step(self, step):
        if self.bar is not None:
            self.bar.update(1)

    def train_window(self, step, metrics):
        if self.bar is not None:
            self.bar.set_postfix({k: f"{metrics[k]:.4g}" for k in self.postfix if k in metrics})

    def validation(self, step, report):
        self.say(f"validation at step {step}:\n{format_table({'MRE': report})}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
