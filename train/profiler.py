"""A profiler window: a ``jax.profiler`` trace of the steps ``log.profile_steps=START:STOP``.

The trace starts before step START fetches its batch and stops after step STOP, once the
state that step computed is ready (steps are dispatched asynchronously: without the wait
the trace would end before the device has done the work). It goes to
``<run>/profile/plugins/profile/<time>/``: ``<host>.xplane.pb`` for TensorBoard's profile
tab (``tensorboard --logdir <run>/profile``) and ``<host>.trace.json.gz``, a Chrome trace
that ui.perfetto.dev opens. Written by the primary process only. A call of the run that
starts inside the window (a resume) traces the rest of it; a run stopped inside the window
writes what it traced. A trace that cannot start (another one is running in the process,
say) is a note, not the end of the run.
"""

from __future__ import annotations

from typing import Callable

import jax


class ProfileWindow:
    """Called by the run driver around every step; does nothing without a window."""

    def __init__(self, window: tuple[int, int] | None, log_dir: str, say: Callable[[str], None] = print):
        self.start, self.stop = window or (0, -1)
        self.log_dir, self.say = log_dir, say
        self.tracing = self.done = False

    def before_step(self, step: int) -> None:
        """``step`` (1-based) is about to run."""
        if self.start <= step <= self.stop and not (self.tracing or self.done):
            try:
                jax.profiler.start_trace(self.log_dir)
            except RuntimeError as exc:
                self.done = True
                self.say(f"no profile of steps {self.start}:{self.stop}: the trace could not start ({exc})")
                return
            self.tracing = True

    def after_step(self, step: int, state) -> None:
        if self.tracing and step == self.stop:
            jax.block_until_ready(state)
            self.close()

    def close(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing, self.done = False, True
