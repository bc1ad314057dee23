"""Teacher (or, with ``--teachers N``, distillation) train-step benchmark: median step
time after compilation, img/s, and the compiled step's memory analysis (and model FLOPs
utilisation with ``--peak-tflops``).

    python benchmarks/bench_train.py                       # tiny config on this machine
    python benchmarks/bench_train.py --model card --batch 128 --dtype bfloat16 --peak-tflops 790
    python benchmarks/bench_train.py --model card --batch 64 --dtype bfloat16 --teachers 5   # the card's distillation

Random data (static shapes): this measures the step, not the input pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

from sonichu_jax.checkpoint import init_model
from sonichu_jax.config import card_config, tiny_config
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.train import mesh as mesh_lib
from sonichu_jax.train.configlib import DataConfig, MeshConfig, OptimConfig, TeacherConfig
from sonichu_jax.train.distill import Distillation, DistillSettings, stack_teachers, teacher_shardings
from sonichu_jax.train.step import max_keypoints
from sonichu_jax.train.supervised import build_trainer

sys.path.insert(0, os.path.dirname(__file__))
from devicestats import device_kind, peak_memory_gib, peak_tflops  # noqa: E402

# About 3x the forward FLOPs; ViT-B/16 + one classic head is ~150 GFLOP/image/step
# (docs/architecture.md). Used only for the MFU line.
CARD_STEP_GFLOP = 150.0
CARD_FORWARD_GFLOP = 51.0  # one teacher's forward pass (XLA cost analysis, one head)


def random_batch(cfg, batch: int, task_index: int, rng: np.random.Generator) -> dict:
    k = max_keypoints(cfg)
    return {
        "image": rng.normal(size=(batch, *cfg.image_size, 3)).astype(np.float32),
        "keypoints": rng.uniform(size=(batch, k, 2)).astype(np.float32),
        "valid": np.ones((batch, k), np.float32),
        "task_id": np.full((batch,), task_index, np.int32),
        "has_label": np.ones((batch,), np.float32),
        "is_pseudo": np.zeros((batch,), np.float32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "card"), default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=30, help="timed steps after compilation")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for MFU (card model only; default: the datasheet figure of a known GPU)")
    parser.add_argument("--fsdp", type=int, default=1)
    parser.add_argument("--teachers", type=int, default=0, help="distillation step with this many frozen teachers")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    cfg = (tiny_config if args.model == "tiny" else card_config)(dtype=args.dtype)
    config = TeacherConfig(model=cfg, data=DataConfig(batch_size=args.batch), optim=OptimConfig(warmup_steps=1),
                           mesh=MeshConfig(fsdp=args.fsdp), steps=10_000)
    mesh = mesh_lib.make_mesh(fsdp=args.fsdp)
    objective, aux = None, ()
    if args.teachers:
        teacher_graph, params, rest = stack_teachers([init_model(cfg, seed=1 + i) for i in range(args.teachers)])
        objective = Distillation(teacher_graph, cfg, DistillSettings())
        teachers = {"params": params, "rest": rest}
        aux = (jax.device_put(teachers, teacher_shardings(mesh, teachers)),)
    trainer = build_trainer(config, mesh, objective=objective, aux=aux)
    state, step = trainer.init_state(lambda: SonichuModel(cfg, rngs=nnx.Rngs(0))), trainer.step
    rng = np.random.default_rng(0)
    batches = [mesh_lib.global_batch(mesh, random_batch(cfg, args.batch, i % len(cfg.tasks), rng)) for i in range(4)]

    t0 = time.perf_counter()
    compiled = step.lower(state, batches[0], *aux).compile()
    compile_s = time.perf_counter() - t0
    print(f"compile: {compile_s:.1f} s  ({device_kind()}, {len(jax.devices())} devices)")
    mem = compiled.memory_analysis()
    if mem is not None:
        gib = 1 << 30
        print(
            "memory analysis: "
            f"arguments {mem.argument_size_in_bytes / gib:.3f} GiB, outputs {mem.output_size_in_bytes / gib:.3f} GiB, "
            f"temporaries {mem.temp_size_in_bytes / gib:.3f} GiB, generated code {mem.generated_code_size_in_bytes / gib:.4f} GiB"
        )
    for b in batches[:2]:  # warm-up
        state, metrics = compiled(state, b, *aux)
    jax.block_until_ready(metrics)
    times = []
    for i in range(args.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batches[i % len(batches)], *aux)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    kind = f"distillation from {args.teachers} teachers" if args.teachers else "teacher"
    print(f"{kind}, {args.model} batch {args.batch} {args.dtype}: median step {median * 1e3:.1f} ms "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}), {args.batch / median:.1f} img/s")
    result = {"model": args.model, "batch": args.batch, "dtype": args.dtype, "teachers": args.teachers,
              "device": device_kind(), "devices": len(jax.devices()), "compile_s": compile_s,
              "step_s": median, "img_per_s": args.batch / median, "peak_memory_gib": peak_memory_gib()}
    peak = peak_tflops(args.peak_tflops)
    if args.model == "card":
        result["model_gflop_per_image"] = CARD_STEP_GFLOP + args.teachers * CARD_FORWARD_GFLOP
        result["achieved_tflops"] = result["model_gflop_per_image"] * args.batch / median / 1e3
        if peak:
            result["peak_tflops"] = peak
            result["mfu"] = result["achieved_tflops"] / peak / len(jax.devices())
            print(f"model FLOPs: {result['achieved_tflops']:.0f} TFLOP/s = {100 * result['mfu']:.1f} % of {peak:.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
