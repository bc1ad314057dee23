"""Everything worth measuring on one GPU, in one short run (under 8 minutes on an H100/H200).

    bash benchmarks/gpu_suite.sh OUT_DIR          # refuses in one line without a GPU

Parts, each in its own process (a failing part is reported, the others still run):
inference (card model, heatmaps of one head, batch 256, bf16 and fp32, PyTorch reference on
the same card), the teacher train step (card model, bf16, batch 128), the distillation step
(five frozen teachers, batch 64), the I-JEPA step (card config, batch 256) and a short real
teacher run (card model, synthetic data through the whole input pipeline). Writes
OUT_DIR/gpu_suite.json, OUT_DIR/gpu_suite.md and OUT_DIR/gpu_suite.log.

MFU is model FLOPs (docs/architecture.md counts; XLA's own count for inference) over the
GPU's dense bf16 datasheet peak, fp32 rows included, so rows compare on one scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUN_STEPS = 300


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    what: str
    argv: tuple[str, ...]  # "{json}" stands for the part's result file
    timeout_s: int


def bench(script: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, os.path.join(HERE, script), *args, "--json", "{json}")


PARTS = (
    Part("inference_bf16", "inference, bf16, batch 256", bench(
        "bench_inference.py", "--batch-sizes", "256", "--dtype", "bfloat16", "--torch-device", "cuda",
        "--repeats", "10"), 150),
    Part("teacher_step", "teacher step, bf16, batch 128", bench(
        "bench_train.py", "--model", "card", "--batch", "128", "--dtype", "bfloat16", "--steps", "20"), 180),
    Part("distill_step", "distillation step, 5 teachers, bf16, batch 64", bench(
        "bench_train.py", "--model", "card", "--batch", "64", "--dtype", "bfloat16", "--teachers", "5",
        "--steps", "20"), 240),
    Part("ijepa_step", "I-JEPA step, card config, batch 256", bench(
        "bench_ijepa.py", "--config", os.path.join(ROOT, "configs", "ijepa_vitb.py"), "--batch", "256",
        "--steps", "5", "--repeats", "3"), 240),
    Part("inference_fp32", "inference, fp32, batch 256", bench(
        "bench_inference.py", "--batch-sizes", "256", "--dtype", "float32", "--torch-device", "cuda",
        "--repeats", "10"), 150),
)


def summarize(name: str, result: dict) -> dict:
    """One table row from a part's own JSON."""
    if name.startswith("inference"):
        r = result["rows"][0]
        row = {"img_per_s": r["jax_img_s"], "mfu": r.get("fraction_of_peak"), "compile_s": r["jax_compile_s"],
               "peak_memory_gib": r.get("jax_peak_memory_gib")}
        if "torch_img_s" in r:
            row["note"] = f"PyTorch eager on the same GPU {r['torch_img_s']:.0f} img/s (JAX {r['ratio']:.2f}x)"
        return row
    if name == "teacher_run":
        return result
    return {"img_per_s": result["img_per_s"], "mfu": result.get("mfu"), "compile_s": result["compile_s"],
            "peak_memory_gib": result.get("peak_memory_gib"),
            "note": f"step {1e3 * result['step_s']:.1f} ms"}


def teacher_run(out: str, data: str, log, config: str = "teacher_vitb", steps: int = RUN_STEPS) -> dict:
    """A real `train-teacher` run: the card model from scratch, bf16, batch 64, the whole
    input pipeline, validation at the end; rates from the run's own metrics.jsonl."""
    run = os.path.join(out, "teacher_run")
    every = max(1, steps // 6)
    sets = ["epochs=none", f"steps={steps}", "optim.warmup_epochs=none", f"optim.warmup_steps={max(1, steps // 10)}",
            "log.eval_every_epochs=none", "log.eval_every_steps=0", f"log.every_steps={every}", "init.kind=scratch",
            f"checkpoint.every_steps={steps}"]
    argv = [sys.executable, "-m", "sonichu_jax", "train-teacher", "--config", config, "--data", data,
            "--out", run] + [a for s in sets for a in ("--set", s)]
    start = time.perf_counter()
    # cwd: away from a source checkout, whose sonichu_jax/ would shadow the installed package
    subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=300, cwd=out)
    wall = time.perf_counter() - start
    with open(os.path.join(run, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    rate = statistics.median(r["img_per_s"] for r in train[1:])  # the first window holds the compilation
    return {"img_per_s": rate, "mfu": None, "compile_s": None, "peak_memory_gib": None,
            "note": f"{steps} steps in {wall:.0f} s wall (start, compile, data, validation, export); "
                    f"final validation MRE {val[-1]['val_mre']:.1f} px"}


def make_data(out: str, log) -> tuple[subprocess.Popen, str]:
    """Synthetic frames for the real run, written on the CPU while the GPU parts run."""
    data = os.path.join(out, "synthetic")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "sonichu_jax", "make-synthetic", data, "--n", "120",
                             "--size", "256", "--quiet"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out)
    return proc, data


def run_part(part: Part, out: str, log) -> dict:
    result_file = os.path.join(out, f"{part.name}.json")
    argv = [a.replace("{json}", result_file) for a in part.argv]
    log.write(f"\n===== {part.name}: {' '.join(argv)}\n")
    log.flush()
    start = time.perf_counter()
    subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=part.timeout_s)
    with open(result_file) as fh:
        row = summarize(part.name, json.load(fh))
    os.remove(result_file)
    return {**row, "wall_s": time.perf_counter() - start}


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = [f"GPU suite on {report['device']} ({report['date']}; jax {report['jax']}, torch {report['torch']}); "
             f"MFU against {fmt(report['peak_tflops'], '.0f')} TFLOP/s dense bf16.", "",
             "| part | img/s | MFU | peak memory (GiB) | compile (s) | notes |",
             "|---|---:|---:|---:|---:|---|"]
    for row in report["parts"]:
        if "error" in row:
            lines.append(f"| {row['what']} | — | — | — | — | failed: {row['error']} |")
            continue
        mfu = None if row.get("mfu") is None else 100 * row["mfu"]
        lines.append(f"| {row['what']} | {row['img_per_s']:.0f} | {fmt(mfu, '.1f')}{'' if mfu is None else ' %'} "
                     f"| {fmt(row.get('peak_memory_gib'), '.1f')} | {fmt(row.get('compile_s'), '.1f')} "
                     f"| {row.get('note', '')} |")
    lines.append(f"\nTotal wall time {report['total_s']:.0f} s. Command: `bash benchmarks/gpu_suite.sh OUT_DIR`.")
    return "\n".join(lines) + "\n"


PROBE = """
import json, jax
from devicestats import peak_tflops
try:
    kind = jax.devices("gpu")[0].device_kind
except RuntimeError:
    kind = None
print(json.dumps({"device": kind, "jax": jax.__version__, "peak_tflops": kind and peak_tflops()}))
"""


def probe() -> dict:
    """The GPU JAX sees, asked in a child process: this one never holds the GPU, so every
    part gets the whole card."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=HERE)
    if done.returncode != 0:
        return {"device": None}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for gpu_suite.json, gpu_suite.md and gpu_suite.log (created)")
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS] + ["teacher_run"],
                        help="run only these parts (default: all)")
    args = parser.parse_args(argv)
    found = probe()
    if found["device"] is None:
        print("gpu_suite: JAX sees no GPU here; this suite measures one (install .[cuda12] on a GPU machine)",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    wanted = set(args.parts or [p.name for p in PARTS] + ["teacher_run"])
    start = time.perf_counter()
    rows = []
    with open(os.path.join(args.out, "gpu_suite.log"), "w") as log, tempfile.TemporaryDirectory() as scratch:
        maker, data = make_data(scratch, log) if "teacher_run" in wanted else (None, None)
        for part in PARTS:
            if part.name in wanted:
                rows.append({"part": part.name, "what": part.what, **attempt(lambda: run_part(part, scratch, log))})
                print(json.dumps(rows[-1]), flush=True)
        if maker is not None:
            def real_run():
                if maker.wait() != 0:
                    raise RuntimeError("make-synthetic failed")
                return teacher_run(scratch, data, log)
            rows.append({"part": "teacher_run", "what": f"teacher run, {RUN_STEPS} steps, bf16, batch 64",
                         **attempt(real_run)})
            print(json.dumps(rows[-1]), flush=True)
    report = {**found, "date": datetime.date.today().isoformat(), "torch": torch_version(), "parts": rows,
              "total_s": time.perf_counter() - start}
    with open(os.path.join(args.out, "gpu_suite.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    table = markdown(report)
    with open(os.path.join(args.out, "gpu_suite.md"), "w") as fh:
        fh.write(table)
    print(table)
    return 0


def attempt(fn) -> dict:
    """A part's row, or the reason it has none (the suite goes on)."""
    try:
        return fn()
    except subprocess.TimeoutExpired as exc:
        return {"error": f"over its {exc.timeout:.0f} s limit"}
    except subprocess.CalledProcessError as exc:
        return {"error": f"exit code {exc.returncode} (see gpu_suite.log)"}
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


if __name__ == "__main__":
    sys.exit(main())
