"""Atomic writes: nothing half-written on failure, and the umask's file modes."""

from __future__ import annotations

import os
import stat

import pytest

from sonichu_jax.errors import InputError
from sonichu_jax.fileio import atomic_dir, atomic_path, check_output, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_files_and_folders_get_the_umask_mode(tmp_path, umask_022):
    write_json(tmp_path / "a.json", {"x": 1})
    assert _mode(tmp_path / "a.json") == 0o644
    with atomic_dir(tmp_path / "out") as tmp:
        write_json(os.path.join(tmp, "b.json"), {})
    assert _mode(tmp_path / "out") == 0o755
    assert _mode(tmp_path / "out" / "b.json") == 0o644


def test_failure_leaves_nothing_behind(tmp_path):
    (tmp_path / "keep.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "keep.json") as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            open(os.path.join(tmp, "x"), "w").write("half")
            raise RuntimeError("disk full")
    assert sorted(os.listdir(tmp_path)) == ["keep.json"]
    assert (tmp_path / "keep.json").read_text() == "old"


def test_atomic_dir_replaces_only_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:
        open(os.path.join(tmp, "x"), "w").write("1")
    assert os.listdir(tmp_path / "empty") == ["x"]
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "empty"):
            pass
    assert os.listdir(tmp_path / "empty") == ["x"]
    assert sorted(os.listdir(tmp_path)) == ["empty"]


def test_atomic_dir_replace_swaps_the_old_folder_out_only_when_the_new_one_is_complete(tmp_path):
    old = tmp_path / "pack"
    old.mkdir()
    (old / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(old, replace=True) as tmp:
            assert os.listdir(old) == ["a"]  # the old folder stays in place while the new one is written
            open(os.path.join(tmp, "b"), "w").write("half")
            raise RuntimeError("killed")
    assert os.listdir(old) == ["a"] and (old / "a").read_text() == "old"
    os.symlink(old, tmp_path / "link")
    with atomic_dir(tmp_path / "link", replace=True) as tmp:
        open(os.path.join(tmp, "b"), "w").write("new")
    assert os.path.islink(tmp_path / "link") and os.listdir(old) == ["b"]  # the link's target replaced
    assert sorted(os.listdir(tmp_path)) == ["link", "pack"]


def test_check_output_refuses_folders_paths_below_files_and_suffixes(tmp_path):
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(InputError, match="existing folder"):
        check_output(tmp_path)
    with pytest.raises(InputError, match="which is a file"):
        check_output(tmp_path / "file.txt" / "deeper" / "out.json")
    with pytest.raises(InputError, match=r"\.json or \.csv"):
        check_output(tmp_path / "out.txt", (".json", ".csv"))
    assert check_output(tmp_path / "new" / "out.JSON", (".json",)) == str(tmp_path / "new" / "out.JSON")
