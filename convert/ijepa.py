"""An I-JEPA checkpoint as the three networks I-JEPA training continues from (context
encoder, predictor, EMA target encoder) as Flax arrays: docs/checkpoints.md, "I-JEPA"."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sonichu_jax.config import ModelConfig
from sonichu_jax.convert.files import Checkpoint, open_checkpoint
from sonichu_jax.convert.infer import infer_config, tensor_view
from sonichu_jax.convert.engine import Options, convert_tensors
from sonichu_jax.convert.layouts import IJEPA, detect_layout
from sonichu_jax.convert.loading import state_defaults
from sonichu_jax.convert.rename import RuleSpec
from sonichu_jax.convert.conversion_report import ConversionError
from sonichu_jax.convert.safetensors_io import SafetensorsSource
from sonichu_jax.convert.shapes import encoder_shapes, predictor_shapes
from sonichu_jax.convert.transforms import CLASS_SLOT_OPTIONAL, position_table
from sonichu_jax.errors import InputError
from sonichu_jax.fileio import read_json

# The I-JEPA predictor beside a converted encoder.
PREDICTOR_WEIGHTS = "flax_predictor.safetensors"
PREDICTOR_CONFIG = "predictor_config.json"

Arrays = dict[str, np.ndarray]


@dataclass
class IJepaWeights:
    """The parts of an I-JEPA checkpoint, each by the nnx state paths *within* its module
    (`nn.vit.VisionTransformer`, `nn.predictor.Predictor`; ``predictor`` None when the
    checkpoint has none), every variable there, fixed tables included."""

    cfg: ModelConfig  # the encoder's architecture, at the requested input size
    encoder: Arrays
    target_encoder: Arrays
    predictor: Arrays | None
    predictor_width: int | None
    predictor_depth: int | None
    notes: list[str] = field(default_factory=list)


def _within(arrays: Arrays, prefix: str) -> Arrays:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _convert(ckpt: Checkpoint, cfg: ModelConfig, grid, encoder: str, predictor: dict | None, notes: list[str]) -> Arrays:
    expected = {**encoder_shapes(cfg)}
    if predictor:
        expected.update(predictor_shapes(cfg, predictor["width"], predictor["depth"]))
    arrays, report = convert_tensors(ckpt.source, IJEPA, cfg, expected, state_defaults(cfg),
                                     options=Options(source_grid=grid, encoder=encoder),
                                     only=("backbone/", "predictor/") if predictor else ("backbone/",))
    if report.errors():
        raise ConversionError(report, context=ckpt.weights)
    notes += [f"{encoder}: {src}: {note}" for src, note in report.notes]
    return arrays


def _official(ckpt: Checkpoint, image_size, num_heads) -> IJepaWeights:
    overrides = {k: v for k, v in (("image_size", image_size), ("num_heads", num_heads)) if v is not None}
    parts = {n.split(".")[0] for n in tensor_view(ckpt.source, IJEPA, read_values=False).shapes}
    target = "target_encoder" if "target_encoder" in parts else "encoder"
    inferred = infer_config(ckpt.source, IJEPA, ckpt.config, options=Options(encoder=target), overrides=overrides)
    cfg, grid, predictor = inferred.cfg, inferred.source_grid, inferred.predictor
    notes = [n for n in inferred.notes if "freshly initialised" not in n]  # an encoder has no keypoint heads
    arrays = _convert(ckpt, cfg, grid, target, predictor, notes)
    if "encoder" in parts and target == "target_encoder":
        context = _within(_convert(ckpt, cfg, grid, "encoder", None, notes), "backbone/")
    else:
        context = _within(arrays, "backbone/")
        notes.append(f"the checkpoint holds one encoder ({target}): it starts both the context and the target encoder")
    if predictor is None:
        notes.append("the checkpoint holds no predictor: it starts freshly initialised")
    return IJepaWeights(cfg, context, _within(arrays, "backbone/"), _within(arrays, "predictor/") if predictor else None,
                        predictor and predictor["width"], predictor and predictor["depth"], notes)


def _regrid(arrays: Arrays, name: str, old: ModelConfig, new: ModelConfig, fixed: bool, notes: list[str]) -> None:
    table = position_table(new.grid, old.grid, CLASS_SLOT_OPTIONAL, fixed_sincos=fixed)
    slots, width = arrays[name].shape[-2:]
    class_slot = slots - old.num_patches  # 1 for a table that keeps a class slot
    arrays[name], note = table.forward((arrays[name],), (1, new.num_patches + class_slot, width))
    if note:
        notes.append(f"{name}: {note}")


def _converted(ckpt: Checkpoint, image_size) -> IJepaWeights:
    """A directory in this project's Flax layout: its backbone, and its predictor if any."""
    old = ModelConfig.from_dict(dict(ckpt.config)) if ckpt.config else None
    if old is None:
        raise InputError(f"{ckpt.weights}: a Flax-layout checkpoint needs its config.json")
    cfg = old if image_size is None else old.replace(image_size=tuple(image_size))
    names = list(ckpt.source.keys())
    backbone = {k[len("backbone/") :]: ckpt.source.get(k) for k in names if k.startswith("backbone/")}
    if "pos_embed" not in backbone and old.pos_embed == "sincos":
        backbone["pos_embed"] = state_defaults(old)["backbone/pos_embed"][0]()
    notes = [f"{ckpt.path} holds one encoder: it starts both the context and the target encoder"]
    predictor, width, depth = None, None, None
    folder = ckpt.directory or os.path.dirname(ckpt.weights)
    if os.path.isfile(os.path.join(folder, PREDICTOR_WEIGHTS)):
        dims = read_json(os.path.join(folder, PREDICTOR_CONFIG))
        width, depth = int(dims["width"]), int(dims["depth"])
        source = SafetensorsSource(os.path.join(folder, PREDICTOR_WEIGHTS))
        predictor = {k[len("predictor/") :]: source.get(k) for k in source.keys()}
    else:
        notes.append("the checkpoint holds no predictor: it starts freshly initialised")
    if cfg.grid != old.grid:
        _regrid(backbone, "pos_embed", old, cfg, old.pos_embed == "sincos", notes)
        if predictor is not None:
            _regrid(predictor, "pos_embed", old, cfg, True, notes)
    expected = _within(encoder_shapes(cfg), "backbone/")
    missing = sorted(set(expected) - set(backbone))
    if missing:
        raise InputError(f"{ckpt.weights} holds no encoder weights for {', '.join(missing[:3])}")
    return IJepaWeights(cfg, dict(backbone), backbone, predictor, width, depth, notes)


def load_ijepa(path: str | os.PathLike, *, image_size: tuple[int, int] | None = None, num_heads: int | None = None,
               rename: Sequence[RuleSpec] | None = None) -> IJepaWeights:
    """Context encoder, target encoder and predictor of the official training checkpoint
    (or a safetensors file with its names) or of a directory written by ``convert``, at
    ``image_size`` (tables recomputed or resized, each with a note). ``num_heads``: what
    shapes cannot tell (default: config.json, else width // 64)."""
    ckpt = open_checkpoint(path, rename=rename)
    layout = detect_layout(ckpt.source)
    if layout.name == "ijepa":
        return _official(ckpt, image_size, num_heads)
    if layout.name == "flax":
        return _converted(ckpt, image_size)
    raise InputError(f"{ckpt.weights} is not an I-JEPA checkpoint (layout {layout.name}); I-JEPA checkpoints "
                     "hold encoder / target_encoder / predictor, or are directories written by convert")
