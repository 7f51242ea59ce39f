"""IRED's energy descent with per-sample rejection (the original ``opt_step``).

Each step: y' = clip(y - opt_step_size[t] * m * dE/dy, +-bound);
keep y' where E(y') <= E(y), else keep y.  ``m`` is 1 on the first step and 2
after it (QUIRK of the original, reproduced: it reassigns its step multiplier
inside the loop). The proposal's ``value_and_grad`` is kept and reused as the
next step's energy and score, so n steps cost n + 1 value_and_grad calls instead
of n value_and_grad calls plus n extra forwards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ired_cd import model as model_lib


def energy_descent(energy_fn, params, inp, y, t, num_steps, step_size, bound):
  """Energy descent from y.

  Args:
    energy_fn: a model.EnergyFunction; its y-independent part is computed once.
    inp: (B, inp_dim); y: (B, D); t: (B,) int.
    num_steps: python int or traced int32 scalar (the sampler's inner steps are
      a runtime argument, so one compiled sampler serves every count).
    step_size: (B, 1) or scalar opt_step_size[t]; bound: clamp bound, (B, 1) or
      scalar. Training uses the per-sample bound 2 sqrt(abar_t); the original
      used sample 0's bound for the whole batch (a bug; in the sampler all
      samples share t, so both agree there).
  Returns:
    y after num_steps, (B, D), gradients stopped.
  """
  params = jax.lax.stop_gradient(params)
  cond = energy_fn.condition(params, inp, t)
  value_and_score = lambda y_: model_lib.conditioned_energy_and_score(  # noqa: E731
      energy_fn, params, cond, y_)
  y = jax.lax.stop_gradient(y)
  energy, grad = value_and_score(y)

  def body(i, carry):
    y, energy, grad = carry
    multiplier = jnp.where(i == 0, 1.0, 2.0)
    proposal = jnp.clip(y - step_size * multiplier * grad, -bound, bound)
    new_energy, new_grad = value_and_score(proposal)
    accept = (new_energy <= energy)[:, None]
    return (jnp.where(accept, proposal, y), jnp.where(accept[:, 0], new_energy, energy),
            jnp.where(accept, new_grad, grad))

  y, _, _ = jax.lax.fori_loop(0, num_steps, body, (y, energy, grad))
  return y
