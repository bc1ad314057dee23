"""The NaN/inf guard every train step ends with.

A step is good only if its loss, its gradient norm, the global norm of the updated
parameters and every element of the updated state (parameters, optimiser moments, EMA
target, BatchNorm statistics) are finite. Checking the loss and the gradients is not
enough: a huge learning rate sends finite gradients to parameters whose norm overflows,
and Adam's second moment (the squared gradient) overflows long before the gradient does.
A bad step leaves the state as it was (only the step counter advances), so the state the
loop holds, and therefore every checkpoint it saves, is finite; the loop sees
``finite == 0`` at its next metrics fetch and stops before saving anything.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def all_finite(tree) -> jax.Array:
    """Whether every element of every floating-point leaf of ``tree`` is finite."""
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(checks).all() if checks else jnp.asarray(True)


def keep_if_finite(state, candidate, *scalars: jax.Array):
    """(the candidate if it and ``scalars`` are finite else ``state`` with its step
    advanced, the finite flag as float32, the candidate's parameter norm)."""
    param_norm = optax.tree.norm(candidate.params)
    finite = all_finite(candidate) & jnp.isfinite(param_norm)
    for value in scalars:
        finite &= jnp.isfinite(value)
    keep = state.replace(step=state.step + 1)
    new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), candidate, keep)
    return new_state, finite.astype(jnp.float32), param_norm
