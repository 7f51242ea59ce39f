"""The composed per-clause energy (ired_cd.composed): one set of parameters for every formula
size, a sum over clauses whatever their order and padding, each variable's score averaging its
clauses, and the CD train step with it."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from configs import sat as sat_config
from ired_cd import composed, dimacs, loop, model, schema, train
from ired_cd.tasks import base as base_task
from ired_cd.tasks import sat as sat_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HIDDEN = 32


def _energy(variables, max_clauses):
  module = composed.ClauseEnergy(out_dim=variables, inp_dim=max_clauses * variables,
                                 hidden=HIDDEN, emb_dim=16)
  return model.EnergyFunction(module)


def _formulas(variables, clauses, n, seed=0):
  """n random formulas (literals (n, clauses, 3)) and their clause matrices (n, clauses *
  variables)."""
  rng = np.random.default_rng(seed)
  literals = np.stack([sat_lib.random_formula(rng, variables, clauses) for _ in range(n)])
  return literals, np.asarray(sat_lib.encode(literals, variables))


PARAMS = model.init_params(_energy(8, 20).module, jax.random.PRNGKey(0))


def test_one_set_of_parameters_serves_every_size():
  """Parameters built at 8 variables and 20 clauses give finite (B, 1) energies and (B, n)
  scores of a 50-variable, 218-clause formula (uf50-218's size)."""
  _, inputs = _formulas(50, 218, 3)
  y = jax.random.normal(jax.random.PRNGKey(1), (3, 50))
  t = jnp.array([0, 4, 9])
  fn = _energy(50, 218)
  energy, score = model.energy_and_score(fn, PARAMS, inputs, y, t)
  chex.assert_shape([energy, score], [(3,), (3, 50)])
  chex.assert_tree_all_finite([energy, score])
  assert model.init_params(fn.module, jax.random.PRNGKey(0)).keys() == PARAMS.keys()


def test_the_energy_is_a_sum_over_clauses_whatever_their_order_and_padding():
  """E(formula) = sum of E(each clause alone); shuffling the clauses or adding empty rows
  changes nothing."""
  literals, inputs = _formulas(8, 12, 2)
  y = jax.random.normal(jax.random.PRNGKey(2), (2, 8))
  t = jnp.array([3, 7])
  whole = _energy(8, 12)(PARAMS, inputs, y, t)[:, 0]
  alone = sum(_energy(8, 1)(PARAMS, np.asarray(sat_lib.encode(literals[:, c:c + 1], 8)), y, t)
              for c in range(12))[:, 0]
  np.testing.assert_allclose(whole, alone, rtol=1e-5)
  shuffled = literals[:, np.random.default_rng(0).permutation(12)]
  padded = np.concatenate([shuffled, np.zeros((2, 8, 3), np.int64)], axis=1)
  again = _energy(8, 20)(PARAMS, np.asarray(sat_lib.encode(padded, 8)), y, t)[:, 0]
  np.testing.assert_allclose(whole, again, rtol=1e-5)


def test_each_variables_score_averages_its_clauses():
  """dE/dy_i (the score) is the energy's partial derivative (central differences) divided by
  the number of clauses that hold variable i; a variable in no clause has score 0."""
  literals, inputs = _formulas(8, 10, 1, seed=3)
  literals[0, :, :][np.abs(literals[0]) == 8] = 0  # variable 8 in no clause
  inputs = np.asarray(sat_lib.encode(literals, 8))
  fn = _energy(8, 10)
  y = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (1, 8)), np.float64)
  t = jnp.array([2])
  _, score = model.energy_and_score(fn, PARAMS, inputs, y.astype(np.float32), t)
  counts = np.sum(np.abs(inputs.reshape(10, 8)), axis=0)
  h = 1e-2
  for i in range(8):
    step = np.zeros_like(y)
    step[0, i] = h
    partial = (fn(PARAMS, inputs, (y + step).astype(np.float32), t)
               - fn(PARAMS, inputs, (y - step).astype(np.float32), t))[0, 0] / (2 * h)
    expected = partial / counts[i] if counts[i] else 0.0
    np.testing.assert_allclose(score[0, i], expected, rtol=2e-2, atol=2e-4)
  assert counts[7] == 0 and score[0, 7] == 0.0


def test_the_cd_train_step_with_the_composed_energy_moves_its_parameters():
  """configs/sat.py's 'clauses' variant: the cd_full step compiles once, its loss is finite, and
  every layer's parameters move."""
  config = base.run_config(sat_config.get_config("tiny,clauses"), "cd_full")
  setup = train.build_setup(config)
  assert isinstance(setup.model, composed.ClauseEnergy) and setup.model.hidden == 64
  step = train.jit_train_step(setup)
  data = train.device_data(setup.task.build_data(0))
  state = train.init_state(setup)
  before = jax.device_get(state.params)
  for _ in range(2):
    state, metrics = step(state, data=data)
  assert np.isfinite(float(metrics["loss"]))
  moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), before,
                                 jax.device_get(state.params))
  assert all(jax.tree_util.tree_leaves(moved)), moved


def test_the_composed_energy_is_for_3_sat_only():
  """energy_model 'clauses' with a matrix task, or an unknown model: a ConfigError naming it."""
  with pytest.raises(schema.ConfigError, match="energy_model"):
    schema.validate(base.run_config(base.get_config("tiny"), "none", energy_model="clauses"))
  with pytest.raises(schema.ConfigError, match="energy_model"):
    schema.validate(base.run_config(base.get_config("tiny"), "none", energy_model="gnn"))


def test_a_composed_run_solves_formulas_beyond_its_training_size(tmp_path):
  """experiments.instances writes satisfiable DIMACS formulas (each read back with its header's
  size, each satisfiable); experiments.solve answers them with a composed run trained on fewer
  variables (a warning line, every file answered), and a second instances call into the same
  directory is refused in one line, the files unchanged."""
  config = sat_config.get_config("tiny,clauses")
  config.train_steps = 10
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir, progress=False)
  formulas = tmp_path / "uf12"
  make = [sys.executable, "-m", "experiments.instances", "--variables=12", "--clauses=50",
          "--count=3", f"--output={formulas}"]
  out = subprocess.run(make, cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  files = sorted(formulas.iterdir())
  assert [f.name for f in files] == [f"uf12-50_{k}.cnf" for k in range(3)]
  for path in files:
    variables, clauses = dimacs.read_cnf(str(path))
    assert variables == 12 and len(clauses) == 50
    count, _ = base_task.enumerate_models(clauses, 12, 1, np.random.default_rng(0), cap=1)
    assert count == 1
  before = [f.read_text() for f in files]
  again = subprocess.run(make, cwd=REPO, capture_output=True, text=True, check=False)
  assert again.returncode == 1 and again.stderr.count("\n") == 1
  assert again.stderr.startswith("error: --output:") and [f.read_text() for f in files] == before
  solved = subprocess.run(
      [sys.executable, "-m", "experiments.solve", f"--workdir={workdir}", f"--input={formulas}",
       f"--output={tmp_path / 'sol'}", "--particles=4"], cwd=REPO, capture_output=True,
      text=True, check=False)
  assert solved.returncode == 0, solved.stderr[-2000:]
  assert "beyond the training's" in solved.stderr and "n=12" in solved.stderr
  assert "solved" in solved.stdout and f"of 3 -> {tmp_path / 'sol'}" in solved.stdout
  assert "beside: a random assignment solved " in solved.stdout
  assert "walksat solved " in solved.stdout and "the best of 4 random assignments" in solved.stdout
  assert sorted(p.name for p in (tmp_path / "sol").iterdir()) == [f"uf12-50_{k}.sol"
                                                                   for k in range(3)]
