"""Continuous reasoning tasks of IRED, generated on device for every batch.

A task is a pure function ``sample(key, batch_size, ood) -> (inputs, targets)``
with inputs (B, inp_dim) and targets (B, out_dim), float32, plus an optional
oracle ``residual(inputs, x) -> (B,)`` that scores a candidate answer without
the target (used by the CD residual filter against false negatives) and an
optional ``exact(inputs) -> targets`` on the host (numpy, float64), where the
answer can be computed directly (scoring a user's problems, ired_cd.solve).

Evaluation sets are drawn on the host in float64 with numpy's legacy
``RandomState`` exactly like the PyTorch reference, so our evaluation matrices
are the reference's and the MSE numbers compare one to one.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  inp_dim: int
  out_dim: int
  sample: Callable  # (key, batch_size, ood) -> (inputs, targets)
  sample_numpy: Callable  # (np.random.RandomState, n, ood) -> float64 (inputs, targets)
  residual: Optional[Callable] = None  # (inputs, x) -> (B,)
  exact: Optional[Callable] = None  # numpy inputs (B, inp_dim) -> float64 targets (B, out_dim)


# --------------------------------------------------------------------- inverse
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


def inverse_sample(key, batch_size: int, ood: bool = False, rank: int = 20):
  """(A, A^{-1}) flattened to (B, rank^2); A SPD.

  A^{-1} by Gauss-Jordan in float32 plus one Newton step X <- X (2I - A X),
  which brings it to float32 round-off for these condition numbers (~1e2 to 1e3).
  """
  r = jax.random.uniform(key, (batch_size, rank, rank), jnp.float32, -1.0, 1.0)
  eye = jnp.eye(rank, dtype=jnp.float32)
  a = _spd(r, ood, eye)
  x = spd_inverse(a)
  x = x @ (2.0 * eye - a @ x)
  x = 0.5 * (x + jnp.swapaxes(x, -1, -2))
  return a.reshape(batch_size, -1), x.reshape(batch_size, -1)


def inverse_sample_numpy(rng: np.random.RandomState, n: int, ood: bool = False, rank: int = 20):
  """Float64 host version: the reference's ``InverseTask.sample_f64``."""
  u = rng.uniform(-1.0, 1.0, size=(n, rank, rank))
  s = u @ np.swapaxes(u, 1, 2)
  a = s + np.swapaxes(s, 1, 2) + (0.1 if ood else 0.5) * np.eye(rank)
  return a.reshape(n, -1), np.linalg.inv(a).reshape(n, -1)


def inverse_residual(inputs, x):
  """||A X - I||_F per sample.  inputs, x: (B, n^2) -> (B,)."""
  n = int(round(inputs.shape[-1] ** 0.5))
  a = inputs.reshape(-1, n, n)
  ax = a @ x.reshape(-1, n, n)
  return jnp.sqrt(jnp.sum(jnp.square(ax - jnp.eye(n, dtype=ax.dtype)), axis=(-2, -1)))


def inverse_exact(inputs):
  """A^{-1} by numpy.linalg.inv in float64.  (B, n^2) -> (B, n^2)."""
  n = int(round(inputs.shape[-1] ** 0.5))
  a = np.asarray(inputs, np.float64).reshape(-1, n, n)
  return np.linalg.inv(a).reshape(a.shape[0], -1)


# --------------------------------------------------------------------- addition
def addition_sample(key, batch_size: int, ood: bool = False, rank: int = 20):
  """Inputs [A1, A2] (B, 2 n^2) with entries U(-s, s), s = 1 (ood: 2.5); target A1 + A2."""
  scale = 2.5 if ood else 1.0
  ab = jax.random.uniform(key, (batch_size, 2, rank * rank), jnp.float32, -scale, scale)
  return ab.reshape(batch_size, -1), ab[:, 0] + ab[:, 1]


def addition_sample_numpy(rng, n: int, ood: bool = False, rank: int = 20):
  scale = 2.5 if ood else 1.0
  ab = rng.uniform(-scale, scale, size=(n, 2, rank * rank))
  return ab.reshape(n, -1), ab[:, 0] + ab[:, 1]


def addition_residual(inputs, x):
  """||X - (A1 + A2)||_F per sample."""
  half = inputs.shape[-1] // 2
  return jnp.sqrt(jnp.sum(jnp.square(x - inputs[:, :half] - inputs[:, half:]), axis=-1))


def addition_exact(inputs):
  """A1 + A2 in float64.  (B, 2 n^2) -> (B, n^2)."""
  inputs = np.asarray(inputs, np.float64)
  half = inputs.shape[-1] // 2
  return inputs[:, :half] + inputs[:, half:]


# --------------------------------------------------------------------- lowrank
_LOWRANK_FACTORS = 10


def lowrank_sample(key, batch_size: int, ood: bool = False, rank: int = 20):
  """Matrix completion: R = 0.1 N + U V^T / 20 (ood: / 5); input R * mask (p=0.5), target R."""
  ku, kv, kn, km = jax.random.split(key, 4)
  u = jax.random.normal(ku, (batch_size, rank, _LOWRANK_FACTORS))
  v = jax.random.normal(kv, (batch_size, rank, _LOWRANK_FACTORS))
  r = 0.1 * jax.random.normal(kn, (batch_size, rank, rank)) + u @ jnp.swapaxes(v, 1, 2) / (5.0 if ood else 20.0)
  mask = jax.random.bernoulli(km, 0.5, r.shape).astype(jnp.float32)
  return (r * mask).reshape(batch_size, -1), r.reshape(batch_size, -1)


def lowrank_sample_numpy(rng, n: int, ood: bool = False, rank: int = 20):
  u = rng.standard_normal((n, rank, _LOWRANK_FACTORS))
  v = rng.standard_normal((n, rank, _LOWRANK_FACTORS))
  r = 0.1 * rng.standard_normal((n, rank, rank)) + u @ np.swapaxes(v, 1, 2) / (5.0 if ood else 20.0)
  mask = rng.uniform(size=r.shape) < 0.5
  return (r * mask).reshape(n, -1), r.reshape(n, -1)


def lowrank_residual(inputs, x):
  """||(X - R) on the observed entries||_F per sample: the part of the answer the input
  checks (an entry is observed where the input is non-zero). A partial oracle: it cannot
  see the unobserved half, so the CD filter drops only negatives that fit the observations."""
  observed = (inputs != 0).astype(x.dtype)
  return jnp.sqrt(jnp.sum(jnp.square((x - inputs) * observed), axis=-1))


TASK_NAMES = ("inverse", "addition", "lowrank")


def get_task(name: str, rank: int = 20) -> Task:
  """The task ``name`` at matrix size ``rank`` x ``rank``."""
  dim = rank * rank
  bind = lambda f: (lambda key_or_rng, n, ood=False: f(key_or_rng, n, ood, rank))  # noqa: E731
  if name == "inverse":
    return Task(name, dim, dim, bind(inverse_sample), bind(inverse_sample_numpy), inverse_residual,
                inverse_exact)
  if name == "addition":
    return Task(name, 2 * dim, dim, bind(addition_sample), bind(addition_sample_numpy),
                addition_residual, addition_exact)
  if name == "lowrank":
    return Task(name, dim, dim, bind(lowrank_sample), bind(lowrank_sample_numpy),
                lowrank_residual)
  raise ValueError(f"task must be one of {TASK_NAMES}, got {name!r}")


def eval_set(task: Task, n: int, seed: int, ood: bool):
  """A fixed evaluation set (float32 numpy arrays), independent of the training seed.

  Seeds follow the PyTorch reference: in-distribution uses ``seed``, harder
  ``seed + 1``.
  """
  rng = np.random.RandomState(seed + int(ood))
  inputs, targets = task.sample_numpy(rng, n, ood)
  return inputs.astype(np.float32), targets.astype(np.float32)
