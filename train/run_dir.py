"""The run directory: what a run writes there, when it may (a new run refuses a run, a
resumed one requires one; ``run.lock`` names the writing process), and whether a resumed
run is the same run (`check_resume`). Layout and rules: docs/training.md, "The run
directory". Paths may be ``gs://`` URLs (through `etils.epath`).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from typing import Any, Callable

from etils import epath

from sonichu_jax.config import COMPUTE_FIELDS
from sonichu_jax.errors import ConfigError, InputError
from sonichu_jax.fileio import write_json
from sonichu_jax.train.checkpointing import DAMAGED_DIR

CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
PROFILE_DIR = "profile"
RUN_ENTRIES = (CONFIG_FILE, METRICS_FILE, CHECKPOINTS, "model", "best", "backbone", "backbone_pytorch", DAMAGED_DIR,
               TENSORBOARD_DIR, PROFILE_DIR)

# Config keys a resumed run may change (docs/training.md, "Resuming: what may change").
RESUME_MAY_CHANGE = ("log.", "checkpoint.", "mesh.", "distributed.", "init.", "data.num_workers",
                     "data.max_bad_fraction")
SCHEDULE_KEYS = ("steps", "epochs")
# What a restart from step 0 would replace (a non-empty metrics.jsonl too).
RESULTS = ("model", "best", "backbone", "backbone_pytorch")
LOCK_FILE = "run.lock"

COMPUTE_KEYS = tuple(f"model.{name}" for name in COMPUTE_FIELDS)


class RunDir:
    def __init__(self, out_dir: str | os.PathLike):
        out_dir = os.fspath(out_dir)
        self.url = "://" in out_dir
        self.path = epath.Path(out_dir if self.url else os.path.abspath(out_dir))
        self.locked = self.created = False

    def __str__(self) -> str:
        return os.fspath(self.path)

    def join(self, name: str) -> str:
        return os.fspath(self.path / name)

    def entries(self) -> list[str]:
        """The names of run outputs present in the directory."""
        if not self.path.is_dir():
            return []
        return [name for name in RUN_ENTRIES if (self.path / name).exists()]

    def check(self, resume: bool) -> dict | None:
        """Refuse what would mix two runs; returns the saved config when resuming."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"run directory {self} is an existing file")
        found = self.entries()
        if not resume:
            if found:
                raise InputError(f"{self} already holds a run ({', '.join(found)}); resume it, "
                                 "or choose another output directory")
            return None
        if not self.path.exists() or self.created:  # `lock` made it just now
            raise InputError(f"cannot resume {self}: it does not exist")
        if CONFIG_FILE not in found:
            raise InputError(f"cannot resume {self}: it holds no run ({CONFIG_FILE} is missing)")
        try:
            saved = json.loads((self.path / CONFIG_FILE).read_text())
        except ValueError as exc:
            raise InputError(f"cannot resume {self}: {CONFIG_FILE} is not valid JSON ({exc})") from None
        if self.last_checkpoint() is None:
            self.check_restart()
        return saved

    def last_checkpoint(self) -> int | None:
        """The newest finished checkpoint's step (orbax writes into a temporary name first)."""
        folder = self.path / CHECKPOINTS
        steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
        return max(steps, default=None)

    def check_restart(self) -> None:
        """A resumed run without an intact checkpoint starts at step 0: refused where that
        would replace results."""
        held = [n for n in RESULTS if (self.path / n).exists()]
        metrics = self.path / METRICS_FILE
        held += [METRICS_FILE] if metrics.exists() and metrics.stat().length else []
        if held:
            raise InputError(f"cannot resume {self}: it holds {', '.join(held)} but no intact checkpoint, and "
                             "starting again would replace them; train into another directory")

    def lock(self, say: Callable[[str], None]) -> None:
        """Take the directory for this process before anything is written; a lock whose
        process on this host has ended is taken over. ``gs://`` is not locked (no O_EXCL)."""
        if self.url or (self.path.exists() and not self.path.is_dir()):
            return  # `check` refuses a file
        self.created = not self.path.exists()
        os.makedirs(self.path, exist_ok=True)
        path = self.join(LOCK_FILE)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _holder(path)
                if holder is None:
                    self.unlock()
                    raise InputError(f"{self} is in use: {path} names no process; remove it if no run uses the "
                                     "directory") from None
                who = f"process {holder['pid']} on {holder['host']}, started {holder['started']}"
                # our own pid: a restarted container's earlier run (this process holds no lock yet)
                if holder["host"] != me["host"] or (holder["pid"] != me["pid"] and _alive(holder["pid"])):
                    self.unlock()
                    raise InputError(f"{self} is in use by {who}; wait for it to end or choose another directory "
                                     f"(remove {path} only if that process is gone)") from None
                say(f"note: taking over {path} from {who}, which is no longer running")
                os.unlink(path)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.locked = True
            return

    def unlock(self) -> None:
        """Release the lock; a folder the lock created and nothing else filled goes too."""
        if self.locked and (_holder(self.join(LOCK_FILE)) or {}).get("pid") == os.getpid():
            os.unlink(self.join(LOCK_FILE))
        self.locked = False
        if self.created:
            try:
                os.rmdir(self.path)
            except OSError:
                pass  # the run wrote something: keep it

    def write_config(self, config: dict) -> None:
        if self.url:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        else:
            write_json(self.path / CONFIG_FILE, config)


def _holder(path: str) -> dict | None:
    try:
        with open(path) as fh:
            holder = json.load(fh)
        return holder if {"pid", "host", "started"} <= set(holder) else None
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def export_to(out_dir: str, name: str, write: Callable[[str], None]) -> None:
    """``write(directory)`` writes the export ``name`` of a run; a link of that name is
    replaced, not written through; for ``gs://`` a local folder is copied up."""
    if "://" not in out_dir:
        target = os.path.join(out_dir, name)
        if os.path.islink(target):
            os.unlink(target)
        write(target)
        return
    target = epath.Path(out_dir) / name
    with tempfile.TemporaryDirectory() as tmp:
        write(tmp)
        target.mkdir(parents=True, exist_ok=True)
        for path in epath.Path(tmp).iterdir():  # an export is one flat folder of files
            path.copy(target / path.name, overwrite=True)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


_ABSENT = "(absent)"
# Keys added after runs were first saved: a saved config without them ran as their default.
ADDED_LATER = ("loss.", "model.decoder")


def check_resume(saved: dict, new: dict, run: str, defaults: dict | None = None) -> str | None:
    """Compare a run's saved config with the one it resumes with (JSON forms): a refused
    change raises one `ConfigError` naming every key; a longer schedule returns a line. A
    key of ``ADDED_LATER`` the saved config lacks takes its value in ``defaults``."""
    old, now = _flatten(saved), _flatten(json.loads(json.dumps(new)))
    for key, value in _flatten(json.loads(json.dumps(defaults or {}))).items():
        if key.startswith(ADDED_LATER):
            old.setdefault(key, value)
    changed = {k: (old.get(k, _ABSENT), now.get(k, _ABSENT)) for k in old.keys() | now.keys()
               if old.get(k, _ABSENT) != now.get(k, _ABSENT)}
    refused = {k: v for k, v in changed.items() if not k.startswith(RESUME_MAY_CHANGE + COMPUTE_KEYS) and k not in SCHEDULE_KEYS}
    before, after = old.get("steps"), now["steps"]
    if isinstance(before, int) and after < before:
        refused["steps"] = (before, after)
    if refused:
        listed = "; ".join(f"{k}: {a!r} (saved) vs {b!r} (now)" for k, (a, b) in sorted(refused.items()))
        raise ConfigError(f"cannot resume {run} with a different config: {listed}")
    if isinstance(before, int) and after > before:
        return f"resuming with a longer schedule: {before} -> {after} steps; the schedules are recomputed for {after}"
    return None
