"""The composed energies (ired_cd.composed), per clause (3-SAT) and per edge (colouring): one
set of parameters for every size, a sum over the parts whatever their order and padding, each
variable's score averaging its parts, and the CD train step with them."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from configs import colouring as colouring_config
from configs import sat as sat_config
from ired_cd import composed, dimacs, loop, model, schema, tasks, train
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


def _assert_score_averages(fn, params, inputs, key, t, parts):
  """The score of one problem (inputs (1, inp_dim)) at a random y is, for each entry i, the
  energy's partial derivative (central differences) divided by ``parts[i]``, the number of
  parts that hold entry i; 0 where none does. Returns the score (out_dim,)."""
  y = np.asarray(jax.random.normal(key, (1, len(parts))), np.float64)
  _, score = model.energy_and_score(fn, params, inputs, y.astype(np.float32), t)
  h = 1e-2
  for i, count in enumerate(parts):
    step = np.zeros_like(y)
    step[0, i] = h
    partial = (fn(params, inputs, (y + step).astype(np.float32), t)
               - fn(params, inputs, (y - step).astype(np.float32), t))[0, 0] / (2 * h)
    np.testing.assert_allclose(score[0, i], partial / count if count else 0.0, rtol=2e-2,
                               atol=2e-4)
  return np.asarray(score[0])


def test_each_variables_score_averages_its_clauses():
  """dE/dy_i (the score) is the energy's partial derivative divided by the number of clauses
  that hold variable i; a variable in no clause has score 0."""
  literals, inputs = _formulas(8, 10, 1, seed=3)
  literals[0, :, :][np.abs(literals[0]) == 8] = 0  # variable 8 in no clause
  inputs = np.asarray(sat_lib.encode(literals, 8))
  counts = np.sum(np.abs(inputs.reshape(10, 8)), axis=0)
  score = _assert_score_averages(_energy(8, 10), PARAMS, inputs, jax.random.PRNGKey(4),
                                 jnp.array([2]), counts)
  assert counts[7] == 0 and score[7] == 0.0


def _edge_energy(nodes):
  return model.EnergyFunction(composed.EdgeEnergy(out_dim=nodes * 3, inp_dim=nodes * nodes,
                                                  hidden=HIDDEN, emb_dim=16))


def _graphs(nodes, n, p, seed=0):
  """n random graphs' adjacency matrices (n, nodes, nodes) float32."""
  upper = np.triu(np.random.default_rng(seed).random((n, nodes, nodes)) < p, 1)
  return (upper | upper.transpose(0, 2, 1)).astype(np.float32)


EDGE_PARAMS = model.init_params(_edge_energy(8).module, jax.random.PRNGKey(0))


def test_the_edge_energy_is_a_sum_over_edges_whatever_the_graphs_size():
  """Parameters built at 8 nodes: E of a graph = the sum of E of its edges alone; renumbering
  the nodes (with their colours) or adding isolated ones changes nothing; a 100-node graph's
  energies and scores are finite and shaped (B,), (B, n k)."""
  adjacency = _graphs(8, 2, 0.4)
  y = jax.random.normal(jax.random.PRNGKey(2), (2, 24))
  t = jnp.array([3, 7])
  fn = _edge_energy(8)
  whole = fn(EDGE_PARAMS, adjacency.reshape(2, -1), y, t)[:, 0]
  alone = 0.0
  for i, j in zip(*np.nonzero(np.triu(adjacency.max(0), 1))):
    single = np.zeros_like(adjacency)
    single[:, i, j] = single[:, j, i] = adjacency[:, i, j]
    alone = alone + fn(EDGE_PARAMS, single.reshape(2, -1), y, t)[:, 0]
  np.testing.assert_allclose(whole, alone, rtol=1e-5)
  order = np.random.default_rng(1).permutation(8)
  renumbered = adjacency[:, order][:, :, order]
  y_renumbered = y.reshape(2, 8, 3)[:, order].reshape(2, -1)
  np.testing.assert_allclose(whole, fn(EDGE_PARAMS, renumbered.reshape(2, -1), y_renumbered,
                                       t)[:, 0], rtol=1e-5)
  padded = np.zeros((2, 11, 11), np.float32)
  padded[:, :8, :8] = adjacency
  y_padded = jnp.concatenate([y, jax.random.normal(jax.random.PRNGKey(3), (2, 9))], axis=1)
  np.testing.assert_allclose(whole, _edge_energy(11)(EDGE_PARAMS, padded.reshape(2, -1),
                                                     y_padded, t)[:, 0], rtol=1e-5)
  large = _graphs(100, 3, 0.045, seed=2).reshape(3, -1)
  energy, score = model.energy_and_score(_edge_energy(100), EDGE_PARAMS, large,
                                         jax.random.normal(jax.random.PRNGKey(4), (3, 300)),
                                         jnp.array([0, 4, 9]))
  chex.assert_shape([energy, score], [(3,), (3, 300)])
  chex.assert_tree_all_finite([energy, score])


def test_each_nodes_score_averages_its_edges():
  """dE/dy (the score) is the energy's partial derivative divided by the node's degree; an
  isolated node's score is 0."""
  adjacency = _graphs(6, 1, 0.6, seed=5)
  adjacency[0, 5, :] = adjacency[0, :, 5] = 0.0  # node 5 isolated
  degree = adjacency[0].sum(axis=1)
  score = _assert_score_averages(_edge_energy(6), EDGE_PARAMS, adjacency.reshape(1, -1),
                                 jax.random.PRNGKey(6), jnp.array([1]), np.repeat(degree, 3))
  assert degree[5] == 0 and np.all(score[15:] == 0.0)


@pytest.mark.parametrize("task_config, variant, module", [
    (sat_config, "clauses", composed.ClauseEnergy),
    (colouring_config, "edges", composed.EdgeEnergy)])
def test_the_cd_train_step_with_the_composed_energy_moves_its_parameters(task_config, variant,
                                                                         module):
  """configs/sat.py's 'clauses' and configs/colouring.py's 'edges' variants: the cd_full step
  compiles, its loss is finite, and every layer's parameters move."""
  config = base.run_config(task_config.get_config(f"tiny,{variant}"), "cd_full")
  setup = train.build_setup(config)
  assert isinstance(setup.model, module) and setup.model.hidden == 64
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


def test_each_composed_energy_is_for_its_task_only():
  """energy_model 'clauses' with a matrix task or colouring, 'edges' with 3-SAT, or an unknown
  model: a ConfigError naming the field and the task it needs."""
  with pytest.raises(schema.ConfigError, match="energy_model.*task 'sat'"):
    schema.validate(base.run_config(base.get_config("tiny"), "none", energy_model="clauses"))
  with pytest.raises(schema.ConfigError, match="energy_model.*task 'sat'"):
    schema.validate(base.run_config(colouring_config.get_config("tiny"), "none",
                                    energy_model="clauses"))
  with pytest.raises(schema.ConfigError, match="energy_model.*task 'colouring'"):
    schema.validate(base.run_config(sat_config.get_config("tiny"), "none",
                                    energy_model="edges"))
  with pytest.raises(schema.ConfigError, match="energy_model"):
    schema.validate(base.run_config(base.get_config("tiny"), "none", energy_model="gnn"))


def _solve_beyond_training(workdir, instances, output):
  """experiments.solve on ``instances`` with 4 particles: it succeeds and warns that they are
  beyond the run's training size; the finished process."""
  solved = subprocess.run(
      [sys.executable, "-m", "experiments.solve", f"--workdir={workdir}", f"--input={instances}",
       f"--output={output}", "--particles=4"], cwd=REPO, capture_output=True, text=True,
      check=False)
  assert solved.returncode == 0, solved.stderr[-2000:]
  assert "beyond the training's" in solved.stderr
  return solved


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
  solved = _solve_beyond_training(workdir, formulas, tmp_path / "sol")
  assert "n=12" in solved.stderr
  assert "solved" in solved.stdout and f"of 3 -> {tmp_path / 'sol'}" in solved.stdout
  assert "beside: a random assignment solved " in solved.stdout
  assert "walksat solved " in solved.stdout and "the best of 4 random assignments" in solved.stdout
  assert sorted(p.name for p in (tmp_path / "sol").iterdir()) == [f"uf12-50_{k}.sol"
                                                                   for k in range(3)]


def test_a_composed_colouring_run_colours_graphs_beyond_its_training_size(tmp_path):
  """experiments.instances writes planted DIMACS graphs (their header's size, each
  3-colourable: minisat finds a colouring); experiments.solve colours them
  with an 'edges' run trained on 8 nodes (a warning line, every file answered with a .sol of a
  colour per node)."""
  config = colouring_config.get_config("tiny,edges")
  config.train_steps = 10
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir, progress=False)
  graphs = tmp_path / "col30"
  out = subprocess.run([sys.executable, "-m", "experiments.instances", "--task=colouring",
                        "--nodes=30", "--degree=3", "--count=2", f"--output={graphs}"],
                       cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  files = sorted(graphs.iterdir())
  assert [f.name for f in files] == [f"col30-3_{k}.col" for k in range(2)]
  task = tasks.get_task("colouring", nodes=30)
  for path in files:
    nodes, edges = dimacs.read_col(str(path))
    assert nodes == 30 and 20 <= len(edges) <= 70  # mean degree 3: 45 edges expected
    clauses, variables = task.cnf(task.read_instance(str(path))[0])
    count, _ = base_task.enumerate_models(clauses, variables, 1, np.random.default_rng(0), cap=1)
    assert count == 1
  solved = _solve_beyond_training(workdir, graphs, tmp_path / "sol")
  assert "30 nodes" in solved.stderr
  assert f"of 2 -> {tmp_path / 'sol'}" in solved.stdout and "dsatur" in solved.stdout
  for k in range(2):
    lines = (tmp_path / "sol" / f"col30-3_{k}.sol").read_text().splitlines()
    assert [line.split()[1] for line in lines[1:]] == [str(node) for node in range(1, 31)]
