"""Throughput of the training input pipeline: PNG decode + augmentation + batching.

Runs the grain training pipeline on a synthetic data set (written to a temporary folder
unless --data is given) in several process/thread layouts and reports, as medians over
--repeats timed runs after a warm-up (which also absorbs worker start-up):

- img/s: wall-clock images per second (depends on what else the machine runs);
- x 1 process: img/s over the single-process layout's, measured just before;
- img/s per core: images per CPU-second of the main process and its workers together,
  the rate one dedicated core gives (heavy other load halved it on a 2-core machine);
- the host cores each layout's per-core rate needs for the per-host rates of the README's
  v5p-64 plans (I-JEPA, and the teacher at batch 2048).

    python benchmarks/bench_data.py                      # 256x256, batch 32, PNG files
    python benchmarks/bench_data.py --pack decoded       # the same frames from a pack
    python benchmarks/bench_data.py --image-size 64 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time

LAYOUTS = {  # name -> (worker processes, reader threads per process)
    "1 process, no threads": (0, 0),
    "1 process, 2 threads": (0, 2),
    "2 worker processes": (2, 0),
}
# img/s per host of the README's v5p-64 plans (8 hosts): I-JEPA 33,302 and teacher at batch
# 2048 45,490 img/s over the slice
HOST_NEEDS = {"I-JEPA v5p-64": 33302 / 8, "teacher b2048 v5p-64": 45490 / 8}


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and all its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            continue  # a worker that ended meanwhile
    return total


def _throughput(records, tasks, config, batches: int, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    from sonichu_jax.data.pipeline import make_train_pipeline

    it = iter(make_train_pipeline(records, tasks, config, process_index=0, process_count=1))
    try:
        for _ in range(warmup):
            next(it)
        rates, per_core = [], []
        for _ in range(repeats):
            cpu, start = _cpu_seconds(), time.perf_counter()
            for _ in itertools.islice(it, batches):
                pass
            images = batches * config.batch_size
            rates.append(images / (time.perf_counter() - start))
            per_core.append(images / max(_cpu_seconds() - cpu, 1e-9))
        return rates, per_core
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a data spec for load_source (default: a fresh synthetic set)")
    parser.add_argument("--pack", choices=("decoded", "encoded"),
                        help="read the data from a pack of it (sonichu-jax pack --store ...)")
    parser.add_argument("--n-per-task", type=int, default=24, help="synthetic images per task (default 24)")
    parser.add_argument("--source-size", type=int, default=256, help="synthetic image side (default 256)")
    parser.add_argument("--image-size", type=int, default=256, help="model input side (default 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="batches per timed run (default 20)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches first (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)

    from sonichu_jax.data.pipeline import PipelineConfig
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.data.synthetic import synthetic_tasks, write_synthetic_dataset
    from sonichu_jax.fileio import write_json

    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.data
        if spec is None:
            spec = os.path.join(tmp, "synthetic")
            write_synthetic_dataset(spec, args.n_per_task, size=args.source_size)
        if args.pack:
            from sonichu_jax.cli import main as cli

            cli(["pack", spec, "--out", os.path.join(tmp, "pack"), "--store", args.pack, "--quiet"])
            spec = os.path.join(tmp, "pack")
        source = load_source(spec, tasks=synthetic_tasks(), log=None)
        tasks = synthetic_tasks()
        results = {}
        for name in args.layouts:
            workers, threads = LAYOUTS[name]
            config = PipelineConfig(
                batch_size=args.batch_size, image_size=(args.image_size, args.image_size),
                num_workers=workers, num_threads=threads,
            )
            rates, per_core = _throughput(source.records, tasks, config, args.batches, args.warmup, args.repeats)
            core = statistics.median(per_core)
            results[name] = {
                "median_img_per_s": statistics.median(rates), "runs": rates,
                "img_per_s_per_core": core, "per_core_runs": per_core,
                "host_cores_needed": {k: v / core for k, v in HOST_NEEDS.items()},
            }
    load.append(os.getloadavg()[0])

    base = results.get("1 process, no threads", {}).get("median_img_per_s")
    origin = f" from a pack ({args.pack})" if args.pack else ""
    print(f"training pipeline{origin}, {os.cpu_count()} CPUs (1-minute load average {load[0]:.1f} before, "
          f"{load[1]:.1f} after), decode + augment + batch to {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"medians of {args.repeats}")
    width = max(len(n) for n in results)
    needs = "  ".join(f"cores for {k} ({v:,.0f} img/s)" for k, v in HOST_NEEDS.items())
    print(f"{'layout'.ljust(width)}       img/s  x 1 process  img/s per core  {needs}")
    for name, r in results.items():
        ratio = f"{r['median_img_per_s'] / base:11.2f}" if base else f"{'-':>11}"
        cores = "  ".join(f"{r['host_cores_needed'][k]:{len(f'cores for {k} ({v:,.0f} img/s)')}.1f}"
                          for k, v in HOST_NEEDS.items())
        print(f"{name.ljust(width)}  {r['median_img_per_s']:10.1f}  {ratio}  {r['img_per_s_per_core']:14.1f}  {cores}")
    if args.json:
        write_json(args.json, {
            "cpus": os.cpu_count(),
            "load_average": load,
            "image_size": args.image_size,
            "source_size": args.source_size,
            "batch_size": args.batch_size,
            "pack": args.pack,
            "host_img_per_s": HOST_NEEDS,
            "layouts": results,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
