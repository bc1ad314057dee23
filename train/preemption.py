"""Stopping a run cleanly on SIGTERM or SIGINT: the loop finishes the step, saves and
returns (exit 128 + the signal). One process: a signal handler's flag; several: orbax's
``reached_preemption`` for SIGTERM and an all-gathered flag for SIGINT, so every process
stops at the same step (docs/training.md, "Stopping, divergence and exit codes").
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
