"""Matrix inversion (IRED's inverse task): A symmetric positive definite, the answer A^{-1}.

A = R R^T + (R R^T)^T + c I with R uniform in [-1, 1], c = 0.5 (in distribution) or
0.1 (harder: larger, worse-conditioned inverses). The oracle is ||A X - I||_F.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ired_cd.tasks import base

FIELDS = ("rank",)
SYMMETRY_TOLERANCE = 1e-5  # max |A - A^T| relative to max |A|, for distribution_warnings


def _spd(r, ood: bool, eye):
  """A = R R^T + (R R^T)^T + c I, c = 0.1 (harder) or 0.5."""
  s = r @ jnp.swapaxes(r, -1, -2)
  return s + jnp.swapaxes(s, -1, -2) + (0.1 if ood else 0.5) * eye


def spd_inverse(a):
  """Inverse of symmetric positive definite matrices by in-place Gauss-Jordan.  (..., n, n).

  No pivoting is needed for SPD matrices (the pivots are those of a Cholesky
  factorisation). n rank-1 updates of the n x n block, unrolled: on CPU about 6x
  faster than XLA's batched Cholesky plus triangular solves at B = 2048, n = 20.
  """
  n = a.shape[-1]
  eye = jnp.eye(n, dtype=a.dtype)
  for k in range(n):
    e_k = eye[k]
    pivot_row = (a[..., k, :] * (1.0 - e_k) + e_k) / a[..., k, k:k + 1]  # row k of the result
    column = a[..., :, k:k + 1] * (1.0 - e_k[:, None])                    # eliminated entries
    a = a * (1.0 - e_k) + eye[:, k:k + 1] * e_k                          # column k := e_k
    a = (a - column * pivot_row[..., None, :]).at[..., k, :].set(pivot_row)
  return a


@dataclasses.dataclass(frozen=True)
class Inverse(base.MatrixTask):
  """(A, A^{-1}) flattened to (B, rank^2)."""

  name = "inverse"
  residual_label, exact_label = "||A X - I||_F", "numpy.linalg.inv"

  def sample(self, key, batch_size, ood=False, data=None):
    """A^{-1} by Gauss-Jordan in float32 plus one Newton step X <- X (2I - A X), which brings
    it to float32 round-off for these condition numbers (~1e2 to 1e3)."""
    del data
    rank = self.rank
    r = jax.random.uniform(key, (batch_size, rank, rank), jnp.float32, -1.0, 1.0)
    eye = jnp.eye(rank, dtype=jnp.float32)
    a = _spd(r, ood, eye)
    x = spd_inverse(a)
    x = x @ (2.0 * eye - a @ x)
    x = 0.5 * (x + jnp.swapaxes(x, -1, -2))
    return a.reshape(batch_size, -1), x.reshape(batch_size, -1)

  def sample_numpy(self, rng, n, ood=False):
    """Float64 host version: the reference's ``InverseTask.sample_f64``."""
    rank = self.rank
    u = rng.uniform(-1.0, 1.0, size=(n, rank, rank))
    s = u @ np.swapaxes(u, 1, 2)
    a = s + np.swapaxes(s, 1, 2) + (0.1 if ood else 0.5) * np.eye(rank)
    return a.reshape(n, -1), np.linalg.inv(a).reshape(n, -1)

  def residual(self, inputs, y):
    """||A X - I||_F per sample.  inputs, y: (B, n^2) -> (B,)."""
    n = self.rank
    ax = inputs.reshape(-1, n, n) @ y.reshape(-1, n, n)
    return jnp.sqrt(jnp.sum(jnp.square(ax - jnp.eye(n, dtype=ax.dtype)), axis=(-2, -1)))

  def exact(self, inputs):
    """A^{-1} by numpy.linalg.inv in float64.  (B, n^2) -> (B, n^2)."""
    n = self.rank
    a = np.asarray(inputs, np.float64).reshape(-1, n, n)
    return np.linalg.inv(a).reshape(a.shape[0], -1)

  def distribution_warnings(self, problems):
    """Besides the norm check: problems that are not symmetric positive definite."""
    lines = []
    n = len(problems)
    a = problems.astype(np.float64).reshape(n, self.rank, self.rank)
    asymmetry = np.max(np.abs(a - np.swapaxes(a, 1, 2)), axis=(1, 2))
    symmetric = asymmetry <= SYMMETRY_TOLERANCE * np.max(np.abs(a), axis=(1, 2))
    sym = 0.5 * (a + np.swapaxes(a, 1, 2))
    spd = symmetric & (np.linalg.eigvalsh(sym)[:, 0] > 0)
    if not spd.all():
      first = np.flatnonzero(~spd)[0]
      lines.append(f"{np.sum(~spd)} of {n} problems are not symmetric positive definite "
                   f"(first: problem {first}); the run was trained on SPD matrices, their "
                   "answers may be poor")
    return lines + super().distribution_warnings(problems)
