"""Solving one's own problems with a trained run: ired_cd.solve and experiments.solve."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import sat as sat_config
from ired_cd import evaluation, loop, solve, tasks, train
from tests import _tiny
from ired_cd import sampler as sampler_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANK = 4
LINE = re.compile(r"inner_steps=(\d+): residual \|\|A X - I\|\|_F mean (\S+) median (\S+), "
                  r"MSE vs numpy.linalg.inv (\S+) -> (\S+)$")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny trained `none` run (20 steps, checkpoint at 20)."""
  return _tiny.trained_none_run(str(tmp_path_factory.mktemp("run")))


def problems(n=6, seed=3, ood=False):
  """(A (n, 4, 4), A^{-1} (n, 4, 4)) from the training distribution (or the harder one)."""
  a, x = tasks.get_task("inverse", rank=RANK).sample_numpy(np.random.RandomState(seed), n, ood)
  return a.reshape(n, RANK, RANK).astype(np.float32), x.reshape(n, RANK, RANK)


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.solve", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=180)


def files(root):
  """{relative path: (size, mtime)} of every file under ``root``."""
  return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f))[6:9:2]
          for d, _, names in os.walk(root) for f in names}


def test_answers_in_both_layouts_are_the_unscaled_x0(workdir):
  a, _ = problems()
  by_matrix = solve.solve(workdir, a, inner_steps=(0, 3))
  by_row = solve.solve(workdir, a.reshape(6, -1), inner_steps=(3,))
  assert sorted(by_matrix) == [0, 3] and list(by_row) == [3]
  assert by_matrix[3].shape == (6, RANK, RANK) and by_row[3].shape == (6, RANK * RANK)
  assert by_matrix[3].dtype == np.float32 and np.all(np.isfinite(by_matrix[3]))
  np.testing.assert_array_equal(by_matrix[3].reshape(6, -1), by_row[3])
  assert not np.array_equal(by_matrix[0], by_matrix[3])
  # The evaluator's default output is sqrt(abar_0) x0 from the same start noise.
  model = solve.load(workdir)
  setup = train.build_setup(model.config)
  default = sampler_lib.make_sampler(setup.energy_fn, setup.schedule)
  rows = a.reshape(6, -1).astype(np.float32)
  scaled = evaluation.predict(default, model.params, rows, solve.content_keys(rows), 3, 6,
                              model.mesh)
  np.testing.assert_allclose(by_row[3] * float(setup.schedule.sqrt_alphas_cumprod[0]), scaled,
                             rtol=1e-5, atol=1e-6)
  assert model.step == 20


def test_score_agrees_with_numpy(workdir):
  a, inverse = problems()
  x = solve.solve(workdir, a)[5]
  task = tasks.get_task("inverse", rank=RANK)
  metrics = solve.score(task, a.reshape(6, -1), x.reshape(6, -1))
  residual = np.linalg.norm(a.astype(np.float64) @ x - np.eye(RANK), axis=(1, 2))
  assert metrics["residual_mean"] == pytest.approx(residual.mean(), rel=1e-5)
  assert metrics["residual_median"] == pytest.approx(np.median(residual), rel=1e-5)
  assert metrics["mse"] == pytest.approx(np.mean((x - np.linalg.inv(a.astype(np.float64))) ** 2),
                                         rel=1e-6)
  assert metrics["mse"] == pytest.approx(np.mean((x - inverse) ** 2), rel=1e-4)


def test_cli_writes_one_file_per_count_and_prints_numpy_s_numbers(workdir, tmp_path):
  a, _ = problems()
  np.save(tmp_path / "A.npy", a)
  result = run_cli(f"--workdir={workdir}", f"--input={tmp_path / 'A.npy'}",
                   f"--output={tmp_path / 'X.npy'}", "--inner_steps=0,2")
  assert result.returncode == 0, result.stderr
  assert "warning:" not in result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith("6 problems of inverse 4x4") and "checkpoint step 20" in lines[0]
  assert sorted(os.listdir(tmp_path)) == ["A.npy", "X_steps0.npy", "X_steps2.npy"]
  for line, k in zip(lines[1:], (0, 2)):
    count, mean, median, mse, path = LINE.match(line).groups()
    assert (int(count), path) == (k, str(tmp_path / f"X_steps{k}.npy"))
    x = np.load(path)
    assert x.shape == a.shape and x.dtype == np.float32
    residual = np.linalg.norm(a.astype(np.float64) @ x - np.eye(RANK), axis=(1, 2))
    np.testing.assert_allclose([float(mean), float(median), float(mse)],
                               [residual.mean(), np.median(residual),
                                np.mean((x - np.linalg.inv(a.astype(np.float64))) ** 2)],
                               rtol=1e-4)


def test_cli_one_count_one_file_in_the_input_layout(workdir, tmp_path):
  a, _ = problems(n=3)
  np.save(tmp_path / "A.npy", a.reshape(3, -1))
  result = run_cli(f"--workdir={workdir}", f"--input={tmp_path / 'A.npy'}",
                   f"--output={tmp_path / 'X.npy'}")
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path)) == ["A.npy", "X.npy"]
  assert np.load(tmp_path / "X.npy").shape == (3, RANK * RANK)
  assert LINE.match(result.stdout.strip().splitlines()[-1]).group(1) == "5"


def test_out_of_distribution_inputs_are_solved_with_a_warning(workdir, tmp_path):
  a, _ = problems()
  task = tasks.get_task("inverse", rank=RANK)
  for ood in (False, True):  # both evaluation distributions are in distribution
    assert task.distribution_warnings(problems(ood=ood)[0].reshape(6, -1)) == []
  not_spd = a.copy()
  not_spd[2] = -a[2]  # symmetric, negative definite, same norm
  warned = task.distribution_warnings(not_spd.reshape(6, -1))
  assert len(warned) == 1 and warned[0].startswith(
      "1 of 6 problems are not symmetric positive definite (first: problem 2)")
  asymmetric = a.copy()
  asymmetric[:, 0, 1] += 0.5
  assert task.distribution_warnings(asymmetric.reshape(6, -1))[0].startswith(
      "6 of 6 problems are not symmetric positive definite")
  large = task.distribution_warnings(10 * a.reshape(6, -1))
  assert len(large) == 1 and large[0].startswith("6 of 6 problems have a norm outside")
  with pytest.warns(solve.OutOfDistributionWarning, match="not symmetric positive definite"):
    answers = solve.solve(workdir, not_spd)
  assert answers[5].shape == a.shape
  np.save(tmp_path / "A.npy", not_spd)
  result = run_cli(f"--workdir={workdir}", f"--input={tmp_path / 'A.npy'}",
                   f"--output={tmp_path / 'X.npy'}")
  assert result.returncode == 0, result.stderr
  assert [line for line in result.stderr.splitlines() if line.startswith("warning:")] == [
      f"warning: {warned[0]}"]
  assert np.load(tmp_path / "X.npy").shape == a.shape


def _bad_inputs(tmp_path, workdir):
  """name -> (flags, field named in the error) of each bad-input case, its files in
  ``tmp_path``."""
  a, _ = problems()
  cases = {"missing file": ("A_missing.npy", "input"), "not an array": ("A.txt.npy", "input"),
           "wrong size": ("A5.npy", "input"), "one matrix": ("A1.npy", "input"),
           "non-finite": ("Anan.npy", "input")}
  (tmp_path / "A.txt.npy").write_text("1 2 3\n")
  np.save(tmp_path / "A5.npy", np.ones((2, 5, 5), np.float32))
  np.save(tmp_path / "A1.npy", a[0])
  bad = a.copy()
  bad[4, 1, 1] = np.nan
  np.save(tmp_path / "Anan.npy", bad)
  np.save(tmp_path / "A.npy", a)
  result = {name: ([f"--workdir={workdir}", f"--input={tmp_path / path}",
                    f"--output={tmp_path / 'X.npy'}"], field)
            for name, (path, field) in cases.items()}
  good = [f"--input={tmp_path / 'A.npy'}", f"--output={tmp_path / 'X.npy'}"]
  empty = tmp_path / "empty"
  empty.mkdir()
  no_ckpt = tmp_path / "no_checkpoint"
  (no_ckpt / "checkpoints").mkdir(parents=True)
  shutil.copy(os.path.join(workdir, "config.json"), no_ckpt)
  np.save(tmp_path / "X_steps2.npy", a)
  os.symlink(tmp_path / "A.npy", tmp_path / "link.npy")
  np.save(tmp_path / "Ahuge.npy", a * 1e30)  # finite in float32, too large for the sampler
  damaged = tmp_path / "damaged"
  shutil.copytree(workdir, damaged)
  shutil.rmtree(damaged / "checkpoints" / "20" / "default")
  result.update({
      "no config.json": ([f"--workdir={empty}"] + good, "workdir"),
      "no checkpoint": ([f"--workdir={no_ckpt}"] + good, "workdir"),
      "missing checkpoint step": ([f"--workdir={workdir}", "--checkpoint_step=7"] + good,
                                  "checkpoint_step"),
      "negative inner steps": ([f"--workdir={workdir}", "--inner_steps=5,-1"] + good,
                               "inner_steps"),
      "no particles": ([f"--workdir={workdir}", "--particles=0"] + good, "particles"),
      "unknown pick": ([f"--workdir={workdir}", "--particles=4", "--pick=best"] + good, "pick"),
      "no output directory": ([f"--workdir={workdir}", f"--input={tmp_path / 'A.npy'}",
                               f"--output={tmp_path / 'nowhere' / 'X.npy'}"], "output"),
      "output is the input": ([f"--workdir={workdir}", f"--input={tmp_path / 'A.npy'}",
                               f"--output={tmp_path / 'link.npy'}"], "output"),
      "an output is the input": ([f"--workdir={workdir}", f"--input={tmp_path / 'X_steps2.npy'}",
                                  f"--output={tmp_path / 'X.npy'}", "--inner_steps=0,2"],
                                 "output"),
      "non-finite answers": ([f"--workdir={workdir}", f"--input={tmp_path / 'Ahuge.npy'}",
                              f"--output={tmp_path / 'X.npy'}"], "input"),
      "damaged checkpoint step": ([f"--workdir={damaged}", "--checkpoint_step=20"] + good,
                                  "checkpoint_step"),
  })
  return result


# Runs experiments.solve's main on each case of a JSON list {name: argv} in one interpreter
# (one JAX start for all), printing {name: [exit message or None, stdout, files changed]}.
DRIVER = """
import contextlib, io, json, os, sys
from absl import flags
from experiments import cli
from experiments import solve as tool
cases, watched = json.loads(sys.argv[1]), sys.argv[2:]
def files():
  return {os.path.join(d, f): os.stat(os.path.join(d, f))[6:9:2]
          for root in watched for d, _, names in os.walk(root) for f in names}
out = {}
for name, argv in cases.items():
  flags.FLAGS.unparse_flags()
  before, printed, message = files(), io.StringIO(), None
  try:
    with contextlib.redirect_stdout(printed):
      argv = cli.parse_flags(["solve"] + argv)
      tool.main(argv)
  except SystemExit as exit:
    message = exit.code
  out[name] = [message, printed.getvalue(), files() != before]
print(json.dumps(out))
"""


def run_cases(cases, *watched):
  """experiments.solve on each case (name -> flags), in one process: {name: (exit message or
  None, stdout, whether a file under ``watched`` changed)}."""
  result = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases), *map(str, watched)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def bad_input_outcomes(workdir, tmp_path_factory):
  """Every bad-input case run once: {name: (outcome, field)}."""
  root = tmp_path_factory.mktemp("bad_inputs")
  cases = _bad_inputs(root, workdir)
  outcomes = run_cases({name: args for name, (args, _) in cases.items()}, root, workdir)
  return {name: (outcomes[name], field) for name, (_, field) in cases.items()}


CASES = ["missing file", "not an array", "wrong size", "one matrix", "non-finite",
         "no config.json", "no checkpoint", "missing checkpoint step", "negative inner steps",
         "no particles", "unknown pick",
         "no output directory", "output is the input", "an output is the input",
         "non-finite answers", "damaged checkpoint step"]
# What the line says beyond the flag, where the case has a message of its own.
MESSAGES = {"not an array": "is not a .npy file written by numpy.save",
            "output is the input": "would overwrite the input",
            "an output is the input": "X_steps2.npy would overwrite the input",
            "non-finite answers": "6 of 6 problems got non-finite answers with inner_steps=5",
            "damaged checkpoint step": "the checkpoint at step 20 in",
            "no particles": "an integer >= 1, got 0",
            "unknown pick": "one of oracle, energy, got 'best'"}


@pytest.mark.parametrize("case", CASES)
def test_cli_bad_input_is_one_line_naming_the_field_and_writes_nothing(bad_input_outcomes, case):
  (message, stdout, changed), field = bad_input_outcomes[case]
  assert isinstance(message, str), message  # sys.exit(message): exit status 1, on stderr
  assert len(message.strip().splitlines()) == 1, message
  assert message.startswith(f"error: --{field}: "), message
  assert MESSAGES.get(case, "") in message
  assert stdout == "" and not changed


def test_the_bad_input_exit_is_status_1_without_a_traceback(workdir, tmp_path):
  """Through the real command line once: exit status 1, one line, no traceback."""
  result = run_cli(f"--workdir={workdir}", f"--input={tmp_path / 'missing.npy'}",
                   f"--output={tmp_path / 'X.npy'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines() == [
      f"error: --input: cannot read {tmp_path / 'missing.npy'} as a .npy array "
      f"([Errno 2] No such file or directory: '{tmp_path / 'missing.npy'}')"]


def test_library_errors_name_the_field(workdir):
  a, _ = problems()
  with pytest.raises(solve.SolveError, match="^input: shape \\(6, 16, 1\\)") as err:
    solve.solve(workdir, a.reshape(6, 16, 1))
  assert err.value.field == "input"
  with pytest.raises(solve.SolveError, match="^input: dtype complex64"):
    solve.solve(workdir, a.astype(np.complex64))
  with pytest.raises(solve.SolveError, match="^inner_steps: "):
    solve.solve(workdir, a, inner_steps=())
  with pytest.warns(solve.OutOfDistributionWarning), pytest.raises(
      solve.SolveError, match="^input: 6 of 6 problems got non-finite answers"):
    solve.solve(workdir, a * 1e30)


def test_save_replaces_the_file_whole_or_not_at_all(tmp_path, monkeypatch):
  path = str(tmp_path / "X.npy")
  solve.save(path, np.ones(3, np.float32))

  def interrupted(f, array):
    f.write(b"half an array")
    raise KeyboardInterrupt

  monkeypatch.setattr(np, "save", interrupted)
  with pytest.raises(KeyboardInterrupt):
    solve.save(path, np.zeros(3, np.float32))
  monkeypatch.undo()
  np.testing.assert_array_equal(np.load(path), np.ones(3, np.float32))
  assert os.listdir(tmp_path) == ["X.npy"]


def test_solving_and_training_load_only_what_they_run():
  """A fresh interpreter: ired_cd.solve loads no training loop and no matplotlib; the
  training loop loads no matplotlib (it draws curves.png only once a run has ended)."""
  code = ("import json, sys; import ired_cd.solve; "
          "after_solve = sorted({'ired_cd.loop', 'matplotlib'} & set(sys.modules)); "
          "import ired_cd.loop; print(json.dumps([after_solve, 'matplotlib' in sys.modules]))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=True)
  assert json.loads(result.stdout.splitlines()[-1]) == [[], False]


def test_an_answer_does_not_depend_on_its_row_or_batch_and_one_sampler_serves_every_n(workdir):
  a, _ = problems(n=8)
  model = solve.load(workdir)
  rows = a.reshape(8, -1)
  keys = solve.content_keys(rows)
  with _tiny.jit_traces() as traced:
    batch = solve.answer(model, rows, 2)
    alone = solve.answer(model, rows[1:2], 2)
    reordered = solve.answer(model, rows[::-1], 2)
    # Chunks of 2 or 8 rows (one padded chunk of eval_chunk above): the same answers.
    chunked = [evaluation.predict(model.sample, model.params, rows, keys, 2, chunk, model.mesh)
               for chunk in (2, 8)]
  np.testing.assert_allclose(alone[0], batch[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(reordered[::-1], batch, rtol=1e-5, atol=1e-6)
  for answers in chunked:
    np.testing.assert_allclose(answers, batch, rtol=1e-5, atol=1e-6)
  # 1, 8 and 8 problems all ran in one padded eval_chunk: one compiled sampler (the chunks of
  # 2 and 8 rows are two more shapes).
  assert traced["sample"] == 3
  assert model.config.eval_chunk > 8


# ----------------------------------------------------------------- instance files (3-SAT)
@pytest.fixture(scope="module")
def sat_workdir(tmp_path_factory):
  """A tiny trained 3-SAT run (20 steps): 8 variables, up to 34 clauses."""
  config = sat_config.get_config("tiny")
  config.train_steps = 20
  path = str(tmp_path_factory.mktemp("sat_run"))
  loop.train_and_evaluate(config, path, progress=False)
  return path


def write_cnf(path, clauses, variables=8, header_clauses=None):
  """A formula as SATLIB writes it: comments, the header, one clause a line, '%' and '0'."""
  lines = ["c generated for a test", "c", f"p cnf {variables} "
           f"{len(clauses) if header_clauses is None else header_clauses}"]
  lines += [" ".join(map(str, c)) + " 0" for c in clauses] + ["%", "0", ""]
  path.write_text("\n".join(lines))


def formulas(n):
  """n satisfiable formulas of the tiny task's in-distribution set, as clause lists."""
  task = tasks.from_config(sat_config.get_config("tiny"))
  inputs, _ = task.eval_set(n, 0, False)
  matrices = inputs.reshape(n, task.max_clauses, task.variables)
  return [[[int(v * (j + 1)) for j, v in enumerate(row) if v] for row in m if row.any()]
          for m in matrices]


def test_cli_solves_a_directory_of_dimacs_files(sat_workdir, tmp_path):
  """Each formula gets NAME.sol: 's SATISFIABLE' exactly when its decoded assignment leaves no
  clause unsatisfied (checked here clause by clause), then 'v' lines; printed: each file's
  violations, then how many were solved, then the baselines on the same files."""
  inputs = tmp_path / "formulas"
  inputs.mkdir()
  clauses = formulas(3)
  for i, formula in enumerate(clauses):
    write_cnf(inputs / f"uf8-{i}.cnf", formula)
  (inputs / "notes.txt").write_text("not a formula")
  result = run_cli(f"--workdir={sat_workdir}", f"--input={inputs}",
                   f"--output={tmp_path / 'solutions'}")
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path / "solutions")) == [f"uf8-{i}.sol" for i in range(3)]
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith("3 problems of 3-SAT n=8")
  solved = 0
  for i, formula in enumerate(clauses):
    text = (tmp_path / "solutions" / f"uf8-{i}.sol").read_text().splitlines()
    literals = [int(v) for line in text if line.startswith("v ") for v in line.split()[1:]]
    assert literals[-1] == 0 and sorted(abs(v) for v in literals[:-1]) == list(range(1, 9))
    unsatisfied = sum(not any(lit in literals for lit in c) for c in formula)
    assert (text[1] == "s SATISFIABLE") == (unsatisfied == 0)
    assert lines[1 + i] == f"  {inputs / f'uf8-{i}.cnf'}: {unsatisfied} violations"
    solved += unsatisfied == 0
  assert lines[-2] == f"inner_steps=5: solved {solved} of 3 -> {tmp_path / 'solutions'}"
  assert lines[-1].startswith("beside: a random assignment solved ")


def test_particles_answer_the_oracles_pick_or_the_energys(sat_workdir):
  """Of a problem's particles: 'oracle' answers one with the fewest violations, of those the
  lowest E; 'energy' the lowest E. One particle is the plain sampler's answer."""
  model = solve.load(sat_workdir)
  task = model.task
  problems_, _ = task.eval_set(16, 1, False)
  outputs, energies = solve.particle_answers(model, problems_, 2, 8)
  assert (outputs.shape, energies.shape) == ((16, 8, task.out_dim), (16, 8))
  violations = task.verify(np.repeat(problems_, 8, axis=0),
                           task.decode(outputs.reshape(16 * 8, -1))).reshape(16, 8)
  assert len({tuple(v) for v in violations}) > 1  # the particles differ: a choice to make
  oracle = solve.answer(model, problems_, 2, particles=8)
  energy = solve.answer(model, problems_, 2, particles=8, pick="energy")
  for i in range(16):
    best = np.flatnonzero(violations[i] == violations[i].min())
    np.testing.assert_array_equal(oracle[i], outputs[i, best[np.argmin(energies[i, best])]])
    np.testing.assert_array_equal(energy[i], outputs[i, np.argmin(energies[i])])
  np.testing.assert_array_equal(solve.answer(model, problems_, 2, particles=1),
                                solve.answer(model, problems_, 2))


def test_the_oracles_pick_prefers_a_solution_to_a_lower_energy():
  """Hand-made particles of one formula: a violating one of the lowest E, then its target
  twice (scaled: one assignment): the oracle takes the target of the lower E, the energy the
  violating one."""
  task = tasks.from_config(sat_config.get_config("tiny"))
  inputs, targets = task.eval_set(64, 0, False)
  wrong = -np.ones(task.out_dim, np.float32)  # every variable false
  i = next(i for i in range(64) if task.verify(inputs[i:i + 1], task.decode(wrong[None]))[0])
  outputs = np.stack([wrong, targets[i], 0.5 * targets[i]])[None]  # the last two: one answer
  energies = np.array([[-10.0, 5.0, 1.0]])
  for pick, particle in (("oracle", 2), ("energy", 0)):
    chosen = solve.choose(task, inputs[i:i + 1], outputs, energies, pick)
    np.testing.assert_array_equal(chosen, outputs[:, particle])


def test_cli_bad_instance_files_are_one_line_and_write_nothing(sat_workdir, tmp_path):
  good = tmp_path / "good.cnf"
  write_cnf(good, formulas(1)[0])
  broken = tmp_path / "broken"
  broken.mkdir()
  write_cnf(broken / "a.cnf", formulas(1)[0])
  (broken / "b.cnf").write_text("c fine so far\np cnf 8 2\n1 2 3 0\n4 five 6 0\n")
  write_cnf(tmp_path / "wide.cnf", [[1, 9, 2]], variables=9)
  write_cnf(tmp_path / "long.cnf", [[1, 2, 3]] * 35)
  empty = tmp_path / "empty"
  empty.mkdir()
  out = tmp_path / "out"
  cases = {
      "malformed": [f"--input={broken}", f"--output={out}"],
      "too many variables": [f"--input={tmp_path / 'wide.cnf'}", f"--output={out}"],
      "too many clauses": [f"--input={tmp_path / 'long.cnf'}", f"--output={out}"],
      "no formulas": [f"--input={empty}", f"--output={out}"],
      "output is a file": [f"--input={good}", f"--output={good}"],
  }
  outcomes = run_cases({k: [f"--workdir={sat_workdir}"] + v for k, v in cases.items()},
                       tmp_path, sat_workdir)
  expected = {
      "malformed": f"error: --input: {broken / 'b.cnf'}, line 4: 'five' is not an integer literal",
      "too many variables": f"error: --input: {tmp_path / 'wide.cnf'}: 9 variables; the run's "
                            "model takes at most 8 (config sat_variables)",
      "too many clauses": f"error: --input: {tmp_path / 'long.cnf'}: 35 clauses; the run's "
                          "model takes at most 34 (config sat_clauses, sat_clauses_ood)",
      "no formulas": f"error: --input: no .cnf files in {empty}",
      "output is a file": f"error: --output: {good} is a file; name a directory for the .sol "
                          "files"}
  for name, (message, stdout, changed) in outcomes.items():
    assert (message, stdout, changed) == (expected[name], "", False), name
  assert not out.exists()


def test_solution_files_replace_old_ones_whole_or_not_at_all(tmp_path, monkeypatch):
  task = tasks.get_task("sat", variables=4, clauses=(2, 3), clauses_ood=3)
  path = str(tmp_path / "f.sol")
  answers = np.array([[1.0, -1.0, 1.0, -1.0]])
  solve.write_solutions(task, [path], answers, [4], np.array([0]))
  before = open(path).read()
  assert "s SATISFIABLE" in before

  class Unwritable:  # the new file is open when writing it fails
    pass

  monkeypatch.setattr(type(task), "format_answer", lambda self, *args: Unwritable())
  with pytest.raises(TypeError):
    solve.write_solutions(task, [path], -answers, [4], np.array([3]))
  assert open(path).read() == before and os.listdir(tmp_path) == ["f.sol"]
