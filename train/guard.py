"""The NaN/inf guard every train step ends with.

A step is kept only if the whole updated state is finite. Checking the loss and the
gradients is not enough: a huge learning rate sends finite gradients to parameters that
overflow, and Adam's second moment (the squared gradient) overflows before the gradient
does. What the guard checks, and why that covers the whole state:

- the loss and the gradient norm. The norm is a float32 sum of squared gradients, so it
  is infinite as soon as one squared gradient overflows;
- the global norm of the updated parameters (also float32): finite only if every
  parameter is, and infinite already when parameters grow astronomically large;
- every element of the rest of the state (BatchNorm running statistics, which can
  overflow while soft-argmax keeps the loss finite).

Adam's moments are convex combinations of their previous values and of g and g², and the
EMA target of I-JEPA one of its previous value and the parameters: from a finite state,
a finite gradient norm and finite parameters they stay finite. A bad step leaves the
state as it was (only the step counter advances), so the state the loop holds, and every
checkpoint it saves, is finite; the loop sees ``finite == 0`` at its next metrics fetch
and stops before saving anything. (One reduction per optimiser-state leaf would say the
same at the price of a 60 % longer compilation of the tiny teacher step on CPU.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def all_finite(tree) -> jax.Array:
    """Whether every element of every floating-point leaf of ``tree`` is finite."""
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(checks).all() if checks else jnp.asarray(True)


def keep_if_finite(state, candidate, loss: jax.Array, grad_norm: jax.Array):
    """(the candidate state if the step is good, else ``state`` with its step advanced;
    the verdict as float32; the candidate's parameter norm)."""
    param_norm = optax.tree.norm(candidate.params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm) & all_finite(candidate.rest)
    keep = state.replace(step=state.step + 1)
    new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), candidate, keep)
    return new_state, finite.astype(jnp.float32), param_norm
