"""Rename rules: `re.sub` rules (``(pattern, replacement)`` or ``PATTERN=REPLACEMENT``, split
at the last ``=``) applied in order to a checkpoint's tensor names before its layout is
detected, each within a time bound (docs/checkpoints.md, "Rename rules")."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np

from sonichu_jax.errors import InputError

RuleSpec = str | tuple[str, str]
SECONDS_PER_NAME = 1.0  # a sane rule takes microseconds on a tensor name


class _TooSlow(Exception):
    pass


def _raise_too_slow(signum, frame):
    raise _TooSlow


@contextlib.contextmanager
def _time_bound(seconds: float) -> Iterator[None]:
    """Python's regex engine checks signals while it backtracks, so an interval timer
    stops it (main thread only: elsewhere Python allows no handler, and no bound holds)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _raise_too_slow)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_rules(specs: Sequence[RuleSpec] | None) -> list[tuple[re.Pattern, str]]:
    """Compiled rules; InputError naming a rule that is malformed or not a valid regex."""
    rules = []
    for spec in specs or ():
        if isinstance(spec, str):
            if "=" not in spec:
                raise InputError(f"rename rule {spec!r} has no '=' between the pattern and its replacement")
            pattern, _, replacement = spec.rpartition("=")
        else:
            pattern, replacement = spec
        try:
            rules.append((re.compile(pattern), replacement))
        except re.error as exc:
            raise InputError(f"rename rule pattern '{pattern}' is not a valid regular expression: {exc}") from None
    return rules


def rename(name: str, rules: list[tuple[re.Pattern, str]], used: set[str] | None = None) -> str:
    """``name`` after every rule; the patterns that matched are added to ``used``."""
    for regex, replacement in rules:
        try:
            with _time_bound(SECONDS_PER_NAME):
                new = regex.sub(replacement, name)
        except (re.error, IndexError) as exc:
            raise InputError(f"rename rule {regex.pattern!r} -> {replacement!r} fails on {name}: {exc}") from None
        except _TooSlow:
            raise InputError(f"rename rule pattern {regex.pattern!r} ran over {SECONDS_PER_NAME:g} s on {name}: it "
                             "backtracks without end (nested repeats such as (a+)+); write it without them") from None
        if used is not None and new != name:
            used.add(regex.pattern)
        name = new
    return name


class RenamedSource:
    """A tensor source seen through rename rules. ``renamed`` lists (old, new) pairs;
    ``unused_rules`` the patterns that matched no tensor (usually a typo)."""

    def __init__(self, source, specs: Sequence[RuleSpec]):
        self.inner = source
        rules = parse_rules(specs)
        self._original: dict[str, str] = {}
        self.renamed: list[tuple[str, str]] = []
        used: set[str] = set()
        for old in source.keys():
            new = rename(old, rules, used)
            if new in self._original:
                raise InputError(f"rename rules map both {self._original[new]} and {old} onto {new}")
            self._original[new] = old
            if new != old:
                self.renamed.append((old, new))
        self.unused_rules = [r.pattern for r, _ in rules if r.pattern not in used]

    def __getattr__(self, attr):  # path, entry, alternatives, ... of the wrapped source
        return getattr(self.inner, attr)

    def keys(self) -> Iterable[str]:
        return list(self._original)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.inner.shape(self._original[name])

    def dtype(self, name: str) -> str:
        return self.inner.dtype(self._original[name])

    def get(self, name: str) -> np.ndarray:
        return self.inner.get(self._original[name])
