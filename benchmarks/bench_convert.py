"""Conversion time and peak memory for the 124 M model (< 10 s, < 2x the file), and the
time of `inspect` on it (< 5 s, headers only).

Writes a random Sonichu-layout checkpoint of the card's architecture with numpy only,
plus an unknown 4.2 M-parameter head (the published file is 511 MB where the card's
architecture holds 494 MB), then times `sonichu-jax convert` and `sonichu-jax inspect` on
it, each in a fresh subprocess, and reads the convert process's peak resident memory. The
figures include the Python runtime and imports, so those alone are measured and shown too.

    python benchmarks/bench_convert.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np


def card_state_dict() -> tuple[dict[str, tuple[tuple[int, ...], str]], dict]:
    """Names and shapes of the card's PyTorch checkpoint (no torch needed)."""
    from sonichu_jax.config import card_config

    cfg = card_config()
    d, hidden, f = cfg.width, int(cfg.width * cfg.mlp_ratio), cfg.deconv_filters
    shapes = {
        "backbone.patch_embed.proj.weight": (d, 3, cfg.patch_size, cfg.patch_size),
        "backbone.patch_embed.proj.bias": (d,),
        "backbone.pos_embed": (1, cfg.num_patches, d),
    }
    for i in range(cfg.depth):
        b = f"backbone.blocks.{i}"
        shapes.update({
            f"{b}.norm1.weight": (d,), f"{b}.norm1.bias": (d,),
            f"{b}.attn.qkv.weight": (3 * d, d), f"{b}.attn.qkv.bias": (3 * d,),
            f"{b}.attn.proj.weight": (d, d), f"{b}.attn.proj.bias": (d,),
            f"{b}.norm2.weight": (d,), f"{b}.norm2.bias": (d,),
            f"{b}.mlp.fc1.weight": (hidden, d), f"{b}.mlp.fc1.bias": (hidden,),
            f"{b}.mlp.fc2.weight": (d, hidden), f"{b}.mlp.fc2.bias": (d,),
        })
    shapes.update({"backbone.norm.weight": (d,), "backbone.norm.bias": (d,)})
    for task in cfg.tasks:
        h = f"heads.{task.name}"
        for j, cin in enumerate((d, f)):
            shapes[f"{h}.deconv_layers.{3 * j}.weight"] = (cin, f, 4, 4)
            for p in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{h}.deconv_layers.{3 * j + 1}.{p}"] = (f,)
        shapes[f"{h}.final_layer.weight"] = (task.num_keypoints, f, 1, 1)
        shapes[f"{h}.final_layer.bias"] = (task.num_keypoints,)
    # the head nobody told us about: a classic head at the card's width, 4.2 M parameters
    shapes.update({"aux_head.deconv_layers.0.weight": (d, f, 4, 4), "aux_head.deconv_layers.3.weight": (f, f, 4, 4),
                   "aux_head.final_layer.weight": (4, f, 1, 1), "aux_head.final_layer.bias": (4,)})
    shapes.update({f"aux_head.deconv_layers.{j}.{p}": (f,) for j in (1, 4)
                   for p in ("weight", "bias", "running_mean", "running_var")})
    return shapes, cfg.to_dict()


def write_checkpoint(directory: str) -> int:
    from sonichu_jax.convert import SafetensorsWriter
    from sonichu_jax.fileio import write_json

    shapes, config = card_state_dict()
    rng = np.random.default_rng(0)
    path = os.path.join(directory, "model.safetensors")
    with SafetensorsWriter(path, {k: (s, np.float32) for k, s in shapes.items()}) as writer:
        for name, shape in shapes.items():
            writer.write(name, rng.standard_normal(shape, dtype=np.float32))
    write_json(os.path.join(directory, "config.json"), config)
    return os.path.getsize(path)


def measure(argv: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process."""
    script = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:]).returncode; dt = time.perf_counter() - t; "
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, rc)"
    )
    # A fresh intermediate process, so RUSAGE_CHILDREN holds this one command only.
    out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True)
    seconds, rss, rc = out.stdout.strip().splitlines()[-1].split()
    if int(rc) != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {rc}")
    return float(seconds), int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="where to write the checkpoints (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        size = write_checkpoint(src)
        baseline = [sys.executable, "-c", "import sonichu_jax.cli, sonichu_jax.convert, sonichu_jax.preprocess"]
        base_s, base_rss = measure(baseline)
        inspect = [sys.executable, "-m", "sonichu_jax.cli", "inspect", src, "--json", os.path.join(tmp, "i.json")]
        inspect_s, _ = measure(inspect)
        cli = [sys.executable, "-m", "sonichu_jax.cli", "convert", src, "--out", os.path.join(tmp, "out")]
        seconds, rss = measure(cli)
    mb = 1024 * 1024
    print(f"checkpoint            {size / mb:8.1f} MiB (float32, card model + a 4.2 M unknown head)")
    print(f"inspect wall time     {inspect_s:8.2f} s   (imports alone: {base_s:.2f} s)")
    print(f"convert wall time     {seconds:8.2f} s")
    print(f"convert peak RSS      {rss / mb:8.1f} MiB = {rss / size:.2f} x checkpoint   "
          f"(imports alone: {base_rss / mb:.1f} MiB; conversion adds {(rss - base_rss) / size:.2f} x)")
    print(f"targets: inspect < 5 s {'PASS' if inspect_s < 5 else 'FAIL'}, convert < 10 s "
          f"{'PASS' if seconds < 10 else 'FAIL'}, < 2x size {'PASS' if rss < 2 * size else 'FAIL'}")


if __name__ == "__main__":
    main()
