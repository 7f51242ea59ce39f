"""IRED's energy descent with per-sample rejection (the original ``opt_step``).

Each step: y' = clip(y - opt_step_size[t] * m * dE/dy, +-bound);
keep y' where E(y') <= E(y), else keep y.  ``m`` is 1 on the first step and 2
after it (QUIRK of the original, reproduced: it reassigns its step multiplier
inside the loop). The proposal's ``value_and_grad`` is kept and reused as the
next step's energy and score, and the last proposal needs its energy only, so
n steps cost n value_and_grad calls and one forward, where the original spends
n value_and_grad calls and n forwards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ired_cd import model as model_lib


def energy_descent(energy_fn, params, inp, y, t, num_steps, step_size, bound, cond=None):
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
    cond: ``energy_fn.condition(params, inp, t)`` if the caller has it already
      (the sampler shares it with its score call); computed here otherwise.
  Returns:
    y after num_steps, (B, D), gradients stopped.
  """
  params = jax.lax.stop_gradient(params)
  y = jax.lax.stop_gradient(y)
  if isinstance(num_steps, int):  # else the caller's energy_fn.sharing(...) says
    energy_fn = energy_fn.sharing(num_steps)
  if cond is None:
    cond = energy_fn.condition(params, inp, t)
  cond = jax.lax.stop_gradient(cond)

  def run(y):
    value_and_score = lambda y_: model_lib.conditioned_energy_and_score(  # noqa: E731
        energy_fn, params, cond, y_)

    def propose(i, y, grad):
      multiplier = jnp.where(i == 0, 1.0, 2.0)
      return jnp.clip(y - step_size * multiplier * grad, -bound, bound)

    def body(i, carry):
      y, energy, grad = carry
      proposal = propose(i, y, grad)
      new_energy, new_grad = value_and_score(proposal)
      accept = new_energy <= energy
      return (jnp.where(accept[:, None], proposal, y), jnp.where(accept, new_energy, energy),
              jnp.where(accept[:, None], new_grad, grad))

    energy, grad = value_and_score(y)
    y, energy, grad = jax.lax.fori_loop(0, num_steps - 1, body, (y, energy, grad))
    proposal = propose(num_steps - 1, y, grad)
    accept = energy_fn.energy_given(params, cond, proposal)[:, 0] <= energy
    return jnp.where(accept[:, None], proposal, y)

  if isinstance(num_steps, int):
    return run(y) if num_steps > 0 else y
  return jax.lax.cond(num_steps > 0, run, lambda y_: y_, y)
