r"""Train or evaluate one IRED / IRED-CD run.

  python -m experiments.run --config=configs/q204.py:cpu
  python -m experiments.run --config=configs/q204.py --config.batch_size=256 --workdir=/tmp/q204
  python -m experiments.run --config=configs/q204.py --workdir=/tmp/q204 --mode=eval \
      --eval_inner_steps=5,10,20 --eval_size=4096

Any config field can be overridden with --config.<field>=<value>. Rerunning a
command with the same --workdir resumes from its latest checkpoint; rerunning a
finished one changes nothing. One run at a time per workdir.

Exit status: 0 done (or nothing to do), 1 an error (one line on stderr),
75 (EX_TEMPFAIL) stopped by SIGTERM / SIGINT with a checkpoint saved: rerun to resume.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from configs import base
from experiments import cli
from ired_cd import schema
from ired_cd import evaluation, loop, parallel, tasks

_CONFIG = config_flags.DEFINE_config_file("config", "configs/q204.py:cpu",
                                          "Config file (and :variant), e.g. configs/q204.py:cpu.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: config.output_dir).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (or resume), or evaluate.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir even though its config.json differs.")
_STEP = flags.DEFINE_integer("checkpoint_step", None, "eval mode: checkpoint step (default latest).")
_INNER = flags.DEFINE_list("eval_inner_steps", None,
                           "eval mode: inner descent steps per timestep, e.g. 5,10,20.")
_SIZE = flags.DEFINE_integer("eval_size", None, "eval mode: problems per evaluation set.")
_ONLINE = flags.DEFINE_bool("eval_online", False, "eval mode: online params instead of the EMA.")
_PARTICLES = cli.define_particle_flags(
    "eval mode: also K trajectories per problem for each K, e.g. 1,8,64")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: host:port of process 0 (TPU VM slices and SLURM "
    "need none: they are detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped with a checkpoint; rerun to resume


def main(argv):
  cli.start(argv)
  parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  workdir = _WORKDIR.value or config.output_dir
  try:
    schema.validate(config, base.get_config())
    inner = cli.step_counts(_INNER.name, _INNER.value)
    particles = _PARTICLES()
    if _SIZE.value is not None and _SIZE.value <= 0:
      raise schema.ConfigError(f"--eval_size: must be a positive integer, got {_SIZE.value}")
    cli.check_workdir("--workdir", workdir)
    if _MODE.value == "train":
      loop.check_devices(config, parallel.make_mesh())
    loop.check_workdir(config, workdir, _ALLOW_CHANGE.value)
    if _MODE.value == "eval":
      result = loop.evaluate_checkpoint(config, workdir, _STEP.value, inner, _SIZE.value,
                                        use_ema=not _ONLINE.value, particles=particles)
      print(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in result.items()))
      return
    summary = loop.train_and_evaluate(config, workdir, _ALLOW_CHANGE.value,
                                            progress=_PROGRESS.value)
  except loop.REFUSALS as err:
    sys.exit(f"error: {err}")
  except loop.TrainingDiverged as err:
    sys.exit(f"error: training diverged: {err}")
  if summary["status"] == "interrupted":
    sys.exit(EXIT_INTERRUPTED)
  task = tasks.from_config(config)
  if summary.get("status") == "completed" and all(
      k in summary for k in evaluation.headline_keys(task)):
    print(f"done: steps={summary['steps']} {evaluation.describe(task, summary)} "
          f"steps/s={summary['train/steps_per_sec'] or float('nan'):.1f} -> {workdir}")
  curves = os.path.join(workdir, "curves.png")
  if os.path.exists(curves):
    print(f"curves: {curves}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
