"""I-JEPA pretraining step throughput: images/s, FLOPs (XLA's count and ours) and MFU.

    python benchmarks/bench_ijepa.py --config configs/ijepa_tiny.py               # CPU
    python benchmarks/bench_ijepa.py --config configs/ijepa_vitb.py --batch 256   # one GPU

The step is the real one (context encoder + predictor forward/backward, EMA target
forward, AdamW, EMA update), compiled ahead of time on the mesh of every local device,
fed device-resident batches with varying masks (host data loading is not timed). The
median of --repeats timed windows of --steps steps is reported.

FLOPs per step: XLA's cost analysis of the compiled step, and the model count used for
MFU: 3x the forward FLOPs of the context encoder + predictor (forward + backward) plus
the target encoder forward, at the static (padded) token counts: matmuls 2*m*n*k,
attention 4*T^2*D per layer, everything else ignored. MFU = model FLOPs / time / peak;
the peak is --peak-tflops or, for a known GPU, its dense bf16 figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from devicestats import device_kind, peak_memory_gib, peak_tflops  # noqa: E402

CARD_FRAMES = 160_486  # the card's unlabelled frames


def vit_forward_flops(tokens: int, width: int, depth: int, mlp_ratio: float) -> float:
    """One pre-LN ViT stack over ``tokens`` tokens: qkv + proj (4 D^2), MLP (2 r D^2)
    multiply-adds per token, plus QK^T and AV (2 T^2 D) per layer."""
    per_layer = 2 * tokens * (4 + 2 * mlp_ratio) * width**2 + 4 * tokens**2 * width
    return depth * per_layer


def model_flops_per_image(config, context_len: int, target_len: int) -> dict[str, float]:
    cfg, pred = config.model, config.predictor
    n, d, m = cfg.num_patches, cfg.width, config.masks.num_targets
    patch = 2 * n * cfg.patch_size**2 * cfg.in_channels * d  # all patches are embedded, then gathered
    context = patch + vit_forward_flops(context_len, d, cfg.depth, cfg.mlp_ratio)
    seq = context_len + target_len
    predictor = m * (2 * context_len * d * pred.width + vit_forward_flops(seq, pred.width, pred.depth, cfg.mlp_ratio)
                     + 2 * target_len * pred.width * d)
    target = patch + vit_forward_flops(n, d, cfg.depth, cfg.mlp_ratio)
    return {"context": context, "predictor": predictor, "target": target,
            "train": 3 * (context + predictor) + target}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "ijepa_tiny.py"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mask-batches", type=int, default=4, help="distinct mask sets cycled through")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import jax
    import numpy as np

    from sonichu_jax.data.ijepa_masks import MultiBlockMaskSampler
    from sonichu_jax.train import ijepa
    from sonichu_jax.train import mesh as mesh_lib
    from sonichu_jax.train.configlib import apply_overrides, load_config_file
    from sonichu_jax.train.schedule import resolve_schedule

    sets = list(args.set) + ([f"data.batch_size={args.batch}"] if args.batch else [])
    # A schedule in epochs is counted over the card's 160,486 frames (it only sets the lr).
    config = resolve_schedule(apply_overrides(load_config_file(args.config), sets).validate(), CARD_FRAMES)[0]
    batch = config.data.batch_size
    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
    pretrainer = ijepa.build_pretrainer(config, mesh)
    state, step = pretrainer.init_state(), pretrainer.step

    sampler = MultiBlockMaskSampler(config.masks, config.model.grid, seed=0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, *config.model.image_size, 3)).astype(np.float32)
    batches = [mesh_lib.global_batch(mesh, {"image": images, **sampler.sample(i, batch)})
               for i in range(args.mask_batches)]

    start = time.perf_counter()
    compiled = step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan")))

    # The compiled program takes every mask set: one static shape, one compilation.
    for b in batches:  # warm-up: every mask set once
        state, metrics = compiled(state, b)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for i in range(args.steps):
            state, metrics = compiled(state, batches[i % len(batches)])
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - start) / args.steps)
    assert float(metrics["finite"]) == 1.0, "non-finite loss in the benchmark"
    seconds = statistics.median(times)

    model = model_flops_per_image(config, sampler.context_len, sampler.target_len)
    model_step = model["train"] * batch
    kind, peak = device_kind(), peak_tflops(args.peak_tflops)
    result = {
        "config": os.path.basename(args.config), "device": kind, "devices": jax.device_count(),
        "batch": batch, "dtype": config.model.dtype, "context_len": sampler.context_len,
        "target_len": sampler.target_len, "step_s": seconds, "img_per_s": batch / seconds,
        "xla_gflop_per_step": xla_flops / 1e9, "model_gflop_per_step": model_step / 1e9,
        "model_gflop_per_image": {k: v / 1e9 for k, v in model.items()},
        "achieved_tflops": model_step / seconds / 1e12,
        "compile_s": compile_s, "peak_memory_gib": peak_memory_gib(),
    }
    if peak:
        result["peak_tflops"] = peak
        result["mfu"] = result["achieved_tflops"] / peak / jax.device_count()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
