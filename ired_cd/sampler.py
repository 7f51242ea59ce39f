"""IRED's sampler (the original ``p_sample_loop`` with inner-loop energy descent).

y ~ N(0, I); for t = T-1 .. 0:
  1. eps = dE/dy(inp, y, t); x0 = clip_answer(predict_start_from_noise(y, t, eps));
  2. from y = sqrt(abar_t) x0 (no posterior noise), ``inner_steps`` steps of energy
     descent at t, then y = clip(y, +-ANSWER_BOX sqrt(abar_t)) (descent.descend_at, with
     the rule diffusion.Schedule.descent_rule);
  3. x0 = y / sqrt(abar_t);
     if t > 0: y = sqrt(abar_{t-1}) x0 (+ renoise sqrt(1 - abar_{t-1}) z, z ~ N(0, I),
     with ``renoise_keys``: stochastic trajectories, not the original's sampler).
The original returns y after t = 0, i.e. sqrt(abar_0) x0 (abar_0 ~ 0.972), and
scores that; we keep it as the default so numbers compare, and ``return_x0``
gives the unscaled x0. The timestep loop is a lax.scan; ``inner_steps`` is a
traced argument, so one compiled sampler runs any number of inner steps.
``with_stats`` also returns each timestep's ``descent.DescentStats`` (the
descent's instruments; ``inner_steps`` then a python int).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from ired_cd import model as model_lib
from ired_cd.descent import descend_at
from ired_cd.diffusion import Schedule, clip_answer


def ired_sample(energy_fn, params, inp, y_init, schedule: Schedule, inner_steps,
                return_x0: bool = False, with_stats: bool = False, renoise_keys=None,
                renoise=1.0, resample: Optional[Callable] = None):
  """Runs the sampler from y_init.  inp: (B, inp_dim), y_init: (B, D) -> (B, D).

  renoise_keys (B,): re-noise each state passed to t - 1 with ``renoise`` times that
  timestep's noise std, row i drawing fold_in(renoise_keys[i], t); renoise = 1 makes it
  q_sample(x0, t - 1) with fresh noise. None (the default): the original's sampler.
  resample: ``resample(y, E (B,), t) -> y`` after the descent at each t > 0, given each
  row's energy there (particles resampled by their energy: ``resampler``).

  with_stats: (output, DescentStats) with each field stacked per timestep in the
  sampler's order t = T-1 .. 0 after the batch axis: moved (B, T, K), score_norm_* (B, T).
  """
  batch = inp.shape[0]
  energy_fn = energy_fn.sharing(schedule.num_timesteps)  # score calls on the same params

  def body(y, tt):
    t = jnp.full((batch,), tt, jnp.int32)
    cond = energy_fn.condition(params, inp, t)
    eps = model_lib.conditioned_score(energy_fn, params, cond, y)
    x0 = clip_answer(schedule.predict_start_from_noise(y, t, eps))
    y = descend_at(energy_fn, params, inp, x0, tt, inner_steps, schedule, cond, with_stats)
    y, stats = y if with_stats else (y, None)
    if resample is not None:
      energy = energy_fn.energy_given(params, cond, y)[:, 0]
      y = jnp.where(tt > 0, resample(y, energy, tt), y)
    x0 = schedule.sqrt_recip_alphas_cumprod[tt] * y
    y_prev = schedule.sqrt_alphas_cumprod[jnp.maximum(tt - 1, 0)] * x0
    if renoise_keys is not None:
      z = start_noise(jax.vmap(lambda key: jax.random.fold_in(key, tt))(renoise_keys),
                      x0.shape[-1])
      y_prev += renoise * schedule.sqrt_one_minus_alphas_cumprod[jnp.maximum(tt - 1, 0)] * z
    return jnp.where(tt > 0, y_prev, y), (x0, stats) if with_stats else x0

  timesteps = jnp.arange(schedule.num_timesteps - 1, -1, -1, dtype=jnp.int32)
  y, x0s = jax.lax.scan(body, y_init, timesteps)
  if with_stats:
    x0s, stats = x0s
    return (x0s[-1] if return_x0 else y,
            jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 1), stats))
  return x0s[-1] if return_x0 else y


def start_noise(keys, out_dim: int):
  """y_init ~ N(0, I), each row from its own key: keys (B,) -> (B, out_dim) float32.

  A problem's start, and so its answer, does not depend on its row, chunk or batch.
  """
  return jax.vmap(lambda key: jax.random.normal(key, (out_dim,), jnp.float32))(keys)


# A problem's randomness derives from its one key (evaluation: fold_in(PRNGKey(eval_seed), i);
# experiments.solve: a hash of the problem), one stream per use: trajectory j's start noise
# (the key itself for j = 0: the standard sampler), its re-noise, and the landscape's
# perturbations (``stream``), a particle set's resampling.
START_STREAM, RENOISE_STREAM, RESAMPLE_STREAM = 1, 2, 3


def stream(keys, tag, index=0):
  """fold_in(fold_in(key, tag), index) per problem: keys (B, 2), index a scalar or (B,) ->
  (B, 2)."""
  index = jnp.broadcast_to(jnp.asarray(index, jnp.uint32), keys.shape[:1])
  return jax.vmap(lambda key, i: jax.random.fold_in(jax.random.fold_in(key, tag), i))(keys, index)


def start_keys(keys, trajectory=0):
  """Trajectory ``trajectory``'s start-noise keys: the problems' own keys for 0 (a python int,
  a traced scalar or one per row), ``stream(keys, START_STREAM, j)`` for j > 0."""
  if isinstance(trajectory, int) and trajectory == 0:
    return keys
  trajectory = jnp.broadcast_to(trajectory, keys.shape[:1])[:, None]
  return jnp.where(trajectory == 0, keys, stream(keys, START_STREAM, trajectory[:, 0]))


def sample_from_keys(energy_fn, params, inp, keys, schedule: Schedule, inner_steps,
                     return_x0: bool = False, with_stats: bool = False, trajectory=0,
                     renoise: float = 0.0):
  """``ired_sample`` from each problem's key (B, 2): trajectory ``trajectory``'s start noise
  and, with ``renoise`` > 0, its re-noise (the same problem, trajectory and key give the
  same answer in any row, chunk or batch)."""
  return ired_sample(
      energy_fn, params, inp, start_noise(start_keys(keys, trajectory), energy_fn.module.out_dim),
      schedule, inner_steps, return_x0, with_stats,
      stream(keys, RENOISE_STREAM, trajectory) if renoise else None, renoise)


def make_sampler(energy_fn, schedule: Schedule, return_x0: bool = False,
                 with_stats: bool = False):
  """A jitted ``sample(params, inp, keys, inner_steps) -> (B, out_dim)``: ``sample_from_keys``
  (trajectory 0, no re-noise: the original's sampler from each problem's own start noise).
  The shardings follow the arguments' (problems on a mesh's ``data`` axis, parameters
  replicated: ``evaluation.predict``).

  with_stats: ``-> (output, DescentStats)`` (ired_sample), compiled per python-int
  ``inner_steps``.
  """

  @functools.partial(jax.jit, static_argnums=(3,) if with_stats else ())
  def sample(params, inp, keys, inner_steps):
    return sample_from_keys(energy_fn, params, inp, keys, schedule, inner_steps, return_x0,
                            with_stats)

  return sample


def resampler(keys, particles: int, tau: float):
  """``resample`` for ired_sample over rows of ``particles`` particles per problem (row
  b K + j: problem b's particle j): at timestep t each problem's particles are drawn anew by
  systematic resampling with weights softmax(-E / tau) over them, the problem's uniform from
  fold_in(stream(its key, RESAMPLE_STREAM), t). Each of K particles is kept K w_j times in
  expectation (at most one off), and equal weights (tau -> infinity) keep every particle
  where it is: independent particles. keys: (B, 2), one per problem."""
  streams = stream(keys, RESAMPLE_STREAM)

  def resample(y, energy, tt):
    weights = jax.nn.softmax(-energy.reshape(-1, particles) / tau, axis=1)  # (B, K)
    offsets = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, tt)))(streams)
    points = (offsets[:, None] + jnp.arange(particles)) / particles  # (B, K) in [0, 1)
    below = points[:, :, None] >= jnp.cumsum(weights, axis=1)[:, None, :]
    chosen = jnp.minimum(jnp.sum(below, axis=2), particles - 1)
    rows = jnp.arange(weights.shape[0])[:, None] * particles + chosen
    return y[rows.reshape(-1)]

  return resample


def sample_particles(energy_fn, params, inp, keys, schedule: Schedule, inner_steps,
                     particles: int, renoise: float = 1.0, return_x0: bool = False,
                     resample_tau: Optional[float] = None):
  """``particles`` trajectories per problem: trajectory j of ``sample_from_keys`` (its start
  noise, re-noised with ``renoise``) for j < particles, all in one batch (problems x particles
  rows, problem-major: sharded like the problems); with ``resample_tau``, resampled between
  timesteps by their energy (``resampler``). inp (B, inp_dim), keys (B, 2) ->
  (outputs (B, K, D), E at t = 0 of each answer (B, K))."""
  batch, dim = inp.shape[0], energy_fn.module.out_dim
  rows = jnp.repeat(inp, particles, axis=0)
  row_keys = jnp.repeat(keys, particles, axis=0)
  trajectory = jnp.tile(jnp.arange(particles), batch)
  out = ired_sample(
      energy_fn, params, rows, start_noise(start_keys(row_keys, trajectory), dim), schedule,
      inner_steps, return_x0, renoise_keys=stream(row_keys, RENOISE_STREAM, trajectory)
      if renoise else None, renoise=renoise,
      resample=None if resample_tau is None else resampler(keys, particles, resample_tau))
  state = out * schedule.sqrt_alphas_cumprod[0] if return_x0 else out  # sqrt(abar_0) x0
  energy = energy_fn(params, rows, state, jnp.zeros((rows.shape[0],), jnp.int32))[:, 0]
  return out.reshape(batch, particles, dim), energy.reshape(batch, particles)


def make_particle_sampler(energy_fn, schedule: Schedule, particles: int, renoise: float = 1.0,
                          return_x0: bool = False, resample_tau: Optional[float] = None):
  """A jitted ``sample(params, inp, keys, inner_steps) -> (outputs (B, K, D), E (B, K))``:
  ``sample_particles`` with these settings (one compiled program per setting)."""

  @jax.jit
  def sample(params, inp, keys, inner_steps):
    return sample_particles(energy_fn, params, inp, keys, schedule, inner_steps, particles,
                            renoise, return_x0, resample_tau)

  return sample
