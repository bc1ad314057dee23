"""Sonichu models from checkpoints and back: the JAX side of `sonichu_jax.convert`.

A checkpoint is a directory (``config.json`` + ``flax_model.safetensors`` in this
project's Flax layout, or PyTorch weights in any layout the converter knows, single or
sharded safetensors or a torch pickle), a weights file, or a Hugging Face Hub name. How
they are read, and what happens to tensors that do not fit, is in docs/checkpoints.md.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.convert import (
    FLAX_WEIGHTS_NAME,
    TORCH_WEIGHTS_NAME,
    ConversionError,
    ConversionReport,
    Options,
    convert_tensors,
    detect_layout,
    infer_config,
    open_checkpoint,
    read_model,
    state_defaults,
    write_pytorch,
    write_safetensors,
)
from sonichu_jax.convert.loading import Tasks
from sonichu_jax.convert.rename import RuleSpec
from sonichu_jax.errors import InputError
from sonichu_jax.nn.predictor import Predictor
from sonichu_jax.nn.sonichu import SonichuModel

__all__ = ["FLAX_WEIGHTS_NAME", "TORCH_WEIGHTS_NAME", "load_pretrained", "load_backbone", "save_flax",
           "export_pytorch", "init_model"]

logger = logging.getLogger(__name__)


def path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every variable of the model (parameters, BatchNorm statistics, fixed tables) by path."""
    return {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def abstract_model(cfg: ModelConfig) -> SonichuModel:
    """The model's structure with shapes only: no memory, no random initialisation."""
    return nnx.eval_shape(lambda: SonichuModel(cfg, rngs=nnx.Rngs(0)))


def expected_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    return {path_str(p): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(nnx.state(model))}


def _filled(module: nnx.Module, arrays: dict[str, np.ndarray], prefix: str = "") -> nnx.Module:
    """``module`` with every variable replaced by ``arrays[prefix + path]``; a variable
    without a value is an error (an abstract module would otherwise keep shapes only)."""
    graphdef, state = nnx.split(module)
    flat = list(nnx.to_flat_state(state))
    missing = [prefix + path_str(p) for p, _ in flat if prefix + path_str(p) not in arrays]
    if missing:
        raise InputError(f"no value for {len(missing)} variables, e.g. {', '.join(missing[:3])}")
    flat = [(p, v.replace(jnp.asarray(arrays[prefix + path_str(p)]))) for p, v in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def model_from_arrays(cfg: ModelConfig, arrays: dict[str, np.ndarray]) -> SonichuModel:
    """Build a model whose every variable comes from ``arrays`` (keys = Flax paths)."""
    model = _filled(abstract_model(cfg), arrays)
    model.eval()
    return model


def init_model(cfg: ModelConfig, seed: int = 0) -> SonichuModel:
    """A randomly initialised model in train mode.

    The initialisers run inside one jit: eagerly, every parameter shape would compile
    its own small kernel, which costs tens of seconds even for the tiny model.
    """
    graphdef, _ = nnx.split(abstract_model(cfg))
    state = jax.jit(lambda: nnx.split(SonichuModel(cfg, rngs=nnx.Rngs(seed)))[1])()
    return nnx.merge(graphdef, state)


def load_pretrained(
    path: str | os.PathLike,
    *,
    layout: str | None = None,
    dtype: str | None = None,
    report: list | None = None,
    strict: bool = False,
    tasks: Tasks = None,
    rename: Sequence[RuleSpec] | None = None,
    entry: str | None = None,
) -> SonichuModel:
    """See `SonichuModel.from_pretrained`. ``report``, if a list, receives the
    ConversionReport. Unused tensors and newly initialised heads are logged (warning) in
    one grouped block each; ConversionError says what does not fit."""
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
    return model_from_arrays(cfg, arrays)


_TRUNCATION = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def fresh_arrays(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Initial values for new heads, with the Flax modules' own initialisers: LeCun normal
    kernels (truncated at two standard deviations, fan-in = all but the last axis), zero
    biases, identity BatchNorm. Sampled in numpy: a jitted Flax initialiser compiles for
    seconds per head, which loading a backbone with nine new heads should not cost."""
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


def save_flax(model: SonichuModel, directory: str | os.PathLike) -> None:
    """config.json + flax_model.safetensors, each written atomically."""
    os.makedirs(directory, exist_ok=True)
    write_safetensors(
        os.path.join(directory, FLAX_WEIGHTS_NAME), flat_state(model), metadata={"format": "flax", "layout": "flax"}
    )
    model.cfg.save(directory)


def load_backbone(
    model: SonichuModel, path: str | os.PathLike, *, layout: str | None = None, encoder: str = "target_encoder",
    rename: Sequence[RuleSpec] | None = None,
) -> ConversionReport:
    """Fill ``model.backbone`` in place from any checkpoint holding a ViT encoder (timm,
    I-JEPA, ViTPose, Sonichu, ...); the heads keep their values and are listed in the
    report's ``not_provided``. A position table of another grid is resized. This is how a
    teacher starts from a pretrained encoder."""
    ckpt = open_checkpoint(path, rename=rename)
    chosen = detect_layout(ckpt.source, layout)
    options = Options(encoder=encoder)
    if chosen.infer is not None:
        source_grid = infer_config(ckpt.source, chosen, ckpt.config, options=options).source_grid
        options = Options(source_grid=source_grid, encoder=encoder)
    shapes = expected_shapes(model)
    expected = {p: s for p, s in shapes.items() if p.startswith("backbone/")}
    arrays, report = convert_tensors(
        ckpt.source, chosen, model.cfg, expected, state_defaults(model.cfg), options=options, only=("backbone/",)
    )
    report.not_provided.extend(p for p in shapes if p not in expected)
    if report.errors():
        raise ConversionError(report, context=ckpt.weights)
    nnx.update(model.backbone, nnx.state(_filled(model.backbone, arrays, prefix="backbone/")))
    return report


def predictor_from_arrays(cfg: ModelConfig, width: int, depth: int, arrays: dict[str, np.ndarray]) -> Predictor:
    """A predictor whose every variable comes from ``arrays`` (keys ``predictor/...``)."""
    abstract = nnx.eval_shape(lambda: Predictor(cfg, width, depth, rngs=nnx.Rngs(0)))
    return _filled(abstract, arrays, prefix="predictor/")


def export_pytorch(model: SonichuModel, directory: str | os.PathLike, layout: str = "sonichu") -> None:
    """Write ``model.safetensors`` + ``config.json`` that PyTorch loads with strict=True:
    ``sonichu`` for this project's reference (``modeling_sonichu.py``), ``hf-vitpose`` for
    transformers' VitPoseForPoseEstimation (one-head models)."""
    write_pytorch(flat_state(model), model.cfg, directory, layout)
