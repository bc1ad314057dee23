"""Every ```python block of README.md runs, each on its own, against a small checkpoint
made here: "path/to/sonichu" becomes its directory and "frame.png" a real PNG frame (the
placeholders the README documents), so the documentation cannot drift from the code."""

from __future__ import annotations

import os
import re

import cv2
import numpy as np
import pytest

from conftest import write_reference_checkpoint
from sonichu_jax.config import tiny_config

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
BLOCKS = re.findall(r"^```python\n(.*?)^```", open(README).read(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def placeholders(torch_ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    write_reference_checkpoint(torch_ref, tiny_config(), root / "sonichu", seed=5)
    frame = (np.random.default_rng(0).random((90, 120)) * 255).astype(np.uint8)  # a gray 120x90 frame
    cv2.imwrite(str(root / "frame.png"), frame)
    return {"path/to/sonichu": str(root / "sonichu"), "frame.png": str(root / "frame.png")}


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, placeholders, monkeypatch, tmp_path):
    code = BLOCKS[index]
    for placeholder, value in placeholders.items():
        code = code.replace(f'"{placeholder}"', repr(value))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    if "pixels" in namespace:  # the quick start: keypoints in original-image pixels, as numpy
        pixels = namespace["pixels"]
        assert isinstance(pixels, np.ndarray) and pixels.shape == (2, 2)
        assert np.all((pixels >= 0) & (pixels <= (120, 90)))
    if "report" in namespace:  # loading with a new head: HC kept, NEW made fresh and reported
        assert namespace["model"].cfg.task_names == ("HC", "NEW")
        assert namespace["report"] and "NEW" in namespace["report"][0].summary()


def test_quick_start_data_has_the_tiny_configs_tasks():
    """Every `make-synthetic data/...` of the README and the tiny configs' docstrings makes
    exactly the tiny configs' tasks: no run of the quick start skips records of others."""
    from sonichu_jax.train.presets import tiny_teacher

    root = os.path.join(os.path.dirname(__file__), "..")
    texts = [open(README).read()] + [open(os.path.join(root, "configs", f"{stage}_tiny.py")).read()
                                     for stage in ("teacher", "ijepa")]
    commands = [m for text in texts for m in re.findall(r"make-synthetic data/\S+ --n \d+([^#\n]*)", text)]
    assert len(commands) >= 4
    tasks = tiny_teacher().model.task_names
    for rest in commands:
        assert rest.split() == ["--tasks", *tasks], rest
