"""The NaN/inf guard every train step ends with (docs/training.md, "The NaN guard")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def all_finite(tree) -> jax.Array:
    """Whether every element of every floating-point leaf of ``tree`` is finite."""
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(checks).all() if checks else jnp.asarray(True)


def keep_if_finite(state, candidate, loss: jax.Array, grad_norm: jax.Array):
    """(the candidate state unless the loss or the gradient is non-finite, else ``state``
    with its step advanced; the verdict on the whole candidate as float32; the
    candidate's parameter norm)."""
    param_norm = optax.tree.norm(candidate.params)
    # The choice rests on values known before the update, so XLA fuses it into the
    # update's one pass over the state (docs/training.md gives the cost of the other way).
    sound_inputs = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = state.replace(step=state.step + 1)
    new_state = jax.tree.map(lambda a, b: jnp.where(sound_inputs, a, b), candidate, keep)
    finite = sound_inputs & jnp.isfinite(param_norm) & all_finite(candidate.rest)
    return new_state, finite.astype(jnp.float32), param_norm
