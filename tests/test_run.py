"""The training loop and experiments.run end to end: outputs, resume, signals, damaged checkpoints, eval, errors."""

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import base, q202, q204
from ired_cd import checkpoint, schema, loop, metrics_io, parallel, train, workdir_lock
from tests.conftest import assert_refused

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(strategy="cd_full", **overrides):
  return base.run_config(q204.get_config("tiny"), strategy, **overrides)


def run_cli(*args, timeout=240):
  return subprocess.run([sys.executable, "-m", "experiments.run", "--progress=false", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=timeout)


def assert_carries(line, *facts):
  """``line`` (a log or output line) states each of ``facts``, in any wording around them."""
  missing = [fact for fact in facts if fact not in line]
  assert not missing, f"{line!r} lacks {missing}"


def restored(config, workdir, step=None):
  setup = train.build_setup(config)
  store = checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"))
  state, at = store.restore(train.init_state(setup), step=step)
  store.close()
  return state, at


def test_end_to_end_outputs(tmp_path, capsys, caplog):
  workdir = str(tmp_path / "run")
  summary = loop.train_and_evaluate(tiny(), workdir, progress=False)
  assert_carries(capsys.readouterr().out.splitlines()[0], "cd_full", "inverse 4x4",
                 f"1 {jax.devices()[0].device_kind} device", "batch 32", "float32", "40 steps",
                 f"workdir {workdir}", "Starting fresh")
  with open(os.path.join(workdir, "curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # A fresh model whose landscape has not formed yet is not a collapse.
  assert summary["collapse_step"] is None and "COLLAPSE" not in caplog.text
  for name in ("config.json", "metrics.jsonl", "summary.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  rows = metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [10, 20, 30, 40]
  for key in ("train/loss", "train/loss_mse", "train/energy_gap", "train/score_norm",
              "train/langevin_displacement", "train/filter_keep", "train/replay_fill",
              "train/energy_weight", "train/steps_per_sec"):
    assert all(np.isfinite(r[key]) for r in rows), key
  evals = [r for r in rows if "eval/mse" in r]
  assert [r["step"] for r in evals] == [20, 40]
  assert all("eval/mse_ood" in r and "eval/residual" in r for r in evals)
  on_disk = json.load(open(os.path.join(workdir, "summary.json")))
  assert on_disk == json.loads(json.dumps(summary))
  for key in ("eval/mse", "eval/mse_ood", "train/steps_per_sec", "steps", "wall_clock_sec"):
    assert key in on_disk
  assert on_disk["steps"] == 40 and on_disk["status"] == "completed"
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [20, 40]
  assert json.load(open(os.path.join(workdir, "config.json")))["mining_strategy"] == "cd_full"


def test_steps_per_sec_of_a_one_chunk_run_is_a_number(tmp_path):
  """Compilation happens ahead of the timed calls: a run of one host call still has a rate."""
  summary = loop.train_and_evaluate(tiny(train_steps=10, eval_every=0), str(tmp_path),
                                          progress=False)
  rate = json.load(open(tmp_path / "summary.json"))["train/steps_per_sec"]
  assert isinstance(rate, float) and rate > 0 and rate == summary["train/steps_per_sec"]


def test_collapse_is_a_formed_landscape_gone_flat():
  """sqrt(D) = 4: flat from the start is no collapse; formed (>= 2) then flat (< 0.2) with
  the MSE near 1 is, and only then; flat with a low MSE is not."""
  sequence = [(0.01, 0.99), (0.05, 0.99), (1.0, 0.8), (3.9, 0.3), (2.5, 0.5), (0.1, 0.5),
              (0.1, 0.95), (0.05, 0.99)]
  peak, flags = 0.0, []
  for score, mse in sequence:
    peak, collapsed = loop.collapse_check(peak, score, mse, out_dim=16)
    flags.append(collapsed)
  assert flags == [False, False, False, False, False, False, True, True]
  assert peak == 3.9
  never_formed = [loop.collapse_check(1.9, 0.01, 0.99, 16)[1],
                  loop.collapse_check(0.0, 0.0, 1.0, 16)[1]]
  assert never_formed == [False, False]


def test_run_description_names_what_runs_where():
  mesh = parallel.make_mesh()
  kind = jax.devices()[0].device_kind
  line = loop.describe_run(tiny("none", matmul_dtype="bfloat16", batch_size=16), mesh,
                           "runs/w", 20)
  assert_carries(line, "none", "inverse 4x4", f"1 {kind} device", "data=1", "batch 16",
                 "16 per device", "bfloat16", "40 steps", "workdir runs/w", "step 20")
  assert "Starting fresh" in loop.describe_run(tiny(), mesh, "w", 0)


def test_resume_is_exact(tmp_path):
  """20 steps + restart + 20 steps gives the state of 40 steps straight (replay buffer too).
  The collapse detector's running max comes back from metrics.jsonl: the young model's flat
  score (~0.01, MSE ~1) is no collapse, but after a formed one (sqrt(D) / 2 = 2) it is."""
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  assert loop.train_and_evaluate(tiny(eval_every=0), straight,
                                 progress=False)["collapse_step"] is None
  loop.train_and_evaluate(tiny(eval_every=0, train_steps=20), split, progress=False)
  metrics = os.path.join(split, "metrics.jsonl")
  rows = metrics_io.read_jsonl(metrics)
  rows[-1]["train/score_norm"] = 3.0
  with open(metrics, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  assert loop.train_and_evaluate(tiny(eval_every=0), split, progress=False)["collapse_step"] == 30
  a, _ = restored(tiny(), straight, 40)
  b, _ = restored(tiny(), split, 40)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  rows = metrics_io.read_jsonl(os.path.join(split, "metrics.jsonl"))
  assert [r["step"] for r in rows if "train/loss" in r] == [10, 20, 30, 40]


def test_damaged_checkpoints_are_moved_aside_and_written_again(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny(eval_every=0), workdir, progress=False)
  ckpts = os.path.join(workdir, "checkpoints")
  # A write killed midway leaves a temporary directory: never taken for a checkpoint.
  shutil.copytree(os.path.join(ckpts, "40"), os.path.join(ckpts, "60.orbax-checkpoint-tmp-1"))
  # A finalised checkpoint whose data is gone: a reader skips it with a warning.
  shutil.rmtree(os.path.join(ckpts, "40", "default"))
  state, step = restored(tiny(), workdir)
  assert step == 20 and int(state.step) == 20
  assert "unreadable" in caplog.text
  corrupt = os.path.join(workdir, "checkpoints_corrupt")
  assert not os.path.exists(corrupt)
  # Every checkpoint unreadable: the run moves them aside, starts over, writes readable ones.
  for root, _, files in os.walk(os.path.join(ckpts, "20")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  summary = loop.train_and_evaluate(tiny(eval_every=0), workdir, progress=False)
  assert summary["steps"] == 40 and summary["status"] == "completed"
  assert sorted(name.split("-")[0] for name in os.listdir(corrupt)) == ["20", "40"]
  assert not os.path.exists(os.path.join(corrupt, max(os.listdir(corrupt)), "default"))
  assert restored(tiny(), workdir, 40)[1] == 40 and restored(tiny(), workdir, 20)[1] == 20
  rows = metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [10, 20, 30, 40]  # the first run's rows recomputed once


# A run whose loss is infinite from its first step, on the command line.
DIVERGING = ("--config=configs/q202.py:tiny", "--config.energy_loss_weight=inf",
             "--config.eval_every=0")


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
  """(workdir, config, the TrainingDiverged raised) of the run DIVERGING spells."""
  config = q202.get_config("tiny")
  config.energy_loss_weight, config.eval_every = float("inf"), 0
  workdir = str(tmp_path_factory.mktemp("diverged") / "run")
  with pytest.raises(loop.TrainingDiverged) as err:
    loop.train_and_evaluate(config, workdir, progress=False)
  return workdir, config, err.value


def test_nonfinite_training_stops_with_a_clear_message(diverged):
  workdir, config, err = diverged
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["status"] == "diverged" and summary["message"] == str(err)
  assert f"non-finite loss at step {summary['failed_step']} " in summary["message"]
  assert 1 <= summary["failed_step"] <= config.log_every and summary["failed_quantity"] == "loss"


def snapshot(directory):
  """{relative path: bytes} of every file under ``directory``; None if it does not exist."""
  if not os.path.exists(directory):
    return None
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        files[os.path.relpath(os.path.join(root, name), directory)] = f.read()
  return files


def _cut_short(path):
  with open(path, "rb+") as f:
    f.truncate(os.path.getsize(path) - 5)


@pytest.fixture(scope="module")
def reruns(diverged, tmp_path_factory):
  """{file cut short (None: none): (workdir, the rerun's result, files before, after)} of the
  diverged run rerun unchanged in a copy of its workdir, the reruns side by side."""
  def rerun(workdir):
    before = snapshot(workdir)
    result = run_cli(*DIVERGING, f"--workdir={workdir}")
    return workdir, result, before, snapshot(workdir)

  runs = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    for damaged in (None, "summary.json", "config.json", "metrics.jsonl"):
      workdir = str(tmp_path_factory.mktemp("rerun") / "run")
      shutil.copytree(diverged[0], workdir)
      if damaged:
        _cut_short(os.path.join(workdir, damaged))
      runs[damaged] = pool.submit(rerun, workdir)
  return {damaged: future.result() for damaged, future in runs.items()}


def _one_line_and_nothing_changed(result, before, after):
  assert "Traceback" not in result.stderr, result.stderr
  assert result.returncode == 1 and result.stdout == "", (result.stdout, result.stderr)
  [line] = result.stderr.splitlines()
  assert after == before
  return line


def test_cli_rerun_of_a_diverged_run_says_where_and_how_and_trains_nothing(diverged, reruns):
  workdir, result, before, after = reruns[None]
  line = _one_line_and_nothing_changed(result, before, after)
  summary = json.load(open(os.path.join(diverged[0], "summary.json")))
  assert (summary["failed_step"], summary["failed_quantity"]) == (1, "loss")
  assert line == (
      f"error: training diverged: {workdir} holds this run: non-finite loss at step 1 (10 of "
      "steps 1-10 with a non-finite loss or gradient). Rerun unchanged it diverges again, so "
      "nothing was trained: change the config (energy_reg_weight > 0, langevin_grad_clip, or a "
      "smaller energy_loss_weight) and pass --allow_config_change to resume from its last good "
      "checkpoint, or use another --workdir.")


@pytest.mark.parametrize("damaged, says", [
    ("summary.json", "not JSON (Expecting "), ("config.json", "not JSON (Expecting "),
    ("metrics.jsonl", "its last row is not the divergence at step 1 that summary.json records")])
def test_cli_rerun_with_a_record_cut_short_names_the_file(reruns, damaged, says):
  workdir, result, before, after = reruns[damaged]
  line = _one_line_and_nothing_changed(result, before, after)
  assert line.startswith(f"error: {os.path.join(workdir, damaged)}: {says}"), line


def test_a_diverged_run_with_a_changed_config_follows_the_changed_config_rules(
    diverged, tmp_path, monkeypatch):
  """Refused without --allow_config_change; with it, the new attempt trains, and the diverged
  attempt's summary.json gives way, so a rerun of the new config (say, after a crash) is not
  refused for the old one's divergence."""
  workdir = str(tmp_path / "run")
  shutil.copytree(diverged[0], workdir)
  changed = diverged[1].copy_and_resolve_references()
  changed.energy_loss_weight = 1.0
  with pytest.raises(schema.ConfigError, match="energy_loss_weight: inf -> 1.0"):
    loop.train_and_evaluate(changed, workdir, progress=False)

  def crash(*args, **kwargs):
    raise RuntimeError("the machine went away")
  monkeypatch.setattr(metrics_io, "MetricsWriter", crash)  # just after the attempt starts
  with pytest.raises(RuntimeError, match="went away"):
    loop.train_and_evaluate(changed, workdir, allow_config_change=True, progress=False)
  assert json.load(open(os.path.join(workdir, "config.json")))["energy_loss_weight"] == 1.0
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  loop.check_diverged(changed, workdir)


def test_workdir_of_another_config_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny(train_steps=10, eval_every=0), workdir, progress=False)
  with pytest.raises(schema.ConfigError, match="learning_rate: 0.0001 -> 0.001"):
    loop.train_and_evaluate(tiny(learning_rate=1e-3), workdir, progress=False)
  summary = loop.train_and_evaluate(tiny(learning_rate=1e-3, train_steps=20, eval_every=0),
                                          workdir, allow_config_change=True, progress=False)
  assert summary["steps"] == 20


def test_run_written_before_an_added_field_resumes(tmp_path):
  """A config.json that predates matmul_dtype reads as float32: the run resumes (and the
  ablation and the plots see the same config); asking it for bfloat16 is refused."""
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny(train_steps=10, eval_every=0), workdir, progress=False)
  path = os.path.join(workdir, "config.json")
  saved = json.load(open(path))
  del saved["matmul_dtype"]
  metrics_io.write_json_atomic(path, saved)
  assert schema.load_config(workdir).matmul_dtype == "float32"
  assert loop.holds_outcome(tiny(train_steps=10, eval_every=0), workdir)
  with pytest.raises(schema.ConfigError, match="matmul_dtype: 'float32' -> 'bfloat16'"):
    loop.train_and_evaluate(tiny(train_steps=20, eval_every=0, matmul_dtype="bfloat16"),
                                  workdir, progress=False)
  summary = loop.train_and_evaluate(tiny(train_steps=20, eval_every=0), workdir,
                                          progress=False)
  assert summary["steps"] == 20


def test_outcome_ignores_names_but_not_trajectory_or_evaluation(tmp_path):
  """A finished run is the outcome of a renamed config (bookkeeping fields), not of one
  with another seed or another evaluation set; the workdir check agrees on the rest."""
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny(train_steps=10, eval_every=0), workdir, progress=False)
  renamed = tiny(train_steps=10, eval_every=0, experiment_name="renamed", ablation_stage="x",
                 output_dir="elsewhere", investigation="y")
  assert loop.holds_outcome(renamed, workdir)
  loop.check_workdir(renamed, workdir)
  assert not loop.holds_outcome(tiny(train_steps=20, eval_every=0), workdir)
  assert not loop.holds_outcome(tiny(train_steps=10, eval_every=0, eval_size=8), workdir)
  loop.check_workdir(tiny(train_steps=10, eval_size=8), workdir)
  assert not loop.holds_outcome(tiny(train_steps=10, eval_every=0, seed=1), workdir)
  with pytest.raises(schema.ConfigError, match="seed: 0 -> 1"):
    loop.check_workdir(tiny(train_steps=10, seed=1), workdir)


def _start_cli(*args):
  return subprocess.Popen([sys.executable, "-m", "experiments.run", "--progress=false", *args,
                           "--config.train_steps=100000"], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for_rows(metrics, count):
  deadline = time.time() + 180
  while time.time() < deadline and len(metrics_io.read_jsonl(metrics)) < count:
    time.sleep(0.5)


def test_cli_one_run_per_workdir_sigterm_kill_resume_and_eval(tmp_path):
  """A second run is refused while the first goes on; SIGTERM checkpoints and exits 75;
  kill -9 leaves a lock file that blocks nothing; the rerun resumes; eval scores it."""
  workdir = str(tmp_path / "run")
  args = ["--config=configs/q204.py:tiny", f"--workdir={workdir}", "--config.eval_every=0"]
  proc = _start_cli(*args)
  metrics = os.path.join(workdir, "metrics.jsonl")
  _wait_for_rows(metrics, 3)
  second = run_cli(*args)
  assert second.returncode == 1 and proc.poll() is None
  [refusal] = second.stderr.strip().splitlines()
  assert re.fullmatch(
      rf"error: workdir {re.escape(workdir)} is in use by pid {proc.pid} on "
      rf"{re.escape(socket.gethostname())} since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC: one "
      r"run per workdir; wait for that run to end, or use another --workdir", refusal)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 75, out
  assert "checkpoint saved at step" in out
  stopped = int(out.split("checkpoint saved at step ")[1].split(";")[0])
  assert stopped >= 30
  steps = [r["step"] for r in metrics_io.read_jsonl(metrics)]
  assert steps == list(range(10, stopped + 1, 10))  # the refused run wrote no row
  _, at = restored(tiny(), workdir)
  assert at == stopped
  killed = _start_cli(*args)
  _wait_for_rows(metrics, stopped // 10 + 1)
  killed.kill()
  killed.communicate(timeout=60)
  assert os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))  # left by kill -9
  last = max(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))
             if name.isdigit())
  resumed = run_cli(*args, f"--config.train_steps={last + 10}")
  assert resumed.returncode == 0, resumed.stderr
  assert f"Resuming from the checkpoint at step {last}" in resumed.stderr + resumed.stdout
  done, curves = resumed.stdout.splitlines()[-2:]
  assert_carries(done, f"steps={last + 10} ", "eval/mse=", "eval/mse_ood=", workdir)
  assert_carries(curves, os.path.join(workdir, "curves.png"))
  assert json.load(open(os.path.join(workdir, "summary.json")))["steps"] == last + 10
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))
  rows = metrics_io.read_jsonl(metrics)
  assert [r["step"] for r in rows if "train/loss" in r] == list(range(10, last + 11, 10))
  evaluated = run_cli(*args, "--mode=eval", "--eval_inner_steps=0,5", "--eval_size=16")
  assert evaluated.returncode == 0, evaluated.stderr
  result = json.load(open(os.path.join(workdir, "eval.json")))
  assert result["step"] == last + 10 and result["eval_size"] == 16
  for key in ("eval/mse_k0", "eval/mse_k5", "eval/mse_ood_k0", "eval/mse_ood_k5", "eval/mse"):
    assert np.isfinite(result[key]), key
  assert result["eval/mse"] == result["eval/mse_k0"]


@pytest.mark.parametrize("override, field", [
    ("--config.mining_strategy=cd_fast", "mining_strategy"),
    ("--config.residual_filter_quantile=1.5", "residual_filter_quantile"),
    ("--config.batch_size=0", "batch_size"),
    ("--config.energy_loss_timestep_range=(0.8,0.2)", "energy_loss_timestep_range"),
])
def test_cli_bad_input_names_the_field(tmp_path, override, field):
  workdir = tmp_path / "run"
  result = run_cli("--config=configs/q204.py:tiny", f"--workdir={workdir}", override, timeout=60)
  assert_refused(result, f"config.{field}")
  assert not workdir.exists()  # nothing compiled, nothing written


def test_cli_unknown_config_field_is_one_line_with_the_closest_names(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli("--config=configs/q204.py:tiny", f"--workdir={workdir}",
                   "--config.mining_opt_step=5", timeout=60)
  assert_refused(result, "--config.mining_opt_step:", "mining_opt_steps")
  assert not workdir.exists()


def test_unknown_key_in_config_file_is_rejected():
  config = tiny()
  config.mining_opt_step = 5  # a typo of mining_opt_steps
  with pytest.raises(schema.ConfigError, match="mining_opt_step"):
    schema.validate(config, base.get_config())
