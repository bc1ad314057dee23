"""Converting a checkpoint into a model directory: the Flax layout (streamed, one tensor
at a time) or a PyTorch export (``sonichu``, ``hf-vitpose``), never half-written and
never touching a file it does not write. Above `sonichu_jax.convert`: it writes the
preprocessor's file too."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from sonichu_jax.config import CONFIG_NAME, PREPROCESSOR_CONFIG_NAME
from sonichu_jax.convert.files import FLAX_WEIGHTS_NAME, TORCH_WEIGHTS_NAME, WEIGHT_NAMES, open_checkpoint
from sonichu_jax.convert.engine import Plan, run_plan
from sonichu_jax.convert.ijepa import PREDICTOR_CONFIG, PREDICTOR_WEIGHTS
from sonichu_jax.convert.layouts import EXPORT_LAYOUTS, write_pytorch
from sonichu_jax.convert.loading import ModelPlan, plan_model
from sonichu_jax.convert.rename import RuleSpec
from sonichu_jax.convert.conversion_report import ConversionError
from sonichu_jax.convert.safetensors_io import SafetensorsWriter
from sonichu_jax.errors import InputError
from sonichu_jax.fileio import atomic_dir, check_output, write_json
from sonichu_jax.preprocess import SonichuPreprocessor

TARGETS = ("flax",) + EXPORT_LAYOUTS
# Every file a conversion may write; with ``force`` only these are ever replaced.
OUTPUT_NAMES = (CONFIG_NAME, FLAX_WEIGHTS_NAME, TORCH_WEIGHTS_NAME, PREPROCESSOR_CONFIG_NAME, PREDICTOR_WEIGHTS,
                PREDICTOR_CONFIG)


def _check_shadows(out: str, writing: set[str]) -> None:
    """A weights file left in ``out`` that this conversion does not replace would be what
    a loader finds first (or beside the new one): refuse instead of deleting it."""
    if not os.path.isdir(out):
        return
    stale = [n for n in os.listdir(out) if n in WEIGHT_NAMES + OUTPUT_NAMES and n not in writing]
    if stale:
        raise InputError(f"output {out} holds {', '.join(sorted(stale))}, which this conversion would not replace "
                         "and which would be read instead of (or with) its result; remove it or write elsewhere")


@contextlib.contextmanager
def _staging(out: str) -> Iterator[str]:
    """A temporary folder beside ``out``; on success it becomes ``out`` (new or empty), or
    its files replace their namesakes in ``out`` one by one (nothing else is touched)."""
    if not os.path.isdir(out) or not os.listdir(out):
        with atomic_dir(out) as tmp:
            yield tmp
        return
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=os.path.dirname(out))
    try:
        yield tmp
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), os.path.join(out, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_flax(plan: Plan, source, directory: str) -> None:
    """Stream the converted tensors into flax_model.safetensors (and the predictor's file)."""
    files = {
        FLAX_WEIGHTS_NAME: [t for t in plan.targets if not t.startswith("predictor/")],
        PREDICTOR_WEIGHTS: [t for t in plan.targets if t.startswith("predictor/")],
    }
    writers = {
        name: SafetensorsWriter(os.path.join(directory, name), {t: (plan.expected[t], np.float32) for t in targets},
                                {"format": "flax", "layout": "flax"})
        for name, targets in files.items()
        if targets
    }
    by_target = {t: writers[name] for name, targets in files.items() for t in targets}
    complete = False
    try:
        run_plan(plan, source, lambda target, array: by_target[target].write(target, array))
        complete = True
    finally:
        for writer in writers.values():
            writer.close(complete=complete)  # an incomplete file is abandoned with its folder


@dataclass
class Converted:
    out: str
    planned: ModelPlan
    files: list[str]


def convert_to_directory(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: str = "flax",
    layout: str | None = None,
    task_name: str = "keypoints",
    image_size: tuple[int, int] | None = None,
    num_heads: int | None = None,
    encoder: str = "target_encoder",
    rename: Sequence[RuleSpec] | None = None,
    entry: str | None = None,
    strict: bool = False,
    force: bool = False,
) -> Converted:
    """Convert ``source`` (a checkpoint directory, weights file or Hub name) into the folder
    ``out``: the Flax layout (``to="flax"``, with an I-JEPA predictor's file when there is
    one) or a PyTorch export, plus config.json and preprocessor_config.json
    (docs/checkpoints.md, "Converting"). ConversionError (with the report) when it does
    not fit; ``out`` is never half-written, and with ``force`` keeps the files not written."""
    if to not in TARGETS:
        raise InputError(f"unknown output layout {to!r}; choose one of {', '.join(TARGETS)}")
    ckpt = open_checkpoint(source, rename=rename, entry=entry)
    inputs = [os.fspath(source) if os.path.exists(source) else ckpt.weights, ckpt.weights] + (
        [ckpt.directory] if ckpt.directory else [])
    out = os.path.realpath(check_output(out, what="output", folder=True, inputs=inputs))  # before any work
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise InputError(f"output {out} already exists and is not empty; replacing its files must be asked for")
    overrides = {k: v for k, v in (("num_heads", num_heads), ("image_size", image_size)) if v is not None}
    planned = plan_model(ckpt, layout=layout, task_name=task_name, overrides=overrides, encoder=encoder,
                         with_predictor=to == "flax")
    report, cfg = planned.report, planned.cfg
    if report.errors(strict):
        raise ConversionError(report, context=ckpt.weights, strict=strict)
    if to != "flax" and report.new_heads:
        raise InputError(f"a PyTorch export needs a whole model; {ckpt.weights} holds no weights for the heads "
                         f"of {', '.join(report.new_heads)}")
    predictor = planned.inferred.predictor if any(t.startswith("predictor/") for t in planned.plan.targets) else None
    writing = {CONFIG_NAME, PREPROCESSOR_CONFIG_NAME} | (
        {FLAX_WEIGHTS_NAME} | ({PREDICTOR_WEIGHTS, PREDICTOR_CONFIG} if predictor else set())
        if to == "flax" else {TORCH_WEIGHTS_NAME})
    _check_shadows(out, writing)

    with _staging(out) as tmp:
        if to == "flax":
            _write_flax(planned.plan, ckpt.source, tmp)
            parts = ["backbone"] + ([] if report.new_heads else ["heads"]) + (["predictor"] if predictor else [])
            cfg.save(tmp, **({"pretrained_parts": parts} if report.new_heads or predictor else {}))
            if predictor:
                write_json(os.path.join(tmp, PREDICTOR_CONFIG), predictor)
        else:
            arrays: dict = {}
            run_plan(planned.plan, ckpt.source, arrays.__setitem__)
            write_pytorch(arrays, cfg, tmp, to)
        SonichuPreprocessor(size=cfg.image_size).save_pretrained(tmp)
        files = sorted(os.listdir(tmp))
    return Converted(out, planned, files)
