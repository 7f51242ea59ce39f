"""The landscape of a task with many right answers (ired_cd.answer_landscape): the tasks'
neighbours, changes and enumerated right answers against brute force, and the measures on
hand-made energies whose ordering of answers is known."""

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import sat as sat_config
from ired_cd import answer_landscape, evaluation, landscape, loop, strategies, tasks

import _tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 8  # problems


def _sat():
  return tasks.get_task("sat", variables=6, clauses=(10, 14), clauses_ood=18,
                        train_instances=24, solutions=8)


def _brute_sat(task, row):
  """Every satisfying assignment (+-1 tuples) of one encoded formula."""
  matrix = np.asarray(row).reshape(task.max_clauses, task.variables)
  return {bits for bits in itertools.product((-1, 1), repeat=task.variables)
          if task.verify(row[None], np.asarray([bits]))[0] == 0} if matrix.any() else None


@pytest.mark.parametrize("name", ["sat", "colouring"])
def test_neighbours_change_one_position_and_changes_change_j(name):
  """neighbours: P (V - 1) distinct assignments, each one position away; changed(j): exactly j
  positions differ, every value allowed."""
  task = _sat() if name == "sat" else tasks.get_task("colouring", nodes=5, colours=3)
  rng = np.random.default_rng(0)
  size = task.variables if name == "sat" else task.nodes
  assignment = np.asarray(task.values)[rng.integers(0, len(task.values), (4, size))]
  neighbours = task.neighbours(assignment)
  chex.assert_shape(neighbours, (4, size * (len(task.values) - 1), size))
  np.testing.assert_array_equal(np.sum(neighbours != assignment[:, None], axis=2), 1)
  for row in neighbours:
    assert len({tuple(a) for a in row}) == len(row)
  for j in (1, 2, 4):
    changed = task.changed(assignment, j, rng)
    np.testing.assert_array_equal(np.sum(changed != assignment, axis=1), j)
    assert set(np.unique(changed)) <= set(task.values)


def test_valid_answers_are_every_right_answer_once():
  """SAT: the enumerated answers of small formulas are exactly brute force's satisfying
  assignments (keep above their number). Colouring: one answer per colouring up to its colours'
  names, as brute force finds them: two triangles at a node have 2, a path of 3 nodes beside 2
  free ones 18 (108 / 3!), a 5-cycle 5 (30 / 3!)."""
  task = _sat()
  inputs, _ = task.eval_set(6, 0, False)
  answers, counts, totals = task.valid_answers(inputs, 64, np.random.default_rng(0), cap=4096)
  for row, kept, count, total in zip(inputs, answers, counts, totals):
    truth = _brute_sat(task, row)
    assert count == total == len(truth)
    assert {tuple(a) for a in kept[:count]} == truth
  colouring = tasks.get_task("colouring", nodes=5, colours=3)

  def graph(edges):
    adjacency = np.zeros((5, 5), np.float32)
    for u, v in edges:
      adjacency[u, v] = adjacency[v, u] = 1
    return adjacency.reshape(-1)

  triangle = graph([(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (2, 4)])
  path = graph([(0, 1), (1, 2)])
  cycle = graph([(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)])
  graphs = np.stack([triangle, path, cycle])
  answers, counts, _ = colouring.valid_answers(graphs, 64, np.random.default_rng(0), cap=4096)
  for adjacency, kept, count in zip(graphs, answers, counts):
    brute = {tuple(colouring.canonical(np.asarray([c]))[0])
             for c in itertools.product(range(3), repeat=5)
             if colouring.verify(adjacency[None], np.asarray([c]))[0] == 0}
    assert count == len(brute) and {tuple(a) for a in kept[:count]} == brute
  assert list(counts) == [2, 18, 5]


@dataclasses.dataclass(frozen=True)
class ViolationEnergy:
  """E = sign * sum over clauses of prod over its literals of (1 - s x) / 2, with x = y /
  sqrt(abar_t) the answer: at an assignment's corner, its number of violated clauses (sign 1:
  right answers are the minima; -1: the maxima). model.EnergyFunction's interface."""

  module: _tiny.Shape
  task: object
  sign: float = 1.0
  calls_per_params: int = 1

  def sharing(self, calls):
    return self

  def condition(self, params, inp, t):
    clauses = inp.reshape(inp.shape[0], self.task.max_clauses, self.task.variables)
    return clauses, _tiny.schedule().sqrt_alphas_cumprod[t][:, None]

  def energy_given(self, params, cond, y, gram=False):
    clauses, scale = cond
    x = y / scale
    false = jnp.where(clauses != 0, (1 - clauses * x[:, None, :]) / 2, 1.0)  # (B, m, n)
    present = jnp.any(clauses != 0, axis=-1)
    return self.sign * jnp.sum(jnp.where(present, jnp.prod(false, axis=-1), 0), -1)[:, None]

  def __call__(self, params, inp, y, t):
    return self.energy_given(params, self.condition(params, inp, t), y)


def _probe(energy_fn, settings):
  config = _tiny.tiny_config("none")
  return landscape.Probe(energy_fn, _tiny.schedule(), energy_fn.task.residual,
                         strategies.LossSettings.from_config(config), 2, True, settings)


SMALL = answer_landscape.Settings(eval_size=N, solutions=4, enumeration_cap=256,
                                  repair_steps=(0, 1, 20), chunk=64)


def _measure(sign):
  task = _sat()
  inputs, targets = task.eval_set(N, 3, False)
  keys = evaluation.index_keys(jax.random.PRNGKey(3), N)
  probe = _probe(ViolationEnergy(_tiny.Shape(task.variables), task, sign), SMALL)
  return answer_landscape.measure(probe, task, {}, {"": (inputs, targets)}, keys)


def test_an_energy_counting_violated_clauses_ranks_right_answers_first():
  """E = violated clauses (relaxed): every right answer lies below each wrong neighbour at
  every t, all right answers have one energy (spread 0, random assignments' is not), and they
  lie below the random assignments that are wrong."""
  result = _measure(1.0)
  assert result["one_flip"]["below"] == [1.0] * _tiny.T
  assert result["one_flip"]["pairs_per_problem"] > 0
  assert result["spread"]["valid_std"] == 0.0 and result["spread"]["random_std"] > 0.1
  assert 0.8 < result["spread"]["valid_below_random"] <= 1.0
  assert result["answers"]["kept"] == 4  # every formula here has 4 or more solutions
  columns = answer_landscape.summary({**result, **{f"{k}_ood": v for k, v in result.items()}})
  assert columns["one_flip_below"] == columns["one_flip_below_ood"] == 1.0
  assert set(columns) >= {"repair_j1", "repair_j4_start_ood", "valid_below_random"}


def test_an_energy_counting_satisfied_clauses_ranks_them_last_and_its_answers_below():
  """The reverse energy (right answers its maxima): no right answer below a wrong neighbour,
  its sampler's answers are wrong and below every right answer, and its descent from changed
  right answers leaves them (fewer valid after it than before)."""
  result = _measure(-1.0)
  assert result["one_flip"]["below"] == [0.0] * _tiny.T
  assert result["answer"]["wrong"] == 1.0
  for key in ("some_valid_below_raw", "some_valid_below_decoded"):
    assert result["answer"][key] == 0.0
  for j in (1, 2, 4):
    curve = result["repair"][f"j{j}"]["valid"]
    assert len(curve) == 3 and curve[-1] <= curve[0]
  assert result["repair"]["j1"]["valid"][-1] == 0.0 and result["repair"]["j1"]["back"] == 0.0


def test_the_tool_measures_a_trained_sat_run(tmp_path):
  """experiments.landscape on a tiny trained SAT run: the discrete measures for both sets in
  landscape.json (settings and run identity with them) and the figure; a rerun of the same
  settings and checkpoint holds (landscape.holds); a continuous task's measures are refused."""
  config = sat_config.get_config("tiny")
  config.train_steps = 10
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir, progress=False)
  out = subprocess.run([sys.executable, "-m", "experiments.landscape", f"--workdir={workdir}",
                        "--eval_size=6"], cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "one_flip_below=" in out.stdout and "landscape.png" in out.stdout
  with open(os.path.join(workdir, "landscape.json")) as f:
    saved = json.load(f)
  for suffix in ("", "_ood"):
    assert len(saved[f"one_flip{suffix}"]["below"]) == config.diffusion_steps
    assert set(saved[f"repair{suffix}"]) >= {"j1", "j2", "j4", "steps"}
    assert 0.0 <= saved[f"answer{suffix}"]["wrong"] <= 1.0
  assert saved["settings"]["kind"] == answer_landscape.KIND and saved["run"]["step"] == 10
  assert landscape.holds(saved, answer_landscape.Settings(eval_size=6), 10, config.eval_seed)
  assert os.path.getsize(os.path.join(workdir, "landscape.png")) > 10_000
  with pytest.raises(landscape.NotMeasurable, match="many"):  # a continuous task's measures
    landscape.evaluate_run(workdir, landscape.Settings(eval_size=6))
