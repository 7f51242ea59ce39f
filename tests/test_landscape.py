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

from ired_cd import evaluation, instruments, landscape, loop, solve, strategies, workdir_lock
from ired_cd import sampler as sampler_lib
from ired_cd.tasks import inverse
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
      c = inverse.spd_inverse(inp.reshape(-1, _tiny.RANK, _tiny.RANK)).reshape(inp.shape)
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


TASK = _tiny.tiny_task("inverse")
# Small settings: every measure runs, on few problems, radii, steps and trajectories.
SMALL = landscape.Settings(eval_size=N, radii=(0.05, 0.25), repair_timesteps=(0, 2),
                           repair_steps=(0, 1, 5, 20), acceptance_inner_steps=(1,),
                           chain_negatives=1, scaling_extra_steps=(0, 2, 8), trajectories=3,
                           breadth_renoise=(0.0, 1.0), chunk=N)


def probe(energy_fn, inner_steps=2, return_x0=False, settings=SMALL):
  config = _tiny.tiny_config("cd_full", mining_opt_steps=3)
  return landscape.Probe(energy_fn, _tiny.schedule(), TASK.residual,
                         strategies.LossSettings.from_config(config), inner_steps, return_x0,
                         settings)


def problems(n=N, ood=False):
  """(inputs, targets, the evaluator's keys) of n problems."""
  inputs, targets = TASK.eval_set(n, 5, ood)
  return inputs, targets, evaluation.index_keys(jax.random.PRNGKey(5), n)


def test_repair_reaches_the_minimum_of_a_quadratic_energy():
  """From every wrong start, the sampler's descent on E = 1/2 ||y - sqrt(abar_t) A^-1||^2
  walks to the truth: the MSE never rises and ends at 0 at each repair timestep."""
  inputs, targets, keys = problems()
  mean = np.broadcast_to(TASK.mean_target(0), targets.shape)
  settings = dataclasses.replace(SMALL, repair_steps=(0, 1, 5, 100))
  result = jax.jit(lambda *a: landscape.repair_chunk(
      probe(QuadraticEnergy(), return_x0=True, settings=settings), {}, *a))(
          inputs, targets, keys, mean)
  assert set(result) == {"t0", "t2"}
  assert set(result["t0"]) == {"r0.05", "r0.25", "mean"}
  steps = settings.repair_steps[-1]
  for per_start in result.values():
    for name, curves in per_start.items():
      chex.assert_shape([curves["mse"], curves["residual"]], (N, steps + 1))
      mse = np.asarray(curves["mse"])
      assert np.all(mse[:, 0] > 1e-6), name  # starts away from the truth
      assert np.all(np.diff(mse, axis=1) <= 1e-9), name  # descent never moves away
      assert np.all(mse[:, -1] < 1e-10) and np.all(curves["residual"][:, -1] < 1e-3), name
  radius = 0.25 * np.sqrt(np.mean(targets ** 2, axis=1))  # the starts' distances
  np.testing.assert_allclose(np.sqrt(result["t0"]["r0.25"]["mse"][:, 0]), radius, rtol=0.5)


def test_a_quadratic_energy_ranks_answers_by_their_error_and_the_truth_lowest():
  """E = 1/2 ||y - sqrt(abar_t) A^-1||^2 orders the candidates exactly as their distance to
  the truth (Spearman(E, error) = 1, with the sampler's output the answer x0 itself), puts
  the truth below any other answer at every t, and descent past the schedule never raises
  the MSE."""
  inputs, targets, keys = problems()
  p = probe(QuadraticEnergy(), return_x0=True)
  answers = targets + 0.3  # a wrong answer per problem
  ranking = jax.jit(lambda *a: landscape.ranking_chunk(p, {}, *a))(inputs, targets, keys,
                                                                    answers)
  np.testing.assert_allclose(ranking["spearman_error"], 1.0, atol=1e-6)
  assert np.all(ranking["truth_below_answer"])
  scaling = np.asarray(jax.jit(lambda *a: landscape.scaling_chunk(p, {}, *a))(
      inputs, targets, keys, answers)["mse"])
  chex.assert_shape(scaling, (N, SMALL.scaling_extra_steps[-1] + 1))
  assert np.all(np.diff(scaling, axis=1) <= 1e-9) and np.all(scaling[:, -1] < scaling[:, 0])


def test_fixed_point_model_moves_nothing_after_the_first_step():
  """x0_hat = c whatever y. With c outside the clip box the denoise step lands exactly on
  the box's corner, where dE/dy points outwards: every proposal is clipped back onto y.
  (With c inside the box it lands within float rounding of the minimum, and rounding-sized
  moves are accepted at random: not a clean test.)"""
  inputs, targets, keys = problems()
  p = probe(QuadraticEnergy(fixed_point=True, centre=3.0), inner_steps=4)
  values = jax.jit(lambda *a: landscape.acceptance_chunk(p, {}, *a, inner_steps=4))(
      inputs, targets, keys)
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
  inputs, _, keys = problems(8)
  plain = sampler_lib.make_sampler(energy_fn, _tiny.schedule())
  instrumented = sampler_lib.make_sampler(energy_fn, _tiny.schedule(), with_stats=True)
  for k in (0, 1, 3):
    output, stats = instrumented(params, inputs, keys, k)
    np.testing.assert_allclose(output, plain(params, inputs, keys, jnp.int32(k)), atol=1e-5)
    chex.assert_shape([stats.moved, stats.rejected], (8, _tiny.T, k))
    chex.assert_shape([stats.score_norm_start, stats.score_norm_end, stats.energy_end],
                      (8, _tiny.T))
    assert not np.any(np.asarray(stats.moved) & np.asarray(stats.rejected))


def test_trajectory_keys_start_from_the_problem_key_and_differ_after():
  """Trajectory 0 is the evaluator's sampler (the problem's own key); others draw other,
  per-problem starts, the same in any row or chunk."""
  energy_fn, params = _tiny.small_energy()
  inputs, _, keys = problems(8)
  run = jax.jit(lambda inp, k, j: sampler_lib.sample_from_keys(
      energy_fn, params, inp, k, _tiny.schedule(), 2, trajectory=j))
  plain = sampler_lib.make_sampler(energy_fn, _tiny.schedule())(params, inputs, keys, 2)
  np.testing.assert_allclose(run(inputs, keys, 0), plain, atol=1e-5)
  other = run(inputs, keys, 1)
  assert np.all(np.max(np.abs(other - plain), axis=1) > 1e-3)
  np.testing.assert_allclose(run(inputs[2:5], keys[2:5], 1), other[2:5], atol=1e-6)


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
  inputs, targets, keys = problems()
  p = probe(QuadraticEnergy(fixed_point=True), inner_steps=0)
  noisy, plain = (jax.jit(lambda *a: landscape.breadth_chunk(p, {}, *a, renoise=r))(  # noqa
      inputs, targets, keys) for r in (1.0, 0.0))
  chex.assert_shape(list(noisy.values()), (N, SMALL.trajectories))
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
  inputs, targets, keys = problems()
  answers = jax.jit(lambda *a: landscape.acceptance_chunk(p, params, *a, inner_steps=2))(
      inputs, targets, keys)["answer"]
  ranking = jax.jit(lambda *a: landscape.ranking_chunk(p, params, *a))
  first = ranking(inputs, targets, keys, answers)
  chex.assert_shape([first["spearman_residual"], first["spearman_error"]], (N,))
  chex.assert_shape(first["truth_below_answer"], (N, _tiny.T))
  chex.assert_trees_all_equal(first, ranking(inputs, targets, keys, answers))
  points, names = landscape.candidates(p, params, inputs, targets, keys, answers)
  chex.assert_shape(points, (len(names), N, _tiny.DIM))
  assert names[:2] == ["truth", "answer"] and "chain0" in names
  breadth = jax.jit(lambda *a: landscape.breadth_chunk(p, params, *a))(inputs, targets, keys)
  chex.assert_shape(list(breadth.values()), (N, SMALL.trajectories))


def test_problem_randomness_does_not_depend_on_the_chunk():
  energy_fn, params = _tiny.small_energy()
  p = probe(energy_fn)
  inputs, targets, keys = problems()
  run = lambda chunk: instruments.map_chunks(  # noqa: E731
      jax.jit(lambda *a: landscape.breadth_chunk(p, params, *a, renoise=1.0)),
      (inputs, targets, keys), chunk)
  np.testing.assert_allclose(run(4)["mse"], run(6)["mse"], rtol=1e-5)


def test_frozen_fraction_counts_steps_after_the_first():
  moved = np.array([[[True, False, False]], [[False, True, True]], [[True, False, True]]])
  frozen, thawed = instruments.frozen_fraction(moved)
  np.testing.assert_allclose(frozen, [[0.0, 2 / 3, 2 / 3]])
  np.testing.assert_allclose(thawed, [1 / 3])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny trained `none` run (20 steps)."""
  return _tiny.trained_none_run(str(tmp_path_factory.mktemp("run")))


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.landscape", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def test_the_landscapes_plain_sampler_is_the_evaluation(workdir):
  """On the run's own evaluation sets and checkpoint, acceptance's MSE at the run's inner
  steps is the run's eval/mse (one sampler, one key scheme, one meaning of mse), and the
  mean predictor behind ``lost`` is the evaluator's."""
  config = solve.read_config(workdir)
  settings = dataclasses.replace(SMALL, eval_size=config.eval_size,
                                 matmul_dtype=config.matmul_dtype, chunk=config.eval_size)
  measured = landscape.evaluate_run(workdir, settings)
  scored = loop.evaluate_checkpoint(config, workdir)
  k = measured["run"]["inner_steps"]
  np.testing.assert_allclose(measured["acceptance"][f"k{k}"]["mse"], scored["eval/mse"],
                             rtol=1e-5)
  np.testing.assert_allclose(measured["acceptance_ood"][f"k{k}"]["mse"], scored["eval/mse_ood"],
                             rtol=1e-5)
  assert measured["settings"] == settings.as_json()
  assert landscape.holds(measured, settings, 20, config.eval_seed)
  assert not landscape.holds(measured, dataclasses.replace(settings, seed=1), 20,
                             config.eval_seed)
  assert not landscape.holds(measured, settings, 20, config.eval_seed + 1)


def test_cli_writes_landscape_json_and_figure(workdir):
  result = run_cli(f"--workdir={workdir}", "--eval_size=3", "--matmul_dtype=bfloat16")
  assert result.returncode == 0, result.stderr
  with open(os.path.join(workdir, "landscape.json")) as f:
    saved = json.load(f)
  keys = ["acceptance", "repair", "energy_residual_spearman", "energy_error_spearman",
          "truth_below_answer", "scaling", "breadth"]
  assert set(saved) == {"run", "settings"} | {k + s for k in keys for s in ("", "_ood")}
  defaults = landscape.Settings()
  assert saved["settings"] == dataclasses.replace(defaults, eval_size=3,
                                                  matmul_dtype="bfloat16").as_json()
  assert saved["run"]["strategy"] == "none" and saved["run"]["step"] == 20
  k = saved["run"]["inner_steps"]
  assert np.asarray(saved["acceptance_ood"][f"k{k}"]["moved"]).shape == (_tiny.T, k)
  assert len(saved["scaling"]["mse"]) == len(defaults.scaling_extra_steps)
  assert len(saved["repair_ood"]["t0"]["mean"]["residual"]) == len(defaults.repair_steps)
  assert saved["breadth"]["renoise"] == list(defaults.breadth_renoise)
  columns = landscape.summary(saved)
  assert all(np.isfinite(v) for v in columns.values()) and "breadth_gain_ood" in columns
  assert os.path.getsize(os.path.join(workdir, "landscape.png")) > 0
  assert "breadth_gain=" in result.stdout


def test_cli_bad_flags_and_a_busy_workdir_are_one_line(workdir, tmp_path):
  before = {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)}
  for args, field in [([f"--workdir={tmp_path}"], "--workdir"),
                      ([f"--workdir={workdir}", "--eval_size=0"], "--eval_size"),
                      ([f"--workdir={workdir}", "--matmul_dtype=float16"], "--matmul_dtype"),
                      ([f"--workdir={workdir}", "--checkpoint_step=7"], "--checkpoint_step")]:
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and field in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  with workdir_lock.hold(workdir):
    result = run_cli(f"--workdir={workdir}", "--eval_size=2")
  assert result.returncode == 1 and "in use by" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  after = {name: os.path.getmtime(os.path.join(workdir, name)) for name in os.listdir(workdir)}
  assert after == before


def test_describe_descent_prints_one_line_per_timestep(workdir):
  """experiments.solve --descent_stats: the instruments of the run's own sampler."""
  model = solve.load(workdir)
  inputs, _, _ = problems(5)
  lines = instruments.describe_descent(model, inputs, 2).splitlines()
  assert lines[0].startswith("descent at inner_steps=2 (5 problems)")
  assert [line.split(":")[0].strip() for line in lines[1:]] == [
      f"t={t}" for t in reversed(range(_tiny.T))]
