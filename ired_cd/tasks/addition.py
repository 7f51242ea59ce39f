"""Matrix addition (IRED's addition task): inputs [A1, A2] uniform in [-s, s], the answer
A1 + A2; s = 1 in distribution, 2.5 harder. The oracle is ||X - (A1 + A2)||_F."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ired_cd.tasks import base

FIELDS = ("rank",)


def _scale(ood: bool) -> float:
  return 2.5 if ood else 1.0


@dataclasses.dataclass(frozen=True)
class Addition(base.MatrixTask):
  """Inputs (B, 2 rank^2), targets (B, rank^2)."""

  name = "addition"
  residual_label, exact_label = "||X - (A1 + A2)||_F", "A1 + A2"
  input_matrices = 2

  def sample(self, key, batch_size, ood=False, data=None):
    del data
    s = _scale(ood)
    ab = jax.random.uniform(key, (batch_size, 2, self.out_dim), jnp.float32, -s, s)
    return ab.reshape(batch_size, -1), ab[:, 0] + ab[:, 1]

  def sample_numpy(self, rng, n, ood=False):
    s = _scale(ood)
    ab = rng.uniform(-s, s, size=(n, 2, self.out_dim))
    return ab.reshape(n, -1), ab[:, 0] + ab[:, 1]

  def residual(self, inputs, y):
    """||X - (A1 + A2)||_F per sample."""
    half = inputs.shape[-1] // 2
    return jnp.sqrt(jnp.sum(jnp.square(y - inputs[:, :half] - inputs[:, half:]), axis=-1))

  def exact(self, inputs):
    """A1 + A2 in float64.  (B, 2 n^2) -> (B, n^2)."""
    inputs = np.asarray(inputs, np.float64)
    half = inputs.shape[-1] // 2
    return inputs[:, :half] + inputs[:, half:]
