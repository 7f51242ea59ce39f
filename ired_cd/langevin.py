"""Short-run Langevin chain for CD negatives (guide section A), as one lax.scan.

  y <- clip(y - eta * dE/dy + sigma * xi, -ANSWER_BOX, ANSWER_BOX),   xi ~ N(0, I)

eta = opt_step_size[t] per sample, sigma = sigma_multiplier * sqrt(2 eta). Each
step is one ``jax.grad`` of the summed energy (one forward, one backward).
The chain is a sampler, not part of the model: its output is wrapped in
``stop_gradient`` so no loss ever differentiates through the trajectory.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from ired_cd import model as model_lib
from ired_cd.diffusion import ANSWER_BOX, Schedule, take


class ChainStats(NamedTuple):
  displacement: jnp.ndarray  # mean over samples of ||y_k - y_0||_2
  last_grad_norm: jnp.ndarray  # mean over samples of ||dE/dy|| at the last step


def langevin_chain(energy_fn, params, inp, y_init, t, noises, schedule: Schedule,
                   sigma_multiplier: float = 1.0, grad_clip: Optional[float] = None,
                   clip_value: float = ANSWER_BOX):
  """Runs len(noises) Langevin steps from y_init with the given standard normals.

  Args:
    energy_fn: a model.EnergyFunction; its y-independent part is computed once.
    inp: (B, inp_dim) conditioning; y_init: (B, D) start in x_t space; t: (B,).
    noises: (K, B, D) standard normal draws, one slice per step.
    grad_clip: if set, each sample's score is rescaled to norm <= grad_clip.
  Returns:
    (y_K (B, D) with gradients stopped, ChainStats).
  """
  return _chain(energy_fn, params, inp, y_init, t, noises, lambda xi: xi, schedule,
                sigma_multiplier, grad_clip, clip_value)


def sample_negatives(energy_fn, params, inp, y_init, t, key, num_steps: int, schedule,
                     sigma_multiplier: float = 1.0, grad_clip: Optional[float] = None,
                     cond=None):
  """``langevin_chain`` with each step's (B, D) noise drawn inside the step.

  Drawing per step (from ``split(key, num_steps)``) rather than all K x B x D
  up front keeps the draws cache-sized (docs/speed.md has the measurement).
  ``cond``: ``energy_fn.condition(params, inp, t)`` where the caller has it.
  """
  draw = lambda k: jax.random.normal(k, y_init.shape, y_init.dtype)  # noqa: E731
  return _chain(energy_fn, params, inp, y_init, t, jax.random.split(key, num_steps), draw,
                schedule, sigma_multiplier, grad_clip, cond=cond)


def _chain(energy_fn, params, inp, y_init, t, xs, draw, schedule: Schedule,
           sigma_multiplier: float, grad_clip: Optional[float], clip_value: float = ANSWER_BOX,
           cond=None):
  """The chain as a lax.scan over xs; ``draw(xs[k])`` is step k's standard normal."""
  params = jax.lax.stop_gradient(params)
  cond = jax.lax.stop_gradient(
      energy_fn.condition(params, inp, t) if cond is None else cond)
  energy_fn = energy_fn.sharing(len(xs))
  eta = take(schedule.opt_step_size, t)
  sigma = sigma_multiplier * jnp.sqrt(2.0 * eta)

  def step(y, x):
    grad = model_lib.conditioned_score(energy_fn, params, cond, y)
    grad_norm = jnp.linalg.norm(grad, axis=-1, keepdims=True)
    if grad_clip is not None:
      grad = grad * jnp.minimum(1.0, grad_clip / jnp.maximum(grad_norm, 1e-12))
    y = jnp.clip(y - eta * grad + sigma * draw(x), -clip_value, clip_value)
    return y, jnp.mean(grad_norm)

  y_init = jax.lax.stop_gradient(y_init)
  y, grad_norms = jax.lax.scan(step, y_init, xs)
  stats = ChainStats(
      displacement=jnp.mean(jnp.linalg.norm(y - y_init, axis=-1)),
      last_grad_norm=grad_norms[-1],
  )
  return jax.lax.stop_gradient(y), stats
