"""IRED's energy descent with per-sample rejection (the original ``opt_step``).

Each step: y' = clip(y - opt_step_size[t] * m * dE/dy, +-bound);
keep y' where E(y') <= E(y), else keep y.  ``m`` is 1 on the first step and 2
after it (QUIRK of the original, reproduced: it reassigns its step multiplier
inside the loop). The proposal's ``value_and_grad`` is kept and reused as the
next step's energy and score, and the last proposal needs its energy only, so
n steps cost n value_and_grad calls and one forward, where the original spends
n value_and_grad calls and n forwards.

``with_stats=True`` runs the same steps as a ``lax.scan`` and also returns
``DescentStats``: what each proposal did and the score before and after.
``descend_at`` is the sampler's descent at one timestep (its rule: diffusion's
``Schedule.descent_rule``, and the final clamp): the one the sampler runs and the
landscape repeats.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from ired_cd import model as model_lib


class DescentStats(NamedTuple):
  """Per-sample instruments of one descent of K steps (batch first).

  A proposal ``moved`` y (accepted and different from y), was ``rejected``
  (E(y') > E(y)), or neither: accepted but equal to y (a zero or clipped step).
  """

  moved: jnp.ndarray  # (B, K) bool
  rejected: jnp.ndarray  # (B, K) bool
  score_norm_start: jnp.ndarray  # (B,) ||dE/dy|| at the start (the sampler: after denoising)
  score_norm_end: jnp.ndarray  # (B,) ||dE/dy|| after the descent
  energy_end: jnp.ndarray  # (B,) E after the descent
  observed: Optional[object] = None  # observe(y) after each step, stacked (B, K, ...)


def energy_descent(energy_fn, params, inp, y, t, num_steps, step_size, bound, cond=None,
                   with_stats: bool = False, observe: Optional[Callable] = None):
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
    with_stats: also return DescentStats (num_steps must then be a python int);
      the steps and their numbers are those of the plain descent.
    observe: with_stats only: a function of y (B, D) -> pytree of (B, ...)
      recorded after every step (e.g. the error to a known answer).
  Returns:
    y after num_steps, (B, D), gradients stopped; with_stats: (y, DescentStats).
  """
  params = jax.lax.stop_gradient(params)
  y = jax.lax.stop_gradient(y)
  if isinstance(num_steps, int):  # else the caller's energy_fn.sharing(...) says
    energy_fn = energy_fn.sharing(num_steps)
  if cond is None:
    cond = energy_fn.condition(params, inp, t)
  cond = jax.lax.stop_gradient(cond)
  value_and_score = lambda y_: model_lib.conditioned_energy_and_score(  # noqa: E731
      energy_fn, params, cond, y_)

  def propose(i, y, grad):
    multiplier = jnp.where(i == 0, 1.0, 2.0)
    return jnp.clip(y - step_size * multiplier * grad, -bound, bound)

  def step(i, carry):
    """One step: (new carry, accept (B,), proposal (B, D))."""
    y, energy, grad = carry
    proposal = propose(i, y, grad)
    new_energy, new_grad = value_and_score(proposal)
    accept = new_energy <= energy
    return ((jnp.where(accept[:, None], proposal, y), jnp.where(accept, new_energy, energy),
             jnp.where(accept[:, None], new_grad, grad)), accept, proposal)

  def last_step(y, energy, grad):
    """The last step needs the proposal's energy only: (y, accept, proposal, energy)."""
    proposal = propose(num_steps - 1, y, grad)
    new_energy = energy_fn.energy_given(params, cond, proposal)[:, 0]
    accept = new_energy <= energy
    return (jnp.where(accept[:, None], proposal, y), accept, proposal,
            jnp.where(accept, new_energy, energy))

  def run(y):
    energy, grad = value_and_score(y)
    y, energy, grad = jax.lax.fori_loop(0, num_steps - 1, lambda i, c: step(i, c)[0],
                                        (y, energy, grad))
    return last_step(y, energy, grad)[0]

  if with_stats:
    if not isinstance(num_steps, int):
      raise TypeError(f"with_stats needs a python int num_steps, got {num_steps!r}")
    return _descent_with_stats(value_and_score, step, last_step, y, num_steps, observe)
  if isinstance(num_steps, int):
    return run(y) if num_steps > 0 else y
  return jax.lax.cond(num_steps > 0, run, lambda y_: y_, y)


def _descent_with_stats(value_and_score, step, last_step, y, num_steps: int, observe):
  """``energy_descent``'s steps as a lax.scan recording each proposal's outcome."""
  observe = observe or (lambda y_: ())
  energy, grad = value_and_score(y)
  score_norm_start = jnp.linalg.norm(grad, axis=-1)

  def record(y_old, y_new, accept, proposal):
    moved = accept & jnp.any(proposal != y_old, axis=-1)
    return moved, ~accept, observe(y_new)

  def scan_step(carry, i):
    new_carry, accept, proposal = step(i, carry)
    return new_carry, record(carry[0], new_carry[0], accept, proposal)

  records = []
  if num_steps > 1:
    (y, energy, grad), stacked = jax.lax.scan(scan_step, (y, energy, grad),
                                              jnp.arange(num_steps - 1))
    records.append(jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 1), stacked))
  if num_steps > 0:
    y_new, accept, proposal, energy = last_step(y, energy, grad)
    last = record(y, y_new, accept, proposal)
    records.append(jax.tree_util.tree_map(lambda a: a[:, None], last))
    y = y_new
    grad = value_and_score(y)[1]
  if records:
    moved, rejected, observed = jax.tree_util.tree_map(
        lambda *a: jnp.concatenate(a, axis=1), *records)
  else:
    empty = jnp.zeros((y.shape[0], 0), bool)
    moved, rejected = empty, empty
    observed = jax.tree_util.tree_map(lambda a: a[:, None][:, :0], observe(y))
  stats = DescentStats(moved, rejected, score_norm_start, jnp.linalg.norm(grad, axis=-1),
                       energy, observed)
  return y, stats


def descend_at(energy_fn, params, inp, x0, tt, num_steps, schedule, cond=None,
               with_stats: bool = False, observe: Optional[Callable] = None):
  """The sampler's descent at timestep ``tt`` (an int scalar, every row at it) from answers
  x0 (B, D) in the answer box: from its state y = sqrt(abar_t) x0, ``num_steps`` steps with
  ``schedule.descent_rule(tt)``, then y clamped to the rule's box. Returns y (and
  DescentStats with ``with_stats``; ``observe`` sees y)."""
  rule = schedule.descent_rule(tt)
  y = rule.scale * x0
  t = jnp.full((y.shape[0],), tt, jnp.int32)
  out = energy_descent(energy_fn, params, inp, y, t, num_steps, rule.step_size, rule.bound,
                       cond, with_stats, observe)
  y, stats = out if with_stats else (out, None)
  y = jnp.clip(y, rule.low, rule.bound)
  return (y, stats) if with_stats else y
