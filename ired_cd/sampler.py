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

import jax
import jax.numpy as jnp

from ired_cd import model as model_lib
from ired_cd.descent import descend_at
from ired_cd.diffusion import Schedule, clip_answer


def ired_sample(energy_fn, params, inp, y_init, schedule: Schedule, inner_steps,
                return_x0: bool = False, with_stats: bool = False, renoise_keys=None,
                renoise=1.0):
  """Runs the sampler from y_init.  inp: (B, inp_dim), y_init: (B, D) -> (B, D).

  renoise_keys (B,): re-noise each state passed to t - 1 with ``renoise`` times that
  timestep's noise std, row i drawing fold_in(renoise_keys[i], t); renoise = 1 makes it
  q_sample(x0, t - 1) with fresh noise. None (the default): the original's sampler.

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
# perturbations (``stream``).
START_STREAM, RENOISE_STREAM = 1, 2


def stream(keys, tag, index=0):
  """fold_in(fold_in(key, tag), index) per problem: keys (B, 2) -> (B, 2)."""
  return jax.vmap(lambda key: jax.random.fold_in(jax.random.fold_in(key, tag), index))(keys)


def start_keys(keys, trajectory=0):
  """Trajectory ``trajectory``'s start-noise keys: the problems' own keys for 0 (a python int
  or a traced scalar), ``stream(keys, START_STREAM, j)`` for j > 0."""
  if isinstance(trajectory, int) and trajectory == 0:
    return keys
  return jnp.where(trajectory == 0, keys, stream(keys, START_STREAM, trajectory))


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
