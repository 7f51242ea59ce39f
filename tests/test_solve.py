"""Solving one's own problems with a trained run: ired_cd.solve and experiments.solve."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ired_cd import evaluation, solve, tasks, train
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
  a, x = tasks.get_task("inverse", RANK).sample_numpy(np.random.RandomState(seed), n, ood)
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
  default = sampler_lib.make_sampler(setup.energy_fn, setup.schedule, setup.task.out_dim)
  rows = a.reshape(6, -1).astype(np.float32)
  scaled = evaluation.predict(default, model.params, rows, solve.content_keys(rows), 3, 6,
                              model.mesh)
  np.testing.assert_allclose(by_row[3] * float(setup.schedule.sqrt_alphas_cumprod[0]), scaled,
                             rtol=1e-5, atol=1e-6)
  assert model.step == 20


def test_score_agrees_with_numpy(workdir):
  a, inverse = problems()
  x = solve.solve(workdir, a)[5]
  task = tasks.get_task("inverse", RANK)
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
  assert lines[0].startswith("6 inverse problems (4x4)") and "checkpoint step 20" in lines[0]
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
  task = tasks.get_task("inverse", RANK)
  for ood in (False, True):  # both evaluation distributions are in distribution
    assert solve.distribution_warnings(task, RANK, problems(ood=ood)[0].reshape(6, -1)) == []
  not_spd = a.copy()
  not_spd[2] = -a[2]  # symmetric, negative definite, same norm
  warned = solve.distribution_warnings(task, RANK, not_spd.reshape(6, -1))
  assert len(warned) == 1 and warned[0].startswith(
      "1 of 6 problems are not symmetric positive definite (first: problem 2)")
  asymmetric = a.copy()
  asymmetric[:, 0, 1] += 0.5
  assert solve.distribution_warnings(task, RANK, asymmetric.reshape(6, -1))[0].startswith(
      "6 of 6 problems are not symmetric positive definite")
  large = solve.distribution_warnings(task, RANK, 10 * a.reshape(6, -1))
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
  """name -> (flags, field named in the error) of each bad-input case."""
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


CASES = ["missing file", "not an array", "wrong size", "one matrix", "non-finite",
         "no config.json", "no checkpoint", "missing checkpoint step", "negative inner steps",
         "no output directory", "output is the input", "an output is the input",
         "non-finite answers", "damaged checkpoint step"]
# What the line says beyond the flag, where the case has a message of its own.
MESSAGES = {"not an array": "is not a .npy file written by numpy.save",
            "output is the input": "would overwrite the input",
            "an output is the input": "X_steps2.npy would overwrite the input",
            "non-finite answers": "6 of 6 problems got non-finite answers with inner_steps=5",
            "damaged checkpoint step": "the checkpoint at step 20 in"}


@pytest.mark.parametrize("case", CASES)
def test_cli_bad_input_is_one_line_naming_the_field_and_writes_nothing(workdir, tmp_path, case):
  args, field = _bad_inputs(tmp_path, workdir)[case]
  before = files(tmp_path), files(workdir)
  result = run_cli(*args)
  assert result.returncode != 0
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert result.stderr.startswith(f"error: --{field}: "), result.stderr
  assert MESSAGES.get(case, "") in result.stderr
  assert result.stdout == ""
  assert (files(tmp_path), files(workdir)) == before


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
