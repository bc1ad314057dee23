"""Inference throughput: jitted JAX vs the PyTorch reference, same weights and inputs, one run.

    python benchmarks/bench_inference.py                       # card model, fp32, batch 1 and 8
    python benchmarks/bench_inference.py --batch-sizes 256 --dtype bfloat16 --torch-device cuda   # on a GPU

Prints images/s (median over --repeats timed runs after warm-up), the JAX/PyTorch ratio, and
for JAX the achieved FLOP/s from XLA's cost analysis (fraction of --peak-tflops if given).
The forward is one head (the task's) without TTA; ``--tta`` times the two-pass prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "sonichu_jax", "reference"))
sys.path.insert(0, os.path.dirname(__file__))

from devicestats import device_kind, peak_memory_gib, peak_tflops  # noqa: E402


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("card", "tiny"), default="card")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--task", default="HC")
    parser.add_argument("--tta", action="store_true", help="time predict() with the flipped pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="time JAX only")
    parser.add_argument("--torch-threads", type=int, default=None, help="default: torch's own choice")
    parser.add_argument("--torch-device", default="cpu", help="where the PyTorch reference runs (cpu, cuda)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak, for the fraction of peak (default: the datasheet figure of a known GPU)")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)

    import jax
    from flax import nnx

    from sonichu_jax.config import card_config, tiny_config
    from sonichu_jax.nn import sonichu as sonichu_module
    from sonichu_jax.nn.sonichu import SonichuModel

    cfg = card_config() if args.config == "card" else tiny_config()
    workdir = tempfile.mkdtemp(prefix="sonichu-bench-")
    torch_model = None
    if args.no_torch:
        from sonichu_jax.checkpoint import init_model

        jax_model = init_model(cfg.replace(dtype=args.dtype))
        jax_model.eval()
    else:
        import modeling_sonichu as ref
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        # JAX computes float32 matrix products on GPUs in TF32 by default; the same for torch.
        torch.set_float32_matmul_precision("high")
        torch_model = ref.randomize_(ref.SonichuModel(cfg.to_dict()), seed=0).eval()
        torch_model.save_pretrained(workdir)
        jax_model = SonichuModel.from_pretrained(workdir, dtype=args.dtype)
        torch_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        torch_model = torch_model.to(args.torch_device, dtype=torch_dtype)

    rows = []
    for batch in args.batch_sizes:
        x = np.random.default_rng(0).normal(size=(batch, *cfg.image_size, 3)).astype(np.float32)
        x_dev = jax.device_put(x)
        if args.tta:
            def run_jax():
                jax_model.predict(x_dev, args.task, tta=True).block_until_ready()
        else:
            def run_jax():
                jax_model.heatmaps(x_dev, args.task).block_until_ready()
        start = time.perf_counter()
        run_jax()
        compile_s = time.perf_counter() - start
        run_jax()
        jax_s = _median_seconds(run_jax, args.repeats)
        graphdef, state = nnx.split(jax_model)
        fn = sonichu_module._jit_predict if args.tta else sonichu_module._jit_heatmaps
        static = (args.task, True) if args.tta else (args.task,)
        cost = fn.lower(graphdef, state, x_dev, *static).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", 0.0)) if cost else 0.0
        row = {"batch": batch, "dtype": args.dtype, "jax_img_s": batch / jax_s, "jax_compile_s": compile_s,
               "gflop_per_img": flops / batch / 1e9, "jax_tflops": flops / jax_s / 1e12,
               "jax_peak_memory_gib": peak_memory_gib()}
        peak = peak_tflops(args.peak_tflops)
        if peak:
            row["fraction_of_peak"] = row["jax_tflops"] / peak
        if torch_model is not None:
            import torch

            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(args.torch_device, dtype=torch_dtype)

            def run_torch():
                with torch.no_grad():
                    if args.tta:
                        torch_model.predict(xt, args.task, tta=True)
                    else:
                        torch_model.heatmaps(xt, args.task)
                if args.torch_device.startswith("cuda"):
                    torch.cuda.synchronize()

            run_torch()
            torch_s = _median_seconds(run_torch, args.repeats)
            row["torch_img_s"] = batch / torch_s
            row["ratio"] = torch_s / jax_s
        rows.append(row)

    print(f"device: {device_kind()} ({jax.default_backend()}), torch on {args.torch_device}, config {args.config}, "
          f"task {args.task}, {'TTA predict' if args.tta else 'heatmaps'}, median of {args.repeats}")
    print(f"{'batch':>5} {'JAX img/s':>10} {'torch img/s':>12} {'JAX/torch':>10} {'GFLOP/img':>10} {'JAX TFLOP/s':>12}")
    for r in rows:
        print(f"{r['batch']:>5} {r['jax_img_s']:>10.2f} {r.get('torch_img_s', float('nan')):>12.2f} "
              f"{r.get('ratio', float('nan')):>10.2f} {r['gflop_per_img']:>10.1f} {r['jax_tflops']:>12.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": args.config, "task": args.task, "tta": args.tta, "device": device_kind(),
                       "torch_device": args.torch_device, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
