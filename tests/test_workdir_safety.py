"""A workdir's record is never lost: a finished run rerun changes nothing, refusals are one
line that leave every file as it was, and one run at a time holds a workdir."""

import os
import shutil
import socket

import pytest

from ired_cd import loop, workdir_lock
from tests.test_run import run_cli, snapshot, tiny

CONFIG = "--config=configs/q204.py:tiny"
OVERRIDES = ("--config.train_steps=10", "--config.eval_every=0")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A completed 10-step tiny cd_full run (CONFIG, OVERRIDES): treat as read-only."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  loop.train_and_evaluate(tiny(train_steps=10, eval_every=0), workdir, progress=False)
  return workdir


def test_rerun_of_a_finished_run_changes_nothing(finished):
  before = snapshot(finished)
  result = run_cli(CONFIG, *OVERRIDES, f"--workdir={finished}")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == (f"{finished} holds this run, completed at step 10: nothing to do. To train "
                      "further, pass --config.train_steps=N with N > 10.")
  assert lines[1].startswith("done: steps=10 eval/mse=") and "steps/s=nan" not in lines[1]
  assert snapshot(finished) == before


def _malformed_metrics(finished, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write("[1, 2, 3]\n")
  return workdir


@pytest.mark.parametrize("workdir_of, args, facts", [
    (lambda finished, tmp_path: str(tmp_path / "none"), ("--mode=eval",),
     ["no checkpoint in {workdir}/checkpoints"]),
    (lambda finished, tmp_path: finished, ("--mode=eval", "--checkpoint_step=999"),
     ["--checkpoint_step=999: no such checkpoint in {workdir}/checkpoints; saved steps: 10"]),
    (lambda finished, tmp_path: finished, ("--mode=eval", "--config.rank=5"),
     ["workdir {workdir} holds a run of a different config", "rank: 4 -> 5"]),
    (lambda finished, tmp_path: finished,
     ("--mode=eval", "--config=configs/ired.py:tiny", *OVERRIDES),
     ["workdir {workdir} holds a run of a different config", "mining_strategy: 'cd_full' -> "
      "'ired'"]),
    (lambda finished, tmp_path: finished,
     ("--mode=eval", "--config.rank=5", "--allow_config_change"),
     ["checkpoint at step 10 in {workdir}/checkpoints holds another model (params fc1/kernel: "
      "saved (32, 64), this config (50, 64))"]),
    (_malformed_metrics, ("--config.train_steps=20",),
     ["{workdir}/metrics.jsonl: line 2 is not a metrics row ([1, 2, 3]); each line must be a "
      'JSON object with an integer "step"']),
], ids=["no_checkpoint", "no_such_step", "other_rank", "other_config", "other_model",
        "malformed_metrics"])
def test_refusals_are_one_line_and_change_nothing(finished, tmp_path, workdir_of, args, facts):
  workdir = workdir_of(finished, tmp_path)
  before = snapshot(workdir)
  if not any(arg.startswith("--config=") for arg in args):
    args = (CONFIG, *OVERRIDES, *args)
  result = run_cli(f"--workdir={workdir}", *args, timeout=120)
  assert result.returncode == 1, result.stderr
  [line] = result.stderr.strip().splitlines()
  assert line.startswith("error: ")
  for fact in facts:
    assert fact.format(workdir=workdir) in line
  assert snapshot(workdir) == before


@pytest.mark.parametrize("call", [
    lambda workdir: loop.train_and_evaluate(tiny(train_steps=20, eval_every=0), workdir,
                                            progress=False),
    lambda workdir: loop.evaluate_checkpoint(tiny(), workdir, inner_steps=[0]),
], ids=["train", "eval"])
def test_a_held_workdir_is_refused_naming_the_holder(finished, call):
  with workdir_lock.hold(finished):
    before = snapshot(finished)
    with pytest.raises(workdir_lock.WorkdirBusy,
                       match=f"in use by pid {os.getpid()} on {socket.gethostname()} since "):
      call(finished)
    assert snapshot(finished) == before
  assert not os.path.exists(os.path.join(finished, workdir_lock.LOCK_NAME))
