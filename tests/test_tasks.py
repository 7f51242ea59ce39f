"""Task generators, oracle residuals and the fixed evaluation sets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ired_cd import tasks

N = 20  # the guide's rank
B = 64


@pytest.fixture(scope="module", params=[False, True], ids=["same", "harder"])
def inverse_batch(request):
  """(ood, A (B, n, n) float64, X (B, n, n) float64) drawn on device."""
  a, x = tasks.get_task("inverse", N).sample(jax.random.PRNGKey(0), B, request.param)
  assert a.dtype == x.dtype == jnp.float32
  return (request.param, np.asarray(a, np.float64).reshape(B, N, N),
          np.asarray(x, np.float64).reshape(B, N, N))


def test_inverse_a_is_spd(inverse_batch):
  """A is symmetric with every eigenvalue >= c (A - c I = 2 R R^T is PSD)."""
  ood, a, _ = inverse_batch
  np.testing.assert_array_equal(a, np.swapaxes(a, 1, 2))
  c = 0.1 if ood else 0.5
  eig = np.linalg.eigvalsh(a)
  assert np.all(eig > 0)
  assert eig.min() >= c - 1e-4
  assert np.linalg.eigvalsh(a - c * np.eye(N)).min() >= -1e-4


def test_inverse_target_matches_float64_inverse(inverse_batch):
  """On-device X matches numpy's float64 inverse of the same A to float32 round-off."""
  ood, a, x = inverse_batch
  ref = np.linalg.inv(a)
  rel = np.linalg.norm(x - ref, axis=(1, 2)) / np.linalg.norm(ref, axis=(1, 2))
  assert rel.max() < (5e-5 if ood else 1e-5), rel.max()
  np.testing.assert_allclose(x, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_inverse_ood_changes_c_only():
  """Same key: A_harder - A_same = (0.1 - 0.5) I, so only c changes; harder is worse conditioned."""
  task = tasks.get_task("inverse", N)
  key = jax.random.PRNGKey(3)
  a_same = np.asarray(task.sample(key, B, False)[0], np.float64).reshape(B, N, N)
  a_hard = np.asarray(task.sample(key, B, True)[0], np.float64).reshape(B, N, N)
  np.testing.assert_allclose(a_hard - a_same, np.broadcast_to(-0.4 * np.eye(N), a_same.shape),
                             atol=1e-5)
  min_same = np.linalg.eigvalsh(a_same).min(axis=1)
  min_hard = np.linalg.eigvalsh(a_hard).min(axis=1)
  np.testing.assert_allclose(min_same - min_hard, 0.4, atol=1e-4)
  assert np.median(np.linalg.cond(a_hard)) > 2 * np.median(np.linalg.cond(a_same))


def test_inverse_residual_values():
  """||A X - I||_F: ~0 at the true inverse, sqrt(n) at zeros and at 2 A^{-1}."""
  task = tasks.get_task("inverse", N)
  a, x = task.sample(jax.random.PRNGKey(1), B)
  res_true = np.asarray(task.residual(a, x))
  assert res_true.shape == (B,)
  assert res_true.max() < 1e-3
  np.testing.assert_allclose(task.residual(a, jnp.zeros_like(x)), np.sqrt(N), rtol=1e-6)
  np.testing.assert_allclose(task.residual(a, 2.0 * x), np.sqrt(N), rtol=1e-3)
  assert task.residual is tasks.inverse_residual


def test_addition_residual_and_scales():
  """Target is A1 + A2 (residual ~0); residual of target + d is ||d||; ood widens the range."""
  task = tasks.get_task("addition", N)
  inp, x = task.sample(jax.random.PRNGKey(2), B)
  np.testing.assert_allclose(x, inp[:, :N * N] + inp[:, N * N:], atol=1e-6)
  np.testing.assert_allclose(task.residual(inp, x), 0.0, atol=1e-5)
  d = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  np.testing.assert_allclose(task.residual(inp, x + d), jnp.linalg.norm(d, axis=-1), rtol=1e-4)
  assert float(jnp.max(jnp.abs(inp))) <= 1.0
  inp_ood, _ = task.sample(jax.random.PRNGKey(2), B, True)
  assert 1.0 < float(jnp.max(jnp.abs(inp_ood))) <= 2.5


def test_lowrank_masks_half_and_its_residual_checks_the_observed_entries():
  """Matrix completion: the input is the target with about half the entries zeroed; the
  residual is the error on the observed entries only (0 for any fill of the others)."""
  task = tasks.get_task("lowrank", N)
  inp, x = jax.jit(task.sample, static_argnums=1)(jax.random.PRNGKey(4), B)
  inp, x = np.asarray(inp), np.asarray(x)
  observed = inp != 0
  np.testing.assert_array_equal(inp[observed], x[observed])
  assert 0.45 < observed.mean() < 0.55
  other_fill = np.where(observed, x, 7.0)
  np.testing.assert_allclose(task.residual(inp, other_fill), 0.0, atol=1e-6)
  shifted = x + observed * 0.5  # every observed entry off by 0.5
  np.testing.assert_allclose(task.residual(inp, shifted), 0.5 * np.sqrt(observed.sum(1)),
                             rtol=1e-5)


def _reference_inverse_f64(rng, n, ood, rank=N):
  """The reference's numpy generation: A = R R^T + (R R^T)^T + c I, X = inv(A)."""
  r = rng.uniform(-1.0, 1.0, size=(n, rank, rank))
  s = np.einsum("bij,bkj->bik", r, r)
  a = s + np.transpose(s, (0, 2, 1)) + (0.1 if ood else 0.5) * np.eye(rank)
  return a.reshape(n, -1), np.linalg.inv(a).reshape(n, -1)


@pytest.mark.parametrize("ood", [False, True])
def test_inverse_eval_set_is_the_references(ood):
  """eval_set = RandomState(seed + ood) float64 generation, cast to float32; deterministic."""
  task = tasks.get_task("inverse", N)
  inp, x = tasks.eval_set(task, 16, 1234, ood)
  assert inp.dtype == x.dtype == np.float32
  inp2, x2 = tasks.eval_set(task, 16, 1234, ood)
  np.testing.assert_array_equal(inp, inp2)
  np.testing.assert_array_equal(x, x2)
  seed = 1234 + int(ood)
  a_lib, x_lib = tasks.inverse_sample_numpy(np.random.RandomState(seed), 16, ood)
  np.testing.assert_array_equal(inp, a_lib.astype(np.float32))
  np.testing.assert_array_equal(x, x_lib.astype(np.float32))
  a_ref, x_ref = _reference_inverse_f64(np.random.RandomState(seed), 16, ood)
  np.testing.assert_allclose(inp, a_ref, rtol=1e-6)
  np.testing.assert_allclose(x, x_ref, rtol=1e-5, atol=1e-6 * np.abs(x_ref).max())
  other, _ = tasks.eval_set(task, 16, 4321, ood)
  assert not np.allclose(inp, other)


@pytest.mark.parametrize("name", ["addition", "lowrank"])
def test_other_eval_sets_follow_random_state(name):
  """Addition and lowrank eval sets are their numpy generators under RandomState(seed + ood)."""
  task = tasks.get_task(name, 4)
  for ood in (False, True):
    inp, x = tasks.eval_set(task, 8, 7, ood)
    want_inp, want_x = task.sample_numpy(np.random.RandomState(7 + int(ood)), 8, ood)
    np.testing.assert_array_equal(inp, want_inp.astype(np.float32))
    np.testing.assert_array_equal(x, want_x.astype(np.float32))
    assert inp.shape == (8, task.inp_dim) and x.shape == (8, task.out_dim)


def test_get_task_unknown_name():
  """An unknown task raises ValueError naming the allowed tasks."""
  with pytest.raises(ValueError, match="inverse.*addition.*lowrank.*'sudoku'"):
    tasks.get_task("sudoku")


@pytest.mark.parametrize("name", tasks.TASK_NAMES)
def test_get_task_dims_follow_rank(name):
  """inp_dim / out_dim follow the rank (addition takes two matrices)."""
  task = tasks.get_task(name, 3)
  assert task.out_dim == 9
  assert task.inp_dim == (18 if name == "addition" else 9)
  inp, x = task.sample_numpy(np.random.RandomState(0), 2)
  assert inp.shape == (2, task.inp_dim) and x.shape == (2, 9)


def test_spd_inverse_matches_numpy():
  """Gauss-Jordan without pivoting inverts SPD matrices (before the Newton refinement)."""
  rng = np.random.RandomState(3)
  r = rng.uniform(-1.0, 1.0, size=(64, 12, 12))
  a = r @ np.swapaxes(r, 1, 2) + 0.3 * np.eye(12)
  x = np.asarray(tasks.spd_inverse(jnp.asarray(a, jnp.float32)), np.float64)
  want = np.linalg.inv(a)
  rel = np.linalg.norm(x - want, axis=(1, 2)) / np.linalg.norm(want, axis=(1, 2))
  assert rel.max() < 1e-3, rel.max()


@pytest.mark.parametrize("name", tasks.TASK_NAMES)
def test_exact_answers_are_the_targets(name):
  """``exact`` recomputes the float64 host targets from the inputs (lowrank has none)."""
  task = tasks.get_task(name, 5)
  inputs, targets = task.sample_numpy(np.random.RandomState(2), 6, True)
  if name == "lowrank":
    assert task.exact is None
  else:
    np.testing.assert_allclose(task.exact(inputs), targets, rtol=1e-9, atol=1e-12)
