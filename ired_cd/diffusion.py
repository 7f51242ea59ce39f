"""Cosine diffusion schedule of IRED (T small, predict-noise objective).

Every buffer is computed in float64 with numpy and stored as float32, exactly as
the original computes its torch buffers. Per-sample lookups take integer
timesteps ``t`` of shape (B,) and return (B, 1) columns that broadcast over the
feature axis.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.struct
import jax.numpy as jnp
import numpy as np

# The answer box of the original: answers x0 are clamped to [-ANSWER_BOX, ANSWER_BOX],
# samples x_t = sqrt(abar_t) x0 to +-ANSWER_BOX sqrt(abar_t) (+-ANSWER_BOX in a Langevin chain).
ANSWER_BOX = 2.0


def clip_answer(x0):
  """x0 clamped to the answer box [-ANSWER_BOX, ANSWER_BOX]."""
  return jnp.clip(x0, -ANSWER_BOX, ANSWER_BOX)


@flax.struct.dataclass
class Schedule:
  """The schedule's buffers, each a float32 array of shape (T,)."""

  betas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  sqrt_recip_alphas_cumprod: jnp.ndarray
  sqrt_recipm1_alphas_cumprod: jnp.ndarray
  opt_step_size: jnp.ndarray

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]

  def q_sample(self, x0, t, eps):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.  x0, eps: (B, D); t: (B,)."""
    return (take(self.sqrt_alphas_cumprod, t) * x0
            + take(self.sqrt_one_minus_alphas_cumprod, t) * eps)

  def predict_start_from_noise(self, x_t, t, eps):
    """x0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps.  (B, D) -> (B, D)."""
    return (take(self.sqrt_recip_alphas_cumprod, t) * x_t
            - take(self.sqrt_recipm1_alphas_cumprod, t) * eps)

  def x0_estimate(self, x_t, t):
    """Zero-noise x0 estimate clamped to the answer box (the guide's residual input)."""
    return clip_answer(take(self.sqrt_recip_alphas_cumprod, t) * x_t)

  def descent_rule(self, t) -> "DescentRule":
    """IRED's energy descent at timestep t (DescentRule). t: an int scalar (the sampler:
    every row at one t) -> scalars, or (B,) -> (B, 1) columns."""
    if jnp.ndim(t) == 0:
      return DescentRule(self.opt_step_size[t], self.sqrt_alphas_cumprod[t])
    return DescentRule(take(self.opt_step_size, t), take(self.sqrt_alphas_cumprod, t))


class DescentRule(NamedTuple):
  """Energy descent at timestep t: steps of ``step_size`` (opt_step_size[t]) on the state
  y = ``scale`` x0 (scale = sqrt(abar_t)), which stays in the box +-``bound`` (ANSWER_BOX
  scale, the answer box at that scale)."""

  step_size: jnp.ndarray
  scale: jnp.ndarray

  @property
  def bound(self):
    return ANSWER_BOX * self.scale

  @property
  def low(self):
    return -ANSWER_BOX * self.scale


def take(buffer, t):
  """buffer[t] as a (B, 1) column; t: int array (B,)."""
  return buffer[t][:, None]


def cosine_schedule(num_timesteps: int, s: float = 0.008) -> Schedule:
  """Nichol & Dhariwal cosine schedule, betas clipped to [0, 0.999].

  ``opt_step_size = beta_t / sqrt(1 - abar_t)`` is IRED's step size for energy
  descent and Langevin moves (T=10: 0.167 ... 0.999).
  """
  grid = np.linspace(0, num_timesteps, num_timesteps + 1, dtype=np.float64)
  f = np.cos((grid / num_timesteps + s) / (1 + s) * np.pi * 0.5) ** 2
  abar_all = f / f[0]
  betas = np.clip(1.0 - abar_all[1:] / abar_all[:-1], 0.0, 0.999)
  abar = np.cumprod(1.0 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  buffers = dict(
      betas=betas,
      alphas_cumprod=abar,
      alphas_cumprod_prev=abar_prev,
      sqrt_alphas_cumprod=np.sqrt(abar),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
      opt_step_size=betas * np.sqrt(1.0 / (1.0 - abar)),
  )
  return Schedule(**{k: jnp.asarray(v.astype(np.float32)) for k, v in buffers.items()})
