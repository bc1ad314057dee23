"""A model's variables as numpy arrays by Flax state path: read from any checkpoint,
filled into a module, written as ``flax_model.safetensors``. Below `nn.sonichu`, which
loads and saves through it, and `sonichu_jax.checkpoint`."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.convert import FLAX_WEIGHTS_NAME, open_checkpoint, read_model, write_safetensors
from sonichu_jax.convert.loading import Tasks
from sonichu_jax.convert.rename import RuleSpec
from sonichu_jax.errors import InputError

logger = logging.getLogger("sonichu_jax.checkpoint")  # the name users filter loading messages by


def path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every variable of the model (parameters, BatchNorm statistics, fixed tables) by path."""
    return {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def expected_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    return {path_str(p): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(nnx.state(model))}


def filled(module: nnx.Module, arrays: dict[str, np.ndarray], prefix: str = "") -> nnx.Module:
    """``module`` with every variable replaced by ``arrays[prefix + path]``; a variable
    without a value is an error (an abstract module would otherwise keep shapes only)."""
    graphdef, state = nnx.split(module)
    flat = list(nnx.to_flat_state(state))
    missing = [prefix + path_str(p) for p, _ in flat if prefix + path_str(p) not in arrays]
    if missing:
        raise InputError(f"no value for {len(missing)} variables, e.g. {', '.join(missing[:3])}")
    flat = [(p, v.replace(jnp.asarray(arrays[prefix + path_str(p)]))) for p, v in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def read_pretrained(
    path: str | os.PathLike,
    *,
    layout: str | None = None,
    dtype: str | None = None,
    report: list | None = None,
    strict: bool = False,
    tasks: Tasks = None,
    rename: Sequence[RuleSpec] | None = None,
    entry: str | None = None,
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, arrays by Flax path) of a checkpoint, for `SonichuModel.from_pretrained`.
    ``report``, if a list, receives the ConversionReport. Unused tensors and newly
    initialised heads are logged (warning) in one grouped block each; ConversionError
    says what does not fit."""
    ckpt = open_checkpoint(path, rename=rename, entry=entry)
    planned, arrays = read_model(ckpt, strict=strict, layout=layout, tasks=tasks)
    cfg = planned.cfg if dtype is None else planned.cfg.replace(dtype=dtype)
    conv = planned.report
    if report is not None:
        report.append(conv)
    if conv.unmapped:
        logger.warning("%s: %s", ckpt.weights, conv.unexpected_block())
    if conv.new_heads:
        fresh = {p: s for p, s in conv.expected.items() if p not in arrays}
        arrays = {**arrays, **fresh_arrays(fresh, seed=0)}
        logger.warning("%s: %s", ckpt.weights, conv.new_heads_line())
    return cfg, arrays


_TRUNCATION = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def fresh_arrays(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Initial values for new heads by the Flax modules' own rules (truncated LeCun normal
    kernels, zero biases, identity BatchNorm), sampled in numpy: a jitted Flax initialiser
    compiles for seconds per head."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, shape in shapes.items():
        name = path.rsplit("/", 1)[-1]
        if name == "kernel":
            values = rng.standard_normal(shape)
            outside = np.abs(values) > 2
            while outside.any():
                values[outside] = rng.standard_normal(int(outside.sum()))
                outside = np.abs(values) > 2
            out[path] = (values * (1.0 / np.sqrt(np.prod(shape[:-1]))) / _TRUNCATION).astype(np.float32)
        elif name in ("bias", "mean", "scale", "var"):
            out[path] = np.full(shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)
        else:
            raise ValueError(f"no initialiser for the new variable {path}")
    return out


def save_flax(model: nnx.Module, directory: str | os.PathLike) -> None:
    """config.json + flax_model.safetensors, each written atomically."""
    os.makedirs(directory, exist_ok=True)
    write_safetensors(
        os.path.join(directory, FLAX_WEIGHTS_NAME), flat_state(model), metadata={"format": "flax", "layout": "flax"}
    )
    model.cfg.save(directory)
