"""Sonichu models from checkpoints and back, the JAX side of `sonichu_jax.convert`: what a
checkpoint may be and how it is read is in docs/checkpoints.md."""

from __future__ import annotations

import os
from typing import Sequence

import jax
from flax import nnx

from sonichu_jax.config import ModelConfig
from sonichu_jax.convert import (
    FLAX_WEIGHTS_NAME,  # noqa: F401 - re-exported
    ConversionError,
    ConversionReport,
    Options,
    convert_tensors,
    detect_layout,
    infer_config,
    open_checkpoint,
    state_defaults,
    write_pytorch,
)
from sonichu_jax.convert.rename import RuleSpec
from sonichu_jax.model_arrays import expected_shapes, filled, flat_state, fresh_arrays, save_flax  # noqa: F401
from sonichu_jax.nn.sonichu import SonichuModel


def abstract_model(cfg: ModelConfig) -> SonichuModel:
    """The model's structure with shapes only: no memory, no random initialisation."""
    return nnx.eval_shape(lambda: SonichuModel(cfg, rngs=nnx.Rngs(0)))


model_from_arrays = SonichuModel.from_arrays


def init_model(cfg: ModelConfig, seed: int = 0) -> SonichuModel:
    """A randomly initialised model in train mode.

    The initialisers run inside one jit: eagerly, every parameter shape would compile
    its own small kernel, which costs tens of seconds even for the tiny model.
    """
    graphdef, _ = nnx.split(abstract_model(cfg))
    state = jax.jit(lambda: nnx.split(SonichuModel(cfg, rngs=nnx.Rngs(seed)))[1])()
    return nnx.merge(graphdef, state)


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
    nnx.update(model.backbone, nnx.state(filled(model.backbone, arrays, prefix="backbone/")))
    return report


def export_pytorch(model: SonichuModel, directory: str | os.PathLike, layout: str = "sonichu") -> None:
    """Write ``model.safetensors`` + ``config.json`` that PyTorch loads with strict=True:
    ``sonichu`` for this project's reference (``modeling_sonichu.py``), ``hf-vitpose`` for
    transformers' VitPoseForPoseEstimation (one-head models)."""
    write_pytorch(flat_state(model), model.cfg, directory, layout)
