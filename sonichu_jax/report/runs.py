"""Training runs on disk (``train_config.json`` + ``metrics.jsonl``, and ``model/`` once a
keypoint run has finished), found in the folders given or below them, and the data
they were validated on."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from sonichu_jax.errors import InputError
from sonichu_jax.fileio import read_json

CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
MODEL_DIR = "model"
KIND_ORDER = ("pretraining", "teacher", "student")
# A directory of runs may hold its held-out set here (the demo's layout).
HELD_OUT_DIR = os.path.join("data", "test")


@dataclass
class Run:
    path: str  # absolute
    name: str  # relative to the folder it was found in, e.g. teachers/t1_labels
    config: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if "masks" in self.config:
            return "pretraining"
        return "student" if "distill" in self.config else "teacher"

    @property
    def model_dir(self) -> str | None:
        """The exported model of a finished keypoint run, else None."""
        path = os.path.join(self.path, MODEL_DIR)
        if self.kind == "pretraining" or not os.path.isfile(os.path.join(path, "config.json")):
            return None
        return path

    @property
    def last_step(self) -> int | None:
        steps = [m["step"] for m in self.metrics if isinstance(m.get("step"), int)]
        return max(steps) if steps else None

    @property
    def total_steps(self) -> int | None:
        steps = self.config.get("steps")
        return steps if isinstance(steps, int) else None

    def status(self) -> str | None:
        """Why a keypoint run has no model (None when it has one, or is pretraining)."""
        if self.kind == "pretraining" or self.model_dir is not None:
            return None
        at = "before its first logged step" if self.last_step is None else f"at step {self.last_step}"
        of = f" of {self.total_steps}" if self.total_steps else ""
        if self.last_step is not None and self.last_step == self.total_steps:
            return f"finished ({self.last_step} steps) but its {MODEL_DIR}/ is missing, so only its curves are shown"
        return f"stopped {at}{of}: no {MODEL_DIR}/ yet, so only its curves are shown"


def is_run(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(os.path.join(path, METRICS_FILE))


def _number(value: Any) -> Any:
    """JSONL writes non-finite floats as strings ("nan", "inf")."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if not math.isfinite(number) else value
    return value


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Every complete line of a metrics.jsonl; a line cut short by a killed run is skipped."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append({k: _number(v) for k, v in row.items()})
    return rows


def load_run(path: str, name: str) -> Run:
    config = read_json(os.path.join(path, CONFIG_FILE))
    return Run(os.path.abspath(path), name, config, read_metrics(os.path.join(path, METRICS_FILE)))


def _runs_below(root: str) -> list[str]:
    found = []
    for folder, subdirs, _ in os.walk(root):
        if is_run(folder):
            found.append(folder)
            subdirs[:] = []
        else:
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return found


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    """The runs named by ``paths`` (run directories, or directories holding runs), in
    stage order (pretraining, teachers, students), then by name."""
    runs: dict[str, Run] = {}
    for given in map(os.fspath, paths):
        if not os.path.isdir(given):
            raise InputError(f"{given}: no such directory (expected a run directory with {CONFIG_FILE} "
                             f"and {METRICS_FILE})")
        if is_run(given):
            name = os.path.basename(os.path.abspath(given))
            runs.setdefault(os.path.abspath(given), load_run(given, name))
            continue
        below = _runs_below(given)
        if not below:
            raise InputError(f"{given} is not a run: a run directory has {CONFIG_FILE} and {METRICS_FILE} "
                             f"(a directory of runs has such folders below it)")
        for path in below:
            runs.setdefault(os.path.abspath(path), load_run(path, os.path.relpath(path, given)))
    ordered = sorted(runs.values(), key=lambda r: (KIND_ORDER.index(r.kind), r.name))
    short = [os.path.basename(r.name) for r in ordered]
    for run, name in zip(ordered, short):  # the folder's name, unless two runs share it
        if short.count(name) == 1:
            run.name = name
    return ordered


def run_data_spec(config: dict[str, Any]) -> str | None:
    """The data a run trained on, as its config records it (the absolute path of its
    training data); None for runs written before runs recorded it."""
    data = config.get("data")
    spec = data.get("source") if isinstance(data, dict) else None
    return spec if isinstance(spec, str) and spec else None


def held_out_set(paths: Sequence[str | os.PathLike]) -> str | None:
    """A held-out set kept beside the runs (``data/test`` of a directory of runs)."""
    for given in map(os.fspath, paths):
        candidate = os.path.join(given, HELD_OUT_DIR)
        if not is_run(given) and os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return None
