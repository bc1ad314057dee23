"""Stopping a run cleanly on SIGTERM (preemption) or SIGINT (Ctrl-C): the loop finishes
the current step, saves a checkpoint and returns; the command exits with 128 + the
signal's number (143, 130).

Which mechanism applies:

- one process: a Python signal handler for SIGTERM and SIGINT sets a flag that the loop
  polls after every step;
- several processes (JAX's distributed client is up): SIGTERM belongs to JAX's
  preemption notifier, and orbax's `CheckpointManager.reached_preemption` tells every
  process at the same step that a preemption notice arrived somewhere, which is what a
  Cloud TPU maintenance event or a Slurm/Kubernetes eviction sends. SIGINT, which orbax
  does not cover, still sets the flag, and the processes agree on it (a collective) at
  every metrics window, so that they all stop at the same step.
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopRequest:
    """Context manager; previous handlers come back on exit."""

    def __init__(self, manager):
        self.manager = manager  # the orbax CheckpointManager (its preemption sync point)
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (signal.SIGINT,)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, step: int, every: int) -> int | None:
        """The signal to stop for, at this step, or None to go on."""
        if jax.process_count() == 1:
            return self.signal
        if self.manager.reached_preemption(step):
            return int(signal.SIGTERM)
        if step % every:
            return None
        flags = multihost_utils.process_allgather(np.int32(self.signal or 0))
        return int(flags.max()) or None
