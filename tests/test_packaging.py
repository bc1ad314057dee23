"""The installed package as a user gets it: a wheel (not an editable install) built from
the sources, installed into a fresh virtual environment and used from outside the source
tree. It proves that the top-level convert/, train/ and configs/ folders are installed as
sonichu_jax.convert, sonichu_jax.train and sonichu_jax.configs, that a bundled config is
found by name, and that both entry points run.

To stay fast and offline, the fresh environment reuses this one's third-party packages
through a ``.pth`` file (a plain path line, so no editable-install hook in those folders
runs) and installs only our wheel, without dependencies. Building without isolation needs
setuptools >= 70.1 (bdist_wheel built in), which the test extra requires.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "sonichu_jax", "convert", "train", "configs")

CHECK = textwrap.dedent(
    """
    import json, os
    import sonichu_jax, sonichu_jax.convert, sonichu_jax.train, sonichu_jax.configs
    from sonichu_jax.train.configlib import load_config_file, resolve_config_path

    cfg = load_config_file("teacher_vitb")
    print(json.dumps({
        "modules": [m.__file__ for m in (sonichu_jax, sonichu_jax.convert, sonichu_jax.train, sonichu_jax.configs)],
        "config_file": resolve_config_path("teacher_vitb"),
        "model_width": cfg.model.width,
        "reference": os.path.isfile(os.path.join(os.path.dirname(sonichu_jax.__file__), "reference",
                                                 "modeling_sonichu.py")),
    }))
    """
)


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that would put the sources on the path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp / "dist"), str(src)], env=_clean_env())
    (wheel,) = (tmp / "dist").glob("sonichu_jax-*.whl")

    env = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    python = env / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    shared = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    Path(purelib, "_shared_packages.pth").write_text("\n".join(shared) + "\n")
    # --ignore-installed: pip must not touch the editable install it can see on the shared path.
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
         cwd=tmp, env=_clean_env())
    return env


def test_wheel_installs_the_top_level_folders_under_sonichu_jax(venv, tmp_path):
    out = _run([str(venv / "bin" / "python"), "-c", CHECK], cwd=tmp_path, env=_clean_env()).stdout
    found = json.loads(out.strip().splitlines()[-1])
    for path in found["modules"] + [found["config_file"]]:
        assert Path(path).resolve().is_relative_to(venv.resolve()), path  # from the wheel, not the sources
    assert Path(found["modules"][2]).parent.name == "train" and Path(found["modules"][3]).parent.name == "configs"
    assert Path(found["config_file"]).name == "teacher_vitb.py"
    assert found["model_width"] == 768 and found["reference"]


def test_entry_points_run_from_the_wheel(venv, tmp_path):
    from sonichu_jax import __version__

    script = venv / "bin" / "sonichu-jax"
    assert script.read_text().startswith(f"#!{venv / 'bin' / 'python'}")
    out = _run([str(script), "--version"], cwd=tmp_path, env=_clean_env()).stdout
    assert out.strip() == f"sonichu-jax {__version__}"
    help_text = _run([str(venv / "bin" / "python"), "-m", "sonichu_jax", "--help"], cwd=tmp_path,
                     env=_clean_env()).stdout
    for command in ("predict", "convert", "make-synthetic", "train-teacher", "pretrain", "distill", "demo"):
        assert command in help_text
