"""Schedules given in epochs turned into steps from the run's actual training set
(``examples // global batch`` steps per epoch, at least one).
"""

from __future__ import annotations

from typing import Any

from sonichu_jax.errors import ConfigError
from sonichu_jax.train.configlib import EPOCH_KEYS, get_path, has_path, replace_path, steps_twin


def _in_steps(key: str, epochs: float, per_epoch: int) -> int:
    steps = round(epochs * per_epoch)
    if key in ("optim.warmup_epochs", "log.eval_every_epochs"):
        return steps if epochs == 0 else max(1, steps)  # 0 keeps its meaning (none / at the end)
    return max(1, steps)


def epoch_fields(config: Any) -> list[str]:
    """The schedule fields ``config`` gives in epochs."""
    return [k for k in EPOCH_KEYS if has_path(config, k) and get_path(config, k) is not None]


def in_steps(config: Any, examples: int | None) -> Any:
    """``config`` with its schedule in steps, without the data (a plan): epochs need ``examples``."""
    if examples is not None:
        return resolve_schedule(config, examples)[0]
    if epoch_fields(config):
        raise ConfigError(f"{', '.join(epoch_fields(config))} count in epochs: the number of training examples "
                          "is needed to turn them into steps")
    return config


def resolve_schedule(config: Any, examples: int) -> tuple[Any, int]:
    """(config with every epoch field's twin in steps, checked again; steps per epoch)."""
    per_epoch = max(1, examples // config.data.batch_size)
    given = epoch_fields(config)
    for key in given:
        config = replace_path(config, steps_twin(key), _in_steps(key, get_path(config, key), per_epoch))
    steps_only = config
    for key in given:
        steps_only = replace_path(steps_only, key, None)
    try:
        steps_only.validate()
    except ConfigError as exc:
        if not given:
            raise
        raise ConfigError(f"{exc} ({', '.join(f'{k}={get_path(config, k):g}' for k in given)} at {per_epoch} "
                          f"steps per epoch: {examples} examples / batch {config.data.batch_size})") from None
    return config, per_epoch
