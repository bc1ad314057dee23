"""The worked examples of docs/examples run as documented (tiny settings): a linear probe
beside its mean-shape baseline, a heatmap-MSE teacher through train-teacher with a resume
(another loss.kind refused), a new task head from that teacher with init.new_heads=fresh."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from sonichu_jax.data.synthetic import write_synthetic_dataset

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "examples")
FAST = ["optim.warmup_steps=1", "data.batch_size=8", "log.progress=false", "log.tensorboard=false", "log.eval_at_start=false"]


def example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "syn", 24, tasks=("HC", "fetal_femur"), size=64)


@pytest.fixture(scope="module")
def heatmap_run(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hm") / "run")
    train = example("heatmap_teacher").train
    assert train(data, out, 4, *FAST) == 0
    return train, out


def test_linear_probe_reports_probe_and_mean_shape(data):
    result = example("linear_probe").probe(data, task="HC")
    assert set(result) == {"probe", "mean_shape"}
    assert all(np.isfinite(v) and 0 < v < 64 for v in result.values()), result


def test_heatmap_teacher_resumes_and_refuses_another_loss(heatmap_run, data, capsys):
    train, out = heatmap_run
    saved = json.load(open(os.path.join(out, "train_config.json")))
    assert saved["loss"] == {"kind": "heatmap_mse", "sigma": 2.0, "heatmap_weight": 1.0}
    assert json.load(open(os.path.join(out, "model", "config.json")))["decoder"] == "argmax"
    capsys.readouterr()
    assert train(data, out, 8, *FAST, "loss.kind=l1", resume=True) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "loss.kind: 'heatmap_mse' (saved) vs 'l1' (now)" in err, err
    assert train(data, out, 8, *FAST, resume=True) == 0
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "metrics.jsonl")) if '"train"' in line]
    assert steps[-1] == 8


def test_new_task_head_from_the_teacher(heatmap_run, data, tmp_path, capsys):
    from sonichu_jax.nn.sonichu import SonichuModel

    _, out = heatmap_run
    teacher = os.path.join(out, "model")
    module = example("new_task_head")
    result = module.finetune(teacher, data, str(tmp_path / "new"), steps=3)
    assert "init: new heads for NEW" in capsys.readouterr().out
    assert result.finished and np.isfinite(result.val_mre)
    tuned = SonichuModel.from_pretrained(tmp_path / "new" / "run" / "model")
    assert tuned.cfg.task_names == ("HC", "fetal_femur", "NEW") and tuned.cfg.decoder == "argmax"
