"""Model checkpoints on disk: PyTorch-layout or Flax-layout safetensors + config.json.

A checkpoint directory holds ``config.json`` and one of
- ``flax_model.safetensors``: written by this project, tensors named by Flax state path;
- ``model.safetensors``: a PyTorch state dict in any layout of `sonichu_jax.convert`,
  converted on the fly.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sonichu_jax.config import CONFIG_NAME, ModelConfig
from sonichu_jax.convert import (
    ConversionError,
    ConversionReport,
    Options,
    convert_tensors,
    detect_layout,
    export_tensors,
    infer_config,
    open_source,
    write_safetensors,
)
from sonichu_jax.convert.infer import hf_vitpose_config
from sonichu_jax.errors import InputError
from sonichu_jax.fileio import write_json
from sonichu_jax.nn.predictor import Predictor
from sonichu_jax.nn.sonichu import SonichuModel
from sonichu_jax.nn.vit import sincos_2d_table

FLAX_WEIGHTS_NAME = "flax_model.safetensors"
TORCH_WEIGHTS_NAME = "model.safetensors"


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


def model_from_arrays(cfg: ModelConfig, arrays: dict[str, np.ndarray]) -> SonichuModel:
    """Build a model whose every variable comes from ``arrays`` (keys = Flax paths)."""
    graphdef, state = nnx.split(abstract_model(cfg))
    filled = [(p, v.replace(jnp.asarray(arrays[path_str(p)]))) for p, v in nnx.to_flat_state(state)]
    model = nnx.merge(graphdef, nnx.from_flat_state(filled))
    model.eval()
    return model


def state_defaults(cfg: ModelConfig) -> dict:
    """Variables a checkpoint may omit, with how to fill them."""
    if cfg.pos_embed == "sincos":
        return {
            "backbone/pos_embed": (
                lambda: sincos_2d_table(cfg.width, cfg.grid)[None],
                "fixed 2D sin-cos table computed from the config (not stored in the checkpoint)",
            )
        }
    return {}


def resolve_weights(path: str | os.PathLike) -> tuple[str, str]:
    """(config directory, weights file) for a checkpoint directory or a weights file."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), path
    if not os.path.isdir(path):
        raise InputError(f"model path not found: {path}")
    for name in (FLAX_WEIGHTS_NAME, TORCH_WEIGHTS_NAME):
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return path, candidate
    raise InputError(f"{path} holds neither {FLAX_WEIGHTS_NAME} nor {TORCH_WEIGHTS_NAME}")


def convert_checkpoint(
    weights: str | os.PathLike, cfg: ModelConfig, layout: str | None = None
) -> tuple[dict[str, np.ndarray], ConversionReport]:
    """Read ``weights`` one tensor at a time into Flax paths for a model of ``cfg``."""
    source = open_source(weights)
    chosen = detect_layout(source.keys(), layout)
    expected = expected_shapes(abstract_model(cfg))
    return convert_tensors(source, chosen, cfg, expected, state_defaults(cfg))


def load_pretrained(
    path: str | os.PathLike,
    *,
    layout: str | None = None,
    dtype: str | None = None,
    report: list | None = None,
) -> SonichuModel:
    """See `SonichuModel.from_pretrained`. ``report``, if a list, receives the
    ConversionReport. Raises ConversionError (a listing of every unmapped, unfilled and
    mismatched name) when the checkpoint does not fit its config."""
    config_dir, weights = resolve_weights(path)
    if not os.path.isfile(os.path.join(config_dir, CONFIG_NAME)):
        raise InputError(f"no {CONFIG_NAME} beside {weights}")
    cfg = ModelConfig.load(config_dir)
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    arrays, conv_report = convert_checkpoint(weights, cfg, layout)
    if report is not None:
        report.append(conv_report)
    if conv_report.ok and conv_report.not_provided:
        raise InputError(
            f"{weights} holds only part of the model (layout {conv_report.layout}; missing "
            f"{len(conv_report.not_provided)} parameters, e.g. {conv_report.not_provided[0]}): "
            "load it into a model with sonichu_jax.checkpoint.load_backbone"
        )
    if not conv_report.ok:
        raise ConversionError(conv_report, context=weights)
    return model_from_arrays(cfg, arrays)


def save_flax(model: SonichuModel, directory: str | os.PathLike) -> None:
    """config.json + flax_model.safetensors, each written atomically."""
    os.makedirs(directory, exist_ok=True)
    write_safetensors(
        os.path.join(directory, FLAX_WEIGHTS_NAME), flat_state(model), metadata={"format": "flax", "layout": "flax"}
    )
    model.cfg.save(directory)


def init_model(cfg: ModelConfig, seed: int = 0) -> SonichuModel:
    """A randomly initialised model in train mode.

    The initialisers run inside one jit: eagerly, every parameter shape would compile
    its own small kernel, which costs tens of seconds even for the tiny model.
    """
    graphdef, _ = nnx.split(abstract_model(cfg))
    state = jax.jit(lambda: nnx.split(SonichuModel(cfg, rngs=nnx.Rngs(seed)))[1])()
    return nnx.merge(graphdef, state)


# -- conversion helpers: backbone-only loading, the I-JEPA predictor, export -------------
def read_hints(config_dir: str) -> dict:
    """The checkpoint's own config.json (Sonichu or transformers) as a dict, or {}."""
    path = os.path.join(config_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None


def _weights_file(path: str | os.PathLike) -> tuple[str, str]:
    path = os.fspath(path)
    if os.path.isdir(path):
        return resolve_weights(path)
    if not os.path.isfile(path):
        raise InputError(f"checkpoint not found: {path}")
    return os.path.dirname(os.path.abspath(path)), path


def load_backbone(
    model: SonichuModel, path: str | os.PathLike, *, layout: str | None = None, encoder: str = "target_encoder"
) -> ConversionReport:
    """Fill ``model.backbone`` in place from any checkpoint holding a ViT encoder (timm,
    I-JEPA, ViTPose, Sonichu, ...); the heads keep their values and are listed in the
    report's ``not_provided``. A position table of another grid is resized. This is how a
    teacher starts from a pretrained encoder."""
    config_dir, weights = _weights_file(path)
    source = open_source(weights)
    chosen = detect_layout(source.keys(), layout)
    options = Options(encoder=encoder)
    hints = read_hints(config_dir)
    if chosen.infer is not None:
        options = Options(source_grid=infer_config(source, chosen, hints, options=options).source_grid, encoder=encoder)
    shapes = expected_shapes(model)
    expected = {p: s for p, s in shapes.items() if p.startswith("backbone/")}
    arrays, report = convert_tensors(
        source, chosen, model.cfg, expected, state_defaults(model.cfg), options=options, only=("backbone/",)
    )
    report.not_provided.extend(p for p in shapes if p not in expected)
    if not report.ok:
        raise ConversionError(report, context=weights)
    _, state = nnx.split(model.backbone)
    filled = [(p, v.replace(jnp.asarray(arrays["backbone/" + path_str(p)]))) for p, v in nnx.to_flat_state(state)]
    nnx.update(model.backbone, nnx.from_flat_state(filled))
    return report


def predictor_shapes(cfg: ModelConfig, width: int, depth: int) -> dict[str, tuple[int, ...]]:
    """Flax paths (under ``predictor/``) and shapes of an I-JEPA predictor."""
    abstract = nnx.eval_shape(lambda: Predictor(cfg, width, depth, rngs=nnx.Rngs(0)))
    return {f"predictor/{p}": s for p, s in expected_shapes(abstract).items()}


def predictor_from_arrays(cfg: ModelConfig, width: int, depth: int, arrays: dict[str, np.ndarray]) -> Predictor:
    """A predictor whose every variable comes from ``arrays`` (keys ``predictor/...``)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Predictor(cfg, width, depth, rngs=nnx.Rngs(0))))
    filled = [(p, v.replace(jnp.asarray(arrays["predictor/" + path_str(p)]))) for p, v in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


EXPORT_LAYOUTS = ("sonichu", "hf-vitpose")


def export_pytorch(model: SonichuModel, directory: str | os.PathLike, layout: str = "sonichu") -> None:
    """Write ``model.safetensors`` + ``config.json`` that PyTorch loads with strict=True:
    ``sonichu`` for this project's reference (``modeling_sonichu.py``), ``hf-vitpose`` for
    transformers' VitPoseForPoseEstimation (one-head models)."""
    write_pytorch(flat_state(model), model.cfg, directory, layout)


def write_pytorch(flat: dict[str, np.ndarray], cfg: ModelConfig, directory: str | os.PathLike, layout: str) -> None:
    """Flax arrays by path -> a PyTorch checkpoint directory in ``layout``."""
    if layout not in EXPORT_LAYOUTS:
        raise InputError(f"cannot export to layout {layout!r}; choose one of {', '.join(EXPORT_LAYOUTS)}")
    config = hf_vitpose_config(cfg) if layout == "hf-vitpose" else cfg.to_dict()
    tensors = export_tensors(flat, detect_layout([], layout), cfg)
    os.makedirs(directory, exist_ok=True)
    write_safetensors(os.path.join(directory, TORCH_WEIGHTS_NAME), tensors, metadata={"format": "pt", "layout": layout})
    write_json(os.path.join(directory, CONFIG_NAME), config)

