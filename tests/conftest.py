"""Shared fixtures: the PyTorch reference module and checkpoints written with it."""

from __future__ import annotations

import importlib.util
import os
import tempfile

import numpy as np
import pytest

# Many tests (and their subprocesses, which inherit the environment) compile the same tiny
# programs; one persistent compilation cache per session compiles each of them once.
# Set before any test module imports JAX, which reads these at import.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="sonichu-jax-test-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# CPU only: with libtpu installed (the tpu extra, for the plan tests) JAX would otherwise
# try to start a TPU backend in every process, slower and with warnings on stderr. Plans
# for TPU slices compile from the CPU backend anyway.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REFERENCE_PATH = os.path.join(os.path.dirname(__file__), "..", "sonichu_jax", "reference", "modeling_sonichu.py")


def load_reference():
    spec = importlib.util.spec_from_file_location("sonichu_torch_reference", REFERENCE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def torch_ref():
    pytest.importorskip("torch")
    return load_reference()


def write_reference_checkpoint(ref, cfg, directory, seed=0):
    """A randomised PyTorch reference model saved as config.json + model.safetensors."""
    model = ref.randomize_(ref.SonichuModel(cfg.to_dict()), seed=seed).eval()
    model.save_pretrained(str(directory))
    return model


def random_images(n, cfg, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *cfg.image_size, 3)).astype(np.float32)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """One `sonichu-jax demo --quick` run (about 2.5 minutes) shared by every test that
    looks at its runs: ``out`` (its folder), ``code`` (exit code), ``stdout``."""
    import contextlib
    import io
    import types

    from sonichu_jax.cli import main

    out = tmp_path_factory.mktemp("quick-demo") / "demo"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--quick", "--out", str(out)])
    # every test that looks at the run would fail on a missing file; say why once, here
    assert code == 0, stdout.getvalue()[-3000:]
    return types.SimpleNamespace(out=out, code=code, stdout=stdout.getvalue())


def numpy_model(cfg, seed=0):
    """A model with random values in every variable, built without compiling an
    initialiser (jit-initialising even the tiny model costs seconds on a 2-core CPU)."""
    from sonichu_jax.checkpoint import model_from_arrays
    from sonichu_jax.convert.shapes import model_shapes

    rng = np.random.default_rng(seed)
    return model_from_arrays(cfg, {k: (0.1 * rng.normal(size=s)).astype(np.float32) for k, s in model_shapes(cfg).items()})
