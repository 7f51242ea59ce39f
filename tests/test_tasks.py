"""Task generators, oracle residuals and the fixed evaluation sets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ired_cd import tasks
from ired_cd.tasks import inverse

N = 20  # the guide's rank
B = 64


@pytest.fixture(scope="module", params=[False, True], ids=["same", "harder"])
def inverse_batch(request):
  """(ood, A (B, n, n) float64, X (B, n, n) float64) drawn on device."""
  a, x = tasks.get_task("inverse", rank=N).sample(jax.random.PRNGKey(0), B, request.param)
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
  task = tasks.get_task("inverse", rank=N)
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
  task = tasks.get_task("inverse", rank=N)
  a, x = task.sample(jax.random.PRNGKey(1), B)
  res_true = np.asarray(task.residual(a, x))
  assert res_true.shape == (B,)
  assert res_true.max() < 1e-3
  np.testing.assert_allclose(task.residual(a, jnp.zeros_like(x)), np.sqrt(N), rtol=1e-6)
  np.testing.assert_allclose(task.residual(a, 2.0 * x), np.sqrt(N), rtol=1e-3)


def test_addition_residual_and_scales():
  """Target is A1 + A2 (residual ~0); residual of target + d is ||d||; ood widens the range."""
  task = tasks.get_task("addition", rank=N)
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
  task = tasks.get_task("lowrank", rank=N)
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
  """The inverse evaluation set is the PyTorch reference's: its float64 generation under
  RandomState(seed + ood), cast to float32; deterministic, another seed another set."""
  task = tasks.get_task("inverse", rank=N)
  inp, x = task.eval_set(16, 1234, ood)
  assert inp.dtype == x.dtype == np.float32
  inp2, x2 = task.eval_set(16, 1234, ood)
  np.testing.assert_array_equal(inp, inp2)
  np.testing.assert_array_equal(x, x2)
  a_ref, x_ref = _reference_inverse_f64(np.random.RandomState(1234 + int(ood)), 16, ood)
  np.testing.assert_allclose(inp, a_ref, rtol=1e-6)
  np.testing.assert_allclose(x, x_ref, rtol=1e-5, atol=1e-6 * np.abs(x_ref).max())
  other, _ = task.eval_set(16, 4321, ood)
  assert not np.allclose(inp, other)


@pytest.mark.parametrize("name", ["addition", "lowrank"])
def test_other_eval_sets_are_fixed_and_their_targets_answer_them(name):
  """Addition and lowrank sets: the same for a seed, another for another seed or set, and
  each target is an answer of its input (residual ~0), the harder set on the wider scale."""
  task = tasks.get_task(name, rank=4)
  sets = {ood: task.eval_set(8, 7, ood) for ood in (False, True)}
  for ood, (inp, x) in sets.items():
    np.testing.assert_array_equal(inp, task.eval_set(8, 7, ood)[0])
    assert not np.allclose(inp, task.eval_set(8, 8, ood)[0])
    assert inp.shape == (8, task.inp_dim) and x.shape == (8, task.out_dim)
    np.testing.assert_allclose(task.residual(inp, x), 0.0, atol=1e-5)
  assert np.abs(sets[True][1]).max() > np.abs(sets[False][1]).max()


def test_get_task_unknown_name():
  """An unknown task raises ValueError naming the allowed tasks."""
  with pytest.raises(ValueError, match="inverse.*addition.*lowrank.*sat.*colouring.*'sudoku'"):
    tasks.get_task("sudoku")


@pytest.mark.parametrize("name", ["inverse", "addition", "lowrank"])
def test_matrix_task_dims_follow_rank(name):
  """inp_dim / out_dim follow the rank (addition takes two matrices)."""
  task = tasks.get_task(name, rank=3)
  assert task.out_dim == 9
  assert task.inp_dim == (18 if name == "addition" else 9)
  inp, x = task.eval_set(2, 0, False)
  assert inp.shape == (2, task.inp_dim) and x.shape == (2, 9)


def test_spd_inverse_matches_numpy():
  """Gauss-Jordan without pivoting inverts SPD matrices (before the Newton refinement)."""
  rng = np.random.RandomState(3)
  r = rng.uniform(-1.0, 1.0, size=(64, 12, 12))
  a = r @ np.swapaxes(r, 1, 2) + 0.3 * np.eye(12)
  x = np.asarray(inverse.spd_inverse(jnp.asarray(a, jnp.float32)), np.float64)
  want = np.linalg.inv(a)
  rel = np.linalg.norm(x - want, axis=(1, 2)) / np.linalg.norm(want, axis=(1, 2))
  assert rel.max() < 1e-3, rel.max()


def test_exact_answers_zero_the_residual_on_hand_made_inputs():
  """``exact`` answers hand-made problems: the residual of its answer is 0 (inverse of a
  diagonal and of a rotation-scaled matrix, the sum of two matrices); lowrank has none."""
  inv = tasks.get_task("inverse", rank=2)
  a = np.array([[[2.0, 0.0], [0.0, 4.0]], [[3.0, 1.0], [1.0, 2.0]]]).reshape(2, 4)
  np.testing.assert_allclose(inv.exact(a)[0], [0.5, 0.0, 0.0, 0.25])
  np.testing.assert_allclose(inv.residual(a, inv.exact(a)), 0.0, atol=1e-6)
  add = tasks.get_task("addition", rank=2)
  pair = np.array([[1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0]])
  np.testing.assert_allclose(add.exact(pair), [[11.0, 22.0, 33.0, 44.0]])
  np.testing.assert_allclose(add.residual(pair, add.exact(pair)), 0.0)
  assert tasks.get_task("lowrank", rank=2).exact(a) is None


def test_lowrank_copy_observed_baseline_reaches_ireds_completion_figure():
  """Copying the observed entries (0 elsewhere) scores below the mean predictor on both
  sets: on 20 x 20 matrices 0.0174 in distribution, IRED's own published figure."""
  task = tasks.get_task("lowrank", rank=N)
  sets = {suffix: task.eval_set(2048, 1234, ood) for suffix, ood in tasks.SPLITS.items()}
  scores = task.baseline_scores(sets, 1234)
  assert scores["mse_copy_observed"] < scores["mse_mean_predictor"]
  assert scores["mse_ood_copy_observed"] < scores["mse_ood_mean_predictor"]
  assert abs(scores["mse_copy_observed"] - 0.0174) < 0.0008
