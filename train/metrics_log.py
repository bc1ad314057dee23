"""Metrics out of the hot loop: buffered on device, fetched in bulk, written as JSONL.

The train step returns its metrics as device scalars. Fetching them every step would make
the host wait for the device each step; instead the loop buffers them and `flush` fetches
the whole window with one `jax.device_get` every ``log.every_steps`` steps.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np

from sonichu_jax.errors import TrainingDiverged


class MetricsBuffer:
    def __init__(self):
        self._steps: list[int] = []
        self._metrics: list[dict] = []

    def add(self, step: int, metrics: dict) -> None:
        self._steps.append(step)
        self._metrics.append(metrics)

    def __len__(self) -> int:
        return len(self._steps)

    def flush(self) -> list[tuple[int, dict[str, float]]]:
        """(step, {name: float}) for every buffered step, oldest first."""
        fetched = jax.device_get(self._metrics)
        rows = [(s, {k: float(np.asarray(v)) for k, v in m.items()}) for s, m in zip(self._steps, fetched)]
        self._steps, self._metrics = [], []
        return rows

    def flush_finite(self, ckpt, out_dir: str) -> list[tuple[int, dict[str, float]]]:
        """`flush`, stopping the run if any step's loss or gradient was NaN/inf: the step
        kept the state unchanged, and nothing after the last good checkpoint is saved."""
        rows = self.flush()
        bad = [s for s, m in rows if m["finite"] < 1.0]
        if bad:
            ckpt.wait()
            raise TrainingDiverged(
                f"non-finite loss or gradient at step {bad[0]}; stopped without saving. "
                f"Last good checkpoint: step {ckpt.latest_step()} in {out_dir}/checkpoints"
            )
        return rows


def summarize(rows: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Mean of each metric over a window (the last step's lr)."""
    out = {k: float(np.mean([m[k] for _, m in rows])) for k in rows[0][1]}
    out["lr"] = rows[-1][1]["lr"]
    return out


class JsonlLog:
    """Append-only JSONL file (one process writes it); each line is flushed, so a killed
    run keeps every complete line. Non-finite numbers are written as strings."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.enabled = enabled
        self._fh = None
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._fh = open(path, "a")

    def write(self, **record) -> None:
        if self._fh is None:
            return
        record.setdefault("time", round(time.time(), 3))
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
