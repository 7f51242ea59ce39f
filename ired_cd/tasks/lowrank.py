"""Matrix completion (IRED's lowrank task): R = 0.1 N + U V^T / 20 (harder: / 5) with U, V
rank 10 Gaussian; the input is R with about half its entries zeroed, the answer R.

The oracle checks the observed entries only (an entry is observed where the input is
non-zero): ||(X - R) on them||_F, a partial oracle that cannot see the other half.
Besides the mean predictor, ``copy_observed`` answers the observed entries and 0
elsewhere: on IRED's sets it reaches IRED's published MSE (docs/table1.md).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ired_cd.tasks import base

FIELDS = ("rank",)
FACTORS = 10  # the rank of U V^T


def _divisor(ood: bool) -> float:
  return 5.0 if ood else 20.0


@dataclasses.dataclass(frozen=True)
class Lowrank(base.MatrixTask):
  """Inputs and targets (B, rank^2)."""

  name = "lowrank"
  baselines = ("mean_predictor", "copy_observed")

  def sample(self, key, batch_size, ood=False, data=None):
    del data
    rank = self.rank
    ku, kv, kn, km = jax.random.split(key, 4)
    u = jax.random.normal(ku, (batch_size, rank, FACTORS))
    v = jax.random.normal(kv, (batch_size, rank, FACTORS))
    r = (0.1 * jax.random.normal(kn, (batch_size, rank, rank))
         + u @ jnp.swapaxes(v, 1, 2) / _divisor(ood))
    mask = jax.random.bernoulli(km, 0.5, r.shape).astype(jnp.float32)
    return (r * mask).reshape(batch_size, -1), r.reshape(batch_size, -1)

  def sample_numpy(self, rng, n, ood=False):
    rank = self.rank
    u = rng.standard_normal((n, rank, FACTORS))
    v = rng.standard_normal((n, rank, FACTORS))
    r = 0.1 * rng.standard_normal((n, rank, rank)) + u @ np.swapaxes(v, 1, 2) / _divisor(ood)
    mask = rng.uniform(size=r.shape) < 0.5
    return (r * mask).reshape(n, -1), r.reshape(n, -1)

  def residual(self, inputs, y):
    """||(X - R) on the observed entries||_F per sample."""
    observed = (inputs != 0).astype(y.dtype)
    return jnp.sqrt(jnp.sum(jnp.square((y - inputs) * observed), axis=-1))

  def predictors(self, inputs, seed):
    """The mean predictor, and ``copy_observed``: the input itself (0 where unobserved)."""
    return dict(super().predictors(inputs, seed), copy_observed=inputs.astype(np.float64))
