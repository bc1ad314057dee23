"""sonichu-jax: SONICHU-124M ultrasound keypoint models in JAX/Flax.

The top-level names load lazily, so that `sonichu_jax.convert` and `sonichu_jax.config`
can be used without importing JAX.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "sonichu_jax.config",
    "TaskSpec": "sonichu_jax.config",
    "card_config": "sonichu_jax.config",
    "tiny_config": "sonichu_jax.config",
    "SonichuModel": "sonichu_jax.nn.sonichu",
    "SonichuPreprocessor": "sonichu_jax.preprocess",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sonichu_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
