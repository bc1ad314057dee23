"""Ahead-of-time plans: a run's training step compiled for a TPU slice (or fake CPU
devices) from abstract inputs, with the compiler's memory, FLOP and time estimates."""

from sonichu_jax.train.plans.plan import DoesNotFit, Plan, make_plan
from sonichu_jax.train.plans.topology import CHIPS, NeedsFreshProcess, make_topology

__all__ = ["CHIPS", "DoesNotFit", "NeedsFreshProcess", "Plan", "make_plan", "make_topology"]
