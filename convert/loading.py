"""From an opened checkpoint to the arrays of a Sonichu model: layout, config, task table,
and what is loaded, what is new (a head absent from a backbone checkpoint, or asked for)
and what is an error (docs/checkpoints.md, "Unexpected and missing tensors"). numpy only:
`SonichuModel.from_pretrained` builds the Flax model from the result."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from sonichu_jax.config import CARD_TASKS, CONFIG_NAME, ModelConfig, TaskSpec
from sonichu_jax.convert.files import Checkpoint
from sonichu_jax.convert.infer import Inferred, infer_config
from sonichu_jax.convert.engine import Layout, Options, Plan, plan_conversion, run_plan
from sonichu_jax.convert.layouts import detect_layout
from sonichu_jax.convert.conversion_report import ConversionError, ConversionReport
from sonichu_jax.convert.shapes import is_head_path, model_shapes, predictor_shapes
from sonichu_jax.errors import ConfigError, InputError
from sonichu_jax.posembed import sincos_2d

MODEL_PARTS = ("backbone/", "heads/", "trunk/")  # what a SonichuModel holds (not a predictor)
Tasks = Sequence[str | TaskSpec] | Mapping[str, int] | None


def state_defaults(cfg: ModelConfig) -> dict:
    """Variables a checkpoint may omit, with how to fill them."""
    if cfg.pos_embed == "sincos":
        return {
            "backbone/pos_embed": (
                lambda: sincos_2d(cfg.width, cfg.grid)[None],
                "fixed 2D sin-cos table computed from the config (not stored in the checkpoint)",
            )
        }
    return {}


def task_specs(tasks: Tasks, known: Sequence[TaskSpec]) -> tuple[TaskSpec, ...]:
    """The task table asked for: names (keypoint counts from the checkpoint's own table,
    else the card's), `TaskSpec`s, or ``{name: keypoint count}``. A task the checkpoint
    holds keeps its flip permutation; a new one has the one its `TaskSpec` gives."""
    by_name = {t.name: t for t in (*CARD_TASKS, *known)}
    if isinstance(tasks, Mapping):
        bad = [f"{name}: {count!r}" for name, count in tasks.items() if not isinstance(count, int) or count < 1]
        if bad:
            raise InputError(f"tasks must map names to keypoint counts (integers >= 1); got {', '.join(bad)}")
        same = lambda name, count: name in by_name and by_name[name].num_keypoints == count  # noqa: E731
        return tuple(by_name[name] if same(name, count) else TaskSpec(name, count) for name, count in tasks.items())
    specs = []
    for task in tasks or ():
        if isinstance(task, TaskSpec):
            specs.append(task)
        elif task in by_name:
            specs.append(by_name[task])
        else:
            raise InputError(f"task {task!r}: its keypoint count is unknown (the checkpoint has no such head); "
                             "give the tasks as {name: keypoint count}")
    if not specs:
        raise InputError("no tasks given")
    return tuple(specs)


@dataclass
class ModelPlan:
    plan: Plan
    cfg: ModelConfig
    inferred: Inferred
    layout: Layout

    @property
    def report(self) -> ConversionReport:
        return self.plan.report


def _holds_heads(report: ConversionReport, pretrained_parts) -> bool:
    """Whether the checkpoint has trained heads: its config.json says so, or a tensor fills one."""
    if pretrained_parts is not None:
        return "heads" in pretrained_parts
    absent = set(report.unfilled) | set(report.not_provided)
    return any(is_head_path(p) and p not in absent for p in report.expected)


def _mark_new_heads(report: ConversionReport, cfg: ModelConfig, allowed: bool) -> None:
    """Move heads with no tensor at all from 'missing' to 'newly initialised' (when
    allowed); a shared trunk goes with them when it is missing too."""
    if not allowed:
        return
    absent = set(report.unfilled) | set(report.not_provided)
    for spec in cfg.tasks:
        paths = [p for p in report.expected if p.startswith(f"heads/{spec.name}/")]
        if paths and all(p in absent for p in paths):
            report.new_heads.append(spec.name)
    fresh = {p for p in absent if p.startswith("heads/") and p.split("/")[1] in report.new_heads}
    trunk = [p for p in report.expected if p.startswith("trunk/")]
    if trunk and all(p in absent for p in trunk) and len(report.new_heads) == len(cfg.tasks):
        fresh.update(trunk)  # a shared trunk is new only together with every head
    report.unfilled = [p for p in report.unfilled if p not in fresh]
    report.not_provided = [p for p in report.not_provided if p not in fresh]


def plan_model(
    ckpt: Checkpoint,
    *,
    layout: str | None = None,
    tasks: Tasks = None,
    task_name: str = "keypoints",
    overrides: Mapping | None = None,
    encoder: str = "target_encoder",
    read_values: bool = True,
    with_predictor: bool = False,
) -> ModelPlan:
    """Decide, without reading tensor data (beyond a position table when a config must be
    inferred and ``read_values``), how ``ckpt`` fills a Sonichu model (and, with
    ``with_predictor``, an I-JEPA predictor the checkpoint holds)."""
    chosen = detect_layout(ckpt.source, layout)
    if chosen.infer is None and not ckpt.config:  # else a ViT-B default, and a shape line per tensor
        missing = os.path.join(ckpt.directory or os.path.dirname(os.path.abspath(ckpt.weights)), CONFIG_NAME)
        raise InputError(f"{missing} is missing: the architecture of a {chosen.name}-layout checkpoint is read from "
                         "it, not from tensor shapes; put the config.json written with these weights beside them")
    try:
        inferred = infer_config(ckpt.source, chosen, ckpt.config, task_name, Options(encoder=encoder),
                                overrides=overrides, read_values=read_values)
    except ConfigError as exc:
        where = os.path.join(ckpt.directory, CONFIG_NAME) if ckpt.directory else ckpt.weights
        raise ConfigError(f"{where}: {exc}") from None
    cfg = inferred.cfg
    if tasks is not None:
        cfg = cfg.replace(tasks=task_specs(tasks, cfg.tasks))
    expected, only = model_shapes(cfg), MODEL_PARTS
    if with_predictor and inferred.predictor:
        expected.update(predictor_shapes(cfg, inferred.predictor["width"], inferred.predictor["depth"]))
        only = None
    plan = plan_conversion(ckpt.source, chosen, cfg, expected, state_defaults(cfg),
                           options=Options(source_grid=inferred.source_grid, encoder=encoder), only=only)
    report = plan.report
    report.context = list(ckpt.context) + [f"config: {note}" for note in inferred.notes]
    parts = ckpt.config.get("pretrained_parts")  # type-checked with the rest of config.json
    _mark_new_heads(report, cfg, allowed=tasks is not None or not _holds_heads(report, parts))
    run_plan(plan, ckpt.source, None)  # every shape checked from the headers, before any data is read
    return ModelPlan(plan, cfg, inferred, chosen)


def read_model(ckpt: Checkpoint, *, strict: bool = False, **kwargs) -> tuple[ModelPlan, dict[str, np.ndarray]]:
    """Plan, check and read: the Flax arrays of every variable the checkpoint fills.
    Raises ConversionError (grouped, readable) when it does not fit; see the module doc."""
    planned = plan_model(ckpt, **kwargs)
    if planned.report.errors(strict):
        raise ConversionError(planned.report, context=ckpt.weights, strict=strict)
    arrays: dict[str, np.ndarray] = {}
    run_plan(planned.plan, ckpt.source, arrays.__setitem__)
    return planned, arrays
