"""PyTorch checkpoint layouts <-> Flax state paths.

numpy + safetensors only: nothing here imports JAX, Flax or torch, so conversion runs
anywhere and is testable on its own. Flax parameters are addressed by '/'-joined state
paths (``backbone/blocks/0/attn/qkv/kernel``).
"""

from sonichu_jax.convert.layout import Layout, convert_tensors, export_tensors, strip_prefix
from sonichu_jax.convert.layouts import LAYOUTS, detect_layout
from sonichu_jax.convert.report import ConversionError, ConversionReport
from sonichu_jax.convert.safetensors_io import SafetensorsSource, write_safetensors

__all__ = [
    "LAYOUTS",
    "ConversionError",
    "ConversionReport",
    "Layout",
    "SafetensorsSource",
    "convert_tensors",
    "detect_layout",
    "export_tensors",
    "strip_prefix",
    "write_safetensors",
]
