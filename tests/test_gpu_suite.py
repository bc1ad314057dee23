"""benchmarks/gpu_suite.sh on a machine without a GPU: the one-line refusal, and the rows
and table it would write, built from the benchmarks' own JSON (tiny configs, on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, BENCH)

import gpu_suite  # noqa: E402


def test_refuses_without_a_gpu_in_one_line(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", os.path.join(BENCH, "gpu_suite.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "gpu_suite: JAX sees no GPU here; this suite measures one (install .[cuda12] on a GPU machine)"]
    assert not (tmp_path / "out").exists()


def run_tiny(part: gpu_suite.Part, tmp_path) -> dict:
    with open(tmp_path / "log", "w") as log:
        row = gpu_suite.attempt(lambda: gpu_suite.run_part(part, str(tmp_path), log))
    assert "error" not in row, (tmp_path / "log").read_text()[-3000:]
    return row


def test_train_step_row_from_the_benchmarks_json(tmp_path):
    part = gpu_suite.Part("teacher_step", "teacher step", gpu_suite.bench(
        "bench_train.py", "--model", "tiny", "--batch", "2", "--steps", "2"), 300)
    row = run_tiny(part, tmp_path)
    assert row["img_per_s"] > 0 and row["compile_s"] > 0 and row["wall_s"] >= row["compile_s"]
    assert row["mfu"] is None  # no peak for a CPU, and no model FLOP count for the tiny model
    assert row["note"].startswith("step ") and row["note"].endswith(" ms")
    assert not list(tmp_path.glob("*.json"))  # the part's own file is folded into the row


def test_inference_row_names_the_reference(tmp_path):
    pytest.importorskip("torch")
    part = gpu_suite.Part("inference_fp32", "inference", gpu_suite.bench(
        "bench_inference.py", "--config", "tiny", "--batch-sizes", "2", "--repeats", "2"), 300)
    row = run_tiny(part, tmp_path)
    assert row["img_per_s"] > 0 and row["compile_s"] > 0
    assert "PyTorch eager" in row["note"] and "img/s (JAX " in row["note"]


def test_table_and_json_layout():
    report = {"device": "NVIDIA H200", "date": "2026-12-04", "jax": "0.10.2", "torch": "2.13.0",
              "peak_tflops": 989.0, "total_s": 412.3, "parts": [
                  {"part": "teacher_step", "what": "teacher step, bf16, batch 128", "img_per_s": 1234.5,
                   "mfu": 0.4321, "peak_memory_gib": 31.25, "compile_s": 40.0, "note": "step 103.7 ms"},
                  {"part": "ijepa_step", "what": "I-JEPA step", "error": "over its 240 s limit"},
                  {"part": "teacher_run", "what": "teacher run", "img_per_s": 900.0, "mfu": None,
                   "peak_memory_gib": None, "compile_s": None, "note": "300 steps"}]}
    lines = gpu_suite.markdown(report).splitlines()
    assert lines[0] == ("GPU suite on NVIDIA H200 (2026-12-04; jax 0.10.2, torch 2.13.0); "
                        "MFU against 989 TFLOP/s dense bf16.")
    assert lines[2] == "| part | img/s | MFU | peak memory (GiB) | compile (s) | notes |"
    assert lines[4] == "| teacher step, bf16, batch 128 | 1234 | 43.2 % | 31.2 | 40.0 | step 103.7 ms |"
    assert lines[5] == "| I-JEPA step | — | — | — | — | failed: over its 240 s limit |"
    assert lines[6] == "| teacher run | 900 | — | — | — | 300 steps |"
    assert lines[-1] == "Total wall time 412 s. Command: `bash benchmarks/gpu_suite.sh OUT_DIR`."
    json.dumps(report)  # what gpu_suite.json holds: plain JSON
