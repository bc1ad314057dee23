"""PyTorch checkpoint layouts <-> Flax state paths.

numpy + safetensors only: nothing here imports JAX, Flax or torch (torch only when a
``.pth`` file is opened), so conversion runs anywhere and is testable on its own. Flax
parameters are addressed by '/'-joined state paths (``backbone/blocks/0/attn/qkv/kernel``).
"""

from sonichu_jax.convert.infer import Inferred, infer_config
from sonichu_jax.convert.layout import (
    Layout,
    Options,
    Plan,
    convert_tensors,
    export_tensors,
    plan_conversion,
    run_plan,
    strip_prefix,
)
from sonichu_jax.convert.layouts import LAYOUTS, detect_layout
from sonichu_jax.convert.report import ConversionError, ConversionReport
from sonichu_jax.convert.safetensors_io import SafetensorsSource, SafetensorsWriter, write_safetensors
from sonichu_jax.convert.torch_io import TorchSource, open_source

__all__ = [
    "LAYOUTS",
    "ConversionError",
    "ConversionReport",
    "Inferred",
    "Layout",
    "Options",
    "Plan",
    "SafetensorsSource",
    "SafetensorsWriter",
    "TorchSource",
    "convert_tensors",
    "detect_layout",
    "export_tensors",
    "infer_config",
    "open_source",
    "plan_conversion",
    "run_plan",
    "strip_prefix",
    "write_safetensors",
]
