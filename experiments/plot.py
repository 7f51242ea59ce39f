r"""Plots of one run: its training and evaluation curves, and an inference-steps sweep.

  python -m experiments.plot results/ds_inverse/cd_full_cpu
  python -m experiments.plot results/ds_inverse/cd_full_cpu --inner_steps=0,1,2,5,10,20 \
      --eval_size=1024

Writes WORKDIR/curves.png from WORKDIR/metrics.jsonl (losses, eval MSE against
the mean predictor, and the health instruments the run logged). With
--inner_steps it also scores the latest checkpoint with each number of inner
descent steps (loop.evaluate_checkpoint, which writes WORKDIR/eval.json)
and plots the MSE against them in WORKDIR/inner_steps.png. Headless: files only.
"""

import os
import sys

from absl import app, flags

from experiments import cli
from ired_cd import schema
from ired_cd import evaluation, loop, plotting, tasks

_INNER = flags.DEFINE_list("inner_steps", None,
                           "Also sweep the sampler's inner descent steps, e.g. 0,1,2,5,10,20.")
_SIZE = flags.DEFINE_integer("eval_size", None,
                             "Problems per evaluation set in the sweep (default: the run's).")


def main(argv):
  cli.start(argv, usage="python -m experiments.plot WORKDIR [--inner_steps=0,1,2,5] [--eval_size=N]")
  workdir = argv[1]
  try:
    cli.check_workdir("WORKDIR", workdir, must_exist=True)
    inner = cli.step_counts(_INNER.name, _INNER.value)
  except schema.ConfigError as err:
    sys.exit(f"error: {err}")
  if _SIZE.value is not None and _SIZE.value <= 0:
    sys.exit(f"error: --eval_size: must be a positive integer, got {_SIZE.value}")
  try:
    print(f"curves: {plotting.plot_curves(workdir)}")
    if inner:
      config = schema.load_config(workdir)
      result = loop.evaluate_checkpoint(config, workdir, inner_steps=inner, eval_size=_SIZE.value)
      task = tasks.from_config(config)
      path = plotting.plot_inner_steps(workdir, result, task, config.mining_strategy)
      print(f"inner-steps sweep: {path} (numbers in {os.path.join(workdir, 'eval.json')})")
      keys = evaluation.headline_keys(task)
      for k, *values in zip(inner, *(evaluation.at_inner_steps(result, key, inner)
                                     for key in keys)):
        print(f"  k={k}: " + " ".join(f"{key.split('/')[1]}={v:.5g}"
                                      for key, v in zip(keys, values)))
  except loop.REFUSALS as err:
    sys.exit(f"error: {err}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
