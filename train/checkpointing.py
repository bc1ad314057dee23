"""Train checkpoints with orbax: train state + grain iterator state, saved together.

One `ocp.CheckpointManager` keeps the last ``keep`` checkpoints plus the one with the lowest
validation MRE (saved with ``metrics={"val_mre": ...}``). Saves are asynchronous; orbax
writes each step into a temporary directory and renames it only once every process has
finished, so a save killed half-way is never listed as a checkpoint (and is cleaned up by
the next manager on that directory).
"""

from __future__ import annotations

import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from sonichu_jax.train.configlib import CheckpointConfig

VAL_METRIC = "val_mre"


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig):
        keep = [policies.LatestN(n=config.keep)]
        if config.keep_best:
            # BestN keeps the last n of an ascending sort; reverse=True puts the lowest MRE last.
            keep.append(
                policies.BestN(
                    get_metric_fn=lambda m: m[VAL_METRIC], reverse=True, n=1, keep_checkpoints_without_metrics=False
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            # best_fn only makes orbax write the metrics; the policy above decides what stays.
            best_fn=lambda m: m[VAL_METRIC],
            best_mode="min",
            cleanup_tmp_directories=True,
            enable_async_checkpointing=config.async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options)

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
        """Restore the state into ``target`` (ShapeDtypeStructs with shardings) and, if
        given, the iterator in place. Returns the state."""
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
