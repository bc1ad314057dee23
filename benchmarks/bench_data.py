"""Throughput of the training input pipeline: PNG decode + augmentation + batching.

Runs the grain training pipeline on a synthetic data set (written to a temporary folder
unless --data is given) in several process/thread layouts and reports images/s, the
median over --repeats timed runs after a warm-up (which also absorbs worker start-up).

    python benchmarks/bench_data.py                      # 256x256, batch 32
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


def _throughput(records, tasks, config, batches: int, warmup: int, repeats: int) -> list[float]:
    from sonichu_jax.data.pipeline import make_train_pipeline

    it = iter(make_train_pipeline(records, tasks, config, process_index=0, process_count=1))
    try:
        for _ in range(warmup):
            next(it)
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in itertools.islice(it, batches):
                pass
            rates.append(batches * config.batch_size / (time.perf_counter() - start))
        return rates
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a data spec for load_source (default: a fresh synthetic set)")
    parser.add_argument("--n-per-task", type=int, default=24, help="synthetic images per task (default 24)")
    parser.add_argument("--source-size", type=int, default=256, help="synthetic image side (default 256)")
    parser.add_argument("--image-size", type=int, default=256, help="model input side (default 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="batches per timed run (default 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default 3)")
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)

    from sonichu_jax.data.pipeline import PipelineConfig
    from sonichu_jax.data.sources import load_source
    from sonichu_jax.data.synthetic import synthetic_tasks, write_synthetic_dataset
    from sonichu_jax.fileio import write_json

    with tempfile.TemporaryDirectory() as tmp:
        spec = args.data
        if spec is None:
            spec = os.path.join(tmp, "synthetic")
            write_synthetic_dataset(spec, args.n_per_task, size=args.source_size)
        source = load_source(spec, tasks=synthetic_tasks(), log=None)
        tasks = synthetic_tasks()
        results = {}
        for name in args.layouts:
            workers, threads = LAYOUTS[name]
            config = PipelineConfig(
                batch_size=args.batch_size, image_size=(args.image_size, args.image_size),
                num_workers=workers, num_threads=threads,
            )
            rates = _throughput(source.records, tasks, config, args.batches, args.warmup, args.repeats)
            results[name] = {"median_img_per_s": statistics.median(rates), "runs": rates}

    print(f"training pipeline, {os.cpu_count()} CPUs, decode + augment + batch to "
          f"{args.image_size}x{args.image_size}, batch {args.batch_size}")
    width = max(len(n) for n in results)
    print(f"{'layout'.ljust(width)}  img/s (median of {args.repeats})")
    for name, r in results.items():
        print(f"{name.ljust(width)}  {r['median_img_per_s']:10.1f}")
    if args.json:
        write_json(args.json, {
            "cpus": os.cpu_count(),
            "image_size": args.image_size,
            "source_size": args.source_size,
            "batch_size": args.batch_size,
            "layouts": results,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
