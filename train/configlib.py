"""Typed experiment configs: dataclasses, ``--set a.b=c`` overrides checked against the
field types (an unknown key lists the valid ones), ``configs/*.py`` files defining
``get_config()``, and ``validate()`` across fields once the overrides are applied.
Schedules come in steps or epochs (docs/training.md, "Schedules in steps or in epochs").
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import traceback
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from sonichu_jax.config import ModelConfig

from sonichu_jax.errors import ConfigError, SonichuError


@dataclass(frozen=True)
class InitConfig:
    """Where the weights start: ``scratch``, ``pretrained`` (a whole SonichuModel checkpoint)
    or ``backbone`` (its encoder only); ``new_heads=fresh`` lets ``pretrained`` start the
    tasks the checkpoint lacks from new heads."""

    kind: str = "scratch"
    path: str = ""
    new_heads: str = "refuse"

    def __post_init__(self):
        require(self.kind in ("scratch", "pretrained", "backbone"), "init.kind", self.kind,
                "scratch, pretrained or backbone")
        require(self.new_heads in ("refuse", "fresh"), "init.new_heads", self.new_heads, "refuse or fresh")


@dataclass(frozen=True)
class LossConfig:
    """The objective (`sonichu_jax.train.objectives`)."""

    kind: str = "l1"  # l1, heatmap_mse, l1+heatmap_mse or module:Factory
    sigma: float = 2.0  # the Gaussian targets' width, heatmap pixels
    heatmap_weight: float = 1.0  # the heatmap term's weight beside L1


@dataclass(frozen=True)
class PseudoLabelSet:
    """One pseudo-label JSONL file (written by `sonichu-jax pseudo-label`) entering training."""

    path: str
    weight: float = 1.0  # sampling weight of each kept record relative to a labelled one
    max_disagreement_px: float = float("inf")  # records with a larger flip disagreement are dropped
    tasks: tuple[str, ...] = ()  # the tasks that enter (empty: all)
    caps: tuple[tuple[str, int], ...] = ()  # records per task, the most confident kept


@dataclass(frozen=True)
class DataConfig:
    source: str = ""  # the labelled data (manifest, CSV or folder); the run stores it absolute
    batch_size: int = 32  # global batch, over all processes and devices
    val_fraction: float = 0.15  # the card's fair split: 15 % per task, seed 42 (docs/recipe.md)
    split_seed: int = 42
    augment: bool = True
    weighting: str = "proportional"  # task sampling: proportional, balanced or capped
    cap: int | None = None  # records per task counted by the `capped` weighting
    num_workers: int = 0  # grain worker processes per host (0 = in-process)
    pseudo_labels: tuple[PseudoLabelSet, ...] = ()
    pseudo_dir: str = ""  # relative pseudo-label paths are resolved against this folder


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4  # ViTPose-B: AdamW 5e-4, wd 0.1, layer decay 0.75 (docs/training.md)
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    layer_decay: float = 0.75  # 1.0 disables layer-wise decay
    warmup_steps: int = 500
    warmup_epochs: float | None = None  # when set, wins over warmup_steps
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio
    clip_norm: float = 0.0  # 0 disables global-norm clipping
    freeze_backbone: bool = False


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1: every device not used by fsdp
    fsdp: int = 1  # >1 shards parameters and optimiser state over this axis
    # TPU with fsdp > 1: XLA's windowed einsums (matmuls interleaved with their
    # parameter gathers and gradient reduce-scatters); false runs those as plain collectives
    collective_matmul: bool = True


@dataclass(frozen=True)
class DistributedConfig:
    """How the processes of a multi-host run find each other (`sonichu_jax.train.distributed`)."""

    mode: str = "auto"  # auto: when JAX recognises the cluster; off: one process
    coordinator: str = ""  # host:port of process 0, for an explicit start
    num_processes: int = 0
    process_id: int = -1


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 1000
    every_epochs: float | None = None  # when set, wins over every_steps
    keep: int = 3  # most recent checkpoints kept, besides the best
    keep_best: bool = True  # also keep the checkpoint with the lowest validation MRE
    async_save: bool = True


@dataclass(frozen=True)
class LogConfig:
    every_steps: int = 50  # metrics are fetched from the device once per this many steps
    eval_every_steps: int = 1000  # 0: only at the end
    eval_every_epochs: float | None = None  # when set, wins over eval_every_steps
    eval_at_start: bool = True  # the untrained baseline, first line of the MRE history
    eval_tta: bool = True  # validate with flip TTA, as the card reports MRE
    progress: bool = True
    tensorboard: bool = True  # event files in <run>/tensorboard/ beside metrics.jsonl
    profile_steps: str = ""  # "START:STOP": a jax.profiler trace of those steps in <run>/profile/


@dataclass(frozen=True)
class TeacherConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    steps: int = 10000
    epochs: float | None = None  # when set, wins over steps
    seed: int = 0

    def validate(self) -> "TeacherConfig":
        """Check the values together, the overrides applied (`ConfigError`)."""
        from sonichu_jax.data.pipeline import WEIGHTINGS
        from sonichu_jax.train.objectives import objective_factory

        validate_run(self)
        objective_factory(self.loss.kind)
        require(self.loss.sigma > 0, "loss.sigma", self.loss.sigma, "> 0")
        require(self.loss.heatmap_weight >= 0, "loss.heatmap_weight", self.loss.heatmap_weight, ">= 0")
        d, o = self.data, self.optim
        require(d.num_workers >= 0, "data.num_workers", d.num_workers, ">= 0")
        require(o.lr >= 0, "optim.lr", o.lr, ">= 0")
        require(0.0 <= d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "in [0, 1)")
        require(d.weighting in WEIGHTINGS, "data.weighting", d.weighting, f"one of {', '.join(WEIGHTINGS)}")
        if d.weighting == "capped":
            require(d.cap is not None and d.cap >= 1, "data.cap", d.cap, ">= 1 with weighting capped")
        require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0")
        require(0 < o.layer_decay <= 1, "optim.layer_decay", o.layer_decay, "in (0, 1]")
        require(o.min_lr_ratio >= 0, "optim.min_lr_ratio", o.min_lr_ratio, ">= 0")
        require(o.clip_norm >= 0, "optim.clip_norm", o.clip_norm, ">= 0 (0 disables clipping)")
        require(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, ">= 0")
        check_warmup(self)
        require(self.log.eval_every_steps >= 0, "log.eval_every_steps", self.log.eval_every_steps, ">= 0")
        if self.init.kind != "scratch" and not self.init.path:
            raise ConfigError(f"init.kind={self.init.kind!r} needs init.path (a checkpoint directory)")
        return self


# -- checks shared by every run config --------------------------------------------------
def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """One-line `ConfigError` naming the key and the value when ``ok`` is false."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def validate_run(config: Any) -> None:
    """The checks every run config shares (the warm-up: `check_warmup`)."""
    if config.epochs is None:
        require(config.steps >= 1, "steps", config.steps, ">= 1")
    for key in EPOCH_KEYS:
        value = get_path(config, key) if has_path(config, key) else None
        if value is None:
            continue
        if key in ("optim.warmup_epochs", "log.eval_every_epochs"):
            require(value >= 0, key, value, ">= 0")
        else:
            require(value > 0, key, value, "> 0")
    require(config.checkpoint.every_steps >= 1, "checkpoint.every_steps", config.checkpoint.every_steps, ">= 1")
    require(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, ">= 1")
    require(config.log.every_steps >= 1, "log.every_steps", config.log.every_steps, ">= 1")
    check_profile_steps(config)
    require(config.mesh.fsdp >= 1, "mesh.fsdp", config.mesh.fsdp, ">= 1")
    require(config.mesh.data == -1 or config.mesh.data >= 1, "mesh.data", config.mesh.data, ">= 1, or -1 for all")
    require(config.data.batch_size >= 1, "data.batch_size", config.data.batch_size, ">= 1")
    validate_distributed(config.distributed)


def profile_window(spec: str) -> tuple[int, int] | None:
    """``log.profile_steps`` as (START, STOP), 1-based, both traced; None when empty."""
    if not spec.strip():
        return None
    first, sep, last = spec.partition(":")
    try:
        return int(first), int(last)
    except ValueError:
        raise ConfigError(f"log.profile_steps must be START:STOP (two step numbers), got {spec!r}") from None


def check_profile_steps(config: Any) -> None:
    """START < STOP, within the run (checked once the run is in steps, when given in epochs)."""
    spec = config.log.profile_steps
    window = profile_window(spec)
    if window is None:
        return
    start, stop = window
    require(1 <= start < stop, "log.profile_steps", spec, "START:STOP with 1 <= START < STOP")
    if config.epochs is None:
        require(stop <= config.steps, "log.profile_steps", spec, f"within the run's {config.steps} steps")


def check_warmup(config: Any, scale: float = 1.0) -> None:
    """The warm-up ends before ``scale`` x the run's length, when both are in one unit."""
    o = config.optim
    if config.epochs is not None and o.warmup_epochs is not None:
        warm, total, unit = o.warmup_epochs, config.epochs, "epochs"
    elif config.epochs is None and o.warmup_epochs is None:
        warm, total, unit = o.warmup_steps, config.steps, "steps"
    else:
        return
    if warm >= total * scale:
        raise ConfigError(f"optim.warmup_{unit}={warm:g} must be below the run's {total * scale:g} {unit}")


def validate_distributed(d: DistributedConfig) -> None:
    require(d.mode in ("auto", "off"), "distributed.mode", d.mode, "auto or off")
    if not d.coordinator:
        if d.num_processes or d.process_id != -1:
            raise ConfigError("distributed.num_processes and distributed.process_id need distributed.coordinator")
        return
    if d.mode == "off":
        raise ConfigError(f"distributed.mode=off contradicts distributed.coordinator={d.coordinator!r}")
    host, sep, port = d.coordinator.rpartition(":")
    require(bool(sep and host and port.isdigit()), "distributed.coordinator", d.coordinator, "HOST:PORT")
    require(d.num_processes >= 1, "distributed.num_processes", d.num_processes, ">= 1 with a coordinator")
    require(0 <= d.process_id < d.num_processes, "distributed.process_id", d.process_id,
            f"in [0, {d.num_processes}) with {d.num_processes} processes")


# -- fields by dotted path ----------------------------------------------------------------
# The schedule fields that may be given in epochs, each with a twin in steps.
EPOCH_KEYS = ("epochs", "optim.warmup_epochs", "log.eval_every_epochs", "checkpoint.every_epochs")


def steps_twin(key: str) -> str:
    return key[: -len("epochs")] + "steps"


def has_path(config: Any, key: str) -> bool:
    try:
        get_path(config, key)
    except AttributeError:
        return False
    return True


def get_path(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def with_absolute_path(config: Any, key: str, path: str | os.PathLike | None) -> Any:
    """``config`` with the path at ``key`` set to ``path`` (default: its own) made absolute
    (URLs stay): the run stores it, compares it on resume, a report finds the data by it."""
    path = os.fspath(path) if path is not None else get_path(config, key)
    if not path:
        raise ConfigError(f"{key} is not set: the run needs its data")
    return replace_path(config, key, path if "://" in path else os.path.abspath(path))


def replace_path(config: Any, key: str, value: Any) -> Any:
    """``config`` with the field at dotted ``key`` replaced (no parsing, no checks)."""
    head, _, rest = key.partition(".")
    if rest:
        value = replace_path(getattr(config, head), rest, value)
    return dataclasses.replace(config, **{head: value})


# -- overrides ---------------------------------------------------------------------------
def _parse_scalar(text: str, kind: type, key: str) -> Any:
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"override {key}: expected a boolean, got {text!r}")
    if kind is str:
        return text
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        if kind is float and text.strip().lower() in ("inf", "-inf", "nan"):
            return float(text)
        raise ConfigError(f"override {key}: cannot parse {text!r} as {kind.__name__}") from None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"override {key}: expected {kind.__name__}, got {text!r}")


def _parse_value(text: str, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.strip().lower() == "none" and len(kinds) < len(typing.get_args(annotation)):
            return None
        annotation = kinds[0]
        origin = typing.get_origin(annotation)
    if origin is tuple:
        if any(dataclasses.is_dataclass(a) for a in typing.get_args(annotation)):
            raise ConfigError(f"override {key}: a list of sections is set in the config file, not by an override")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ConfigError(f"override {key}: expected a tuple literal such as (256, 256), got {text!r}") from None
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"override {key}: expected a tuple, got {text!r}")
        return tuple(value)
    if annotation in (bool, int, float, str):
        return _parse_scalar(text, annotation, key)
    raise ConfigError(f"override {key}: fields of type {annotation} cannot be overridden")


def apply_override(config: Any, assignment: str) -> Any:
    """Return ``config`` with one ``a.b.c=value`` assignment applied."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"an override expects KEY=VALUE, got {assignment!r}")
    return _set_path(config, key.split("."), text, key)


def _set_path(obj: Any, parts: list[str], text: str, full_key: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    name = parts[0]
    if name not in names:
        prefix = full_key[: len(full_key) - len(".".join(parts))]
        valid = ", ".join(prefix + n for n in names)
        raise ConfigError(f"unknown config key {full_key!r}; valid keys here: {valid}")
    current = getattr(obj, name)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key {full_key!r}: {name!r} is a value, not a section")
        value = _set_path(current, parts[1:], text, full_key)
    else:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"config key {full_key!r} is a section; set one of its fields")
        value = _parse_value(text, typing.get_type_hints(type(obj))[name], full_key)
    changes = {name: value}
    twin = name[: -len("steps")] + "epochs" if name.endswith("steps") else None
    if twin in names:
        changes[twin] = None  # the value in steps is the last word: the epochs twin goes
    try:
        return dataclasses.replace(obj, **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"override {full_key}: {exc}") from None


def apply_overrides(config: Any, assignments: list[str] | tuple[str, ...]) -> Any:
    for assignment in assignments:
        config = apply_override(config, assignment)
    return config


# -- config files ------------------------------------------------------------------------
def _configs_folder() -> str:
    """Where ``sonichu_jax.configs`` is installed, found without importing it (it imports us)."""
    return importlib.util.find_spec("sonichu_jax.configs").submodule_search_locations[0]


def bundled_configs() -> list[str]:
    """Names of the configs shipped in ``sonichu_jax.configs`` (``teacher_vitb``, ...)."""
    return sorted(n[:-3] for n in os.listdir(_configs_folder()) if n.endswith(".py") and not n.startswith("_"))


def resolve_config_path(path: str | os.PathLike) -> str:
    """A config file path as given, or the bundled config of that name (``teacher_vitb[.py]``)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    name = os.path.basename(path)
    name = name[:-3] if name.endswith(".py") else name
    if os.path.dirname(path) in ("", "configs") and name in bundled_configs():
        return os.path.join(_configs_folder(), name + ".py")
    raise ConfigError(f"config file not found: {path}; bundled configs: {', '.join(bundled_configs())}")


def load_config_file(path: str | os.PathLike) -> TeacherConfig:
    """Execute a config file (a path or a bundled config's name); its ``get_config()``."""
    path = resolve_config_path(path)
    if not path.endswith(".py"):
        raise ConfigError(f"config file {path} is not a .py file defining get_config()")
    name = "sonichu_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if get_config is None:
            raise ConfigError(f"{path} defines no get_config()")
        config = get_config()
    except SonichuError:
        raise
    except Exception as exc:  # the user's code: its line, not our traceback
        syntax = isinstance(exc, SyntaxError)
        lines = [exc.lineno] if syntax else [f.lineno for f in traceback.extract_tb(exc.__traceback__)
                                             if os.path.exists(f.filename) and os.path.samefile(f.filename, path)]
        where = f", line {lines[-1]}" if lines else ""
        raise ConfigError(f"config file {path}{where}: {type(exc).__name__}: {exc.msg if syntax else exc}") from None
    if not dataclasses.is_dataclass(config):
        raise ConfigError(f"{path}: get_config() must return a config dataclass, got {type(config).__name__}")
    return config


def to_dict(config: Any) -> Any:
    """JSON-ready form of a config (the model section in its config.json form)."""
    if isinstance(config, ModelConfig):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple):
        return [to_dict(v) for v in config]
    if isinstance(config, float) and config == float("inf"):
        return "inf"
    return config
