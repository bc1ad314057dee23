"""init.kind=pretrained with heads added: which tasks are new, and one line per conflict."""

from __future__ import annotations

import pytest

from sonichu_jax.config import TaskSpec, tiny_config
from sonichu_jax.errors import ConfigError
from sonichu_jax.train.configlib import InitConfig
from sonichu_jax.train.supervised import check_tasks

SAVED = tiny_config(tasks=(TaskSpec("HC", 4, (1, 0, 3, 2)), TaskSpec("fetal_femur", 2)))


def configured(*tasks):
    return tiny_config(tasks=tasks)


def test_new_tasks_need_new_heads_fresh():
    cfg = configured(TaskSpec("HC", 4, (1, 0, 3, 2)), TaskSpec("NEW", 3))
    with pytest.raises(ConfigError) as err:
        check_tasks(cfg, SAVED, InitConfig("pretrained", "/ckpt"))
    assert str(err.value) == ("init.path /ckpt has no head for task NEW; "
                              "--set init.new_heads=fresh starts them from new heads")
    assert check_tasks(cfg, SAVED, InitConfig("pretrained", "/ckpt", new_heads="fresh")) == ["NEW"]
    assert check_tasks(configured(TaskSpec("fetal_femur", 2)), SAVED, InitConfig("pretrained", "/ckpt")) == []


@pytest.mark.parametrize("task, message", [
    (TaskSpec("HC", 4), "task HC: flip_perm (1, 0, 3, 2) in init.path /ckpt, None configured; "
                        "configure the checkpoint's flip_perm"),
    (TaskSpec("HC", 3), "task HC has 4 keypoints in init.path /ckpt but 3 configured: give the new task another name"),
])
def test_a_conflicting_task_names_only_the_differing_field(task, message):
    with pytest.raises(ConfigError) as err:
        check_tasks(configured(task), SAVED, InitConfig("pretrained", "/ckpt", new_heads="fresh"))
    assert str(err.value) == message


def test_new_heads_takes_refuse_or_fresh():
    with pytest.raises(ConfigError, match="init.new_heads must be refuse or fresh, got 'yes'"):
        InitConfig("pretrained", "/ckpt", new_heads="yes")
