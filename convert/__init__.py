"""PyTorch checkpoint layouts <-> Flax state paths (``backbone/blocks/0/attn/qkv/kernel``),
with numpy only: no JAX, Flax or torch (torch only when a pickle is opened). How
checkpoints are found, read and checked: docs/checkpoints.md."""

from sonichu_jax.convert.files import FLAX_WEIGHTS_NAME, TORCH_WEIGHTS_NAME, open_checkpoint
from sonichu_jax.convert.ijepa import load_ijepa
from sonichu_jax.convert.infer import infer_config
from sonichu_jax.convert.engine import Options, convert_tensors, export_tensors
from sonichu_jax.convert.layouts import LAYOUTS, detect_layout, write_pytorch
from sonichu_jax.convert.loading import read_model, state_defaults
from sonichu_jax.convert.conversion_report import ConversionError, ConversionReport
from sonichu_jax.convert.safetensors_io import SafetensorsSource, SafetensorsWriter, write_safetensors
from sonichu_jax.convert.weight_files import ShardedSource
