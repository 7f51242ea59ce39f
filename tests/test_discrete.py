"""The discrete tasks (3-SAT, colouring): generators and verifiers against brute force,
decoding, the dataset and its draws, the baselines, the CD filter with a verifier, and
DIMACS files."""

import dataclasses
import itertools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from configs import sat as sat_config
from ired_cd import ablation, answer_landscape, dimacs, evaluation, sampler, strategies, train
from ired_cd import tasks
from ired_cd.tasks import sat as sat_lib

import _tiny


def _sat(**settings):
  return tasks.get_task("sat", **dict(dict(variables=6, clauses=(10, 14), clauses_ood=18,
                                           train_instances=24, solutions=64), **settings))


def _literals(inputs_row, task):
  """The clauses of one encoded formula as lists of signed literals (brute force's view)."""
  matrix = np.asarray(inputs_row).reshape(task.max_clauses, task.variables)
  return [[int(v * (j + 1)) for j, v in enumerate(row) if v] for row in matrix if row.any()]


def _brute_solutions(clauses, n):
  """Every satisfying assignment (+-1 tuples) of ``clauses`` over n variables."""
  found = set()
  for bits in itertools.product((-1, 1), repeat=n):
    if all(any(bits[abs(lit) - 1] * np.sign(lit) > 0 for lit in c) for c in clauses):
      found.add(bits)
  return found


def _brute_violations(clauses, assignment):
  return sum(not any(assignment[abs(lit) - 1] * np.sign(lit) > 0 for lit in c) for c in clauses)


def test_sat_instances_are_satisfiable_and_their_solutions_are_all_of_them():
  """Against brute force on 6 variables: every instance is satisfiable, the solver's count
  is the number of satisfying assignments, and the kept ones are distinct and all of them
  (keep >= 2^6)."""
  task = _sat()
  literals, kept, counts, totals = task.instances(np.random.default_rng(0), 12, False, keep=64)
  inputs = np.asarray(sat_lib.encode(literals, task.variables))
  for row, solutions, count, total in zip(inputs, kept, counts, totals):
    clauses = _literals(row, task)
    assert 10 <= len(clauses) <= 14 and all(len(c) == 3 for c in clauses)
    truth = _brute_solutions(clauses, task.variables)
    assert truth and total == len(truth) == count
    assert {tuple(s) for s in solutions[:count]} == truth


def test_sat_keeps_a_uniform_sample_of_many_solutions():
  """With more solutions than it keeps, the kept ones are distinct right answers, and over
  many draws every solution is kept about equally often (reservoir sampling)."""
  formula = np.array([[1, 2, 3]])  # 7 of the 8 assignments of 3 variables, 8 x 2 with x4 free
  seen = np.zeros(16)
  for seed in range(400):
    total, kept = sat_lib.enumerate_solutions(formula, 4, 4, np.random.default_rng(seed))
    assert total == 14 and len({tuple(k) for k in kept}) == 4
    for k in kept:
      seen[int(sum((k[i] > 0) << i for i in range(4)))] += 1
  counts = seen[seen > 0]
  assert len(counts) == 14 and counts.min() > 0.6 * counts.mean()


def test_sat_verifier_counts_unsatisfied_clauses_as_brute_force_does():
  task = _sat()
  inputs, _ = task.eval_set(16, 3, True)
  rng = np.random.default_rng(1)
  assignments = 2 * rng.integers(0, 2, (16, task.variables)) - 1
  got = task.verify(inputs, assignments)
  want = [_brute_violations(_literals(row, task), a) for row, a in zip(inputs, assignments)]
  np.testing.assert_array_equal(got, want)
  assert got.max() > 0


def test_sat_targets_decode_to_solutions_and_decoding_is_the_sign():
  task = _sat()
  for ood in (False, True):
    inputs, targets = task.eval_set(16, 5, ood)
    np.testing.assert_array_equal(task.verify(inputs, task.decode(targets)), 0)
    clauses = {len(_literals(row, task)) for row in inputs}
    assert clauses == {18} if ood else clauses <= set(range(10, 15))
  y = np.array([[0.3, -0.01, 0.0, -2.0, 1.0, -1.0]])
  np.testing.assert_array_equal(task.decode(y), [[1, -1, 1, -1, 1, -1]])
  np.testing.assert_array_equal(task.decode(task.encode(task.decode(y))), task.decode(y))


def test_sat_training_draws_every_kept_solution_of_an_instance():
  """The train step's draw: an instance, then one of its kept solutions uniformly; the
  encoded formula is the instance's."""
  task = _sat(train_instances=3)
  data = task.build_data(0)
  draw = jax.jit(lambda key: task.sample(key, 4096, False, data))
  inputs, targets = (np.asarray(a) for a in draw(jax.random.PRNGKey(0)))
  formulas = np.asarray(sat_lib.encode(data["literals"], task.variables))
  for i in range(3):
    rows = np.all(inputs == formulas[i], axis=1)
    drawn = {tuple(t.astype(int)) for t in targets[rows]}
    assert drawn == {tuple(s) for s in data["solutions"][i, :data["counts"][i]]}
    np.testing.assert_array_equal(task.verify(inputs[rows], targets[rows]), 0)


def test_sat_dataset_is_cached_in_the_workdir_and_read_back(tmp_path, monkeypatch):
  task = _sat(train_instances=5)
  data = task.build_data(3, cache_dir=str(tmp_path))
  assert len(os.listdir(tmp_path)) == 1
  monkeypatch.setattr(sat_lib.Sat, "instances", lambda *a, **k: pytest.fail("built again"))
  again = task.build_data(3, cache_dir=str(tmp_path))
  jax.tree_util.tree_map(np.testing.assert_array_equal, data, again)
  monkeypatch.undo()
  other = task.build_data(4, cache_dir=str(tmp_path))  # another seed: another dataset
  assert len(os.listdir(tmp_path)) == 2
  assert not np.array_equal(other["literals"], data["literals"])


def test_colouring_planted_colourings_are_proper():
  """Device batches and host sets: every edge joins two colours, the target decodes to the
  planted colouring with no conflict; the harder set has more edges."""
  task = tasks.get_task("colouring", nodes=12)
  inputs, targets = jax.jit(lambda k: task.sample(k, 256, False))(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(task.verify(inputs, task.decode(np.asarray(targets))), 0)
  adjacency = np.asarray(inputs).reshape(-1, 12, 12)
  np.testing.assert_array_equal(adjacency, np.swapaxes(adjacency, 1, 2))
  assert np.all(np.diagonal(adjacency, axis1=1, axis2=2) == 0)
  degrees = {}
  for ood in (False, True):
    inputs, targets = task.eval_set(256, 1, ood)
    np.testing.assert_array_equal(task.verify(inputs, task.decode(targets)), 0)
    degrees[ood] = inputs.reshape(-1, 12, 12).sum(2).mean()
  assert abs(degrees[False] - 3.0) < 0.3 and abs(degrees[True] - 4.5) < 0.4


def test_colouring_verifier_and_decoding_against_brute_force():
  task = tasks.get_task("colouring", nodes=7)
  inputs, _ = task.eval_set(8, 2, True)
  colours = np.random.default_rng(0).integers(0, 3, (8, 7))
  want = [sum(row[u, v] and c[u] == c[v] for u in range(7) for v in range(u + 1, 7))
          for row, c in zip(inputs.reshape(8, 7, 7), colours)]
  np.testing.assert_array_equal(task.verify(inputs, colours), want)
  y = task.encode(colours) + 0.1 * np.random.default_rng(1).normal(size=(8, 21))
  np.testing.assert_array_equal(task.decode(y), colours)


def test_baselines_give_scale():
  """Random assignments rarely solve; WalkSAT and DSATUR mostly do (small instances)."""
  sat = _sat()
  sets = {suffix: sat.eval_set(64, 0, ood) for suffix, ood in tasks.SPLITS.items()}
  scores = sat.baseline_scores(sets, 0)
  assert scores["solved_walksat"] > 0.9 > scores["solved_random"]
  assert scores["violations_random"] > scores["violations_walksat"]
  colouring = tasks.get_task("colouring", nodes=12)
  sets = {suffix: colouring.eval_set(64, 0, ood) for suffix, ood in tasks.SPLITS.items()}
  scores = colouring.baseline_scores(sets, 0)
  assert scores["solved_dsatur"] > scores["solved_random"]
  assert scores["violations_ood_dsatur"] < scores["violations_ood_random"]


def test_the_cd_filter_drops_exactly_the_right_answers_among_sat_negatives():
  """With the SAT task the filter cut is the verifier's (residual_tau = 0.5): of negatives
  holding one satisfying assignment and several violating ones, only that one is dropped,
  however many violating ones there are (no batch quantile)."""
  task = _sat()
  config = base.run_config(base.get_config(), "cd_full", task="sat",
                           **{f"sat_{k}": v for k, v in dict(
                               variables=6, clauses=(10, 14), clauses_ood=18, train_instances=24,
                               solutions=64).items()})
  settings = strategies.LossSettings.from_config(config, task)
  assert settings.residual_tau == 0.5
  inputs, targets = task.eval_set(1, 0, False)
  flips = np.eye(task.variables, dtype=np.float32)[:5] * -2 + 1  # flip one variable each
  answers = np.concatenate([targets, targets * flips])
  inputs = np.repeat(inputs, len(answers), axis=0)
  violated = task.verify(inputs, task.decode(answers)) > 0
  keep = np.asarray(strategies.negative_keep(settings, task.residual, inputs, 0.7 * answers))
  np.testing.assert_array_equal(keep, violated.astype(np.float32))
  assert keep[0] == 0 and keep.sum() == violated.sum() >= 1


def test_a_dataset_task_trains_in_one_compiled_program():
  """The SAT train step draws from its data inside the jitted step: one trace for many steps
  (the data an argument, not a constant), and the multi-step program runs on the same data."""
  config = base.run_config(base.get_config("tiny"), "cd_full", task="sat", rank=20,
                           **base.TINY_TASKS["sat"])
  setup = train.build_setup(config)
  counted = _tiny.CountedTask(setup.task, "sat_one_program")
  step = train.jit_train_step(dataclasses.replace(setup, task=counted))
  data = train.device_data(setup.task.build_data(0))
  state = train.init_state(setup)
  for _ in range(3):
    state, metrics = step(state, data=data)
  assert _tiny.TRACES["sat_one_program"] == 1
  assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))
  assert 0.0 < float(metrics["filter_keep"]) <= 1.0


# ----------------------------------------------------------------- DIMACS files
SATLIB_STYLE = """c This Formular is generated by mcnf
c
c    horn? no
p cnf 5  4
 1 -5 4 0
-1 5 3 4 0
-3 -4
0
 2 -1 0
%
0

"""


def test_dimacs_cnf_as_satlib_writes_it(tmp_path):
  """Comments, a clause over two lines, SATLIB's % and 0 trailer, a last clause without 0."""
  path = tmp_path / "f.cnf"
  path.write_text(SATLIB_STYLE)
  variables, clauses = dimacs.read_cnf(str(path))
  assert variables == 5
  assert clauses == [[1, -5, 4], [-1, 5, 3, 4], [-3, -4], [2, -1]]
  path.write_text("p cnf 3 2\n1 2 3 0\n-1 -2\n")  # no final 0
  assert dimacs.read_cnf(str(path)) == (3, [[1, 2, 3], [-1, -2]])


@pytest.mark.parametrize("text, line, message", [
    ("1 2 0\n", 1, "before the 'p cnf"),
    ("p cnf 3 1\n1 x 0\n", 2, "'x' is not an integer"),
    ("p cnf 3 1\n1 4 0\n", 2, "literal 4 names a variable above"),
    ("p cnf 3 2\n1 2 0\n", 1, "declares 2 clauses, the file holds 1"),
    ("p cnf 3 2\n1 2 0\n0\n", 3, "empty clause"),
    ("p sat 3 1\n1 0\n", 1, "expected 'p cnf N M'"),
    ("c nothing\n", None, "no 'p cnf N M' header"),
])
def test_dimacs_cnf_faults_name_the_line(tmp_path, text, line, message):
  path = tmp_path / "bad.cnf"
  path.write_text(text)
  with pytest.raises(dimacs.DimacsError, match=message) as err:
    dimacs.read_cnf(str(path))
  assert err.value.line == line
  assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_dimacs_graphs_read_and_faults(tmp_path):
  path = tmp_path / "g.col"
  path.write_text("c a triangle and a tail\np edge 4 4\ne 1 2\ne 2 3\ne 3 1\ne 3 4\n")
  assert dimacs.read_col(str(path)) == (4, [(1, 2), (2, 3), (3, 1), (3, 4)])
  path.write_text("p edge 3 1\ne 2 2\n")
  with pytest.raises(dimacs.DimacsError, match="line 2: a self-loop on node 2"):
    dimacs.read_col(str(path))
  path.write_text("p edge 3 1\ne 1 5\n")
  with pytest.raises(dimacs.DimacsError, match="line 2: node outside 1..3"):
    dimacs.read_col(str(path))


def test_instances_from_files_match_the_generated_encoding(tmp_path):
  """A formula read from a file encodes as the generator encodes it (clause order does not
  matter); one beyond the model names its limit; a graph pads to the model's nodes."""
  task = _sat()
  literals, _, _, _ = task.instances(np.random.default_rng(4), 1, False, keep=1)
  clauses = [c for c in literals[0].tolist() if any(c)]
  path = tmp_path / "f.cnf"
  path.write_text(f"p cnf 6 {len(clauses)}\n"
                  + "".join(" ".join(map(str, c)) + " 0\n" for c in clauses[::-1]))
  row, size = task.read_instance(str(path))
  np.testing.assert_array_equal(row, np.asarray(sat_lib.encode(literals, 6))[0])
  assert size == 6
  path.write_text("p cnf 7 1\n1 7 0\n")
  with pytest.raises(tasks.InstanceError, match="7 variables; the run's model takes at most 6"):
    task.read_instance(str(path))
  colouring = tasks.get_task("colouring", nodes=5)
  graph = tmp_path / "g.col"
  graph.write_text("p edge 3 2\ne 1 2\ne 2 3\n")
  row, size = colouring.read_instance(str(graph))
  assert size == 3 and row.reshape(5, 5).sum() == 4 and row.reshape(5, 5)[3:].sum() == 0


def test_solution_files_say_satisfiable_only_without_violations():
  sat = _sat()
  text = sat.format_answer(np.array([0.5, -0.5, 1.0, -1.0, 0.2, -0.2]), 4, 0)
  assert text.splitlines()[1:] == ["s SATISFIABLE", "v 1 -2 3 -4", "v 0"]
  assert "s UNKNOWN" in sat.format_answer(np.zeros(6), 4, 2)
  colouring = tasks.get_task("colouring", nodes=4)
  text = colouring.format_answer(colouring.encode(np.array([[2, 0, 1, 1]]))[0], 3, 0)
  assert text.splitlines()[1:] == ["v 1 3", "v 2 1", "v 3 2"]


# ----------------------------------------------------------------- particles
def test_particle_picks_the_oracle_is_never_worse():
  """On any particle set: the oracle's violations are the least, so it solves whenever the
  energy's pick or one particle does; the picks read the rows they name."""
  task = _sat()
  inputs, targets = task.eval_set(8, 1, True)
  rng = np.random.default_rng(0)
  outputs = rng.normal(size=(8, 5, task.variables)).astype(np.float32)
  outputs[2, 3] = targets[2]  # one right answer, not particle 0
  energies = rng.normal(size=(8, 5))
  scores = evaluation.pick_scores(task, inputs, targets, outputs, energies)
  assert scores["violations_oracle"] <= min(scores["violations_one"],
                                            scores["violations_energy"])
  assert scores["solved_oracle"] >= max(scores["solved_one"], scores["solved_energy"])
  assert scores["solved_oracle"] >= 1 / 8 and scores["distinct"] >= 1 / 8
  energies[2, 3] = -100.0  # the energy now picks the right answer of problem 2
  assert evaluation.pick_scores(task, inputs, targets, outputs, energies)["solved_energy"] >= 1 / 8


def test_the_best_of_k_random_assignments():
  """Hand-made formulas: none (always solved), the 8 sign patterns of one 3 variables (every
  assignment violates exactly one clause), and one clause (a random assignment violates it
  with probability 1/8, the best of 64 almost never)."""
  task = _sat()

  def formula(clauses):
    matrix = np.zeros((task.max_clauses, task.variables), np.float32)
    for row, clause in enumerate(clauses):
      for literal in clause:
        matrix[row, abs(literal) - 1] = np.sign(literal)
    return np.tile(matrix.reshape(1, -1), (64, 1))

  core = [[a * 1, b * 2, c * 3] for a, b, c in itertools.product((-1, 1), repeat=3)]
  sets = {"": (formula([]), None), "_ood": (formula(core), None)}
  scores = task.random_particle_scores(sets, (1, 64), seed=0)
  assert (scores["solved_p1_random"], scores["violations_p64_random"]) == (1.0, 0.0)
  assert (scores["solved_ood_p64_random"], scores["violations_ood_p64_random"]) == (0.0, 1.0)
  one = task.random_particle_scores({"": (formula([[1, -2, 3]]), None)}, (1, 64), seed=0)
  assert 0.6 < one["solved_p1_random"] < 1.0 and one["solved_p64_random"] == 1.0


def test_particle_scoring_of_a_grid_reports_each_pick_and_the_random_baseline(tmp_path):
  """A tiny SAT grid scored with particles and its landscape measured: eval.json and the
  report hold every pick per K and set, the best of K random answers is the evaluation's own
  (the same sets and stream), the landscape's columns are the discrete task's
  (answer_landscape), and the tables show them."""
  config = sat_config.get_config("tiny")
  config.train_steps = 10
  particles = evaluation.Particles(counts=(1, 4), size=16)
  measured = answer_landscape.Settings(eval_size=4, solutions=2, enumeration_cap=64,
                                       changes=(1,), repair_steps=(0, 2))
  report = ablation.run_ablation(config, ["none"], 1, str(tmp_path), particles=particles,
                                 landscape_settings=measured)
  columns = report["rows"]["none"]["landscape"]
  assert {key + suffix for key, _, _ in answer_landscape.columns(measured.as_json())
          for suffix in ("", "_ood")} <= set(columns)
  assert "## Energy landscape" in (tmp_path / "ablation.md").read_text()
  assert (tmp_path / "ablation_landscape.png").stat().st_size > 10_000
  with open(tmp_path / "none" / "seed0" / "eval.json") as f:
    saved = json.load(f)
  for suffix in ("", "_ood"):
    for k in (1, 4):
      for pick in evaluation.PICKS:
        assert 0.0 <= saved[f"eval/solved{suffix}_p{k}_{pick}"] <= 1.0
      for metric in ("solved", "violations"):
        key = f"eval/{metric}{suffix}_p{k}_random"
        assert report["particle_baselines"][key] == saved[key]
  assert saved["eval/violations_p4_random"] < saved["eval/violations_p1_random"]
  table = (tmp_path / "ablation.md").read_text()
  assert "| `none` | " in table and table.count("| random, the best of K | ") == 2


def test_colourings_equal_up_to_their_colour_names_are_one_answer():
  task = tasks.get_task("colouring", nodes=4)
  same = task.canonical(np.array([[0, 1, 2, 1], [2, 0, 1, 0], [1, 1, 0, 2]]))
  np.testing.assert_array_equal(same[0], same[1])
  assert not np.array_equal(same[0], same[2])


@dataclasses.dataclass(frozen=True)
class WellEnergy:
  """E(y) = ||y - sqrt(abar_t) c||^2 / 2 with c = +1 on every variable: the one minimum is the
  all-true assignment (model.EnergyFunction's interface)."""

  module: _tiny.Shape
  calls_per_params: int = 1

  def sharing(self, calls):
    return self

  def condition(self, params, inp, t):
    return jnp.broadcast_to(_tiny.schedule().sqrt_alphas_cumprod[t][:, None],
                            (inp.shape[0], self.module.out_dim))

  def energy_given(self, params, cond, y, gram=False):
    return 0.5 * jnp.sum(jnp.square(y - cond), axis=-1, keepdims=True)

  def __call__(self, params, inp, y, t):
    return self.energy_given(params, self.condition(params, inp, t), y)


def test_the_energys_pick_finds_the_known_minimum_and_resampling_gathers_there():
  """A hand-made energy with one known minimum: among re-noised particles the energy's pick
  is the one nearest it (the oracle's, for an answer scored by its distance); resampling by
  energy at a low temperature brings the particles nearer it than independent ones, and at an
  infinite one leaves them where independent particles are (to float rounding)."""
  energy_fn = WellEnergy(_tiny.Shape(6))
  inp = jnp.zeros((4, 3))
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  run = lambda tau: sampler.sample_particles(  # noqa: E731
      energy_fn, {}, inp, keys, _tiny.schedule(), 0, 16, renoise=1.0, resample_tau=tau)
  outputs, energies = jax.jit(lambda: run(None))()
  chex.assert_shape([outputs, energies], [(4, 16, 6), (4, 16)])
  distance = np.sum(np.square(np.asarray(outputs) - _tiny.schedule().sqrt_alphas_cumprod[0]), -1)
  np.testing.assert_array_equal(np.argmin(energies, 1), np.argmin(distance, 1))
  assert np.all(np.std(np.asarray(outputs), axis=1) > 0.05)  # the particles differ
  independent = np.asarray(jax.jit(lambda: run(1e30)[0])())
  np.testing.assert_allclose(independent, np.asarray(outputs), atol=1e-6)  # other fusions
  gathered = np.asarray(jax.jit(lambda: run(1e-3)[1])())
  assert gathered.mean() < 0.5 * np.asarray(energies).mean()


def test_systematic_resampling_copies_by_weight():
  """Weights softmax(-E / tau): one particle of much lower energy takes every slot; equal
  energies keep each particle in its own slot."""
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  resample = sampler.resampler(keys, 4, tau=1.0)
  y = jnp.arange(8.0)[:, None]
  low = jnp.array([5.0, 5.0, -50.0, 5.0, 0.0, 0.0, 0.0, 0.0])
  np.testing.assert_array_equal(resample(y, low, 3)[:, 0], [2, 2, 2, 2, 4, 5, 6, 7])


def test_particles_of_a_problem_do_not_depend_on_its_row_or_batch():
  energy_fn, params = _tiny.small_energy()
  inp = jax.random.normal(jax.random.PRNGKey(2), (5, _tiny.DIM))
  keys = jax.random.split(jax.random.PRNGKey(3), 5)
  sample = sampler.make_particle_sampler(energy_fn, _tiny.schedule(), 3, resample_tau=0.5)
  outputs, energies = sample(params, inp, keys, 1)
  alone, alone_e = sample(params, inp[3:4], keys[3:4], 1)
  np.testing.assert_allclose(alone[0], outputs[3], atol=1e-5)
  np.testing.assert_allclose(alone_e[0], energies[3], rtol=1e-5)
