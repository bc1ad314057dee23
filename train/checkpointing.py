"""Train checkpoints with orbax: train state + grain iterator state, kept by ``keep`` and
the best validation MRE; a damaged one is set aside and an older one tried.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from sonichu_jax.errors import InputError
from sonichu_jax.train.configlib import CheckpointConfig

VAL_METRIC = "val_mre"
DAMAGED_DIR = "damaged_checkpoints"


class _UnreadReads(logging.Filter):
    """Drops asyncio's "Future exception was never retrieved" records of a checkpoint whose
    failed restore was reported already (orbax leaves its other reads unawaited)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Future exception was never retrieved") and self.path in message)


def _first_sentence(exc: Exception) -> str:
    text = (str(exc).strip().splitlines() or [""])[0].split(". See ")[0]
    return f"{type(exc).__name__}: {text[:200]}"


class _OtherState(Exception):
    pass


def _shapes(tree) -> list[tuple[int, ...]]:
    return sorted(tuple(leaf.shape) for leaf in jax.tree.leaves(tree))


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig):
        keep = [policies.LatestN(n=config.keep)]
        if config.keep_best:  # BestN keeps the last n of an ascending sort: reverse puts the lowest MRE last
            keep.append(policies.BestN(get_metric_fn=lambda m: m[VAL_METRIC], reverse=True, n=1,
                                       keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            # best_fn only makes orbax write the metrics; the policy above decides what stays.
            best_fn=lambda m: m[VAL_METRIC],
            best_mode="min",
            cleanup_tmp_directories=True,
            enable_async_checkpointing=config.async_save,
            create=True,
        )
        directory = os.fspath(directory)
        self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state, data_iter, val_mre: float | None = None) -> None:
        """Save (asynchronously) unless this step is already saved."""
        if step in self.manager.all_steps():
            return
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)
        )
        metrics = None if val_mre is None else {VAL_METRIC: float(val_mre)}
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        scored = [(m[VAL_METRIC], s) for s in self.manager.all_steps() if (m := self.manager.metrics(s))]
        return min(scored)[1] if scored else None

    def restore(self, step: int, target, data_iter=None) -> Any:
        """The state restored into ``target`` (with shardings); ``data_iter`` in place."""
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def restore_latest(self, target, data_iter, is_finite: Callable[[Any], bool],
                       say: Callable[[str], None]) -> tuple[Any, int] | None:
        """(state, step) of the newest intact checkpoint, or None if there is none; every
        damaged one on the way is reported through ``say`` and set aside."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                # orbax's metadata says, before any array is read, whether this is the run's state
                stored = _shapes(ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state").tree)
                if stored != _shapes(target):
                    raise _OtherState(f"{len(stored)} arrays, not the shapes of the run's {len(_shapes(target))}")
                state = self.restore(step, target, data_iter)
                problem = None if is_finite(state) else "it holds non-finite values"
            except _OtherState as exc:
                raise InputError(
                    f"cannot resume from the checkpoint at step {step} ({self.directory / str(step)}): it holds "
                    f"another train state than this run builds ({exc}), written by another version of sonichu-jax "
                    "or another configuration; the checkpoints are left as they are") from None
            except Exception as exc:  # noqa: BLE001 - whatever stops a read-back makes it damaged
                problem = _first_sentence(exc)
            if problem is None:
                return state, step
            logging.getLogger("asyncio").addFilter(_UnreadReads(str(self.directory / str(step))))
            aside = self._set_aside(step)
            say(f"checkpoint at step {step} ({self.directory / str(step)}) is damaged ({problem}); "
                f"moved to {aside}, trying an older one")
        return None

    def _set_aside(self, step: int) -> epath.Path:
        """Move a damaged step out of orbax's directory (process 0) so it can be saved again."""
        aside = self.directory.parent / DAMAGED_DIR / str(step)
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            if aside.exists():
                aside = aside.parent / f"{step}.{len(list(aside.parent.iterdir()))}"
            (self.directory / str(step)).rename(aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self.manager.reload()
        return aside

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
