"""Which attention implementation is fastest here: the evidence behind `model.attention=auto`
on this backend (`sonichu_jax.nn.vit.AUTO_ATTENTION`).

Times ViT-B blocks (width 768, 12 heads of 64; 256 tokens, a 256 px image) over a batch,
forward only (inference) and forward + backward (a training step's gradient), for each
implementation that runs on the default backend: `xla` and `heads_major` everywhere,
`cudnn` on GPUs, `splash` on TPUs (off TPU it is interpreted, for tests only). The median
of --repeats timed calls after one compile, in wall-clock and in this process's CPU
time (all its threads; the fairer comparison on a machine shared with other work); the
same weights for every implementation.

    python benchmarks/bench_attention.py [--batch 8] [--depth 2] [--dtype float32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.nn.vit import VisionTransformer


def kinds() -> list[str]:
    extra = {"gpu": ["cudnn"], "tpu": ["splash"]}.get(jax.default_backend(), [])
    return ["xla", "heads_major", *extra]


def time_call(fn, args, repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of one call."""
    jax.block_until_ready(fn(*args))  # compile
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def measure(kind: str, cfg: ModelConfig, batch: int, repeats: int):
    model = VisionTransformer(cfg.replace(attention=kind), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jax.random.normal(jax.random.key(1), (batch, cfg.num_patches, cfg.width), jnp.dtype(cfg.dtype))

    def forward(p, x):
        return nnx.merge(graphdef, p, rest).encode_tokens(x)

    def loss(p, x):
        return jnp.mean(jnp.square(forward(p, x).astype(jnp.float32)))

    fwd = time_call(jax.jit(forward), (params, tokens), repeats)
    grad = time_call(jax.jit(jax.grad(loss)), (params, tokens), repeats)
    return fwd, grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cfg = ModelConfig(depth=args.depth, dtype=args.dtype)
    print(f"{jax.default_backend()} ({jax.devices()[0].device_kind}), ViT-B blocks x{args.depth}, "
          f"batch {args.batch}, {cfg.num_patches} tokens, {args.dtype}; median of {args.repeats}")
    print(f"{'attention':<12} {'forward ms':>11} {'CPU ms':>9} {'fwd+bwd ms':>11} {'CPU ms':>9}")
    for kind in kinds():
        (fwd, fwd_cpu), (grad, grad_cpu) = measure(kind, cfg, args.batch, args.repeats)
        print(f"{kind:<12} {fwd * 1e3:>11.1f} {fwd_cpu * 1e3:>9.1f} {grad * 1e3:>11.1f} {grad_cpu * 1e3:>9.1f}")


if __name__ == "__main__":
    main()
