"""Continuing I-JEPA pretraining from a published checkpoint: the step-0 weights the
``init`` section picks, checked against the configured encoder and predictor
(docs/ijepa.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sonichu_jax.convert import load_ijepa
from sonichu_jax.errors import ConfigError
from sonichu_jax.train.ijepa_config import IJEPAConfig

Arrays = dict[str, np.ndarray]

# What shapes and config.json decide and the configured encoder must equal; the input
# size may differ (the position tables follow it).
ENCODER_FIELDS = ("patch_size", "in_channels", "width", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                  "layer_norm_eps", "pos_embed", "patch_padding")


@dataclass
class StartWeights:
    """Host arrays by state path within each network, fixed tables included."""

    encoder: Arrays  # the context encoder
    target: Arrays  # the EMA target encoder
    predictor: Arrays | None  # None: freshly initialised
    lines: list[str] = field(default_factory=list)  # what was loaded, and every note, for the console


def mismatches(weights, config: IJEPAConfig, with_predictor: bool) -> list[str]:
    """``key: checkpoint value vs configured value`` for every architecture field that differs."""
    out = [f"model.{name}: {getattr(weights.cfg, name)!r} (checkpoint) vs {getattr(config.model, name)!r}"
           for name in ENCODER_FIELDS if getattr(weights.cfg, name) != getattr(config.model, name)]
    if with_predictor:
        for name, value in (("width", weights.predictor_width), ("depth", weights.predictor_depth)):
            if value != getattr(config.predictor, name):
                out.append(f"predictor.{name}: {value!r} (checkpoint) vs {getattr(config.predictor, name)!r}")
    return out


def load_start(config: IJEPAConfig) -> StartWeights:
    """The step-0 weights of ``config.init`` (``path`` set); `ConfigError` for a checkpoint
    that does not fit the configured model."""
    init = config.init
    # Attention heads are the one field shapes cannot tell: a checkpoint without a
    # config.json (the official one) takes the configured count.
    weights = load_ijepa(init.path, image_size=config.model.image_size, num_heads=config.model.num_heads)
    wants_predictor = "predictor" in init.parts
    if wants_predictor and weights.predictor is None and init.missing_predictor == "error":
        raise ConfigError(f"init.path {init.path} holds no predictor, and init.missing_predictor is error")
    with_predictor = wants_predictor and weights.predictor is not None
    diff = mismatches(weights, config, with_predictor)
    if diff:
        raise ConfigError(f"init.path {init.path} does not match the configured model: " + "; ".join(diff))
    context = "encoder" if "encoder" in init.parts else "target_encoder"
    target = "target_encoder" if "target_encoder" in init.parts else context
    arrays = {"encoder": weights.encoder, "target_encoder": weights.target_encoder}
    predictor = "the checkpoint's predictor" if with_predictor else "a freshly initialised predictor"
    lines = [f"init: {init.path}: the context encoder from its {context}, the target encoder from its {target}, "
             f"{predictor}"]
    lines += [f"init: {note}" for note in weights.notes]
    if not wants_predictor:
        lines.append("init: the predictor starts freshly initialised (init.parts leaves it out)")
    lines.append("init: starting at step 0 with these weights; the optimiser state is fresh (AdamW moments zero) "
                 "and the schedules start from their beginning")
    return StartWeights(arrays[context], arrays[target], weights.predictor if with_predictor else None, lines)
