"""Writing files so that a failure never leaves a half-written result behind: temporaries
beside the destination (one file system), renamed into place only when complete, with
the mode a plain ``open``/``os.makedirs`` would give (not ``tempfile``'s 0600/0700)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from typing import Any, Iterator, Sequence

from sonichu_jax.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[str]:
    """Yield an empty temporary folder beside ``path``, which must not exist or be empty (or,
    with ``replace``, is swapped out only once the new folder is complete); on success the
    temporary folder becomes ``path``, on failure it is deleted and ``path`` is left as it was."""
    path = os.path.realpath(os.fspath(path))  # a link to a folder: fill that folder
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
        if replace and os.path.isdir(path):
            old = os.path.join(tmp, ".replaced")  # inside tmp, so the cleanup below removes it
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(os.path.join(path, ".replaced"))
        else:
            os.rename(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output(path: str | os.PathLike, suffixes: Sequence[str] = (), what: str = "output file", *,
                 folder: bool = False, inputs: Sequence[str] = (), data: Sequence[str] = ()) -> str:
    """Check, before any work, that ``path`` can become a command's output file (or, with
    ``folder``, folder) and replaces nothing the command reads: not one of ``inputs`` (read
    whole: checkpoints, run directories) or inside one, a folder not holding one; not one of
    ``data`` (images, data sets), a folder neither holding nor inside one. Also refused: no
    suffix of ``suffixes``, a folder given as a file (and the reverse), a path below a file."""
    path = os.fspath(path)
    if suffixes and not path.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise InputError(f"{what} {path} must end in {' or '.join(suffixes)}")
    if not folder and os.path.isdir(path):
        raise InputError(f"{what} {path} is an existing folder, not a file name")
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{what} {path} is an existing file, not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise InputError(f"{what} {path} is below {parent}, which is a file")
    real = os.path.realpath(path)
    for given, whole in [(p, True) for p in inputs] + [(p, False) for p in data]:
        other = os.path.realpath(os.fspath(given))
        if real == other or ((whole or folder) and _inside(real, other)) or (folder and _inside(other, real)):
            raise InputError(f"{what} {path} overlaps {given}, which this command reads or writes; "
                             "write it elsewhere")
    return os.path.abspath(path)


def os_reason(exc: OSError) -> str:
    """One line: the path and the system's reason (``[Errno 30] ...: 'x'`` reads badly)."""
    where = " -> ".join(os.fspath(f) for f in (exc.filename, exc.filename2) if f is not None)
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


def read_json(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``, or InputError naming the file when it cannot be read,
    is not JSON, or holds something other than an object."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise InputError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InputError(f"{os.fspath(path)} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{os.fspath(path)} must hold a JSON object, got a {type(data).__name__}")
    return data


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
