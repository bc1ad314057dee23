"""Experiment configs: config files, --set overrides and their errors."""

from __future__ import annotations

import glob
import json
import os

import pytest

from sonichu_jax.errors import ConfigError
from sonichu_jax.train.configlib import TeacherConfig, apply_overrides, load_config_file, to_dict

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")


def test_overrides_parse_by_field_type():
    cfg = apply_overrides(
        TeacherConfig(),
        ["optim.lr=3e-4", "steps=12", "optim.freeze_backbone=true", "model.image_size=(128, 96)",
         "data.cap=500", "model.dtype=bfloat16", "init.kind=backbone", "init.path=/x"],
    )
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.steps == 12 and cfg.optim.freeze_backbone is True
    assert cfg.model.image_size == (128, 96) and cfg.model.dtype == "bfloat16"
    assert cfg.data.cap == 500 and cfg.init.path == "/x"
    assert apply_overrides(cfg, ["data.cap=None"]).data.cap is None
    assert apply_overrides(cfg, ["optim.lr=1"]).optim.lr == 1.0  # int literal into a float field


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("optim.lrr=1e-3", "unknown config key 'optim.lrr'; valid keys here: optim.lr, optim.weight_decay"),
        ("nope=1", "unknown config key 'nope'"),
        ("steps.x=1", "'steps' is a value, not a section"),
        ("optim=1", "is a section"),
        ("steps=1.5", "expected int"),
        ("optim.freeze_backbone=maybe", "expected a boolean"),
        ("model.dtype=float8", "dtype must be one of"),  # the dataclass's own validation
        ("data.pseudo_labels=()", "set in the config file"),
        ("steps", "expects KEY=VALUE"),
    ],
)
def test_override_errors_name_the_key(assignment, message):
    with pytest.raises(ConfigError, match=None) as info:
        apply_overrides(TeacherConfig(), [assignment])
    assert message in str(info.value)


def test_every_config_file_loads_and_serialises():
    paths = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))
    names = {os.path.basename(p) for p in paths}
    assert {"teacher_vitb.py", "teacher_tiny.py", "teacher_r1.py", "teacher_r2.py", "teacher_r3.py",
            "teacher_selective.py", "teacher_r3capped.py"} <= names
    for path in paths:
        if not os.path.basename(path).startswith("teacher_"):
            continue
        cfg = load_config_file(path)
        assert isinstance(cfg, TeacherConfig)
        json.dumps(to_dict(cfg))


def test_every_bundled_config_validates_and_plans_need_examples_for_epochs():
    from sonichu_jax.train.configlib import bundled_configs
    from sonichu_jax.train.schedule import in_steps

    for name in bundled_configs():
        config = load_config_file(name).validate()
        if config.epochs is not None:  # the ViT-B configs count in epochs, as the card
            with pytest.raises(ConfigError, match="number of training examples"):
                in_steps(config, None)
            assert in_steps(config, 10_000).steps > 0


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "missing.py")
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        load_config_file(bad)
