"""The descent's instruments and the landscape measures (ired_cd.landscape, its tool)."""

import dataclasses
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ired_cd import evaluation, landscape, solve, strategies, tasks
from ired_cd import sampler as sampler_lib
from tests import _tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 6  # problems


@dataclasses.dataclass(frozen=True)
class _Shape:
  hidden: int = 1
  out_dim: int = _tiny.DIM
  last_layer: str = "plain"


@dataclasses.dataclass(frozen=True)
class QuadraticEnergy:
  """E(y) = curvature_t / 2 ||y - sqrt(abar_t) c||^2 with model.EnergyFunction's interface.

  c = A^{-1} (``centre=None``) or a constant; curvature 1, or 1 / sqrt(1 - abar_t)
  (``fixed_point``): the score then has the slope that makes x0_hat = c whatever y is.
  """

  fixed_point: bool = False
  centre: float = None
  module: _Shape = _Shape()
  calls_per_params: int = 1

  def sharing(self, calls):
    return self

  def condition(self, params, inp, t):
    del params
    schedule = _tiny.schedule()
    if self.centre is None:
      c = tasks.spd_inverse(inp.reshape(-1, _tiny.RANK, _tiny.RANK)).reshape(inp.shape)
    else:
      c = jnp.full(inp.shape, self.centre, jnp.float32)
    curvature = (1.0 / schedule.sqrt_one_minus_alphas_cumprod[t] if self.fixed_point
                 else jnp.ones(t.shape))
    return schedule.sqrt_alphas_cumprod[t][:, None] * c, curvature[:, None]

  def energy_given(self, params, cond, y, gram=False):
    centre, curvature = cond
    return 0.5 * curvature * jnp.sum(jnp.square(y - centre), axis=-1, keepdims=True)

  def __call__(self, params, inp, y, t):
    return self.energy_given(params, self.condition(params, inp, t), y)


TASK = tasks.get_task("inverse", _tiny.RANK)


def probe(energy_fn, inner_steps=2):
  return landscape.Probe(energy_fn, _tiny.schedule(), _tiny.DIM, TASK.residual,
                         strategies.LossSettings.from_config(_tiny.tiny_config("cd_full", mining_opt_steps=3)),
                         inner_steps)


def problems(n=N, ood=False):
  inputs, targets = tasks.eval_set(TASK, n, 5, ood)
  return inputs, targets, np.arange(n, dtype=np.int32)


def test_repair_reaches_the_minimum_of_a_quadratic_energy():
  inputs, targets, indices = problems()
  mean = np.broadcast_to(targets.mean(0), targets.shape)
  result = jax.jit(lambda *a: landscape.repair_chunk(
      probe(QuadraticEnergy()), {}, *a, jax.random.PRNGKey(0), timesteps=(0, 2)))(
          inputs, targets, indices, mean)
  assert set(result) == {"t0", "t2"}
  assert set(result["t0"]) == {"r0.05", "r0.1", "r0.25", "r0.5", "mean"}
  steps = landscape.REPAIR_STEPS[-1]
  for per_start in result.values():
    for name, curves in per_start.items():
      chex.assert_shape([curves["mse"], curves["residual"]], (N, steps + 1))
      mse = np.asarray(curves["mse"])
      assert np.all(mse[:, 0] > 1e-6), name  # starts away from the truth
      assert np.all(np.diff(mse, axis=1) <= 1e-9), name  # descent never moves away
      assert np.all(mse[:, -1] < 1e-10) and np.all(curves["residual"][:, -1] < 1e-3), name
  radius = 0.25 * np.sqrt(np.mean(targets ** 2, axis=1))  # the starts' distances
  np.testing.assert_allclose(np.sqrt(result["t0"]["r0.25"]["mse"][:, 0]), radius, rtol=0.5)


def test_fixed_point_model_moves_nothing_after_the_first_step():
  """x0_hat = c whatever y. With c outside the clip box the denoise step lands exactly on
  the box's corner, where dE/dy points outwards: every proposal is clipped back onto y.
  (With c inside the box it lands within float rounding of the minimum, and rounding-sized
  moves are accepted at random: not a clean test.)"""
  inputs, targets, indices = problems()
  p = probe(QuadraticEnergy(fixed_point=True, centre=3.0), inner_steps=4)
  values = jax.jit(lambda *a: landscape.acceptance_chunk(
      p, {}, *a, jax.random.PRNGKey(0), inner_steps=4))(inputs, targets, indices)
  moved = np.asarray(values["stats"].moved)
  chex.assert_shape(moved, (N, _tiny.T, 4))
  assert not moved[..., 1:].any()
  summary = landscape.summarize_acceptance(jax.device_get(values))
  np.testing.assert_array_equal(np.asarray(summary["frozen"])[:, 1:], 1.0)
  np.testing.assert_array_equal(summary["thawed"], 0.0)
  # Every answer is the corner: sqrt(abar_0) * 2 in the evaluator's convention.
  np.testing.assert_allclose(values["answer"], 2.0, rtol=1e-6)


def test_instruments_do_not_change_the_sampler():
  """make_sampler(with_stats=True) runs the plain sampler's steps: the same outputs up to
  float rounding (the scan compiles to other fusions than the plain fori_loop)."""
  energy_fn, params = _tiny.small_energy()
  inputs, _, _ = problems(8)
  plain = sampler_lib.make_sampler(energy_fn, _tiny.schedule(), _tiny.DIM)
  instrumented = sampler_lib.make_sampler(energy_fn, _tiny.schedule(), _tiny.DIM,
                                          with_stats=True)
  keys = jax.random.split(jax.random.PRNGKey(3), 8)
  for k in (0, 1, 3):
    output, stats = instrumented(params, inputs, keys, k)
    np.testing.assert_allclose(output, plain(params, inputs, keys, jnp.int32(k)), atol=1e-5)
    chex.assert_shape([stats.moved, stats.rejected], (8, _tiny.T, k))
    chex.assert_shape([stats.score_norm_start, stats.score_norm_end, stats.energy_end],
                      (8, _tiny.T))
    assert not np.any(np.asarray(stats.moved) & np.asarray(stats.rejected))


def test_renoise_draws_fresh_noise_per_row_and_zero_is_the_original_sampler():
  energy_fn, params = _tiny.small_energy()
  inputs, _, _ = problems(8)
  y_init = sampler_lib.start_noise(jax.random.split(jax.random.PRNGKey(3), 8), _tiny.DIM)
  keys = jax.random.split(jax.random.PRNGKey(4), 8)
  run = jax.jit(lambda inp, y, keys, r: sampler_lib.ired_sample(
      energy_fn, params, inp, y, _tiny.schedule(), 2, renoise_keys=keys, renoise=r))
  plain = jax.jit(lambda inp, y: sampler_lib.ired_sample(
      energy_fn, params, inp, y, _tiny.schedule(), 2))(inputs, y_init)
  np.testing.assert_allclose(run(inputs, y_init, keys, 0.0), plain, atol=1e-6)
  noisy = run(inputs, y_init, keys, 1.0)
  assert np.all(np.max(np.abs(noisy - plain), axis=1) > 1e-3)  # every row re-noised
  np.testing.assert_array_equal(noisy, run(inputs, y_init, keys, 1.0))
  np.testing.assert_allclose(run(inputs[:3], y_init[:3], keys[:3], 1.0), noisy[:3], atol=1e-6)
  other = run(inputs, y_init, jnp.roll(keys, 1, axis=0), 1.0)
  assert np.all(np.max(np.abs(other - noisy), axis=1) > 1e-3)


def test_renoise_leaves_a_fixed_point_model_at_its_answer():
  """x0_hat = A^-1 whatever y: re-noised trajectories all end where the plain one does."""
  inputs, targets, indices = problems()
  p = probe(QuadraticEnergy(fixed_point=True), inner_steps=0)
  noisy, plain = (jax.jit(lambda *a: landscape.breadth_chunk(  # noqa: B023
      p, {}, *a, jax.random.PRNGKey(0), trajectories=3, renoise=r))(inputs, targets, indices)
                  for r in (1.0, 0.0))
  chex.assert_shape(list(noisy.values()), (N, 3))
  np.testing.assert_allclose(noisy["mse"], plain["mse"][:, :1] + 0 * noisy["mse"], atol=1e-7)
  np.testing.assert_allclose(noisy["energy"], plain["energy"], atol=1e-5)


def test_breadth_summary_picks_by_energy_and_by_residual():
  values = dict(mse=np.array([[1.0, 2.0, 3.0], [4.0, 2.0, 6.0]]),
                energy=np.array([[0.0, -1.0, 5.0], [1.0, 0.0, 2.0]]),
                residual=np.array([[0.1, 0.2, 0.3], [0.5, 0.1, 0.4]]))
  summary = landscape.summarize_breadth([values, values], np.array([2.5, 5.0]))
  assert summary["mse_energy_chosen"] == [2.0, 2.0]  # (2 + 2) / 2
  assert summary["mse_residual_chosen"] == [1.5, 1.5]  # (1 + 2) / 2
  assert summary["mse_mean_trajectory"] == [3.0, 3.0]
  assert summary["mse_oracle"] == [1.5, 1.5]
  assert summary["energy_beats_mean"] == [0.5, 0.5]  # 2 < 2 is not, 2 < 4 is
  assert summary["lost"] == [2 / 6, 2 / 6]  # 3 > 2.5 and 6 > 5
  assert summary["energy_chose_lost"] == [0.0, 0.0]  # the picks, 2 and 2, are not lost
  picks_lost = landscape.summarize_breadth([values], np.array([2.5, 1.5]))
  assert picks_lost["lost"] == [4 / 6] and picks_lost["energy_chose_lost"] == [0.5]


def test_chunk_measures_have_their_shapes_and_are_deterministic():
  energy_fn, params = _tiny.small_energy()
  p = probe(energy_fn)
  inputs, targets, indices = problems()
  key = jax.random.PRNGKey(1)
  answers = jax.jit(lambda *a: landscape.acceptance_chunk(p, params, *a, key, inner_steps=2))(
      inputs, targets, indices)["answer"]
  ranking = jax.jit(lambda *a: landscape.ranking_chunk(p, params, *a, key))
  first = ranking(inputs, targets, indices, answers)
  chex.assert_shape([first["spearman_residual"], first["spearman_error"]], (N,))
  chex.assert_shape(first["truth_below_answer"], (N, _tiny.T))
  assert np.all(np.abs(first["spearman_residual"]) <= 1.0)
  chex.assert_trees_all_equal(first, ranking(inputs, targets, indices, answers))
  points, names = landscape.candidates(p, params, inputs, targets, indices, answers, key)
  chex.assert_shape(points, (len(names), N, _tiny.DIM))
  assert names[:2] == ["truth", "answer"] and "chain1" in names
  breadth = jax.jit(lambda *a: landscape.breadth_chunk(p, params, *a, key, trajectories=3))
  chex.assert_shape(list(breadth(inputs, targets, indices).values()), (N, 3))
  assert set(breadth(inputs, targets, indices)) == {"mse", "energy", "residual"}
  scaling = landscape.scaling_chunk(p, params, inputs, targets, indices, answers, key, 4)
  chex.assert_shape(scaling["mse"], (N, 5))


def test_problem_randomness_does_not_depend_on_the_chunk():
  energy_fn, params = _tiny.small_energy()
  p = probe(energy_fn)
  inputs, targets, indices = problems()
  run = lambda chunk: landscape.map_chunks(  # noqa: E731
      jax.jit(lambda *a: landscape.breadth_chunk(p, params, *a, jax.random.PRNGKey(2), 2)),
      (inputs, targets, indices), chunk)
  np.testing.assert_allclose(run(4)["mse"], run(6)["mse"], rtol=1e-5)


def test_frozen_fraction_counts_steps_after_the_first():
  moved = np.array([[[True, False, False]], [[False, True, True]], [[True, False, True]]])
  frozen, thawed = landscape.frozen_fraction(moved)
  np.testing.assert_allclose(frozen, [[0.0, 2 / 3, 2 / 3]])
  np.testing.assert_allclose(thawed, [1 / 3])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny trained `none` run (20 steps)."""
  return _tiny.trained_none_run(str(tmp_path_factory.mktemp("run")))


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.landscape", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def test_cli_writes_landscape_json_and_figure(workdir, monkeypatch):
  monkeypatch.setattr(landscape, "ACCEPTANCE_INNER_STEPS", (1,))
  monkeypatch.setattr(landscape, "TRAJECTORIES", 2)
  result = landscape.evaluate_run(workdir, eval_size=5, matmul_dtype="bfloat16")
  json_path, png_path = landscape.write(workdir, result)
  with open(json_path) as f:
    saved = json.load(f)
  keys = ["acceptance", "repair", "energy_residual_spearman", "energy_error_spearman",
          "truth_below_answer", "scaling", "breadth"]
  assert set(saved) == {"run"} | {k + s for k in keys for s in evaluation.SPLITS}
  assert saved["run"]["strategy"] == "none" and saved["run"]["matmul_dtype"] == "bfloat16"
  assert saved["run"]["step"] == 20 and saved["run"]["eval_size"] == 5
  k = saved["run"]["inner_steps"]
  assert set(saved["acceptance"]) == {"k1", f"k{k}"}
  assert np.asarray(saved["acceptance_ood"][f"k{k}"]["moved"]).shape == (_tiny.T, k)
  assert len(saved["truth_below_answer"]) == _tiny.T
  assert len(saved["scaling"]["mse"]) == len(landscape.SCALING_EXTRA_STEPS)
  assert len(saved["repair_ood"]["t0"]["mean"]["residual"]) == len(landscape.REPAIR_STEPS)
  assert saved["breadth"]["renoise"] == list(landscape.BREADTH_RENOISE)
  assert all(len(v) == len(landscape.BREADTH_RENOISE) for k, v in saved["breadth_ood"].items()
             if k.startswith("mse") or k == "energy_beats_mean")
  assert saved["run"]["version"] == landscape.VERSION
  columns = landscape.summary(saved)
  assert all(np.isfinite(v) for v in columns.values()) and "breadth_gain_ood" in columns
  assert os.path.getsize(png_path) > 0


def test_cli_bad_flags_are_one_line_and_write_nothing(workdir, tmp_path):
  before = sorted(os.listdir(workdir))
  for args, field in [([f"--workdir={tmp_path}"], "workdir"),
                      ([f"--workdir={workdir}", "--eval_size=0"], "eval_size"),
                      ([f"--workdir={workdir}", "--matmul_dtype=float16"], "matmul_dtype"),
                      ([f"--workdir={workdir}", "--checkpoint_step=7"], "checkpoint_step")]:
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"error: --{field}: ") and len(
        result.stderr.strip().splitlines()) == 1, result.stderr
  assert sorted(os.listdir(workdir)) == before


def test_describe_descent_prints_one_line_per_timestep(workdir):
  """experiments.solve --descent_stats: the instruments of the run's own sampler."""
  model = solve.load(workdir)
  inputs, _, _ = problems(5)
  lines = landscape.describe_descent(model, inputs, 2).splitlines()
  assert lines[0].startswith("descent at inner_steps=2 (5 problems)")
  assert [line.split(":")[0].strip() for line in lines[1:]] == [
      f"t={t}" for t in reversed(range(_tiny.T))]
