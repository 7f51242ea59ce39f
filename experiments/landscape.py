r"""Measure a trained run's energy landscape (ired_cd.landscape; a task with many right answers:
ired_cd.answer_landscape).

  python -m experiments.landscape --workdir=results/ds_inverse/cd_full_cpu --eval_size=256
  python -m experiments.landscape --workdir=results/sat_cpu/cd_full/seed0 --eval_size=256

Writes WORKDIR/landscape.json and WORKDIR/landscape.png, from the EMA parameters of the
newest (or --checkpoint_step) checkpoint, with float32 products unless --matmul_dtype says
otherwise; each measure for the in-distribution set and, with the suffix _ood, the harder
one; the run's identity under 'run', the settings under 'settings'. A continuous task's:
acceptance, repair, energy_residual_spearman, energy_error_spearman, truth_below_answer,
scaling, breadth. A discrete task's (3-SAT, colouring): one_flip, answer, repair, spread
of E over right answers (docs/reasoning.md). The workdir is held while it is measured (no
run writes there meanwhile). Bad flags, a read-only or busy workdir: one line on stderr,
exit 1, nothing written.
"""

import sys

from absl import app, flags

from experiments import cli
from ired_cd import answer_landscape, landscape, schema, solve, tasks, workdir_lock
from ired_cd.matmul import MATMUL_DTYPES

_DEFAULTS = landscape.Settings()
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of experiments.run (required).")
_SIZE = flags.DEFINE_integer("eval_size", _DEFAULTS.eval_size, "Problems per evaluation set.")
_STEP = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: the newest).")
_DTYPE = flags.DEFINE_enum("matmul_dtype", _DEFAULTS.matmul_dtype, list(MATMUL_DTYPES),
                           "The products' operand dtype of the measurement.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the perturbations and chains.")


def check_flags():
  """(the module whose measures fit the run's task, their settings); SolveError or
  ConfigError naming the first bad flag."""
  if not _WORKDIR.value:
    raise solve.SolveError("workdir", "required")
  if _SIZE.value is None or _SIZE.value < 1:
    raise solve.SolveError("eval_size", f"a positive integer, got {_SIZE.value}")
  config = solve.read_config(_WORKDIR.value, _STEP.value)
  cli.check_workdir("--workdir", _WORKDIR.value, must_exist=True)
  measures = answer_landscape.measures_for(tasks.from_config(config))
  return measures, measures.Settings(eval_size=_SIZE.value, seed=_SEED.value,
                                     matmul_dtype=_DTYPE.value)


def main(argv):
  cli.start(argv)
  try:
    measures, settings = check_flags()
    result, paths = landscape.measure_run(_WORKDIR.value, settings, _STEP.value)
  except solve.SolveError as err:
    sys.exit(f"error: --{err.field}: {err.message}")
  except (schema.ConfigError, workdir_lock.WorkdirBusy) as err:
    sys.exit(f"error: {err}")
  columns = measures.summary(result)
  print(", ".join(f"{name}={value:.4g}" for name, value in columns.items()))
  print(f"-> {paths[0]}, {paths[1]}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
