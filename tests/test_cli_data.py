"""`sonichu-jax make-synthetic` and `sonichu-jax evaluate` through `cli.main`."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sonichu_jax.cli import main
from sonichu_jax.data.sources import load_source
from sonichu_jax.data.synthetic import synthetic_tasks


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("data") / "syn")
    assert main(["make-synthetic", out, "--n", "2", "--tasks", "HC", "IVC", "--size", "64", "--seed", "1", "--csv", "--quiet"]) == 0
    return out


def test_make_synthetic_writes_a_loadable_dataset(dataset):
    assert sorted(os.listdir(dataset)) == ["HC.csv", "IVC.csv", "images", "manifest.jsonl"]
    src = load_source(dataset, log=None)
    assert len(src) == 4 and src.tasks() == ("HC", "IVC")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(dataset).st_mode & 0o777 == 0o777 & ~umask  # not tempfile's private 0700


def test_make_synthetic_bad_input(tmp_path, dataset, capsys):
    assert main(["make-synthetic", str(tmp_path / "x"), "--n", "1", "--tasks", "LIVER", "--quiet"]) == 2
    assert "LIVER" in capsys.readouterr().err
    assert main(["make-synthetic", dataset, "--n", "1", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
    (tmp_path / "file").write_text("")
    for args, message in [
        ([str(tmp_path / "file")], "is an existing file"),
        ([str(tmp_path / "file" / "sub")], "which is a file"),
        ([str(tmp_path / "x"), "--tasks", "HC", "HC"], "more than once: HC"),
        ([str(tmp_path / "x"), "--seed", "-1"], "seed must be a non-negative integer, got -1"),
        ([str(tmp_path / "x"), "--size", "100000"], "between 32 and 4096 pixels, got 100000"),
        ([str(tmp_path / "x"), "--n", "0"], "at least one image per task"),
    ]:
        argv = ["make-synthetic", *args, "--quiet"] + ([] if "--n" in args else ["--n", "1"])
        assert main(argv) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)  # no progress bar before the error
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_make_synthetic_stopped_by_a_signal_leaves_nothing(tmp_path, signum, code):
    """A real process, stopped while it writes: no hidden temporary folder, no output."""
    out = tmp_path / "syn"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sonichu_jax", "make-synthetic", str(out), "--n", "2000", "--tasks", "HC",
         "--size", "64", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while len(glob.glob(str(tmp_path / ".syn.*" / "images" / "HC" / "*.png"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    nnx = pytest.importorskip("flax.nnx")
    from sonichu_jax.config import tiny_config
    from sonichu_jax.nn.sonichu import SonichuModel

    dirs = []
    for seed in (0, 1):
        model = SonichuModel(tiny_config(tasks=synthetic_tasks(["HC", "IVC"])), rngs=nnx.Rngs(seed))
        path = str(tmp_path_factory.mktemp(f"model{seed}"))
        model.save_pretrained(path)
        dirs.append(path)
    return dirs


@pytest.mark.slow
def test_evaluate_matches_an_independent_mre(dataset, tiny_models, tmp_path, capsys):
    from sonichu_jax.inference import predict_pixels
    from sonichu_jax.nn.sonichu import SonichuModel
    from sonichu_jax.preprocess import SonichuPreprocessor

    out = str(tmp_path / "eval.json")
    assert main(["evaluate", "--model", tiny_models[0], "--data", dataset, "--json", out, "--quiet", "--no-tta"]) == 0
    printed = capsys.readouterr().out
    assert "weighted" in printed and "unweighted" in printed and "HC" in printed
    with open(out) as fh:
        result = json.load(fh)
    column = next(iter(result["results"].values()))
    # independent: predict directly, then numpy distances
    model = SonichuModel.from_pretrained(tiny_models[0])
    prep = SonichuPreprocessor.from_pretrained(tiny_models[0])
    src = load_source(dataset, log=None)
    per_image = {}
    for task in ("HC", "IVC"):
        recs = [r for r in src if r.task == task]
        pred = predict_pixels(model, prep, [r.image for r in recs], task, tta=False, progress=False)
        per_image[task] = [np.linalg.norm(p - r.keypoints, axis=-1).mean() for p, r in zip(pred, recs)]
        assert column["tasks"][task]["n"] == 2
        assert column["tasks"][task]["mre_px"] == pytest.approx(np.mean(per_image[task]), rel=1e-4)
    everything = per_image["HC"] + per_image["IVC"]
    assert column["weighted_mre_px"] == pytest.approx(np.mean(everything), rel=1e-4)
    assert column["unweighted_mre_px"] == pytest.approx(
        np.mean([np.mean(per_image["HC"]), np.mean(per_image["IVC"])]), rel=1e-4
    )


@pytest.mark.slow
def test_evaluate_two_models_adds_the_ensemble(dataset, tiny_models, tmp_path, capsys):
    out = str(tmp_path / "eval.json")
    argv = ["evaluate", "--data", dataset, "--json", out, "--quiet", "--tasks", "IVC"]
    for path in tiny_models:
        argv += ["--model", path]
    assert main(argv) == 0
    assert "median ensemble" in capsys.readouterr().out
    with open(out) as fh:
        result = json.load(fh)["results"]
    assert len(result) == 3 and "median ensemble" in result
    assert all(list(col["tasks"]) == ["IVC"] for col in result.values())


@pytest.fixture
def config_only(tmp_path):
    """A model directory with only config.json: evaluate must reject bad input before it
    loads any weights."""
    from sonichu_jax.config import tiny_config

    path = str(tmp_path / "cfg_only")
    tiny_config(tasks=synthetic_tasks(["HC", "IVC"])).save(path)
    return path


def test_evaluate_bad_input(dataset, config_only, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    with open(os.path.join(dataset, "manifest.jsonl")) as fh:
        lines = fh.read().splitlines()
    lines = [line.replace('"images/', f'"{dataset}/images/') for line in lines]
    bad.write_text("\n".join(lines[:1] + ["{not json"] + lines[1:]) + "\n")
    assert main(["evaluate", "--model", config_only, "--data", str(bad), "--strict", "--quiet"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert main(["evaluate", "--model", config_only, "--data", dataset, "--tasks", "A4C", "--quiet"]) == 2
    assert "A4C" in capsys.readouterr().err
    assert main(["evaluate", "--model", config_only, "--data", str(tmp_path / "none.jsonl"), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "no_model"), "--data", dataset, "--quiet"]) == 2
