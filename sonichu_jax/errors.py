"""The one family of errors a user can act on.

Everything the user can fix (a missing file, a bad value, a checkpoint that does not fit,
an unknown task, a diverged run) is a `SonichuError`. Messages name the offending file,
key or value and never a command-line flag, because the library is also called from
Python; the CLI prints ``str(error)`` on one line and exits with ``error.exit_code``.
"""

from __future__ import annotations


class SonichuError(Exception):
    """Base of every error a user can fix; exit code 2 (bad input) unless a subclass says
    otherwise."""

    exit_code = 2


class InputError(SonichuError):
    """Bad input: a missing or unreadable file, a malformed record, a wrong shape."""


class ConfigError(SonichuError, ValueError):
    """A configuration value that cannot describe a valid model or run. (A ValueError too,
    so that dataclass validation inside ``dataclasses.replace`` reads naturally.)"""


class UnknownTaskError(SonichuError, KeyError):
    """A task name that the model has no head for."""

    def __init__(self, task: str, valid: tuple[str, ...]):
        self.task = task
        self.valid = valid
        super().__init__(f"unknown task {task!r}; valid tasks: {', '.join(valid)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return self.args[0]


class TrainingDiverged(SonichuError):
    """The loss, the gradients or the updated state became NaN/inf. Nothing after the last
    finite checkpoint was saved. Exit code 1: the input was valid, the run failed."""

    exit_code = 1
