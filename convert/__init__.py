"""PyTorch checkpoint layouts <-> Flax state paths (``backbone/blocks/0/attn/qkv/kernel``),
with numpy only: no JAX, Flax or torch (torch only when a pickle is opened). How
checkpoints are found, read and checked: docs/checkpoints.md."""

from sonichu_jax.convert.files import (
    FLAX_WEIGHTS_NAME,
    TORCH_WEIGHTS_NAME,
    Checkpoint,
    open_checkpoint,
    resolve_weights,
)
from sonichu_jax.convert.ijepa import IJepaWeights, load_ijepa
from sonichu_jax.convert.infer import Inferred, infer_config
from sonichu_jax.convert.inspection import inspect_checkpoint
from sonichu_jax.convert.engine import (
    Layout,
    Options,
    Plan,
    convert_tensors,
    export_tensors,
    plan_conversion,
    run_plan,
    strip_prefix,
)
from sonichu_jax.convert.layouts import LAYOUTS, detect_layout, write_pytorch
from sonichu_jax.convert.loading import ModelPlan, plan_model, read_model, state_defaults
from sonichu_jax.convert.conversion_report import ConversionError, ConversionReport
from sonichu_jax.convert.safetensors_io import SafetensorsSource, SafetensorsWriter, write_safetensors
from sonichu_jax.convert.weight_files import ShardedSource, open_source
from sonichu_jax.convert.torch_io import TorchSource
