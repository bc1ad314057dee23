"""A ``jax.profiler`` trace of the steps ``log.profile_steps=START:STOP`` into
``<run>/profile/``, by the primary process (docs/training.md, "Profiler window").
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
